"""The Hydra task function behind `python run.py`: a run, a resume, or one trial of a sweep.

It sits above the sweep layer because a sweep job reopens its Optuna trial here and hands it to the
run session as a plain `Trial` (audiolab/runs/hooks.py), so the session never imports the sweeper.

A trial with `hydra.sweeper.devices_per_trial=D > 1` trains under torchrun on D processes: the job
writes what the trial needs (its resolved config, run directory, records and sweeper settings) to a
private file and starts `torchrun --standalone --nproc_per_node=D -m audiolab.app FILE`; rank 0 of
that run reopens the trial and reports to the study, and the job returns the run's best value.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from audiolab.common.distributed import close_world, end_process, init_world
from audiolab.common.secrets import redact_yaml_file
from audiolab.config.overrides import apply_overrides
from audiolab.runs.session import RunFailed, RunInterrupted, load_resolved_config, run_training
from audiolab.sweep import TRIAL_ENV


def launch_from_hydra(cfg: DictConfig) -> float:
    """The Hydra task function's body: run (or resume) in the directory Hydra made; return best val/spec_loss."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    meta: dict[str, Any] = {"overrides": overrides}
    experiment = hydra_cfg.runtime.choices.get("experiment")
    if experiment:
        meta["experiment"] = experiment
    if hydra_cfg.mode == RunMode.MULTIRUN:
        meta.update(sweep_dir=str(Path(hydra_cfg.sweep.dir).absolute()), job_index=hydra_cfg.job.num)
    resume = bool(cfg.get("resume"))
    if resume:
        saved = load_resolved_config(run_dir)
        extra = [o for o in overrides if not o.startswith("resume=")]
        cfg = apply_overrides(saved, extra)
        meta = {"overrides": extra}
    redact_hydra_files(run_dir / str(hydra_cfg.output_subdir))
    if hydra_cfg.mode == RunMode.MULTIRUN and (Path(hydra_cfg.sweep.dir) / "multirun.yaml").is_file():
        redact_yaml_file(Path(hydra_cfg.sweep.dir) / "multirun.yaml")  # a plain grid's, saved by Hydra's launcher
    trial = None
    if in_optuna_trial() and not resume:
        devices = int(hydra_cfg.sweeper.get("devices_per_trial") or 1)
        if devices > 1:
            return train_trial_under_torchrun(cfg, run_dir, meta, hydra_cfg.sweeper, devices)
        from audiolab.sweep.trial import TrialLink  # Optuna is imported only by sweep jobs

        trial = TrialLink.from_hydra(hydra_cfg.get("sweeper"), cfg.paths.outputs)
    return run_training(cfg, run_dir, resume=resume, meta=meta, trial=trial).best_value


def train_trial_under_torchrun(cfg: DictConfig, run_dir: Path, meta: dict[str, Any], sweeper: DictConfig,
                               devices: int) -> float:
    """Train this trial on `devices` processes under torchrun and return its best val/spec_loss."""
    spec = {"config": OmegaConf.to_container(cfg, resolve=True), "run_dir": str(run_dir), "meta": meta,
            "sweeper": OmegaConf.to_container(sweeper, resolve=True), "outputs": str(cfg.paths.outputs)}
    # The sweeper settings may hold a storage password: a private file, removed when the trial ends.
    fd, path = tempfile.mkstemp(prefix="audiolab-trial-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(spec, f)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
           "-m", "audiolab.app", path]
    try:
        child = subprocess.Popen(cmd)
        forward = lambda signum, frame: child.send_signal(signum)  # noqa: E731
        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = child.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    finally:
        os.unlink(path)
    record = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    if record.get("status") == "interrupted":
        raise RunInterrupted(signal.SIGTERM, run_dir)
    if code != 0 or record.get("status") not in ("completed", "pruned"):
        raise RunFailed(f"the trial's torchrun on {devices} processes exited {code} (run {run_dir.name}: "
                        f"{record.get('status')}{', ' + record['error'] if record.get('error') else ''})")
    best = record.get("best_val_spec_loss")  # null in run.json when no validation was finite
    return math.inf if best is None else float(best)


def train_trial_rank(spec_path: str) -> int:
    """One torchrun process of a multi-device trial (see the module docstring); its exit status."""
    spec = json.loads(Path(spec_path).read_text())
    sweeper = OmegaConf.create(spec["sweeper"])
    world = init_world(float(spec["config"]["trainer"]["dist_timeout_s"]))
    trial = None
    if world.is_main:
        from audiolab.sweep.trial import TrialLink

        trial = TrialLink.from_hydra(sweeper, spec["outputs"])
    try:
        run_training(OmegaConf.create(spec["config"]), Path(spec["run_dir"]), meta=spec["meta"], trial=trial)
    except RunInterrupted as err:
        return 128 + err.signum
    except Exception as err:  # recorded in run.json and told to the study by rank 0
        print(f"audiolab: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    finally:
        close_world()
    return 0


def redact_hydra_files(hydra_dir: Path) -> None:
    """Mask secrets (keys, `key=secret` overrides, URL passwords) in the files Hydra saved for this job."""
    for name in ("hydra.yaml", "overrides.yaml", "config.yaml"):
        if (hydra_dir / name).is_file():
            redact_yaml_file(hydra_dir / name)


def in_optuna_trial() -> bool:
    """Whether this process is running a job launched by audiolab's Optuna sweeper."""
    return TRIAL_ENV in os.environ


if __name__ == "__main__":
    end_process(lambda: sys.exit(train_trial_rank(sys.argv[1])))
