"""Hydra plugin entry point for audiolab's Optuna sweeper (`hydra/sweeper=optuna`).

Hydra imports every module under `hydra_plugins/` at start-up, in every process, so this module
only declares the config schema and a thin class; the sweeper itself and all runtime state live in
`audiolab.sweep`. Hydra runs this file without registering it in sys.modules, so annotations
here must be real types (no `from __future__ import annotations`, which dataclasses would resolve).
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class TPESamplerConf:
    kind: str = "tpe"
    seed: int | None = 0
    n_startup_trials: int = 10
    multivariate: bool = True
    # Parallel workers see running trials as if they had the worst value, so they do not pile up.
    constant_liar: bool = True


@dataclass
class RandomSamplerConf:
    kind: str = "random"
    seed: int | None = 0


@dataclass
class GridSamplerConf:
    kind: str = "grid"
    seed: int | None = 0


@dataclass
class CmaEsSamplerConf:
    kind: str = "cmaes"
    seed: int | None = 0
    n_startup_trials: int = 1
    restart_strategy: str | None = None


@dataclass
class NSGAIISamplerConf:
    kind: str = "nsga2"
    seed: int | None = 0
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9


@dataclass
class MedianPrunerConf:
    kind: str = "median"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class SuccessiveHalvingPrunerConf:
    kind: str = "successive_halving"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0


@dataclass
class HyperbandPrunerConf:
    kind: str = "hyperband"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3


@dataclass
class NopPrunerConf:
    kind: str = "none"


@dataclass
class AudiolabOptunaSweeperConf:
    """`hydra.sweeper.*` for `hydra/sweeper=optuna`; see README.md, "Optuna sweeps"."""

    _target_: str = "hydra_plugins.audiolab_sweeper.optuna_sweeper.AudiolabOptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": "median"}])
    sampler: Any = None
    pruner: Any = None
    # Trials of the same study name in the same storage are one search: re-running continues it.
    study_name: str = "audiolab"
    # null: sqlite file `optuna.db` under paths.outputs; `journal:PATH`; `sqlite:///PATH`; `postgresql://...`.
    storage: str | None = None
    # Values the study optimises, read from the finished run: val/spec_loss, parameters, step_time.
    objectives: list[str] = field(default_factory=lambda: ["val/spec_loss"])
    directions: list[str] = field(default_factory=lambda: ["minimize"])
    # The study's total: re-running the same command continues until this many trials have finished.
    n_trials: int = 20
    # Worker processes on this machine, each running one trial at a time. null (auto): 1, or with
    # trials_per_device / devices_per_trial set, one per slot: max(1, GPUs // devices_per_trial) * trials_per_device
    # (the CPU counts as one device when there is no GPU).
    n_workers: int | None = None
    # K trials at once on each device (fractional GPUs): each packed CUDA worker gets a 1/K memory share.
    trials_per_device: int = 1
    # D devices per trial: each worker gets D GPUs (CUDA_VISIBLE_DEVICES), or 1/D of its CPU threads per process.
    devices_per_trial: int = 1
    max_failures: int | None = 5
    # Prune a trial at a validation once its mean seconds per training step exceed this (null: no limit), so a
    # search under a wall-time budget spends nothing on recipes too slow for it.
    max_step_time: float | None = None
    # Search space in Hydra's override grammar, e.g. `optim.lr: tag(log, interval(1e-4, 1e-2))`.
    params: dict[str, str] = field(default_factory=dict)
    # Trials to run first, each a space-separated list of overrides, e.g. "optim.lr=1e-3 model.blocks_per_level=2".
    enqueue: list[str] = field(default_factory=list)
    # Seconds between a running trial's heartbeats; a trial silent for grace_period is failed and retried.
    heartbeat_interval: int = 10
    grace_period: int | None = None  # default: 3 x heartbeat_interval
    max_retry: int = 2
    # Compose every trial from a copy of conf/ taken when the sweep starts (edits do not leak into it).
    snapshot: bool = True
    # Set by the sweeper on the worker processes it starts; not for users.
    worker_index: int | None = None


_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name="optuna", node=AudiolabOptunaSweeperConf, provider="audiolab")
for _name, _node in (("tpe", TPESamplerConf), ("random", RandomSamplerConf), ("grid", GridSamplerConf),
                     ("cmaes", CmaEsSamplerConf), ("nsga2", NSGAIISamplerConf)):
    _store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="audiolab")
for _name, _node in (("median", MedianPrunerConf), ("successive_halving", SuccessiveHalvingPrunerConf),
                     ("hyperband", HyperbandPrunerConf), ("none", NopPrunerConf)):
    _store.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="audiolab")


class AudiolabOptunaSweeper(Sweeper):
    """Asks Optuna for trials and launches each as a numbered audiolab run (see audiolab.sweep.sweeper)."""

    def __init__(self, **settings: Any) -> None:
        from audiolab.sweep.sweeper import OptunaSweep

        self._impl = OptunaSweep(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self._impl.sweep(arguments)
