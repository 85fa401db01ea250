"""One run from start to finish: validate config, record, track, train, and mark how it ended.

Three ways in, one path through `run_training`:
- `python run.py ...` (Hydra, single or multirun): Hydra has already claimed `outputs/outputNN`;
- `python run.py resume=outputs/outputNN`: the saved config of that run, continued in place;
- `audiolab reproduce outputNN`: the saved config re-run in a new numbered directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from audiolab.config.overrides import apply_overrides
from audiolab.config.schema import validate_config
from audiolab.runs.loggers import NullLogger, redact
from audiolab.runs.numbering import allocate, find_run_dir
from audiolab.runs.record import RunRecord, atomic_write_text, git_state, now_iso
from audiolab.sweep import TRIAL_ENV
from audiolab.train.loop import NonFiniteLossError, TrainResult, train

if TYPE_CHECKING:
    from audiolab.sweep.trial import TrialLink

log = logging.getLogger("audiolab")

RESOLVED_CONFIG = "config_resolved.yaml"


class RunInterrupted(Exception):
    """The run stopped on SIGINT/SIGTERM after saving last.pt; `signum` says which."""

    def __init__(self, signum: int, run_dir: Path) -> None:
        super().__init__(f"{run_dir.name} interrupted by signal {signum}")
        self.signum = signum


class RunFailed(Exception):
    """The run failed in a way already recorded in run.json (e.g. a non-finite loss)."""


@contextlib.contextmanager
def log_to_file(run_dir: Path) -> Iterator[None]:
    """Send audiolab's log (DEBUG and up) to `train.log` in the run directory for the run's duration."""
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous_level = log.level
    log.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        log.setLevel(previous_level)


def model_hop(cfg: DictConfig) -> int | None:
    """The model's hop (product of its resampling factors), by building it once on CPU."""
    return getattr(instantiate(cfg.model), "hop_length", None)


def resolved(cfg: DictConfig) -> DictConfig:
    """A fully resolved, plain copy of cfg (no interpolations left)."""
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def save_resolved_config(run_dir: Path, cfg: DictConfig) -> None:
    """Write the fully resolved config (secrets masked) that `reproduce` and `resume` start from."""
    container = redact(OmegaConf.to_container(cfg, resolve=True))
    atomic_write_text(run_dir / RESOLVED_CONFIG, yaml.safe_dump(container, sort_keys=False))


def load_resolved_config(run_dir: Path) -> DictConfig:
    """The resolved config a run was started with."""
    path = run_dir / RESOLVED_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {RESOLVED_CONFIG}; was this directory made by audiolab?")
    return OmegaConf.load(path)


