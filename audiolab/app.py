"""The Hydra task function behind `python run.py`: a run, a resume, or one trial of a sweep.

It sits above the sweep layer because a sweep job reopens its Optuna trial here and hands it to the
run session as a plain `Trial` (audiolab/runs/hooks.py), so the session never imports the sweeper.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from audiolab.common.files import atomic_write_text
from audiolab.common.secrets import redact
from audiolab.config.overrides import apply_overrides
from audiolab.runs.session import load_resolved_config, run_training
from audiolab.sweep import TRIAL_ENV


def launch_from_hydra(cfg: DictConfig) -> float:
    """The Hydra task function's body: run (or resume) in the directory Hydra made; return best val/spec_loss."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    meta: dict[str, Any] = {"overrides": overrides}
    if hydra_cfg.mode == RunMode.MULTIRUN:
        meta.update(sweep_dir=str(Path(hydra_cfg.sweep.dir).absolute()), job_index=hydra_cfg.job.num)
    resume = bool(cfg.get("resume"))
    if resume:
        saved = load_resolved_config(run_dir)
        extra = [o for o in overrides if not o.startswith("resume=")]
        cfg = apply_overrides(saved, extra)
        meta = {"overrides": extra}
    trial = None
    if in_optuna_trial() and not resume:
        from audiolab.sweep.trial import TrialLink  # Optuna is imported only by sweep jobs

        trial = TrialLink.from_hydra(hydra_cfg.get("sweeper"), cfg.paths.outputs)
    if trial is not None:
        redact_hydra_files(run_dir / str(hydra_cfg.output_subdir))
    return run_training(cfg, run_dir, resume=resume, meta=meta, trial=trial).best_value


def redact_hydra_files(hydra_dir: Path) -> None:
    """Mask URL passwords (e.g. in hydra.sweeper.storage) in the files Hydra saved for this job."""
    for name in ("hydra.yaml", "overrides.yaml", "config.yaml"):
        path = hydra_dir / name
        if path.is_file():
            text = path.read_text()
            masked = redact(text)
            if masked != text:
                atomic_write_text(path, masked)


def in_optuna_trial() -> bool:
    """Whether this process is running a job launched by audiolab's Optuna sweeper."""
    return TRIAL_ENV in os.environ
