"""audiolab's Optuna sweeper: ask a trial, launch it as a numbered run, repeat until the study's budget is spent.

One sweeper process is one worker. With `hydra.sweeper.n_workers=N` the command starts N worker
processes that share the study through its storage (each starts its next trial as soon as its last
one ends: no batch barrier), exactly as N machines running the same command against one PostgreSQL
database do. Budget checks and asks happen under `storage_lock`, so workers never overshoot
`n_trials`; a worker that dies mid-trial stops heartbeating, and another worker fails and re-queues
that trial after the grace period.

Packing (`trials_per_device=K`, `devices_per_trial=D`, like Ray Tune's fractional GPUs): the machine's
G devices (GPUs, or the CPU as one device) give max(1, G // D) * K slots, and `n_workers` left at null
starts one worker per slot. Worker i gets the D GPUs of group (i // K) % (G // D) and a 1/K memory share
(AUDIOLAB_CUDA_MEMORY_FRACTION, applied by audiolab/train/device.py); on the CPU the workers split the
threads. When the sweep ends, the summary gives each trial's training throughput and that of the trials
that ran at once, so the cost of packing is visible.

Trials are composed from a snapshot of `conf/` (which holds `experiments/` as `conf/experiment`)
taken when the sweep starts, so editing configs during a sweep cannot change its later trials.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.storages import fail_stale_trials
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from audiolab.common.secrets import redact
from audiolab.runs.record import RunRecord
from audiolab.sweep import STUDY_ENV, TRIAL_ENV
from audiolab.sweep.space import SearchSpace, parse_search_space
from audiolab.sweep.storage import StorageError, display_url, storage_lock, storage_url
from audiolab.sweep.study import (
    ATTR_FAIL_REASON,
    ATTR_PRUNED_STEP,
    ATTR_RUN_DIR,
    ATTR_RUN_NUMBER,
    Budget,
    build_pruner,
    build_sampler,
    check_study_settings,
    claim_start,
    open_study,
    worker_seed,
)
from audiolab.sweep.trial import Heartbeat

log = logging.getLogger("audiolab.sweep")

SNAPSHOT_DIR = "snapshot"
WORKER_KEYS = ("hydra.sweeper.n_workers", "hydra.sweeper.worker_index", "hydra.sweep.dir")
# Read by audiolab/train/device.py (MEMORY_FRACTION_ENV there): a packed trial's share of its GPU's memory.
MEMORY_FRACTION_ENV = "AUDIOLAB_CUDA_MEMORY_FRACTION"
# Study user attribute: {trial number: mean perf/audio_s_per_s of its run}, written by the sweep's summary.
ATTR_AUDIO_S_PER_S = "audio_s_per_s"


class SweepStopped(SystemExit):
    """The sweep stopped early (too many failures, or interrupted); the message says why."""


def _remove_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):
        directory.rmdir()


class OptunaSweep:
    """The sweeper behind `hydra/sweeper=optuna` (see the module docstring)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = OmegaConf.create({k: v for k, v in settings.items() if k != "defaults"})
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep what launching jobs needs; the launcher is made in sweep(), after the snapshot."""
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    # --- the sweep ----------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> list[FrozenTrial]:
        """Run (this worker's share of) the study; return its trials."""
        assert self.config is not None and self.hydra_context is not None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        s = self.settings
        try:
            packing = Packing.of(s)
        except ValueError as err:
            raise SweepStopped(f"audiolab: sweep config error: {err}") from None
        sweep_dir = Path(self.config.hydra.sweep.dir).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        outputs = OmegaConf.select(self.config, "paths.outputs", default="outputs")
        self.url = storage_url(s.storage, outputs)
        worker = s.worker_index
        try:
            check_study_settings(s.study_name, list(s.objectives), list(s.directions))
            space = parse_search_space(s.params, arguments)
            if not space.dimensions:
                raise ValueError("hydra.sweeper.params is empty: nothing to search (pick an hparams_search preset)")
            enqueued = [space.parse_enqueued(entry) for entry in s.enqueue]
            pruner = build_pruner(s.pruner)
            study = open_study(self.url, s.study_name, directions=list(s.directions), pruner=pruner, create=True,
                               heartbeat_interval=s.heartbeat_interval, grace_period=s.grace_period,
                               max_retry=s.max_retry, metric_names=list(s.objectives))
            study.sampler = build_sampler(s.sampler, space,
                                          worker_seed(s.sampler.get("seed"), claim_start(study, self.url)))
        except (ValueError, StorageError) as err:
            _remove_if_empty(sweep_dir)  # claimed when the config was resolved; nothing ran in it
            _remove_if_empty(sweep_dir.parent)
            kind = "storage" if isinstance(err, StorageError) else "config"
            raise SweepStopped(f"audiolab: sweep {kind} error: {err}") from None
        n_trials = int(s.n_trials)
        if s.sampler.kind == "grid":
            n_trials = min(n_trials, _grid_size(space))

        if worker is None:  # the process the user started
            self._save_multirun_yaml(sweep_dir)
            with storage_lock(self.url):
                for params in enqueued:
                    study.enqueue_trial(params, skip_if_exists=True)
                study.set_user_attr("search_space", dict(s.params))
                study.set_user_attr("objectives", list(s.objectives))
                study.set_user_attr("sweep_dirs", [*study.user_attrs.get("sweep_dirs", []), str(sweep_dir)])
            log.info("audiolab: study %s in %s: %d of %d trials finished; sweep dir %s", s.study_name,
                     display_url(self.url), Budget.of(study.get_trials(deepcopy=False)).finished, n_trials, sweep_dir)
        config_dir = self._snapshot(sweep_dir) if s.snapshot else None
        plan = _plan_here(packing) if worker is None else None
        if plan is not None and plan.n_workers > 1:
            self._spawn_workers(plan, sweep_dir, config_dir)
        else:
            self._work(study, space, n_trials, config_dir, worker or 0)
        trials = study.get_trials(deepcopy=False)
        if worker is None:
            _log_summary(study, trials)
            _log_throughput(study, trials, sweep_dir, self.url)
            if trials and not any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials):
                raise SweepStopped(f"audiolab: no trial of study {s.study_name} finished without failing; "
                                   "see the reasons above")
        return trials

    def _work(self, study: optuna.Study, space: SearchSpace, n_trials: int, config_dir: Path | None,
              worker: int) -> None:
        """The worker loop: under the storage lock, fail stale trials, check the budget and ask; then run."""
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        s = self.settings
        context = self.hydra_context
        if config_dir is not None:
            context = HydraContext(config_loader=_loader_from(context.config_loader, config_dir),
                                   callbacks=context.callbacks)
        launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=self.task_function,
                                                           config=self.config)
        job_index = 0
        poll = min(1.0, float(s.heartbeat_interval))
        while True:
            with storage_lock(self.url):
                fail_stale_trials_with_reasons(study)
                budget = Budget.of(study.get_trials(deepcopy=False))
                if budget.done(n_trials):
                    return
                if s.max_failures is not None and budget.failed >= int(s.max_failures):
                    raise SweepStopped(_too_many_failures(study, budget.failed, int(s.max_failures)))
                trial = study.ask() if budget.may_start(n_trials) else None
                overrides = space.suggest(trial) if trial is not None else []
            if trial is None:  # the rest of the budget is running on other workers; wait, in case one dies
                time.sleep(poll)
                continue
            env = [f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}",
                   f"++hydra.job.env_set.{STUDY_ENV}={s.study_name}"]
            log.info("audiolab: trial %d%s: %s", trial.number, f" (worker {worker})" if s.worker_index is not None
                     else "", " ".join(overrides))
            # This worker beats for the trial too: it covers the job's start-up, and a job that sits in a queue.
            heartbeat = Heartbeat.maybe(study, trial._trial_id)
            returns: Sequence[JobReturn] = []
            launch_error = None
            try:
                returns = launcher.launch([overrides + env], initial_job_idx=job_index)
            except Exception as err:  # e.g. the trial's overrides do not compose: that trial fails, the sweep goes on
                launch_error = f"launch failed: {type(err).__name__}: {err}"
            except BaseException as err:
                _fail_if_running(study, trial.number, f"launch failed: {type(err).__name__}: {err}")
                raise
            finally:
                if heartbeat is not None:
                    heartbeat.stop()
            job_index += 1
            ret = returns[0] if returns else None
            reason = launch_error or _failure_reason(ret)
            _fail_if_running(study, trial.number, reason or "the job ended without reporting to the study")
            _log_outcome(study, trial.number)
            interrupted = getattr(ret, "_return_value", None) if ret is not None else None
            if type(interrupted).__name__ == "RunInterrupted":
                raise SweepStopped(128 + int(getattr(interrupted, "signum", 2)))

    # --- workers ------------------------------------------------------------------------------
    def _spawn_workers(self, plan: WorkerPlan, sweep_dir: Path, config_dir: Path | None) -> None:
        """Start the plan's workers: copies of this command on one study, each with its devices (plan_workers)."""
        assert self.config is not None
        hydra = self.config.hydra
        n_workers = plan.n_workers
        base = [sys.executable, os.path.abspath(sys.argv[0]), "--multirun",
                f"--config-name={hydra.job.config_name}"]
        if config_dir is not None:
            base.append(f"--config-path={config_dir}")
        keep = [o for o in [*hydra.overrides.task, *hydra.overrides.hydra] if o.split("=", 1)[0] not in WORKER_KEYS]
        base += [*keep, f"hydra.sweep.dir={sweep_dir}", "hydra.sweeper.n_workers=1"]
        procs: list[subprocess.Popen] = []
        for i in range(n_workers):
            env = dict(os.environ) | plan.envs[i]
            procs.append(subprocess.Popen([*base, f"hydra.sweeper.worker_index={i}"], env=env))
        log.info("audiolab: started %d workers (pids %s)", n_workers, " ".join(str(p.pid) for p in procs))

        def forward(signum: int, frame: Any) -> None:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            codes = [p.wait() for p in procs]
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        bad = [(i, c) for i, c in enumerate(codes) if c != 0]
        if bad:
            raise SweepStopped(f"audiolab: {len(bad)} of {n_workers} workers exited with an error: "
                               + ", ".join(f"worker {i}: exit {c}" for i, c in bad))

    # --- snapshot and records -----------------------------------------------------------------
    def _snapshot(self, sweep_dir: Path) -> Path | None:
        """Copy the primary config dir into the sweep dir once; return the copy (None if there is no file dir)."""
        assert self.config is not None
        sources = [src for src in self.config.hydra.runtime.config_sources if src.provider == "main"]
        if not sources or sources[0].schema != "file":
            return None
        source = Path(sources[0].path).absolute()
        target = sweep_dir / SNAPSHOT_DIR / "conf"
        if source == target or target in source.parents:
            return source  # a worker started from the snapshot
        if not target.exists():
            tmp = target.with_name(f".conf.{os.getpid()}.tmp")
            shutil.copytree(source, tmp, symlinks=False)  # follows conf/experiment -> experiments/
            os.replace(tmp, target)
        return target

    def _save_multirun_yaml(self, sweep_dir: Path) -> None:
        assert self.config is not None
        container = redact(OmegaConf.to_container(self.config, resolve=False))
        (sweep_dir / "multirun.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(container)))


# --- how the workers share the machine -------------------------------------------------------------

@dataclass(frozen=True)
class Packing:
    """`hydra.sweeper.n_workers` (None: auto), `trials_per_device` (K) and `devices_per_trial` (D), checked."""

    n_workers: int | None = None
    trials_per_device: int = 1
    devices_per_trial: int = 1

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> Packing:
        """Read and check the three settings; a ValueError names the bad key."""
        values: dict[str, int | None] = {}
        for key, default in (("n_workers", None), ("trials_per_device", 1), ("devices_per_trial", 1)):
            value = settings.get(key, default)
            if value is None and default is None:
                values[key] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                allowed = "an integer >= 1, or null for one worker per slot" if default is None else "an integer >= 1"
                raise ValueError(f"hydra.sweeper.{key}={value!r}: expected {allowed}")
            values[key] = value
        return cls(**values)  # type: ignore[arg-type]

    @property
    def packs(self) -> bool:
        """Whether the user asked for device sharing (K or D other than 1)."""
        return self.trials_per_device > 1 or self.devices_per_trial > 1


@dataclass(frozen=True)
class WorkerPlan:
    """How many workers to start, what each one's environment adds, and the line that says so."""

    n_workers: int
    slots: int
    envs: list[dict[str, str]] = field(default_factory=list)
    summary: str = ""
    warnings: list[str] = field(default_factory=list)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def plan_workers(packing: Packing, n_gpus: int, n_cpus: int, environ: Mapping[str, str]) -> WorkerPlan:
    """Workers and their devices on a machine with `n_gpus` GPUs (0: the CPU is the one device) and `n_cpus` CPUs.

    slots = max(1, G // D) * K. n_workers null starts one worker per slot when K or D is set, else 1 (a plain
    sweep); an explicit n_workers is kept, with a warning when it is more than the slots. On CUDA worker i
    gets the D GPUs of group (i // K) % max(1, G // D) (indices into the parent's CUDA_VISIBLE_DEVICES, when
    set) and, with K > 1, a 1/K memory share; on the CPU each worker gets OMP_NUM_THREADS =
    max(1, n_cpus // (workers * D)), unless the environment already sets it.
    """
    k, d = packing.trials_per_device, packing.devices_per_trial
    groups = max(1, n_gpus // d)
    slots = groups * k
    if packing.n_workers is not None:
        n = packing.n_workers
    else:
        n = slots if packing.packs else 1
    warnings = []
    where = (f"{_plural(n_gpus, 'GPU')} // devices_per_trial={d}, x trials_per_device={k}" if n_gpus
             else f"the CPU x trials_per_device={k}")
    if n > slots and (packing.packs or n_gpus):
        warnings.append(f"hydra.sweeper.n_workers={n} is more than the {slots} slots here ({where}): "
                        "more trials than that will share a device")
    if n_gpus and d > n_gpus:
        warnings.append(f"hydra.sweeper.devices_per_trial={d} but only {_plural(n_gpus, 'GPU')} here: "
                        f"each trial gets all {n_gpus}")
    envs: list[dict[str, str]] = [{} for _ in range(n)]
    if n_gpus:
        listed = [v.strip() for v in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        visible = listed[:n_gpus] if len(listed) >= n_gpus else [str(j) for j in range(n_gpus)]
        per_trial = min(d, n_gpus)
        if n > 1:
            for i, env in enumerate(envs):
                group = (i // k) % groups
                env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[group * per_trial:(group + 1) * per_trial])
                if k > 1:
                    env[MEMORY_FRACTION_ENV] = f"{1 / k:.6g}"
        used = groups * per_trial
        summary = (f"{_plural(n, 'worker')}: {_plural(k, 'trial')} per device on {_plural(used, 'GPU')}"
                   + (f", {per_trial} GPUs per trial" if per_trial > 1 else "")
                   + (f", {1 / k:.3g} of a GPU's memory each" if k > 1 and n > 1 else "")
                   + (f" ({n_gpus - used} left idle)" if used < n_gpus else ""))
    else:
        threads = max(1, n_cpus // (n * d))
        own = environ.get("OMP_NUM_THREADS")
        if n > 1 and own is None:
            for env in envs:
                env["OMP_NUM_THREADS"] = str(threads)
        if own is not None:
            summary = f"{n} workers on the CPU, OMP_NUM_THREADS={own} each (from the environment)"
        else:
            summary = f"{n} workers on the CPU, {_plural(threads, 'thread')} each"
        if d > 1:
            summary += f" ({d} processes per trial)"
    if n == 1:  # the sweep runs in this process, which sees every device
        summary = f"1 worker, in this process, on {_plural(n_gpus, 'GPU') if n_gpus else 'the CPU'}"
    return WorkerPlan(n, slots, envs, summary, warnings)


def _cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _plan_here(packing: Packing) -> WorkerPlan:
    """plan_workers for this machine, logged; a plain sweep (one worker, nothing packed) neither asks CUDA nor logs."""
    if packing.n_workers in (None, 1) and not packing.packs:
        return WorkerPlan(1, 1, [{}])
    import torch

    plan = plan_workers(packing, torch.cuda.device_count(), _cpu_count(), os.environ)
    for warning in plan.warnings:
        log.warning("audiolab: warning: %s", warning)
    log.info("audiolab: %s", plan.summary)
    return plan


def _loader_from(loader: Any, config_dir: Path) -> Any:
    """A config loader like `loader` whose primary config dir is `config_dir` (Hydra 1.3 internals)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl

    search_path = ConfigSearchPathImpl()
    for element in loader.get_search_path().get_path():
        path = f"file://{config_dir}" if element.provider == "main" else element.path
        search_path.append(element.provider, path)
    return ConfigLoaderImpl(config_search_path=search_path)


def _grid_size(space: SearchSpace) -> int:
    size = 1
    for values in space.grid().values():
        size *= len(values)
    return size


def _failure_reason(ret: JobReturn | None) -> str | None:
    if ret is None:
        return "the launcher returned no result"
    if ret.status == JobStatus.FAILED:
        err = ret._return_value
        return f"{type(err).__name__}: {err}"
    return None


def _fail_if_running(study: optuna.Study, number: int, reason: str) -> None:
    """Fail a trial its job left RUNNING (it died before telling the study), keeping the reason."""
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    if study._storage.get_trial(trial_id).state != TrialState.RUNNING:
        return
    study._storage.set_trial_user_attr(trial_id, ATTR_FAIL_REASON, reason[:2000])
    study.tell(number, state=TrialState.FAIL)


STALE_REASON = "stale: no heartbeat within the grace period (its worker was killed or lost); re-queued"


def fail_stale_trials_with_reasons(study: optuna.Study) -> None:
    """Optuna's `fail_stale_trials`, after giving each stale trial a fail_reason and marking its run.json failed.

    Optuna fails the trial first and calls the retry callback after, and a finished trial's attributes
    can no longer be set; so the stale trials are found (the storage's own query) and annotated before.
    """
    storage = study._storage
    if not (isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage)):
        return
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        trial = storage.get_trial(trial_id)
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # another worker got there first
            storage.set_trial_user_attr(trial_id, ATTR_FAIL_REASON, STALE_REASON)
        run_dir = trial.user_attrs.get(ATTR_RUN_DIR)
        if run_dir and (Path(run_dir) / "run.json").is_file():
            with contextlib.suppress(OSError, ValueError):  # a run on another machine's disk is left to it
                record = RunRecord(Path(run_dir))
                if record.data.get("status") == "running":
                    record.finish("failed", error=f"trial {trial.number} {STALE_REASON}")
    fail_stale_trials(study)


def _log_outcome(study: optuna.Study, number: int) -> None:
    storage = study._storage
    trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))
    run = trial.user_attrs.get(ATTR_RUN_NUMBER)
    where = f" (output{run:02d})" if isinstance(run, int) else ""
    if trial.state == TrialState.COMPLETE:
        values = ", ".join(f"{v:.5g}" for v in trial.values)
        log.info("audiolab: trial %d%s: COMPLETE, value %s", number, where, values)
    elif trial.state == TrialState.PRUNED:
        log.info("audiolab: trial %d%s: PRUNED at step %s", number, where, trial.user_attrs.get(ATTR_PRUNED_STEP))
    else:
        reason = trial.user_attrs.get(ATTR_FAIL_REASON) or STALE_REASON
        log.warning("audiolab: trial %d%s: %s: %s", number, where, trial.state.name, reason)


def _too_many_failures(study: optuna.Study, n_failed: int, max_failures: int) -> str:
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    last = failed[-1] if failed else None
    detail = f"; last: trial {last.number}: {last.user_attrs.get(ATTR_FAIL_REASON, '?')}" if last else ""
    return (f"audiolab: sweep stopped: {n_failed} trials of study {study.study_name} failed "
            f"(hydra.sweeper.max_failures={max_failures}){detail}")


def _log_summary(study: optuna.Study, trials: list[FrozenTrial]) -> None:
    counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    log.info("audiolab: study %s: %s", study.study_name,
             ", ".join(f"{n} {name.lower()}" for name, n in counts.items() if n))
    if not any(t.state == TrialState.COMPLETE for t in trials):
        return
    for best in study.best_trials if len(study.directions) > 1 else [study.best_trial]:
        run = best.user_attrs.get(ATTR_RUN_NUMBER)
        log.info("audiolab: best trial %d%s: value %s, params %s", best.number,
                 f" (output{run:02d})" if isinstance(run, int) else "", best.values, best.params)


# --- throughput -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Throughput:
    number: int
    run: int | None
    audio_s_per_s: float
    started: datetime | None
    ended: datetime | None


def mean_audio_s_per_s(run_dir: Path) -> float | None:
    """Mean of `perf/audio_s_per_s` over a run's metrics.jsonl lines (None without any); a torn last line is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    values = []
    for line in lines:
        try:
            value = json.loads(line).get("perf/audio_s_per_s")
        except (ValueError, AttributeError):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            values.append(float(value))
    return sum(values) / len(values) if values else None


def _when(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _throughputs(trials: list[FrozenTrial], sweep_dir: Path) -> list[_Throughput]:
    """Finished trials whose run belongs to this sweep dir (run.json's sweep_dir), with their throughput."""
    found = []
    for t in trials:
        run_dir = t.user_attrs.get(ATTR_RUN_DIR)
        if not t.state.is_finished() or not run_dir:
            continue
        try:
            record = json.loads((Path(run_dir) / "run.json").read_text())
        except (OSError, ValueError):
            continue  # e.g. a run on another machine's disk
        if not record.get("sweep_dir") or Path(record["sweep_dir"]) != sweep_dir:
            continue
        value = mean_audio_s_per_s(Path(run_dir))
        if value is None:
            continue
        run = t.user_attrs.get(ATTR_RUN_NUMBER)
        found.append(_Throughput(t.number, run if isinstance(run, int) else None, value,
                                 _when(record.get("started")), _when(record.get("ended"))))
    return found


def _together(found: list[_Throughput]) -> list[_Throughput]:
    """Two or more trials running at one moment whose throughputs add up to the most ([] if none overlapped).

    Times are the runs' `started` and `ended` in run.json (whole seconds): runs that only touch, one ending
    in the second the next starts, do not count as running at once.
    """
    timed = [f for f in found if f.started is not None and f.ended is not None]
    best: list[_Throughput] = []
    for f in timed:  # the running set only grows at a start, so the starts are the moments to look at
        running = [g for g in timed if g is f or g.started <= f.started < g.ended]  # type: ignore[operator]
        if len(running) > 1 and sum(g.audio_s_per_s for g in running) > sum(g.audio_s_per_s for g in best):
            best = running
    return sorted(best, key=lambda g: g.number)


def _log_throughput(study: optuna.Study, trials: list[FrozenTrial], sweep_dir: Path, url: str) -> None:
    """Log this sweep's per-trial training throughput and the trials' total at once; keep it in the study's attrs."""
    found = _throughputs(trials, sweep_dir)
    if not found:
        return
    log.info("audiolab: training throughput, audio s per s (mean of perf/audio_s_per_s): %s",
             ", ".join(f"trial {f.number}{f' (output{f.run:02d})' if f.run is not None else ''} "
                       f"{f.audio_s_per_s:.3g}" for f in found))
    group = _together(found)
    if len(group) > 1:
        total = sum(g.audio_s_per_s for g in group)
        log.info("audiolab: together: %.3g audio s per s from %d trials running at once (trials %s), %.3g each "
                 "on average", total, len(group), ", ".join(str(g.number) for g in group), total / len(group))
    else:
        log.info("audiolab: together: no two trials of this sweep ran at once")
    try:
        with storage_lock(url):
            merged = dict(study.user_attrs.get(ATTR_AUDIO_S_PER_S) or {})
            merged.update({str(f.number): f.audio_s_per_s for f in found})
            study.set_user_attr(ATTR_AUDIO_S_PER_S, merged)
    except Exception as err:  # a report, not the sweep's result: never fail a finished sweep over it
        log.warning("audiolab: could not record throughput in the study: %s", err)
