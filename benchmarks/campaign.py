#!/usr/bin/env python
"""The reliability campaign of issue 18, rerun: bad configs, bad audio files, and separate sweep processes.

1. Bad configs: 15 mistakes a user makes on the command line, each given to `run.py debug=fast`. Handled
   means: a non-zero exit, a message naming the key (or file), no Python traceback, and no run directory
   left behind.
2. Bad audio: 17 kinds of bad or awkward files in one folder, prepared with `audiolab data prepare`'s code.
   Handled means each file gets the outcome a user would want: skipped with a true reason, or used with a
   note (resampled, mixed down, clipped...), and nothing silent, constant or non-finite reaches the cache.
3. Duplicates: N processes started by hand on one SQLite study (the README's "several machines" recipe),
   each running trials until the study has `--trials`; counts the distinct parameter sets.

    python benchmarks/campaign.py                    # all three parts; prints one line per case and the figures
    python benchmarks/campaign.py --part configs     # or audio, duplicates
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class BadConfig:
    """One command-line mistake and the text its message must contain."""

    overrides: tuple[str, ...]
    names: str


BAD_CONFIGS = (
    BadConfig(("+unknown_key=1",), "unknown_key"),
    BadConfig(("+optim.lr_typo=5",), "optim.lr"),
    BadConfig(("+trainer.max_stpes=5",), "trainer.max_steps"),
    BadConfig(("optim.lr=abc",), "optim.lr"),
    BadConfig(("optim.lr=-1",), "optim.lr"),
    BadConfig(("model.channels=[1,8]",), "model.channels"),
    BadConfig(("model.factors=[2,2,2,2,2,2,2,2,2,2]",), "model.factors"),
    BadConfig(("data=folder", "data.path=/nonexistent/dir"), "data.path"),
    BadConfig(("logger=wandb", "logger.mode=sideways"), "logger.mode"),
    BadConfig(("trainer.max_steps=0",), "trainer.max_steps"),
    BadConfig(("data.batch_size=0",), "data.batch_size"),
    BadConfig(("model=no_such_model",), "model"),
    BadConfig(("loss.terms.mrstft.weight=-1",), "loss.terms.mrstft.weight"),
    BadConfig(("data.segment=4100",), "data.segment"),
    BadConfig(("optim.scheduler.decay=linear",), "optim.scheduler.decay"),
)


def run_configs(work: Path) -> tuple[int, int]:
    """Each bad config through the real CLI; (handled, tried)."""
    handled = 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HOME": str(work)}
    for i, case in enumerate(BAD_CONFIGS):
        outputs = work / f"configs{i:02d}"
        proc = subprocess.run([sys.executable, str(REPO / "run.py"), "debug=fast", "logger=none",
                               f"paths.outputs={outputs}", *case.overrides], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
        text = proc.stdout + proc.stderr
        left = sorted(p.name for p in outputs.iterdir()) if outputs.is_dir() else []
        checks = {"exit non-zero": proc.returncode != 0, f"names {case.names}": case.names in text,
                  "no traceback": "Traceback" not in text, "no run dir left": not left}
        ok = all(checks.values())
        handled += ok
        message = next((line for line in text.splitlines() if "error" in line.lower()), text.strip()[-160:])
        failed = ", ".join(k for k, v in checks.items() if not v)
        print(f"{'ok ' if ok else 'BAD'} {' '.join(case.overrides):45s} {failed or message[:150]}")
    return handled, len(BAD_CONFIGS)


def run_duplicates(work: Path, processes: int, trials: int) -> tuple[int, int]:
    """`processes` sweep processes started together on one study; (distinct parameter sets, trials)."""
    import optuna

    outputs, db = work / "dup_outputs", work / "dup.db"
    args = [sys.executable, str(REPO / "run.py"), "hparams_search=lr_depth_lossw", "debug=fast", "logger=none",
            "trainer.max_steps=2", "trainer.val_every=2", f"paths.outputs={outputs}",
            f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.n_workers=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    procs = [subprocess.Popen(args, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
             for _ in range(processes)]
    codes = [p.wait(timeout=1800) for p in procs]
    study = optuna.load_study(study_name="lr_depth_lossw", storage=f"sqlite:///{db}")
    done = [t for t in study.get_trials() if t.state.is_finished()]
    distinct = {tuple(sorted(t.params.items())) for t in done}
    print(f"{processes} processes (exit codes {codes}), {time.perf_counter() - started:.0f} s: {len(done)} trials, "
          f"{len(distinct)} distinct parameter sets, {len(done) - len(distinct)} duplicates")
    return len(distinct), len(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("configs", "audio", "duplicates", "all"), default="all")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="audiolab-campaign-") as tmp:
        work = Path(tmp)
        figures = []
        if args.part in ("configs", "all"):
            handled, tried = run_configs(work)
            figures.append(f"bad configs handled: {handled}/{tried}")
        if args.part in ("audio", "all"):
            from campaign_audio import run_audio

            handled, tried = run_audio(work)
            figures.append(f"bad audio handled: {handled}/{tried}")
        if args.part in ("duplicates", "all"):
            distinct, done = run_duplicates(work, args.processes, args.trials)
            figures.append(f"{args.processes} separate processes: {done - distinct} duplicates in {done} trials")
        print("\n".join(figures))


if __name__ == "__main__":
    main()
