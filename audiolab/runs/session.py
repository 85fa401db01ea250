"""One run from start to finish: validate config, record, track, train, and mark how it ended.

Three ways in, one path through `run_training`:
- `python run.py ...` (Hydra, single or multirun): Hydra has already claimed `outputs/outputNN`;
- `python run.py resume=outputs/outputNN`: the saved config of that run, continued in place;
- `audiolab reproduce outputNN`: the saved config re-run in a new numbered directory (with `--check`,
  its metrics.jsonl compared with the original's; with `--steps N`, stopped cleanly after step N).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from audiolab.common.distributed import SINGLE, RankLost, World, lost_rank
from audiolab.common.files import atomic_write_text
from audiolab.common.locks import Busy, exclusive_or_busy
from audiolab.common.numbering import allocate, find_run_dir
from audiolab.common.secrets import redact
from audiolab.config.added_keys import check_added_keys
from audiolab.config.overrides import apply_overrides
from audiolab.config.schema import ConfigError, validate_config
from audiolab.config.upgrade import upgrade_config
from audiolab.runs.compare import Comparison, compare_metrics
from audiolab.runs.hooks import EmbeddingMetricsHook, RecordHook, SamplesHook, TrackerHook, Trial, TrialHook
from audiolab.runs.loggers import NullLogger
from audiolab.runs.record import RunRecord, git_state, now_iso, read_metrics
from audiolab.runs.snapshot import code_drift
from audiolab.train.checkpoint import load_checkpoint
from audiolab.train.hooks import CheckpointHook, ConsoleHook, Hook, Hooks, RunEnd, StepCallback, TrainResult
from audiolab.train.recipes.base import NonFiniteLossError
from audiolab.train.signals import stop_on_signals
from audiolab.train.state import TrainState
from audiolab.train.trainer import Training, train

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
RUN_LOCK = ".lock"  # held by the process training the run; its text says which process that is
log = logging.getLogger("audiolab")

RESOLVED_CONFIG = "config_resolved.yaml"


class RunInterrupted(Exception):
    """The run stopped on SIGINT/SIGTERM after saving last.pt; `signum` says which."""

    def __init__(self, signum: int, run_dir: Path) -> None:
        super().__init__(f"{run_dir.name} interrupted by signal {signum}")
        self.signum = signum


class RunFailed(Exception):
    """The run failed in a way already recorded in run.json (e.g. a non-finite loss)."""


class StopAfterStep(Hook):
    """Ends a run cleanly after step `step` (`reproduce --check --steps N`), with its config untouched.

    Overriding trainer.max_steps instead would change the learning-rate schedule (and a recipe's phases),
    so the steps before N would no longer be the original's. The run ends `interrupted` with last.pt
    saved (resumable to its full length), and run.json says `stopped: {after_step, reason, ...}`.
    """

    def __init__(self, step: int, record: RunRecord, reason: str) -> None:
        self.step, self.record, self.reason = int(step), record, reason
        self.max_steps: int | None = None
        self.start_step = 0
        self.stopped_at: int | None = None

    def on_start(self, training: Training) -> None:
        self.max_steps, self.start_step = training.max_steps, training.state.step

    def on_step(self, state: TrainState) -> bool:
        if self.step <= state.step < (self.max_steps or 0):
            self.stopped_at = state.step
            return True
        return False

    def on_end(self, end: RunEnd) -> None:
        if self.stopped_at is None:
            return
        log.info("audiolab: %s stopped after step %d of %d (%s)", self.record.dir.name, self.stopped_at,
                 self.max_steps, self.reason)
        self.record.update(stopped={"after_step": self.stopped_at, "max_steps": self.max_steps, "reason": self.reason,
                                    "steps": self.stopped_at - self.start_step})


def log_file_name(world: World) -> str:
    """`train.log` for rank 0 (and single-process runs), `train.rank<N>.log` for the other ranks."""
    return "train.log" if world.is_main else f"train.rank{world.rank}.log"


@contextlib.contextmanager
def log_to_file(run_dir: Path, world: World = SINGLE) -> Iterator[None]:
    """Send audiolab's log (DEBUG and up) to this rank's log file in the run directory for the run's duration.

    The console gets rank 0's lines; the other ranks print only warnings and errors there.
    """
    handler = logging.FileHandler(run_dir / log_file_name(world))
    handler.setLevel(logging.DEBUG)
    rank = f"[rank {world.rank}]" if world.distributed else ""
    handler.setFormatter(logging.Formatter(f"[%(asctime)s]{rank}[%(name)s][%(levelname)s] %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    quieted = [(h, h.level) for h in root.handlers if h is not handler and not world.is_main]
    for h, _ in quieted:
        h.setLevel(max(h.level, logging.WARNING))
    previous_level = log.level
    log.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        for h, level in quieted:
            h.setLevel(level)
        log.setLevel(previous_level)


def resolved(cfg: DictConfig) -> DictConfig:
    """A fully resolved, plain copy of cfg (no interpolations left)."""
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def save_resolved_config(run_dir: Path, cfg: DictConfig) -> None:
    """Write the fully resolved config (secrets masked) that `reproduce` and `resume` start from."""
    container = redact(OmegaConf.to_container(cfg, resolve=True))
    atomic_write_text(run_dir / RESOLVED_CONFIG, yaml.safe_dump(container, sort_keys=False))


def load_resolved_config(run_dir: Path) -> DictConfig:
    """The resolved config a run was started with, in today's layout."""
    path = run_dir / RESOLVED_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {RESOLVED_CONFIG}; was this directory made by audiolab?")
    return upgrade_config(OmegaConf.load(path))


class RunBusy(RuntimeError):
    """Another process is training this run directory (two at once would interleave their records)."""


def run_training(cfg: DictConfig, run_dir: Path, **kwargs: Any) -> TrainResult:
    """`_run_training` holding the run directory's lock (rank 0 alone keeps it): RunBusy when another process has it."""
    run_dir = Path(run_dir)
    if not World.from_env().is_main or not run_dir.is_dir():
        return _run_training(cfg, run_dir, **kwargs)
    try:
        with exclusive_or_busy(run_dir / RUN_LOCK, f"pid {os.getpid()} on {socket.gethostname()}"):
            return _run_training(cfg, run_dir, **kwargs)
    except Busy as err:  # only the lock raises it: nothing of the run was touched
        raise RunBusy(f"{run_dir.name} is being trained by another process ({err}); wait for it to end, or "
                      f"stop it, before resuming {run_dir}") from None


def _run_training(cfg: DictConfig, run_dir: Path, *, resume: bool = False, fresh_dir: bool = True,
                  meta: dict[str, Any] | None = None, after_step: Callable[[int], None] | None = None,
                  trial: Trial | None = None, stop_after: int | None = None) -> TrainResult:
    """Validate, record and train one run in `run_dir`; raise RunFailed/RunInterrupted on those ends.

    A config error removes a freshly made run directory, so no half-made run is left behind. With
    `trial`, the run is a sweep trial: it reports each validation, may be pruned, and tells the
    study how it ended. With `stop_after=N` the run stops cleanly after step N (before max_steps) and
    returns a result with status `interrupted` instead of raising. Under torchrun every rank trains, and
    only rank 0 keeps the records: run.json, metrics, samples, checkpoints, the tracker and the trial.
    """
    run_dir = Path(run_dir)
    world = World.from_env()
    try:
        cfg = resolved(cfg)
        if not resume:  # a resume's overrides were checked when the run started
            check_added_keys(cfg, (meta or {}).get("overrides", []))
        validate_config(cfg)
        # built before run.json exists, so that a bad model or logger setting leaves no run directory behind
        _check_model_builds(cfg)
        tracker = _build_tracker(cfg) if world.is_main else NullLogger()
        if resume and (run_dir / "checkpoints" / "last.pt").is_file():
            # refused before the record says `running` again: a completed run keeps its status
            load_checkpoint(run_dir / "checkpoints" / "last.pt", trust=bool(cfg.trainer.get("trust_checkpoint")))
    except Exception as err:
        if fresh_dir and not resume and world.is_main:
            shutil.rmtree(run_dir, ignore_errors=True)
        if trial is not None:
            trial.fail(f"{type(err).__name__}: {err}")
        raise
    meta = dict(meta or {})
    if "overrides" in meta:
        meta["overrides"] = redact(list(meta["overrides"]))
    if trial is not None:
        meta.update(study=trial.study_name, trial=trial.number)
    if world.distributed:
        meta["world_size"] = world.size
    if not world.is_main:
        with log_to_file(run_dir, world):
            end, raised = _train_to_end(cfg, run_dir, [], resume)
            _log_end(f"{run_dir.name} rank {world.rank}", end)
            # torchrun stops the other ranks as soon as one exits: wait until rank 0 has saved and recorded.
            if not isinstance(raised, RankLost):
                world.wait_for_all()
        if isinstance(raised, NonFiniteLossError):
            raise RunFailed(str(raised)) from raised
        if raised is not None:
            raise raised
        if end.status == "interrupted" and stop_after is None:
            raise RunInterrupted(end.signal or signal.SIGINT, run_dir)
        return end.result
    with log_to_file(run_dir, world):
        with stop_on_signals():  # from run.json on a Ctrl-C stops the run cleanly; the loop shares this record
            record = _open_record(run_dir, cfg, meta, resume)
            log.info("audiolab: %s %s -> %s%s", "resuming" if resume else "run", run_dir.name, run_dir,
                     f" (study {trial.study_name}, trial {trial.number})" if trial is not None else "")
            hooks = _run_hooks(cfg, run_dir, record, meta, trial, after_step, resume, tracker)
            stop = None
            if stop_after is not None:
                reason = f"reproduce --check --steps {stop_after}" if "check" in meta else f"stop_after={stop_after}"
                stop = StopAfterStep(stop_after, record, reason)
                hooks.append(stop)
            end, raised = _train_to_end(cfg, run_dir, hooks, resume)
        Hooks(hooks).on_end(end)  # one pass: each hook records its own part of how the run ended
        _log_end(run_dir.name, end)
        if not isinstance(raised, RankLost):
            world.wait_for_all()  # the other ranks exit only now, after last.pt and run.json
        if stop is not None and stop.stopped_at is not None and raised is None:
            return end.result
        if end.status == "interrupted":
            raise RunInterrupted(end.signal or signal.SIGINT, run_dir) from raised
        if isinstance(raised, NonFiniteLossError):
            raise RunFailed(str(raised)) from raised
        if isinstance(raised, OSError) and raised.errno in DISK_FULL:
            log.error("audiolab: %s: the disk is full (%s); the checkpoints already saved are intact: free some "
                      "space, then resume with: python run.py resume=%s", run_dir.name, raised, run_dir)
            raise RunFailed(str(raised)) from raised
        if raised is not None:
            raise raised
        return end.result


def _open_record(run_dir: Path, cfg: DictConfig, meta: dict[str, Any], resume: bool) -> RunRecord:
    """run.json: a new one with the resolved config beside it, or the resumed run's, marked running again."""
    if resume:
        record = RunRecord(run_dir)
        resumes = record.data.get("resumes", [])
        resumes.append({"at": now_iso(), "overrides": meta.pop("overrides", []), "git": git_state()})
        record.update(status="running", ended=None, resumes=resumes, error=None, pid=os.getpid(),
                      host=socket.gethostname())
        return record
    save_resolved_config(run_dir, cfg)
    if not (run_dir / ".hydra").exists():  # started outside Hydra: keep the same layout
        (run_dir / ".hydra").mkdir()
        atomic_write_text(run_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
        atomic_write_text(run_dir / ".hydra" / "overrides.yaml", yaml.safe_dump(meta.get("overrides", [])))
    return RunRecord.create(run_dir, **meta)


def job_type(record: dict[str, Any], resume: bool) -> str:
    """What W&B calls this session of the run: train, sweep-trial, reproduce or resume."""
    if resume:
        return "resume"
    if record.get("study") is not None:
        return "sweep-trial"
    return "reproduce" if record.get("reproduces") is not None else "train"


def tracker_tags(record: dict[str, Any]) -> tuple[str, ...]:
    """Tags that group runs in W&B: the experiment preset, the sweep directory and the study."""
    tags = [f"experiment:{record['experiment']}" if record.get("experiment") else None,
            f"sweep:{Path(record['sweep_dir']).name}" if record.get("sweep_dir") else None,
            f"study:{record['study']}" if record.get("study") else None,
            f"reproduces:output{record['reproduces']:02d}" if isinstance(record.get("reproduces"), int) else None]
    return tuple(t for t in tags if t)


def _check_model_builds(cfg: DictConfig) -> None:
    """Build the model on the meta device (no memory, no time): ConfigError with its constructor's complaint."""
    import torch

    try:
        with torch.device("meta"):
            instantiate(cfg.model)
    except InstantiationException as err:
        cause = str(err.__cause__ if isinstance(err.__cause__, (ValueError, TypeError)) else err)
        raise ConfigError(cause if cause.startswith("model.") else f"model: {cause}") from None


def _build_tracker(cfg: DictConfig) -> NullLogger:
    """The experiment tracker `logger` names; ConfigError naming the key when its settings are refused."""
    if not cfg.get("logger"):
        return NullLogger()
    try:
        return instantiate(cfg.logger)
    except InstantiationException as err:
        cause = err.__cause__ if isinstance(err.__cause__, (ValueError, TypeError)) else err
        raise ConfigError(f"logger: {cause}") from None


def _run_hooks(cfg: DictConfig, run_dir: Path, record: RunRecord, meta: dict[str, Any], trial: Trial | None,
               after_step: Callable[[int], None] | None, resume: bool, tracker: NullLogger) -> list[Hook]:
    """Start the tracker and the trial, and list the run's hooks in the order they must hear the end."""
    sweep_dir = record.data.get("sweep_dir")
    group = trial.study_name if trial is not None else Path(sweep_dir).name if sweep_dir else "single"
    tracker_id = tracker.start(run_dir, name=run_dir.name, group=group, config=OmegaConf.to_container(cfg),
                               run_id=record.data.get("wandb_id"), job_type=job_type(record.data, resume),
                               tags=tracker_tags(record.data))
    record.update(wandb_id=tracker_id)
    if meta.get("sweep_dir"):  # a new job of the sweep (a resume is not a second job)
        _append_jsonl(Path(meta["sweep_dir"]) / "runs.jsonl", {"run": record.data["number"], "dir": str(run_dir),
                                                        "job_index": meta.get("job_index"),
                                                        "overrides": meta.get("overrides", [])})
    hooks: list[Hook] = [CheckpointHook(run_dir), EmbeddingMetricsHook(cfg, record, tracker), RecordHook(record),
                         TrackerHook(tracker), SamplesHook(run_dir, tracker),
                         ConsoleHook(run_dir.name, bool(cfg.trainer.progress))]
    if trial is not None:
        trial.start(record.data.get("number"), run_dir)
        trial.set_wandb_id(tracker_id)
        hooks.append(TrialHook(trial))
    if after_step is not None:
        hooks.append(StepCallback(after_step))
    return hooks


def _train_to_end(cfg: DictConfig, run_dir: Path, hooks: list[Hook], resume: bool
                  ) -> tuple[RunEnd, BaseException | None]:
    """Train, and say how it ended: with a result, or with what was raised."""
    try:
        result = train(cfg, run_dir, hooks, resume=resume)
    except KeyboardInterrupt as err:  # a second Ctrl-C, or one before the loop took over signals
        return RunEnd("interrupted", error="KeyboardInterrupt"), err
    except BaseException as err:
        lost = lost_rank(err, World.from_env())
        if lost is not None:
            lost.__cause__ = err
            err = lost
        return RunEnd("failed", error=f"{type(err).__name__}: {err}"), err
    return RunEnd(result.status, result=result), None


def _log_end(name: str, end: RunEnd) -> None:
    result = end.result
    if end.status == "failed":
        log.error("audiolab: %s failed: %s", name, end.error)
    elif end.status == "pruned":
        log.info("audiolab: %s pruned at step %d (best val/spec_loss %.5f at step %s)", name, result.step,
                 result.best_value, result.best_step)
    elif end.status == "completed":
        final = result.last_val
        log.info("audiolab: %s completed at step %d: val/spec_loss %.5f%s; best %.5f at step %s", name,
                 result.step, final.get("val/spec_loss", float("nan")),
                 f", val/improvement {final['val/improvement']:+.4f}" if "val/improvement" in final else "",
                 result.best_value, result.best_step)


def _append_jsonl(path: Path, entry: dict[str, Any]) -> None:
    # One short line in append mode: concurrent jobs of a sweep never interleave within a line.
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")


@dataclass
class Reproduction:
    """What `reproduce` did: the new run, how it ended and, with check, the verdict."""

    run_dir: Path
    source: Path
    result: TrainResult
    comparison: Comparison | None = None
    stopped_after: int | None = None  # the step a `--steps N` re-run stopped after
    notes: list[str] = field(default_factory=list)  # what a reader of the verdict should know

    @property
    def ok(self) -> bool:
        """The re-run did what was asked (completed, or stopped where told) and, with check, matched."""
        ran = self.result.status == "completed" or self.stopped_after is not None
        return ran and (self.comparison is None or self.comparison.matched)


def reproduce(ref: str, overrides: list[str], outputs: str = "outputs", *, check: bool = False,
              rtol: float | None = None, steps: int | None = None) -> Reproduction:
    """Re-run a finished run from its saved, resolved config in a new numbered directory.

    With `check`, compare the re-run's metrics.jsonl with the original's (perf/* aside): bitwise, or
    within relative tolerance `rtol`; the verdict goes into the re-run's run.json under `check`. With
    `steps=N` (check only) the re-run stops cleanly after step N, config unchanged, and only steps <= N
    are compared.
    """
    if (rtol is not None or steps is not None) and not check:
        raise ValueError("rtol and steps are for check=True")
    if rtol is not None and not rtol >= 0:
        raise ValueError(f"--rtol must be >= 0, got {rtol}")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    source = find_run_dir(ref, outputs)
    original = json.loads((source / "run.json").read_text())
    cfg = apply_overrides(load_resolved_config(source), overrides)
    cfg.resume = None
    drift = code_drift(original.get("git") or {}, source)
    if drift:
        log.warning("warning: %s", drift)
    notes = _check_notes(source.name, original, cfg, overrides, steps) if check else []
    run_dir = allocate(source.parent)
    meta: dict[str, Any] = {"reproduces": original.get("number"), "reproduces_dir": str(source),
                            "overrides": overrides}
    if original.get("experiment"):
        meta["experiment"] = original["experiment"]
    if check:
        meta["check"] = {"verdict": None, "against": original.get("number"), "steps": steps, "rtol": rtol}
    stop_after = steps if check and steps is not None else None
    result = run_training(cfg, run_dir, meta=meta, stop_after=stop_after)
    done = Reproduction(run_dir, source, result, notes=notes)
    if stop_after is not None and result.status == "interrupted" and result.step == stop_after:
        done.stopped_after = stop_after
    if check:
        record = RunRecord(run_dir)
        done.notes += _cuda_notes(source.name, original, run_dir.name, record.data, rtol)
        done.comparison = compare_metrics(read_metrics(source), read_metrics(run_dir), rtol=rtol, max_step=steps,
                                          reference_name=source.name, candidate_name=run_dir.name)
        record.update(check={**record.data.get("check", {}), **done.comparison.to_dict(), "notes": done.notes})
    return done


def _check_notes(name: str, original: dict[str, Any], cfg: DictConfig, overrides: list[str],
                 steps: int | None) -> list[str]:
    """What may make a check differ for reasons other than the code: overrides, an unfinished original."""
    notes = []
    if overrides:
        notes.append(f"the re-run has overrides ({' '.join(overrides)}): differences from {name} may be expected")
    status, last = original.get("status"), original.get("step")
    max_steps = int(cfg.trainer.max_steps)
    if status != "completed" and last is not None and (steps is None or steps > last) and last < max_steps:
        notes.append(f"{name} ended {status} at step {last} of {max_steps}: its steps after {last} are missing; "
                     f"--steps {last} checks only what it has")
    return notes


def _cuda_notes(name: str, original: dict[str, Any], rerun: str, rerun_data: dict[str, Any],
                rtol: float | None) -> list[str]:
    """A note when either run was on CUDA and the check is bitwise (CUDA kernels are not deterministic)."""
    on_cuda = [f"{n} ran on {d}" for n, d in ((name, original.get("device")), (rerun, rerun_data.get("device")))
               if str(d or "").startswith("cuda")]
    if not on_cuda or rtol is not None:
        return []
    return [f"{' and '.join(on_cuda)}: CUDA kernels are not bitwise deterministic (nor is bf16 autocast), so a "
            "bitwise check can differ without any change in the code; check within a tolerance, e.g. --rtol 1e-4"]
