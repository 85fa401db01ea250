"""Sweep benchmark: grid versus TPE + successive halving, and the harness's per-trial overhead.

    .venv/bin/python benchmarks/bench_sweep.py                  # both parts, default sizes
    .venv/bin/python benchmarks/bench_sweep.py --part overhead  # only the overhead part

Part 1 runs the same discrete space (learning rate x blocks per level) twice through the real CLI on
the built-in task: as a grid with no pruning, and as a TPE sweep pruned by successive halving. It
prints the training steps each needed before some trial came within 2 % of the grid's best
val/spec_loss (steps of pruned trials count up to where they stopped).

Part 2 runs short trials (one training step, one validation) with W&B in offline mode and prints the
time between consecutive trial starts minus the time spent training and validating: composing the
config, building model and data, W&B init, storage round trips and launching.
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
sys.path.insert(0, str(REPO))

from audiolab.sweep.storage import storage_url  # noqa: E402
from audiolab.sweep.study import open_study  # noqa: E402

LRS = "choice(3e-4,1e-3,3e-3,1e-2)"
DEPTHS = "choice(1,2,3)"


def run_sweep(outputs: Path, study: str, extra: list[str]) -> float:
    """Run one sweep through `python run.py`; return its wall time in seconds."""
    args = [sys.executable, str(REPO / "run.py"), "hparams_search=lr_depth_lossw", "logger=none",
            f"paths.outputs={outputs}", f"hydra.sweeper.study_name={study}", "loss.terms.mrstft.weight=1.0",
            "loss.terms.l1.weight=1.0", f"optim.lr={LRS}", f"model.blocks_per_level={DEPTHS}",
            "trainer.progress=false", *extra]
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=outputs.parent, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sweep {study} failed:\n{proc.stderr[-4000:]}")
    return time.perf_counter() - start


def trial_records(outputs: Path, study: str) -> list[dict]:
    """Per trial, in start order: state, params, steps trained, best val/spec_loss and timing from run.json."""
    rows = []
    trials = sorted(open_study(storage_url(None, outputs), study).get_trials(deepcopy=False),
                    key=lambda t: t.datetime_start)
    for t in trials:
        record = json.loads((Path(t.user_attrs["run_dir"]) / "run.json").read_text())
        rows.append({"number": t.number, "state": t.state.name, "params": t.params, "steps": record["step"],
                     "best": record["best_val_spec_loss"], "timing": record.get("timing", {}),
                     "start": t.datetime_start.timestamp()})
    return rows


def steps_to_reach(rows: list[dict], target: float) -> int | None:
    """Training steps spent, in trial order, until some trial's best val/spec_loss is <= target."""
    spent = 0
    for row in rows:
        spent += row["steps"]
        if row["best"] <= target:
            return spent
    return None