def run_training(cfg: DictConfig, run_dir: Path, *, resume: bool = False, fresh_dir: bool = True,
                 meta: dict[str, Any] | None = None, after_step: Callable[[int], None] | None = None,
                 trial: TrialLink | None = None) -> TrainResult:
    """Validate, record and train one run in `run_dir`; raise RunFailed/RunInterrupted on those ends.

    A config error removes a freshly made run directory, so no half-made run is left behind. With
    `trial`, the run is an Optuna trial: it reports each validation, may be pruned, and tells the
    study how it ended.
    """
    run_dir = Path(run_dir)
    try:
        cfg = resolved(cfg)
        validate_config(cfg, model_hop(cfg))
    except Exception as err:
        if fresh_dir and not resume:
            shutil.rmtree(run_dir, ignore_errors=True)
        if trial is not None:
            trial.fail(f"{type(err).__name__}: {err}")
        raise

    meta = dict(meta or {})
    if "overrides" in meta:
        meta["overrides"] = redact(list(meta["overrides"]))
    if trial is not None:
        meta.update(study=trial.study_name, trial=trial.number)
    with log_to_file(run_dir):
        if resume:
            record = RunRecord(run_dir)
            resumes = record.data.get("resumes", [])
            resumes.append({"at": now_iso(), "overrides": meta.pop("overrides", []), "git": git_state()})
            record.update(status="running", ended=None, resumes=resumes, error=None)
        else:
            save_resolved_config(run_dir, cfg)
            if not (run_dir / ".hydra").exists():  # started outside Hydra: keep the same layout
                (run_dir / ".hydra").mkdir()
                atomic_write_text(run_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
                atomic_write_text(run_dir / ".hydra" / "overrides.yaml", yaml.safe_dump(meta.get("overrides", [])))
            record = RunRecord.create(run_dir, **meta)
        log.info("audiolab: %s %s -> %s%s", "resuming" if resume else "run", run_dir.name, run_dir,
                 f" (study {trial.study_name}, trial {trial.number})" if trial is not None else "")
        if trial is not None:
            trial.start(record.data.get("number"), run_dir)

        tracker = instantiate(cfg.logger) if cfg.get("logger") else NullLogger()
        sweep_dir = meta.get("sweep_dir")
        group = trial.study_name if trial is not None else Path(sweep_dir).name if sweep_dir else "single"
        tracker_id = tracker.start(run_dir, name=run_dir.name, group=group, config=OmegaConf.to_container(cfg),
                                   run_id=record.data.get("wandb_id"))
        record.update(wandb_id=tracker_id)
        if trial is not None:
            trial.set_wandb_id(tracker_id)
        if sweep_dir:
            _append_jsonl(Path(sweep_dir) / "runs.jsonl", {"run": record.data["number"], "dir": str(run_dir),
                                                            "job_index": meta.get("job_index"),
                                                            "overrides": meta.get("overrides", [])})
        on_validation = None
        if trial is not None:
            def on_validation(step: int, metrics: dict[str, float]) -> bool:
                return trial.report(step, metrics["val/spec_loss"])
        try:
            result = train(cfg, record, tracker, resume=resume, after_step=after_step, on_validation=on_validation)
        except NonFiniteLossError as err:
            log.error("audiolab: %s failed: %s", run_dir.name, err)
            record.finish("failed", error=str(err))
            tracker.finish("failed")
            if trial is not None:
                trial.fail(f"NonFiniteLossError: {err}")
            raise RunFailed(str(err)) from err
        except KeyboardInterrupt as err:  # a second Ctrl-C, or one before the loop took over signals
            record.finish("interrupted", error="KeyboardInterrupt")
            tracker.finish("interrupted")
            if trial is not None:
                trial.fail("interrupted (KeyboardInterrupt)", interrupted=True)
            raise RunInterrupted(signal.SIGINT, run_dir) from err
        except BaseException as err:
            record.finish("failed", error=f"{type(err).__name__}: {err}")
            tracker.finish("failed")
            if trial is not None:
                trial.fail(f"{type(err).__name__}: {err}")
            raise

        record.finish(result.status, step=result.step, best_val_spec_loss=result.best_value,
                      best_step=result.best_step, final=result.last_val,
                      step_time=result.step_time if result.steps_run else None,
                      timing={"train_s": result.train_seconds, "validate_s": result.validate_seconds,
                              "steps": result.steps_run})
        if result.status == "interrupted":
            record.update(signal=result.signal)
            tracker.finish("interrupted")
            if trial is not None:
                trial.fail(f"interrupted by signal {result.signal}", interrupted=True)
            raise RunInterrupted(result.signal or 0, run_dir)
        if result.status == "pruned":
            tracker.add_tags("pruned")
            tracker.finish("pruned")
            if trial is not None:
                trial.prune(result.step)
            log.info("audiolab: %s pruned at step %d (best val/spec_loss %.5f at step %s)", run_dir.name,
                     result.step, result.best_value, result.best_step)
            return result
        if trial is not None:
            trial.complete({"val/spec_loss": result.best_value, "parameters": record.data.get("parameters", math.nan),
                            "step_time": result.step_time}, result.best_step)
        tracker.summary({f"final/{k}": v for k, v in result.last_val.items()})
        tracker.finish("completed")
        final = result.last_val
        log.info("audiolab: %s completed at step %d: val/spec_loss %.5f%s; best %.5f at step %s", run_dir.name,
                 result.step, final.get("val/spec_loss", float("nan")),
                 f", val/improvement {final['val/improvement']:+.4f}" if "val/improvement" in final else "",
                 result.best_value, result.best_step)
        return result


def _append_jsonl(path: Path, entry: dict[str, Any]) -> None:
    # One short line in append mode: concurrent jobs of a sweep never interleave within a line.
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")


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


def reproduce(ref: str, overrides: list[str], outputs: str = "outputs") -> TrainResult:
    """Re-run a finished run from its saved, resolved config in a new numbered directory."""
    source = find_run_dir(ref, outputs)
    original = json.loads((source / "run.json").read_text())
    cfg = apply_overrides(load_resolved_config(source), overrides)
    cfg.resume = None
    recorded, current = original.get("git", {}).get("commit"), git_state()["commit"]
    if recorded and current and recorded != current:
        log.warning("warning: %s was made at commit %s, the code here is at %s; results may differ",
                    source.name, recorded[:12], current[:12])
    run_dir = allocate(source.parent)
    meta = {"reproduces": original.get("number"), "reproduces_dir": str(source), "overrides": overrides}
    return run_training(cfg, run_dir, meta=meta)
