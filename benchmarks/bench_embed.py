#!/usr/bin/env python
"""Embedding time per 10 s clip for the CLAP audio tower and the log-mel embedder, on CPU or GPU.

Without --checkpoint the CLAP tower (HTSAT-base, the music checkpoint's architecture) has random weights:
the cost is the same as the released model's, the embeddings are not. Peak memory is the process's
resident set (ru_maxrss) on CPU and torch.cuda.max_memory_allocated on GPU.

    python benchmarks/bench_embed.py                          # auto device, batch 1 and 8
    python benchmarks/bench_embed.py --device cpu --clips 8 --checkpoint /models/music_audioset_epoch_15_esc_90.14.pt
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def seconds_per_clip(embed, clips: torch.Tensor, batch: int, device: torch.device) -> float:
    """Wall seconds per clip embedding `clips` in batches of `batch` (after one warm-up batch)."""
    embed(clips[:batch])
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for i in range(0, len(clips), batch):
        embed(clips[i:i + batch])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / len(clips)


def main() -> None:
    """Time both embedders and print a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--checkpoint", default=None, help="a released CLAP checkpoint (default: random weights)")
    parser.add_argument("--audio-model", default="HTSAT-base")
    args = parser.parse_args()

    from audiolab.metrics.clap import CLAP_SAMPLE_RATE, CLAP_WINDOW, ClapAudioTower, load_clap_tower
    from audiolab.metrics.embedders import LogMelEmbedder
    from audiolab.train.device import pick_device

    device = pick_device(args.device)
    torch.manual_seed(0)
    if args.checkpoint:
        tower = load_clap_tower(args.checkpoint, map_location=device, audio_model=args.audio_model)
    else:
        tower = ClapAudioTower(args.audio_model).to(device).eval()
    params = sum(p.numel() for p in tower.parameters())
    clips = torch.rand(args.clips, CLAP_WINDOW, device=device) * 0.2 - 0.1
    logmel = LogMelEmbedder(sample_rate=CLAP_SAMPLE_RATE, device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {name}; {args.clips} clips of 10 s at 48 kHz; CLAP {args.audio_model}, {params / 1e6:.1f} M "
          f"parameters ({'checkpoint' if args.checkpoint else 'random weights'})")
    with torch.no_grad():
        for batch in (int(b) for b in args.batches.split(",")):
            clap_s = seconds_per_clip(tower, clips, batch, device)
            mel_s = seconds_per_clip(logmel.embed, clips, batch, device)
            print(f"batch {batch:>3}: CLAP {clap_s:.3f} s per clip, logmel {1e3 * mel_s:.1f} ms per clip")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