def efficiency(args: argparse.Namespace, root: Path) -> None:
    common = [f"trainer.max_steps={args.steps}", f"trainer.val_every={args.steps // args.validations}",
              f"trainer.log_every={args.steps}", "trainer.sample_clips=0"]
    grid_out, tpe_out = root / "grid" / "outputs", root / "tpe" / "outputs"
    for out in (grid_out, tpe_out):
        out.parent.mkdir(parents=True)
    grid_s = run_sweep(grid_out, "bench_grid", [*common, "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=none",
                                                "hydra.sweeper.n_trials=12"])
    grid = trial_records(grid_out, "bench_grid")
    best = min(r["best"] for r in grid)
    target = best * 1.02
    tpe_s = run_sweep(tpe_out, "bench_tpe", [
        *common, "hydra/sweeper/pruner=successive_halving", f"hydra.sweeper.n_trials={args.tpe_trials}",
        f"hydra.sweeper.pruner.min_resource={args.steps // args.validations}",
        f"hydra.sweeper.pruner.reduction_factor={args.reduction_factor}",
        f"hydra.sweeper.sampler.n_startup_trials={args.startup}"])
    tpe = trial_records(tpe_out, "bench_tpe")

    print(f"\n== sweep efficiency: {args.steps} steps per full trial, validation every "
          f"{args.steps // args.validations} ==")
    print(f"grid: {len(grid)} trials, {sum(r['steps'] for r in grid)} steps, {grid_s:.0f} s wall; best "
          f"val/spec_loss {best:.5f}; target (+2 %) {target:.5f}")
    for r in grid:
        print(f"  grid #{r['number']:2d} {r['state']:8s} steps {r['steps']:5d} best {r['best']:.5f} {r['params']}")
    print(f"tpe + successive halving: {len(tpe)} trials, {sum(r['steps'] for r in tpe)} steps, {tpe_s:.0f} s wall, "
          f"{sum(r['state'] == 'PRUNED' for r in tpe)} pruned; best {min(r['best'] for r in tpe):.5f}")
    for r in tpe:
        print(f"  tpe  #{r['number']:2d} {r['state']:8s} steps {r['steps']:5d} best {r['best']:.5f} {r['params']}")
    grid_total = sum(r["steps"] for r in grid)
    grid_reach, tpe_reach = steps_to_reach(grid, target), steps_to_reach(tpe, target)
    print(f"steps to reach within 2 % of the grid's best: grid {grid_reach} (in its run order; the grid needs all "
          f"{grid_total} to know it has the best), tpe+sh {tpe_reach}")
    if tpe_reach is not None:
        print(f"ratio tpe+sh / grid total: {tpe_reach / grid_total:.3f}   "
              f"ratio tpe+sh / grid-in-order: {tpe_reach / grid_reach:.3f}")
    else:
        print("tpe+sh did not reach the target within its trials")


def overhead(args: argparse.Namespace, root: Path) -> None:
    out = root / "overhead" / "outputs"
    out.parent.mkdir(parents=True)
    os.environ["WANDB_MODE"] = "offline"
    os.environ.pop("WANDB_API_KEY", None)
    wall = run_sweep(out, "bench_overhead", [
        "logger=wandb", "logger.mode=offline", "trainer.max_steps=1", "trainer.val_every=1", "trainer.log_every=1",
        "trainer.sample_clips=0", "hydra/sweeper/pruner=none", "hydra/sweeper/sampler=random",
        f"hydra.sweeper.n_trials={args.overhead_trials}"])
    rows = trial_records(out, "bench_overhead")
    per_trial = []
    for this, nxt in zip(rows, rows[1:], strict=False):
        inside = this["timing"].get("train_s", 0.0) + this["timing"].get("validate_s", 0.0)
        per_trial.append((nxt["start"] - this["start"]) - inside)
    print(f"\n== per-trial harness overhead: {len(rows)} one-step trials, W&B offline, {wall:.1f} s wall ==")
    print("per trial (s): " + " ".join(f"{v:.2f}" for v in per_trial))
    print(f"first trial {per_trial[0]:.2f} s (it also builds the dataset cache if absent and pays first imports)")
    later = per_trial[1:]
    print(f"later trials: median {statistics.median(later):.2f} s, mean {statistics.mean(later):.2f} s, "
          f"max {max(later):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "efficiency", "overhead"), default="all")
    parser.add_argument("--steps", type=int, default=300, help="training steps of a full trial")
    parser.add_argument("--validations", type=int, default=6, help="validations in a full trial")
    parser.add_argument("--tpe-trials", type=int, default=12)
    parser.add_argument("--startup", type=int, default=4, help="TPE's random start-up trials")
    parser.add_argument("--reduction-factor", type=int, default=3)
    parser.add_argument("--overhead-trials", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the sweep outputs (printed path)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="audiolab-bench-sweep-"))
    if args.part in ("all", "efficiency"):
        efficiency(args, root)
    if args.part in ("all", "overhead"):
        overhead(args, root)
    print(f"\noutputs: {root}" if args.keep else "")


if __name__ == "__main__":
    main()
