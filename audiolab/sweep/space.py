"""The search space: Hydra's override grammar (`interval`, `choice`, `range`, `tag(log, ...)`, `int(...)`) to Optuna.

`hydra.sweeper.params` maps a config key to a sweep expression, e.g.
`optim.lr: tag(log, interval(1e-4, 1e-2))`. A plain value there (no sweep) is a fixed override.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import Trial

_PRIMITIVE = (bool, int, float, str, type(None))


@dataclass
class Dimension:
    """One searched key: its Optuna distribution, and for a choice the override text of each option."""

    key: str
    distribution: BaseDistribution
    choice_text: dict[Any, str] = field(default_factory=dict)

    def override(self, value: Any) -> str:
        """The `key=value` override that puts `value` into a job's config."""
        if self.choice_text:
            return f"{self.key}={self.choice_text[value]}"
        if isinstance(value, bool):
            return f"{self.key}={str(value).lower()}"
        if isinstance(value, float):
            return f"{self.key}={value!r}"
        return f"{self.key}={value}"

    def suggest(self, trial: Trial) -> Any:
        """This dimension's value for the trial (a fixed or retried trial returns its stored value)."""
        dist = self.distribution
        if isinstance(dist, CategoricalDistribution):
            return trial.suggest_categorical(self.key, dist.choices)
        if isinstance(dist, IntDistribution):
            return trial.suggest_int(self.key, dist.low, dist.high, step=dist.step, log=dist.log)
        assert isinstance(dist, FloatDistribution)
        return trial.suggest_float(self.key, dist.low, dist.high, step=dist.step, log=dist.log)

    def grid_values(self) -> list[Any]:
        """Every value of a finite dimension (for the grid sampler)."""
        dist = self.distribution
        if isinstance(dist, CategoricalDistribution):
            return list(dist.choices)
        step = getattr(dist, "step", None)
        if step is None:
            raise ValueError(f"{self.key}: the grid sampler needs choice(...) or range(...), not a continuous "
                             "interval(...)")
        n = int(round((dist.high - dist.low) / step)) + 1
        values = [dist.low + i * step for i in range(n)]
        return [int(v) for v in values] if isinstance(dist, IntDistribution) else values


@dataclass
class SearchSpace:
    """Searched dimensions plus fixed overrides applied to every trial."""

    dimensions: dict[str, Dimension]
    fixed: list[str]

    def suggest(self, trial: Trial) -> list[str]:
        """Ask the trial for a value of every dimension; return the job's overrides."""
        return [*self.fixed, *(dim.override(dim.suggest(trial)) for dim in self.dimensions.values())]

    def overrides_for(self, params: Mapping[str, Any]) -> list[str]:
        """The job overrides for already chosen parameter values."""
        return [*self.fixed, *(self.dimensions[k].override(v) for k, v in params.items() if k in self.dimensions)]

    def grid(self) -> dict[str, list[Any]]:
        """The full grid, for optuna.samplers.GridSampler."""
        return {key: dim.grid_values() for key, dim in self.dimensions.items()}

    def parse_enqueued(self, entry: str) -> dict[str, Any]:
        """Parameter values from an enqueue entry such as `"optim.lr=1e-3 model.blocks_per_level=2"`."""
        params: dict[str, Any] = {}
        for override in _parse(shlex.split(entry)):
            key = override.get_key_element()
            if key not in self.dimensions:
                raise ValueError(f"hydra.sweeper.enqueue: {key!r} is not in the search space "
                                 f"({', '.join(self.dimensions) or 'empty'})")
            dim = self.dimensions[key]
            value = override.value()
            if dim.choice_text:
                text = override.get_value_element_as_str()
                matches = [v for v, t in dim.choice_text.items() if t == text or v == value]
                if not matches:
                    raise ValueError(f"hydra.sweeper.enqueue: {key}={text} is not one of the choices")
                value = matches[0]
            params[key] = value
        return params


def _parse(lines: Iterable[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides(list(lines))


def _dimension(override: Override) -> Dimension:
    key = override.get_key_element()
    value = override.value()
    if isinstance(value, ChoiceSweep):
        texts = list(override.sweep_string_iterator())
        raw = list(value.list)
        choices = raw if all(isinstance(v, _PRIMITIVE) for v in raw) else texts
        return Dimension(key, CategoricalDistribution(choices), dict(zip(choices, texts, strict=True)))
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ValueError(f"{key}: range(...) is empty")
        if all(isinstance(v, int) for v in values):
            return Dimension(key, IntDistribution(values[0], values[-1], step=int(value.step)))
        return Dimension(key, FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step)))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if log and not value.start > 0:
            raise ValueError(f"{key}: a log interval needs a positive start, got {value.start}")
        if not value.start < value.end or not all(math.isfinite(float(v)) for v in (value.start, value.end)):
            raise ValueError(f"{key}: interval({value.start}, {value.end}) is empty")
        if isinstance(value.start, int) and isinstance(value.end, int):
            return Dimension(key, IntDistribution(value.start, value.end, log=log))
        return Dimension(key, FloatDistribution(float(value.start), float(value.end), log=log))
    raise ValueError(f"{key}: unsupported sweep {override.get_value_element_as_str()}")


def parse_search_space(params: Mapping[str, Any], extra: Iterable[str] = ()) -> SearchSpace:
    """Build the space from `hydra.sweeper.params` plus command-line overrides (sweeps there join the space)."""
    lines = [f"{k}={v}" for k, v in params.items()]
    dimensions: dict[str, Dimension] = {}
    fixed: list[str] = []
    for override in _parse([*lines, *extra]):
        key = override.get_key_element()
        if override.is_sweep_override():
            try:
                dimensions[key] = _dimension(override)
            except ValueError as err:
                raise ValueError(f"hydra.sweeper.params: {err}") from None
        else:
            dimensions.pop(key, None)  # a fixed value on the command line pins a searched key
            fixed.append(override.input_line)
    return SearchSpace(dimensions, fixed)
