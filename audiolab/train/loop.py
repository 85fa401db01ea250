"""The training loop: take a batch, let the recipe step, tell the hooks, validate when due, stop when told.

Everything random in a step is seeded by (seed, step) or restored from the checkpoint (see
audiolab/train/batches.py and state.py), so a run resumed from step k replays exactly what an
uninterrupted run would have done, bitwise on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from audiolab.train.batches import Batch
from audiolab.train.hooks import Hook, TrainResult, Validation
from audiolab.train.recipes.base import NonFiniteLossError
from audiolab.train.signals import stop_on_signals
from audiolab.train.timing import Clock

if TYPE_CHECKING:  # the same layer: only for the annotations
    from audiolab.train.state import TrainState
    from audiolab.train.trainer import Training


def fit(training: Training, batches: Iterator[Batch], hooks: Hook) -> TrainResult:
    """Train from `training.state.step` to `training.max_steps`; stop early on a signal, a pruning verdict or a
    hook's stop."""
    state, recipe = training.state, training.recipe
    clock = Clock(training.audio_seconds_per_step, training.device)
    last_val: dict[str, float] = {}
    pruned = stopped = False
    signum = 0
    with stop_on_signals() as received:
        while state.step < training.max_steps and not signum and not stopped:
            with clock.training():
                recipe.step(state, next(batches))
                state.end_step()
            last = state.step == training.max_steps
            if state.step % training.log_every == 0 or last:
                figures = {**state.latest, "train/lr": state.scheduler.get_last_lr()[0], **recipe.figures()}
                hooks.on_log(state.step, figures | clock.perf())
            if state.step % training.val_every == 0 or last:
                with clock.validating():
                    validation = validate(training)
                    last_val = validation.metrics
                    pruned = training.world.any(bool(hooks.on_validation(training, validation)))
                if pruned:
                    break
            # Under torchrun every rank stops after the same step, whichever rank got the signal or the hook's stop.
            stop = int(bool(hooks.on_step(state)))  # first: a hook may itself signal
            signum, stop = training.world.max([received[0] if received else 0, stop])
            stopped = bool(stop)
    return TrainResult(status="interrupted" if signum or stopped else "pruned" if pruned else "completed",
                       step=state.step,
                       best_value=state.best_value, best_step=state.best_step, last_val=last_val,
                       signal=signum or None, steps_run=clock.steps,
                       train_seconds=clock.train_seconds, validate_seconds=clock.validate_seconds)


def validate(training: Training) -> Validation:
    """Score the eval weights on the fixed validation set, and keep the best value."""
    state = training.state
    if training.world.distributed:  # DDP keeps the ranks' weights equal; check that nothing else drifted
        training.world.check_same("weight checksums", weight_checksum(state))
    metrics, outputs = training.validator.run(state.eval_model, training.amp, training.world)
    if not math.isfinite(metrics["val/spec_loss"]):
        raise NonFiniteLossError(f"non-finite val/spec_loss at step {state.step} (not checkpointed)")
    return Validation(state.step, metrics, outputs, improved=state.observe(metrics["val/spec_loss"]))


def weight_checksum(state: TrainState) -> float:
    """A float64 sum of every trained and averaged weight, equal on ranks whose weights are equal."""
    modules = [state.model, *([state.ema.module] if state.ema is not None else [])]
    return float(sum(p.detach().double().sum().item() for m in modules for p in m.parameters()))
