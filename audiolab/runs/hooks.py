"""The run hooks that keep a run's record: run.json and metrics.jsonl, W&B, samples, embedding metrics, the trial.

Each hook owns one concern and says how the run ended in its own `on_end`; see audiolab/train/hooks.py
for the events. The session (audiolab/runs/session.py) puts them in order: embedding metrics finish
before the record is closed, so that `final` in run.json includes them.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import DictConfig, OmegaConf

from audiolab.metrics.evaluate import EmbeddingCache, evaluate_validation, validation_key
from audiolab.runs.loggers import NullLogger
from audiolab.runs.record import RunRecord
from audiolab.runs.samples import write_samples
from audiolab.train.hooks import Hook, RunEnd, Validation
from audiolab.train.trainer import Training

log = logging.getLogger("audiolab")

FIXED_ROLES = ("input", "target")  # sample clips that are the same at every validation of a run


class RecordHook(Hook):
    """run.json (what the run is, its best value, how it ended) and metrics.jsonl (every logged figure)."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record

    def on_start(self, training: Training) -> None:
        amp = training.amp
        self.record.update(parameters=training.n_parameters, device=str(training.device),
                           precision="bf16" if amp == torch.bfloat16 else "fp32", data=training.data.info,
                           **training.recipe.record())
        if training.resumed:  # lines a crashed run logged past its last checkpoint are replayed
            self.record.truncate_metrics_after(training.state.step)

    def on_log(self, step: int, figures: dict[str, float]) -> None:
        self.record.log_metrics(step, figures)
        log.debug("step %d %s", step, " ".join(f"{k}={v:.5g}" for k, v in figures.items()))

    def on_validation(self, training: Training, validation: Validation) -> bool:
        state = training.state
        self.record.log_metrics(validation.step, validation.metrics)
        fields: dict[str, Any] = {"best_val": validation.metrics} if validation.improved else {}
        self.record.update(best_val_spec_loss=state.best_value, best_step=state.best_step, step=validation.step,
                           **fields)
        return False

    def on_end(self, end: RunEnd) -> None:
        fields: dict[str, Any] = {"error": end.error} if end.error else {}
        result = end.result
        if result is not None:
            fields.update(step=result.step, best_val_spec_loss=result.best_value, best_step=result.best_step,
                          final=result.last_val, step_time=result.step_time if result.steps_run else None,
                          timing={"train_s": result.train_seconds, "validate_s": result.validate_seconds,
                                  "steps": result.steps_run})
            if result.signal is not None:
                fields["signal"] = result.signal
        self.record.finish(end.status, **fields)


class TrackerHook(Hook):
    """The experiment tracker (W&B): scalars, the best value so far, the final figures and the run's end."""

    def __init__(self, tracker: NullLogger) -> None:
        self.tracker = tracker

    def on_log(self, step: int, figures: dict[str, float]) -> None:
        self.tracker.log(figures, step)

    def on_validation(self, training: Training, validation: Validation) -> bool:
        state = training.state
        self.tracker.log(validation.metrics, validation.step)
        self.tracker.summary({"best/val_spec_loss": state.best_value, "best/step": state.best_step})
        return False

    def on_end(self, end: RunEnd) -> None:
        if end.status == "pruned":
            self.tracker.add_tags("pruned")
        if end.status == "completed" and end.result is not None:
            self.tracker.summary({f"final/{k}": v for k, v in end.result.last_val.items()})
        self.tracker.finish(end.status)


class SamplesHook(Hook):
    """At each validation: WAVs of the fixed sample clips and a PNG of their spectrograms, also sent to the tracker.

    The input and target clips never change within a run, so the tracker gets them once: at the run's first
    validation (a resumed run that already wrote samples has sent them).
    """

    def __init__(self, run_dir: Path, tracker: NullLogger) -> None:
        self.dir, self.tracker = Path(run_dir) / "samples", tracker
        self.run_name = Path(run_dir).name
        self.fixed_sent: bool | None = None  # known at the first validation

    def on_validation(self, training: Training, validation: Validation) -> bool:
        validator = training.validator
        if not validator.sample_index:
            return False
        if self.fixed_sent is None:
            self.fixed_sent = any(self.dir.glob("step*_spectrograms.png"))
        clips = validator.sample_clips(validation.outputs)
        rate = training.data.sample_rate
        _, png = write_samples(self.dir, validation.step, clips, rate, training.recipe.sample_notes(clips),
                               run_name=self.run_name)
        sent = {role: items for role, items in clips.items() if not (self.fixed_sent and role in FIXED_ROLES)}
        self.tracker.log_media(validation.step, {f"samples/clip{i}_{role}": (audio, rate)
                                                 for role, items in sent.items() for i, audio in enumerate(items)},
                               {"samples/spectrograms": png})
        self.fixed_sent = True
        return False


