#!/usr/bin/env python
"""Throughput and memory of `audiolab apply`, and the streaming export's latency and real-time factor.

For each model preset a run is trained for one step (the weights do not change the speed), then the real
CLI restores generated files (44.1 kHz mono float WAV) and the figures are read from its summary line
("N s of audio in T s (R audio s/s)"); the peak resident memory of each `audiolab apply` process comes from
wait4. The streaming export is timed block by block in this process: the mean time per block against the
block's duration gives the real-time factor.

    python benchmarks/bench_apply.py                                   # default model and convnext1d_big
    python benchmarks/bench_apply.py --models convnext1d --seconds 60 600   # memory: a 1- and a 10-minute file
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"([\d.]+) s of audio in ([\d.]+) s \(([\d.]+) audio s/s\)")


def train_one_step(model: str, workdir: Path, device: str) -> Path:
    """A run of `model` after one training step (its checkpoints are what apply and export read)."""
    outputs = workdir / model
    args = [f"model={model}", "logger=none", f"paths.outputs={outputs}", f"paths.cache={workdir / 'cache'}",
            "trainer.max_steps=1", "trainer.val_every=1", "data.val_max_crops=1", "trainer.sample_clips=0",
            "trainer.progress=false", f"trainer.device={device}"]
    subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=workdir, check=True, capture_output=True,
                   env={**os.environ, "WANDB_MODE": "disabled"})
    return outputs / "output01"


def write_music(path: Path, seconds: float, rate: int = 44100) -> None:
    """A tone plus noise, written in blocks so that a long file never sits in this process's memory."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", rate, 1, "FLOAT") as f:
        for start in range(0, int(seconds * rate), 1 << 20):
            n = min(1 << 20, int(seconds * rate) - start)
            t = (start + np.arange(n)) / rate
            f.write((0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32))


def apply_once(run_dir: Path, source: Path, out: Path, device: str, batch: int) -> dict:
    """One `audiolab apply` process: its throughput line and its own peak resident set (from wait4)."""
    cmd = [sys.executable, "-m", "audiolab", "apply", str(run_dir), str(source), "-o", str(out), "--no-progress",
           "--device", device, "--batch", str(batch)]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps it here, so the rusage is this process's alone
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        text, errors = stdout.read(), stderr.read()
    match = SUMMARY.search(text)
    if proc.returncode or not match:
        raise RuntimeError(f"audiolab apply failed: {errors.strip().splitlines()[-1:] or text}")
    audio, wall, rate = (float(g) for g in match.groups())
    return {"audio_s": audio, "apply_s": wall, "audio_s_per_s": rate, "peak_rss_mib": usage.ru_maxrss / 1024}


def stream_figures(run_dir: Path, workdir: Path, blocks: int = 200) -> dict:
    """Export --streaming at the hop and time `blocks` blocks: latency and real-time factor."""
    import json

    import torch

    out = workdir / f"{run_dir.parent.name}_stream.ts"
    subprocess.run([sys.executable, "-m", "audiolab", "export", str(run_dir), "--streaming", "--out", str(out)],
                   check=True, capture_output=True)
    meta = json.loads(out.with_suffix(".json").read_text())
    model = torch.jit.load(str(out))
    block = torch.randn(1, meta["channels"], meta["block_size"]) * 0.1
    with torch.no_grad():
        for _ in range(10):
            model(block)
        started = time.perf_counter()
        for _ in range(blocks):
            model(block)
    per_block = (time.perf_counter() - started) / blocks
    duration = meta["block_size"] / meta["sample_rate"]
    return {"block": meta["block_size"], "latency_samples": meta["latency_samples"], "latency_ms": meta["latency_ms"],
            "ms_per_block": 1000 * per_block, "real_time_factor": per_block / duration}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["convnext1d", "convnext1d_big"])
    parser.add_argument("--seconds", nargs="+", type=float, default=[60.0], help="file lengths to restore")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--no-stream", action="store_true", help="skip the streaming export figures")
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for model in args.models:
            run_dir = train_one_step(model, workdir, args.device)
            for seconds in args.seconds:
                source = workdir / f"music_{int(seconds)}s.wav"
                if not source.exists():
                    write_music(source, seconds)
                r = apply_once(run_dir, source, workdir / "out", args.device, args.batch)
                print(f"apply  {model:<16} {seconds:>6.0f} s file: {r['audio_s_per_s']:8.1f} audio s/s "
                      f"({r['apply_s']:.1f} s), peak RSS {r['peak_rss_mib']:.0f} MiB")
            if not args.no_stream:
                s = stream_figures(run_dir, workdir)
                print(f"stream {model:<16} block {s['block']}: latency {s['latency_samples']} samples "
                      f"({s['latency_ms']} ms), {s['ms_per_block']:.2f} ms per block, real-time factor "
                      f"{s['real_time_factor']:.3f}")


if __name__ == "__main__":
    main()
