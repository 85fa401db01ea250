#!/usr/bin/env python
"""Data loading throughput: audiolab's cache loader vs a naive decoding loader vs what the model consumes.

Builds a folder of real compressed and uncompressed files at mixed rates and channel counts (FLAC 48 kHz
stereo, WAV 44.1 kHz mono, WAV 96 kHz 24-bit), prepares audiolab's cache from it, and measures:

1. audiolab's loader: random crops of 48640 samples, batch 32, from the int16 memory map, 2 workers
   (threads, the default, and worker processes), pinned memory on CUDA. Timed up to the batch arriving in
   the main process, and again up to a float32 batch on the device (transfer and int16 -> float included).
2. two naive loaders, 2 DataLoader workers each: every item opens its source file, decodes with soundfile,
   mixes to mono and resamples with torchaudio. One decodes the whole file and crops (the usual first
   version); the other seeks and decodes only the span it needs (the best a cache-less loader can do).
3. the model's consumption: training steps of `model=convnext1d_big` (forward under bf16 autocast on
   CUDA, the default MR-STFT loss in fp32, backward, AdamW) on the same batch size, on the device.
4. device-side augmentation (`augment=rave` and `augment=full`) on a batch, for scale.

    python benchmarks/bench_data.py                          # auto device; prints a table, --json for a file
    python benchmarks/bench_data.py --device cpu --model-batch 4 --model-steps 3

Goals from the data issue: loader >= 50x the naive loader, and >= 100x the model's consumption.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

SEGMENT = 48640
BATCH = 32
SR = 44100
SOURCES = [  # (extension, subtype, rate, channels)
    ("flac", "PCM_16", 48000, 2),
    ("wav", "PCM_16", 44100, 1),
    ("wav", "PCM_24", 96000, 1),
]


def make_folder(root: Path, files: int, seconds: float) -> None:
    """Noisy tone mixtures, a third of the files in each source format."""
    rng = np.random.default_rng(0)
    for i in range(files):
        ext, subtype, rate, channels = SOURCES[i % len(SOURCES)]
        n = int(seconds * rate)
        t = np.arange(n) / rate
        mono = sum(0.1 * np.sin(2 * np.pi * f * t) for f in rng.uniform(80, 4000, 5)) + 0.02 * rng.standard_normal(n)
        audio = np.stack([mono] * channels, axis=1).astype(np.float32)
        sf.write(root / f"take{i:03d}.{ext}", audio, rate, subtype=subtype)


class NaiveCrops(torch.utils.data.Dataset):
    """Each item decodes and resamples its crop from the source file: what a loader without a cache does.

    whole_file=True is the common first version (load the file, resample it, crop); False seeks and decodes
    only the span the crop needs, the best a loader without a cache can do.
    """

    def __init__(self, files: list[Path], whole_file: bool, seed: int = 0) -> None:
        self.files = files
        self.info = [sf.info(str(f)) for f in files]
        self.whole_file = whole_file
        self.seed = seed

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, item: int) -> torch.Tensor:
        import torchaudio.functional as AF

        rng = np.random.default_rng([self.seed, item])
        k = int(rng.integers(len(self.files)))
        info = self.info[k]
        if self.whole_file:
            audio, rate = sf.read(str(self.files[k]), dtype="float32", always_2d=True)
        else:
            need = int(np.ceil(SEGMENT * info.samplerate / SR)) + 64
            start = int(rng.integers(0, info.frames - need))
            audio, rate = sf.read(str(self.files[k]), start=start, frames=need, dtype="float32", always_2d=True)
        mono = torch.from_numpy(audio.mean(axis=1))
        if rate != SR:
            mono = AF.resample(mono, rate, SR)
        start = int(rng.integers(0, len(mono) - SEGMENT + 1)) if self.whole_file else 0
        return mono[None, start:start + SEGMENT]


def time_batches(it, count: int, warmup: int, to_device=None) -> float:
    """Seconds per batch over `count` batches of iterator `it` after `warmup` (workers started and prefetching)."""
    for _ in range(warmup):
        batch = next(it)
        if to_device:
            to_device(batch)
    started = time.perf_counter()
    for _ in range(count):
        batch = next(it)
        if to_device:
            to_device(batch)
    return (time.perf_counter() - started) / count


def model_step_seconds(device: torch.device, batch: int, steps: int) -> tuple[float, int]:
    """Seconds per training step of convnext1d_big at `batch` x SEGMENT, and its parameter count."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from audiolab.losses.composite import build_loss

    model = instantiate(OmegaConf.load(REPO / "conf/model/convnext1d_big.yaml")).to(device)
    loss_fn = build_loss(OmegaConf.load(REPO / "conf/loss/mrstft.yaml")).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = 0.1 * torch.randn(batch, 1, SEGMENT, device=device)
    amp = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss, _ = loss_fn(out.float(), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocator, cuDNN algorithm choice
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps, sum(p.numel() for p in model.parameters())


def augment_seconds(device: torch.device, preset: str, repeats: int = 5) -> float:
    """Seconds per batch of BATCH x SEGMENT for an augment preset on the device."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    augment = instantiate(OmegaConf.load(REPO / f"conf/augment/{preset}.yaml"), sample_rate=SR)
    x = 0.1 * torch.randn(BATCH, 1, augment.input_length(SEGMENT), device=device)
    augment(x, np.random.default_rng(0), SEGMENT)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for i in range(repeats):
        augment(x, np.random.default_rng(i), SEGMENT)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    """Run every measurement and print the table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each generated file")
    parser.add_argument("--workers", type=int, default=2, help="loader workers (both loaders)")
    parser.add_argument("--batches", type=int, default=200, help="timed batches of the cache loader")
    parser.add_argument("--naive-batches", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model-batch", type=int, default=None, help="default: 32 on CUDA, 4 on CPU")
    parser.add_argument("--model-steps", type=int, default=None, help="default: 20 on CUDA, 3 on CPU")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from audiolab.data.clips import train_loader
    from audiolab.data.folder import build_folder_data
    from audiolab.train.device import pick_device

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    results: dict[str, object] = {"device": torch.cuda.get_device_name(device) if cuda else "cpu",
                                  "cpu_cores": os.cpu_count(), "batch": BATCH, "segment": SEGMENT,
                                  "workers": args.workers, "files": args.files, "seconds_per_file": args.seconds}
    crop_seconds = SEGMENT / SR
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "audio", Path(tmp) / "cache"
        root.mkdir()
        make_folder(root, args.files, args.seconds)
        started = time.perf_counter()
        data = build_folder_data(str(root), SR, SEGMENT, BATCH, str(cache), val_fraction=0.1, prepare_workers=2,
                                 progress=False)
        results["prepare_s"] = time.perf_counter() - started
        results["audio_hours"] = (data.train.seconds + data.val.seconds) / 3600

        def to_device(batch: torch.Tensor) -> torch.Tensor:
            out = data.train.to_float(batch.to(device, non_blocking=True))
            if cuda:
                torch.cuda.synchronize()
            return out

        for backend in ("threads", "processes"):
            loader = train_loader(data.train, SEGMENT, BATCH, seed=0, start_step=0, num_workers=args.workers,
                                  pin_memory=cuda, backend=backend)
            batches = iter(loader)
            results[f"loader_{backend}_s_per_batch"] = time_batches(batches, args.batches, warmup=10)
            results[f"loader_{backend}_to_device_s_per_batch"] = time_batches(batches, args.batches, warmup=5,
                                                                               to_device=to_device)
            del batches, loader

        for kind, whole in (("whole_file", True), ("span", False)):
            naive = torch.utils.data.DataLoader(NaiveCrops(sorted(root.iterdir()), whole), batch_size=BATCH,
                                                num_workers=args.workers, prefetch_factor=2)
            results[f"naive_{kind}_s_per_batch"] = time_batches(iter(naive), args.naive_batches,
                                                                warmup=args.workers)
            del naive

    model_batch = args.model_batch or (BATCH if cuda else 4)
    model_steps = args.model_steps or (20 if cuda else 3)
    step_s, params = model_step_seconds(device, model_batch, model_steps)
    results.update(model_batch=model_batch, model_s_per_step=step_s, model_parameters=params)
    for preset in ("rave", "full"):
        results[f"augment_{preset}_s_per_batch"] = augment_seconds(device, preset)

    def rate(s_per_batch: float, batch: int = BATCH) -> tuple[float, float]:
        return batch / s_per_batch, batch * crop_seconds / s_per_batch

    loader_rate = rate(results["loader_threads_s_per_batch"])[0]
    rows = [
        ("audiolab loader, threads (default)", *rate(results["loader_threads_s_per_batch"])),
        ("  ... as float32 on the device", *rate(results["loader_threads_to_device_s_per_batch"])),
        ("audiolab loader, worker processes", *rate(results["loader_processes_s_per_batch"])),
        ("  ... as float32 on the device", *rate(results["loader_processes_to_device_s_per_batch"])),
        ("naive: decode + resample whole file", *rate(results["naive_whole_file_s_per_batch"])),
        ("naive: seek, decode + resample the span", *rate(results["naive_span_s_per_batch"])),
        (f"convnext1d_big training (batch {model_batch})", *rate(step_s, model_batch)),
    ]
    print(f"device {results['device']}, {os.cpu_count()} cores; {args.files} files, {results['audio_hours']:.2f} h of "
          f"audio, cache prepared in {results['prepare_s']:.1f} s; batch {BATCH} x {SEGMENT}, {args.workers} workers")
    print(f"{'':<42}{'crops/s':>12}{'audio s/s':>14}")
    for name, crops, audio in rows:
        print(f"{name:<42}{crops:>12.1f}{audio:>14.1f}")
    for kind in ("whole_file", "span"):
        results[f"loader_vs_naive_{kind}"] = loader_rate / rate(results[f"naive_{kind}_s_per_batch"])[0]
    results["loader_vs_model"] = loader_rate / rate(step_s, model_batch)[0]
    print(f"loader / naive: {results['loader_vs_naive_whole_file']:.0f}x against whole-file decoding, "
          f"{results['loader_vs_naive_span']:.0f}x against span decoding (goal >= 50x)")
    print(f"loader / model consumption: {results['loader_vs_model']:.0f}x (goal >= 100x); convnext1d_big has "
          f"{params / 1e6:.1f} M parameters")
    for preset in ("rave", "full"):
        print(f"augment={preset}: {1e3 * results[f'augment_{preset}_s_per_batch']:.1f} ms per batch on {device.type}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