class EmbeddingMetricsHook(Hook):
    """FAD, KID and diversity (metrics.eval) of the last validation's outputs, when a run completes."""

    def __init__(self, cfg: DictConfig, record: RunRecord, tracker: NullLogger) -> None:
        self.cfg, self.record, self.tracker = cfg, record, tracker
        self.training: Training | None = None
        self.outputs: torch.Tensor | None = None

    def on_start(self, training: Training) -> None:
        self.training = training

    def on_validation(self, training: Training, validation: Validation) -> bool:
        self.outputs = validation.outputs
        return False

    def on_end(self, end: RunEnd) -> None:
        if end.status != "completed" or not (self.cfg.get("metrics") and self.cfg.metrics.eval):
            return
        training, result = self.training, end.result
        validator = training.validator
        if self.outputs is None:  # resumed at max_steps: nothing was validated in this call
            result.last_val, self.outputs = validator.run(training.state.eval_model, training.amp)
        data = training.data
        cache = EmbeddingCache(Path(self.cfg.paths.cache) / "embeddings")
        key = validation_key(data.info, data.validation_segment, len(validator.targets),
                             OmegaConf.to_container(self.cfg.task))
        try:
            figures = evaluate_validation(self.cfg.metrics, validator.targets, self.outputs, data.sample_rate,
                                          training.device, cache, key)
        except Exception as err:  # noqa: BLE001 - training is done and saved; a broken embedder must not undo that
            log.error("metrics: embedding metrics failed, the run stands: %s: %s", type(err).__name__, err)
            self.record.update(eval_error=f"{type(err).__name__}: {err}")
            return
        if figures:
            self.record.log_metrics(result.step, figures)
            self.record.update(eval=figures)
            self.tracker.log(figures, result.step)
            self.tracker.summary(figures)
            result.last_val = {**result.last_val, **figures}
            log.info("step %d: %s", result.step, ", ".join(f"{k} {v:.5g}" for k, v in figures.items()))


class Trial(Protocol):
    """What a run tells the sweep trial it belongs to (audiolab.sweep.trial.TrialLink is one)."""

    study_name: str
    number: int
    max_step_time: float | None

    def start(self, run_number: int | None, run_dir: Path) -> None: ...

    def set_wandb_id(self, run_id: str | None) -> None: ...

    def report(self, step: int, value: float) -> bool: ...

    def complete(self, measured: dict[str, float], best_step: int | None) -> None: ...

    def prune(self, step: int, reason: str | None = None) -> None: ...

    def fail(self, reason: str, interrupted: bool = False) -> None: ...


class TrialHook(Hook):
    """Reports each validation to the sweep's pruner, and tells the study how the run ended."""

    def __init__(self, trial: Trial) -> None:
        self.trial = trial
        self.parameters = math.nan
        self.window_step_times: list[float] = []  # seconds per step of each logged window, the first left out
        self.pruned_reason: str | None = None
        self.first_window_seen = False

    def on_start(self, training: Training) -> None:
        self.parameters = training.n_parameters

    def on_log(self, step: int, figures: dict[str, float]) -> None:
        rate = figures.get("perf/steps_per_s")
        if rate and math.isfinite(rate):
            if self.first_window_seen:  # the first window holds the first, slow steps (allocation, warm-up)
                self.window_step_times.append(1.0 / rate)
            self.first_window_seen = True

    def on_validation(self, training: Training, validation: Validation) -> bool:
        prune = self.trial.report(validation.step, validation.metrics["val/spec_loss"])
        # at the last step the run is complete: pruning it then would only record a finished trial as PRUNED
        prune = prune and validation.step < training.max_steps
        if prune:
            log.info("step %d: pruned by the sweep's pruner", validation.step)
        limit = getattr(self.trial, "max_step_time", None)
        if not prune and limit is not None and self.window_step_times and validation.step < training.max_steps:
            step_time = sum(self.window_step_times) / len(self.window_step_times)
            if step_time > limit:
                self.pruned_reason = (f"over the step-time budget: {step_time:.3f} s per step > "
                                      f"hydra.sweeper.max_step_time={limit:g}")
                log.info("step %d: pruned, %s", validation.step, self.pruned_reason)
                prune = True
        return prune

    def on_end(self, end: RunEnd) -> None:
        result = end.result
        if end.status == "failed":
            self.trial.fail(end.error or "failed")
        elif end.status == "interrupted":
            self.trial.fail(f"interrupted ({end.error})" if end.error else f"interrupted by signal {end.signal}",
                            interrupted=True)
        elif end.status == "pruned":
            self.trial.prune(result.step, self.pruned_reason)
        else:
            self.trial.complete({"val/spec_loss": result.best_value, "parameters": self.parameters,
                                 "step_time": result.step_time}, result.best_step)
