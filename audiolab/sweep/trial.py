"""A job's handle on its Optuna trial: report validations, prune, heartbeat, and tell how the run ended.

How the job reaches its trial, whatever the launcher: the sweeper puts the trial number and study
name into the job's environment through `hydra.job.env_set` (Hydra sets them around the task
function, in whichever process or machine runs it), and the job reopens the study from the storage
named in its own `hydra.sweeper` config. Nothing travels through process memory, so the basic
launcher, joblib, submitit and separate workers all work the same way.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import TrialState

from audiolab.sweep import STUDY_ENV, TRIAL_ENV
from audiolab.sweep.storage import storage_url
from audiolab.sweep.study import (
    ATTR_BEST_STEP,
    ATTR_FAIL_REASON,
    ATTR_INTERRUPTED,
    ATTR_PRUNED_REASON,
    ATTR_PRUNED_STEP,
    ATTR_RUN_DIR,
    ATTR_RUN_NUMBER,
    ATTR_WANDB_ID,
    build_pruner,
    open_study,
)

log = logging.getLogger(__name__)


class Heartbeat:
    """A daemon thread stamping the trial alive every interval while the job runs."""

    @classmethod
    def maybe(cls, study: optuna.Study, trial_id: int) -> Heartbeat | None:
        """A started heartbeat for the trial, or None when the storage has heartbeats off."""
        storage = study._storage
        if not is_heartbeat_enabled(storage):
            return None
        assert isinstance(storage, BaseHeartbeat)
        beat = cls(storage, trial_id)
        beat.start()
        return beat

    def __init__(self, storage: BaseHeartbeat, trial_id: int) -> None:
        self._storage, self._trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)

    def _beat(self) -> None:
        interval = self._storage.get_heartbeat_interval() or 60
        while True:
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as err:  # a storage hiccup must not kill training; the next beat retries
                log.warning("optuna heartbeat failed: %s", err)
            if self._stop.wait(interval):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class TrialLink:
    """The trial this job runs, reopened from storage; every method is safe to call once the trial has ended."""

    def __init__(self, study: optuna.Study, number: int, objectives: list[str],
                 max_step_time: float | None = None) -> None:
        self.study = study
        self.number = number
        self.objectives = objectives
        self.max_step_time = max_step_time  # hydra.sweeper.max_step_time: the run prunes itself past it
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        self.trial = optuna.Trial(study, trial_id)
        self._heartbeat: Heartbeat | None = None
        self._ended = False

    @classmethod
    def from_hydra(cls, sweeper_cfg: DictConfig | None, outputs: str | Path) -> TrialLink | None:
        """The link for the job now running, or None when this job is not an Optuna trial."""
        number = os.environ.get(TRIAL_ENV)
        if number is None or sweeper_cfg is None:
            return None
        name = os.environ.get(STUDY_ENV) or str(sweeper_cfg.study_name)
        url = storage_url(sweeper_cfg.get("storage"), outputs)
        study = open_study(url, name, pruner=build_pruner(sweeper_cfg.get("pruner")),
                           heartbeat_interval=int(sweeper_cfg.heartbeat_interval),
                           grace_period=sweeper_cfg.get("grace_period"), max_retry=sweeper_cfg.get("max_retry"))
        limit = sweeper_cfg.get("max_step_time")
        return cls(study, int(number), list(sweeper_cfg.objectives), None if limit is None else float(limit))

    @property
    def study_name(self) -> str:
        """Name of the study (also the W&B group of its runs)."""
        return self.study.study_name

    def start(self, run_number: int | None, run_dir: Path) -> None:
        """Tie the trial to its run and start the heartbeat."""
        self.trial.set_user_attr(ATTR_RUN_NUMBER, run_number)
        self.trial.set_user_attr(ATTR_RUN_DIR, str(run_dir))
        self._heartbeat = Heartbeat.maybe(self.study, self.trial._trial_id)

    def set_wandb_id(self, run_id: str | None) -> None:
        """Record the run's W&B id on the trial."""
        if run_id:
            self.trial.set_user_attr(ATTR_WANDB_ID, run_id)

    def report(self, step: int, value: float) -> bool:
        """Report val/spec_loss at a training step; True when the pruner says stop."""
        if len(self.objectives) > 1 or self.objectives[0] != "val/spec_loss":
            return False  # Optuna prunes single-objective studies on the reported value only
        self.trial.report(value, step)
        return self.trial.should_prune()

    def complete(self, measured: Mapping[str, float], best_step: int | None) -> None:
        """Tell the study the run's objective values."""
        values = [float(measured[o]) for o in self.objectives]
        if not all(math.isfinite(v) for v in values):
            self.fail(f"non-finite objective values {dict(zip(self.objectives, values, strict=True))}")
            return
        self.trial.set_user_attr(ATTR_BEST_STEP, best_step)
        self._tell(values=values)

    def prune(self, step: int, reason: str | None = None) -> None:
        """Tell the study the pruner (or `reason`, e.g. the step-time budget) stopped this trial at `step`."""
        self.trial.set_user_attr(ATTR_PRUNED_STEP, step)
        if reason:
            self.trial.set_user_attr(ATTR_PRUNED_REASON, reason)
        self._tell(state=TrialState.PRUNED)

    def fail(self, reason: str, interrupted: bool = False) -> None:
        """Tell the study the trial failed, keeping the reason on the trial."""
        self.trial.set_user_attr(ATTR_FAIL_REASON, reason[:2000])
        if interrupted:
            self.trial.set_user_attr(ATTR_INTERRUPTED, True)
        self._tell(state=TrialState.FAIL)

    def _tell(self, **kwargs: Any) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._ended:
            return
        self._ended = True
        try:
            self.study.tell(self.trial, **kwargs)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as err:
            # Failed as stale by another worker (after a long stall): that worker has re-queued it.
            log.warning("trial %d was already finished in the study: %s", self.number, err)
