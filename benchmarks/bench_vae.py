#!/usr/bin/env python
"""Training speed and peak memory of the PQMF VAE presets in phase 1 and phase 2, through the real CLI.

Each configuration is one `python run.py ...` subprocess (so peak memory is its own) training for a few
steps with `log_every=1`; the figures come from its metrics.jsonl: `perf/steps_per_s` of every step after
the first (warm-up), and `perf/peak_mem_gib` (CUDA: max allocated; CPU: the process's peak resident set).
Phase 2 runs start there (`recipe.phase1_steps=0`) with `recipe.d_every=4`: steps 1, 5, ... are the
discriminator's, the others the generator's; a phase-2 "step" below is the average over that 1:3 cycle.
`d_concat` true and false are both run, for the speed difference of one discriminator pass vs two.

    python benchmarks/bench_vae.py                                  # RAVE's batch (8 x 131072) and a CPU one
    python benchmarks/bench_vae.py --presets pqmf_vae_small --shapes 2x16384 --discriminator dac
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_config(preset: str, batch: int, segment: int, phase: int, concat: bool, discriminator: str,
               workdir: Path, device: str, timeout: float) -> dict:
    """Train one configuration for a few steps; return its per-step times and peak memory."""
    steps = 4 if phase == 1 else 10
    outputs = workdir / f"{preset}_{batch}x{segment}_p{phase}_{'cat' if concat else 'sep'}"
    args = [f"model={preset}", "task=autoencode", "loss=rave", f"discriminator={discriminator}", "logger=none",
            f"paths.outputs={outputs}", f"paths.cache={workdir / 'cache'}", f"data.batch_size={batch}",
            f"data.segment={segment}", "data.val_max_crops=2", "trainer.sample_clips=0", "trainer.progress=false",
            f"trainer.max_steps={steps}", f"trainer.val_every={steps}", "trainer.log_every=1",
            f"recipe.phase1_steps={10**6 if phase == 1 else 0}", "recipe.d_every=4",
            f"recipe.d_concat={str(concat).lower()}", f"trainer.device={device}",
            "optim.scheduler.warmup_steps=0"]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=workdir, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "WANDB_MODE": "disabled"})
    if proc.returncode:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    metrics = [json.loads(line) for line in (outputs / "output01" / "metrics.jsonl").read_text().splitlines()]
    perf = {m["step"]: m for m in metrics if "perf/steps_per_s" in m}
    seconds = {s: 1 / m["perf/steps_per_s"] for s, m in perf.items() if s > 1}  # step 1 is the warm-up
    result = {"wall_s": time.perf_counter() - started,
              "peak_mem_gib": max(m["perf/peak_mem_gib"] for m in perf.values())}
    if phase == 1:
        result["step_s"] = statistics.mean(seconds.values())
    else:
        d_steps = [t for s, t in seconds.items() if (s - 1) % 4 == 0]
        g_steps = [t for s, t in seconds.items() if (s - 1) % 4]
        result |= {"d_step_s": statistics.mean(d_steps), "g_step_s": statistics.mean(g_steps),
                   "step_s": (statistics.mean(d_steps) + 3 * statistics.mean(g_steps)) / 4}
    return result


def main() -> None:
    """Run every (preset, shape, phase, d_concat) and print a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="pqmf_vae_small,pqmf_vae")
    parser.add_argument("--shapes", default="8x131072,2x16384", help="batch x samples, comma-separated")
    parser.add_argument("--discriminator", default="rave_v2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import torch

    where = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else (
        f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    print(f"# PQMF VAE training steps ({where}); discriminator={args.discriminator}, loss=rave, optim=adamw")
    print(f"{'preset':<15} {'batch':>10} {'phase':<12} {'s/step':>8} {'steps/s':>8} {'D s':>7} {'G s':>7} "
          f"{'peak GiB':>9}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            for shape in args.shapes.split(","):
                batch, segment = (int(v) for v in shape.split("x"))
                for phase, concat in ((1, True), (2, True), (2, False)):
                    r = run_config(preset, batch, segment, phase, concat, args.discriminator, Path(tmp), args.device,
                                   args.timeout)
                    label = "1" if phase == 1 else f"2, {'concat' if concat else 'separate'}"
                    results.append({"preset": preset, "batch": batch, "segment": segment, "phase": phase,
                                    "d_concat": concat, **r})
                    if "error" in r:
                        print(f"{preset:<15} {shape:>10} {label:<12} failed: {r['error']}")
                        continue
                    d = f"{r['d_step_s']:7.3f} {r['g_step_s']:7.3f}" if phase == 2 else f"{'':>7} {'':>7}"
                    print(f"{preset:<15} {shape:>10} {label:<12} {r['step_s']:8.3f} {1 / r['step_s']:8.3f} {d} "
                          f"{r['peak_mem_gib']:9.2f}", flush=True)
    for preset in args.presets.split(","):
        for shape in args.shapes.split(","):
            batch, segment = (int(v) for v in shape.split("x"))
            pair = {r["d_concat"]: r for r in results if r["preset"] == preset and r["batch"] == batch
                    and r["segment"] == segment and r["phase"] == 2 and "error" not in r}
            if len(pair) == 2:
                print(f"d_concat on {preset} {shape}: D step {pair[True]['d_step_s']:.3f} s (concat) vs "
                      f"{pair[False]['d_step_s']:.3f} s (separate), G step {pair[True]['g_step_s']:.3f} vs "
                      f"{pair[False]['g_step_s']:.3f} s: concat is "
                      f"{pair[False]['step_s'] / pair[True]['step_s']:.2f}x the speed of separate passes")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
