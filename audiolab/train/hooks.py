"""Run hooks: each one owns one concern of a run (checkpoints, records, tracking, samples, a sweep's trial).

The loop tells every hook the same events, in list order:
- `on_start(training)`: built and restored, about to train;
- `on_step(state)`: at the end of every step, after its log line and validation;
- `on_log(step, figures)`: every trainer.log_every steps;
- `on_validation(training, validation)`: after each validation; returning True stops the run as pruned;
- `after_validation(training, validation)`: once every hook has heard the validation. last.pt is written here,
  as the commit point: a kill before it resumes from the previous last.pt and replays the validation, so no
  validation line is lost and best.pt (written before it) is never older than what run.json says;
- `on_end(end)`: once, however the run ended (completed, interrupted, pruned or failed).

This module has the hooks that need nothing above the training layer; the ones that write run.json,
talk to W&B or to Optuna are in audiolab/runs/hooks.py.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from audiolab.train.checkpoint import save_checkpoint
from audiolab.train.state import TrainState

if TYPE_CHECKING:  # the same layer: only for the annotations
    from audiolab.train.trainer import Training

log = logging.getLogger("audiolab.train")


@dataclass
class Validation:
    """One validation's figures and outputs, and whether it was the best so far."""

    step: int
    metrics: dict[str, float]
    outputs: torch.Tensor
    improved: bool


@dataclass
class TrainResult:
    """How a call to `train` ended."""

    status: str  # completed | interrupted | pruned
    step: int
    best_value: float
    best_step: int | None
    last_val: dict[str, float] = field(default_factory=dict)
    signal: int | None = None
    steps_run: int = 0  # in this call (a resume starts counting again)
    train_seconds: float = 0.0  # wall time of those steps, validation excluded
    validate_seconds: float = 0.0  # wall time of validations, checkpoints and samples in this call

    @property
    def step_time(self) -> float:
        """Mean wall seconds per training step in this call."""
        return self.train_seconds / self.steps_run if self.steps_run else math.nan


@dataclass
class RunEnd:
    """How a run ended, for the hooks' last word: a result, or an error when it failed or was aborted."""

    status: str  # completed | interrupted | pruned | failed
    result: TrainResult | None = None  # None when training raised
    error: str | None = None  # "Type: message" of what was raised, if anything

    @property
    def signal(self) -> int | None:
        """The signal that stopped a cleanly interrupted run."""
        return self.result.signal if self.result is not None else None


class Hook:
    """A run hook; every method does nothing unless overridden."""

    def on_start(self, training: Training) -> None:
        """Training is built (and restored); the first step is next."""

    def on_step(self, state: TrainState) -> bool | None:
        """A step has finished, with its log line and validation (`state.step` counts it); True stops the run
        there, cleanly, as a signal would (status interrupted, last.pt saved)."""
        return None

    def on_log(self, step: int, figures: dict[str, float]) -> None:
        """The train/ and perf/ figures of a logged step."""

    def on_validation(self, training: Training, validation: Validation) -> bool:
        """A validation has finished; True stops the run as pruned."""
        return False

    def after_validation(self, training: Training, validation: Validation) -> None:
        """Every hook has handled this validation (and its records are written)."""

    def on_end(self, end: RunEnd) -> None:
        """The run is over."""


class Hooks(Hook):
    """Hooks called in order; `on_validation` asks each of them."""

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.hooks = list(hooks)

    def on_start(self, training: Training) -> None:
        for hook in self.hooks:
            hook.on_start(training)

    def on_step(self, state: TrainState) -> bool:
        stops = [hook.on_step(state) for hook in self.hooks]  # every hook hears it
        return any(stops)

    def on_log(self, step: int, figures: dict[str, float]) -> None:
        for hook in self.hooks:
            hook.on_log(step, figures)

    def on_validation(self, training: Training, validation: Validation) -> bool:
        verdicts = [hook.on_validation(training, validation) for hook in self.hooks]  # every hook hears it
        for hook in self.hooks:
            hook.after_validation(training, validation)
        return any(verdicts)

    def on_end(self, end: RunEnd) -> None:
        for hook in self.hooks:
            hook.on_end(end)


class CheckpointHook(Hook):
    """best.pt when validation improved, then last.pt after every hook recorded it, and on a clean interrupt."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.state: TrainState | None = None

    def on_start(self, training: Training) -> None:
        self.state = training.state

    def on_validation(self, training: Training, validation: Validation) -> bool:
        if validation.improved:
            save_checkpoint(self.dir / "best.pt", self.state.state_dict())
        return False

    def after_validation(self, training: Training, validation: Validation) -> None:
        save_checkpoint(self.dir / "last.pt", self.state.state_dict())

    def on_end(self, end: RunEnd) -> None:
        if end.status == "interrupted" and end.error is None and self.state is not None:
            save_checkpoint(self.dir / "last.pt", self.state.state_dict())
            log.warning("interrupted at step %d; resume with: python run.py resume=%s", self.state.step,
                        self.dir.parent)


class ConsoleHook(Hook):
    """The progress bar, and one log line per validation."""

    def __init__(self, name: str, enabled: bool) -> None:
        self.name, self.enabled = name, enabled
        self.bar: tqdm | None = None
        self.redirect = contextlib.ExitStack()

    def on_start(self, training: Training) -> None:
        self.bar = tqdm(total=training.max_steps, initial=training.state.step, desc=self.name, dynamic_ncols=True,
                        leave=False, disable=None if self.enabled else True)
        if not self.bar.disable:
            # console log lines go through tqdm.write while the bar is up, so they never land inside it
            self.redirect.enter_context(logging_redirect_tqdm())

    def on_step(self, state: TrainState) -> None:
        self.bar.update(1)
        if "train/loss" in state.latest:
            self.bar.set_postfix(loss=f"{state.latest['train/loss']:.4f}", refresh=False)

    def on_validation(self, training: Training, validation: Validation) -> bool:
        state, val = training.state, validation.metrics
        log.info("step %d: val/spec_loss %.5f%s (best %.5f at step %d)", validation.step, val["val/spec_loss"],
                 f", val/improvement {val['val/improvement']:+.4f}" if "val/improvement" in val else "",
                 state.best_value, state.best_step)
        return False

    def on_end(self, end: RunEnd) -> None:
        if self.bar is not None:
            self.bar.close()
        self.redirect.close()


class StepCallback(Hook):
    """Calls `fn(step)` after every step (tests use it to interrupt or inspect a run at a chosen step)."""

    def __init__(self, fn: Callable[[int], None]) -> None:
        self.fn = fn

    def on_step(self, state: TrainState) -> None:
        self.fn(state.step)
