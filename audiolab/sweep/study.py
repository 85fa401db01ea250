"""Samplers, pruners, opening a study, and counting its budget: shared by the sweeper, its jobs and `audiolab sweep`."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from audiolab.sweep.space import SearchSpace
from audiolab.sweep.storage import open_storage, storage_lock

OBJECTIVES = ("val/spec_loss", "parameters", "step_time")
STUDY_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")

# Trial user attributes that tie a trial to its run (and back: run.json holds study and trial).
ATTR_RUN_NUMBER, ATTR_RUN_DIR, ATTR_WANDB_ID = "run_number", "run_dir", "wandb_id"
ATTR_FAIL_REASON, ATTR_INTERRUPTED, ATTR_PRUNED_STEP = "fail_reason", "interrupted", "pruned_step"
ATTR_PRUNED_REASON = "pruned_reason"  # set when something other than the pruner stopped the trial
ATTR_BEST_STEP = "best_step"


def _settings(cfg: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    settings = dict(cfg or {})
    return str(settings.pop("kind", "")), settings


def worker_seed(seed: int | None, start: int) -> int | None:
    """The sampler seed of the `start`-th process to open this study (see `claim_start`)."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([int(seed), start]).generate_state(1)[0])


ATTR_STARTS = "sampler_starts"  # study attribute: how many sweep processes have opened the study


def claim_start(study: optuna.Study, url: str) -> int:
    """A number no other process gets for this study, wherever it runs: its sampler seed differs from theirs.

    Separately started processes (the several-machines recipe) all used to be worker 0 with 0 trials seen, so
    they drew the same parameters. The count lives in the study and is bumped under the storage's
    cross-process lock (a file lock, or PostgreSQL's advisory lock).
    """
    with storage_lock(url):
        start = int(study.user_attrs.get(ATTR_STARTS, 0))
        study.set_user_attr(ATTR_STARTS, start + 1)
    return start


def build_sampler(cfg: Mapping[str, Any] | None, space: SearchSpace, seed: int | None) -> BaseSampler:
    """The sampler named by `hydra.sweeper.sampler.kind`: tpe, random, grid, cmaes or nsga2."""
    kind, settings = _settings(cfg)
    settings["seed"] = seed
    if kind == "tpe":
        return optuna.samplers.TPESampler(**settings)
    if kind == "random":
        return optuna.samplers.RandomSampler(**settings)
    if kind == "grid":
        return optuna.samplers.GridSampler(space.grid(), **settings)
    if kind == "cmaes":
        return optuna.samplers.CmaEsSampler(**settings)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(**settings)
    raise ValueError(f"hydra.sweeper.sampler.kind={kind!r}: expected tpe, random, grid, cmaes or nsga2")


def build_pruner(cfg: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    """The pruner named by `hydra.sweeper.pruner.kind`: median, successive_halving, hyperband or none."""
    kind, settings = _settings(cfg)
    if kind == "median":
        return optuna.pruners.MedianPruner(**settings)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**settings)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(**settings)
    if kind in ("none", ""):
        return optuna.pruners.NopPruner()
    raise ValueError(f"hydra.sweeper.pruner.kind={kind!r}: expected median, successive_halving, hyperband or none")


def check_study_settings(name: str, objectives: list[str], directions: list[str]) -> None:
    """Reject a bad study name, an unknown objective, or objectives and directions of different lengths."""
    if not STUDY_NAME.match(name):
        raise ValueError(f"hydra.sweeper.study_name={name!r}: use letters, digits, '_', '.' and '-' only")
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise ValueError(f"hydra.sweeper.objectives: unknown {unknown}; expected some of {list(OBJECTIVES)}")
    if len(objectives) != len(directions) or not objectives:
        raise ValueError(f"hydra.sweeper.objectives ({len(objectives)}) and hydra.sweeper.directions "
                         f"({len(directions)}) need the same, non-zero length")
    bad = [d for d in directions if d not in ("minimize", "maximize")]
    if bad:
        raise ValueError(f"hydra.sweeper.directions: {bad} are not minimize/maximize")


def open_study(url: str, name: str, *, directions: list[str] | None = None, sampler: BaseSampler | None = None,
               pruner: optuna.pruners.BasePruner | None = None, create: bool = False, heartbeat_interval: int = 10,
               grace_period: int | None = None, max_retry: int | None = 2,
               metric_names: list[str] | None = None) -> optuna.Study:
    """Load study `name` from `url`; with create=True make it first if it is not there yet.

    `metric_names` (with create=True) names the objectives in the study itself (`study.metric_names`), so
    optuna-dashboard and Optuna's plots label them `val/spec_loss`, `step_time`... rather than "Objective 0".
    """
    storage = open_storage(url, heartbeat_interval, grace_period, max_retry)
    if create:
        with storage_lock(url):
            study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=sampler,
                                        pruner=pruner, load_if_exists=True)
        if directions and [d.name.lower() for d in study.directions] != list(directions):
            raise ValueError(f"study {name!r} already exists with directions "
                             f"{[d.name.lower() for d in study.directions]}, not {list(directions)}; "
                             "choose another hydra.sweeper.study_name")
        if metric_names and study.metric_names != list(metric_names):
            with warnings.catch_warnings():  # "experimental" since Optuna 3.2: noise in every sweep's log
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(list(metric_names))
        return study
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise KeyError(f"no study {name!r} in the storage (studies there: {', '.join(names) or 'none'})") from None


@dataclass
class Budget:
    """Where a study stands against `n_trials`: finished, running and queued trials, and failures."""

    finished: int
    running: int
    waiting: int
    failed: int

    @classmethod
    def of(cls, trials: list[FrozenTrial]) -> Budget:
        """Count a study's trials; a trial that was retried or interrupted does not use up the budget."""
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        finished = failed = running = waiting = 0
        for t in trials:
            if t.state == TrialState.RUNNING:
                running += 1
            elif t.state == TrialState.WAITING:
                waiting += 1
            elif t.state == TrialState.FAIL:
                if t.number in retried or t.user_attrs.get(ATTR_INTERRUPTED):
                    continue
                failed += 1
                finished += 1
            elif t.state.is_finished():
                finished += 1
        return cls(finished, running, waiting, failed)

    def may_start(self, n_trials: int) -> bool:
        """Whether to ask for a trial: a queued one (retry or enqueued) always runs; a new one only within budget."""
        return self.waiting > 0 or self.finished + self.running < n_trials

    def done(self, n_trials: int) -> bool:
        """Whether the study has its n_trials finished trials and nothing queued."""
        return self.finished >= n_trials and self.waiting == 0
