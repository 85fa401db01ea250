"""The training loop: restore, then train, validate, checkpoint, log. Reads top to bottom.

Everything random in a step is seeded by (seed, step): the crops, the degradation, and (through the
global torch RNG saved in every checkpoint) dropout. So a run resumed from step k replays exactly what
an uninterrupted run would have done, bitwise on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from audiolab.data.clips import AudioData, fixed_crops, train_loader
from audiolab.data.folder import DataError
from audiolab.losses.composite import build_loss
from audiolab.metrics.evaluate import EmbeddingCache, evaluate_validation, validation_key
from audiolab.metrics.spectral import SpecDistance
from audiolab.optim.build import build_optimizer, build_scheduler, load_optimizer_state
from audiolab.runs.loggers import NullLogger
from audiolab.runs.record import RunRecord
from audiolab.runs.samples import write_samples
from audiolab.tasks.autoencode import active_dimensions
from audiolab.train.adversarial import AdversarialStage, beta_at, phase2_start
from audiolab.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from audiolab.train.device import autocast_dtype, peak_memory_gib, pick_device

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss, gradient norm or validation distance became NaN or infinite."""


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


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """While active, SIGINT/SIGTERM only record themselves; the loop checks and stops cleanly."""
    received: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        if received:  # a second signal: the user means it
            raise KeyboardInterrupt
        received.append(signum)
        log.warning("received %s: finishing this step, saving last.pt and stopping",
                    signal.Signals(signum).name)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def forward_with_stats(model: torch.nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's output, plus its latent statistics ('kl', 'latent') when it is a VAE."""
    if hasattr(model, "forward_with_stats"):
        return model.forward_with_stats(inputs)
    return model(inputs), {}


class Validator:
    """Fixed validation crops, their degraded inputs and targets, and the fixed `val/spec_loss`."""

    def __init__(self, data: AudioData, task: Any, device: torch.device, n_samples: int) -> None:
        crops = fixed_crops(data.val, data.segment, data.val_max_crops)
        if not crops:
            raise ValueError(f"the validation split has no clip of at least one segment ({data.segment} samples)")
        clean = torch.from_numpy(np.stack([data.val.crop(c, s, data.segment) for c, s in crops])).to(device)
        pairs = [task.validation_pair(clean[i:i + data.batch_size], i)
                 for i in range(0, len(clean), data.batch_size)]
        self.inputs = torch.cat([p[0] for p in pairs])
        self.targets = torch.cat([p[1] for p in pairs])
        self.batch_size = data.batch_size
        self.sample_rate = data.sample_rate
        self.distance = SpecDistance().to(device)
        # Sample clips spread over the validation set, the same in every run.
        self.sample_index = np.linspace(0, len(crops) - 1, n_samples).round().astype(int).tolist() if n_samples else []
        self.baseline = self.mean_distance(self.inputs) if task.has_input_baseline else None
        # Without a do-nothing baseline (autoencoding), silence is the fixed reference instead.
        self.silence = None if task.has_input_baseline else self.mean_distance(torch.zeros_like(self.targets))
        self.active_threshold = float(getattr(task, "active_threshold", 0.01))

    def mean_distance(self, outputs: torch.Tensor) -> float:
        """Crop-weighted mean of the fixed spectral distance between outputs and targets."""
        total = 0.0
        for i in range(0, len(outputs), self.batch_size):
            out, tgt = outputs[i:i + self.batch_size], self.targets[i:i + self.batch_size]
            total += float(self.distance(out, tgt)) * len(out)
        return total / len(outputs)

    @torch.no_grad()
    def run(self, model: torch.nn.Module, amp: torch.dtype | None) -> tuple[dict[str, float], torch.Tensor]:
        """Validate in eval mode (then restore train mode); return metrics and all outputs."""
        was_training = model.training
        model.eval()
        try:
            outputs, kls, latents = [], [], []
            for i in range(0, len(self.inputs), self.batch_size):
                batch = self.inputs[i:i + self.batch_size]
                with torch.autocast(self.inputs.device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    out, stats = forward_with_stats(model, batch)
                outputs.append(out.float())
                if "kl" in stats:
                    kls.append(float(stats["kl"]) * len(batch))
                    latents.append(stats["latent"].float())
            outputs = torch.cat(outputs)
        finally:
            model.train(was_training)
        metrics = {"val/spec_loss": self.mean_distance(outputs)}
        if self.baseline is not None:
            metrics["val/spec_loss_input"] = self.baseline
            metrics["val/improvement"] = 1.0 - metrics["val/spec_loss"] / self.baseline
        if self.silence is not None:
            metrics["val/spec_loss_silence"] = self.silence
        if kls:
            metrics["val/kl"] = sum(kls) / len(outputs)
            metrics["val/active_dims"] = float(active_dimensions(torch.cat(latents), self.active_threshold))
        return metrics, outputs

    def sample_clips(self, outputs: torch.Tensor) -> dict[str, list[np.ndarray]]:
        """input/output/target audio of the fixed sample clips, as numpy arrays (no input when it is the target)."""
        roles = (("input", self.inputs),) if self.baseline is not None else ()
        return {role: [t[i].detach().cpu().float().numpy() for i in self.sample_index]
                for role, t in (*roles, ("output", outputs), ("target", self.targets))}


def _checkpoint_payload(model: torch.nn.Module, ema: AveragedModel | None, optimizer: torch.optim.Optimizer,
                        scheduler: Any, step: int, best_value: float, best_step: int | None,
                        cfg: DictConfig, stage: AdversarialStage | None, latest: dict[str, float]) -> dict[str, Any]:
    return {
        "format": 1,
        "step": step,
        "phase": 2 if stage is not None else 1,
        # Phase 2's discriminator and its optimizer (None in phase 1).
        "adversarial": stage.state_dict() if stage is not None else None,
        "latest_train": dict(latest),  # the last value of each train/ figure, so a resumed run logs the same
        "model": model.state_dict(),
        # With EMA on, validation scores these weights (keys prefixed `module.`): use them for inference.
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "best": {"value": best_value, "step": best_step},
        "rng": capture_rng(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def build_data(data_cfg: DictConfig) -> AudioData:
    """Instantiate the dataset; a DataError (no usable file, missing folder) comes out as itself."""
    try:
        return instantiate(data_cfg)
    except InstantiationException as err:
        if isinstance(err.__cause__, DataError):
            raise err.__cause__ from None
        raise


def train(cfg: DictConfig, record: RunRecord, tracker: NullLogger | None = None, resume: bool = False,
          after_step: Callable[[int], None] | None = None,
          on_validation: Callable[[int, dict[str, float]], bool] | None = None) -> TrainResult:
    """Train `cfg` in `record.dir`; with resume=True continue from checkpoints/last.pt.

    `on_validation(step, metrics)` runs after each validation; returning True stops the run as pruned.
    """
    tracker = tracker or NullLogger()
    run_dir = record.dir
    trainer = cfg.trainer
    if trainer.threads:
        torch.set_num_threads(int(trainer.threads))
    device = pick_device(trainer.device)
    amp = autocast_dtype(device, trainer.precision)
    seed_everything(int(trainer.seed))

    # --- build ---------------------------------------------------------------------------------
    model: torch.nn.Module = instantiate(cfg.model).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    data = build_data(cfg.data)
    task = instantiate(cfg.task, sample_rate=data.sample_rate)
    # Augmentations run on the device, in batch, on clean audio (before a task's degradation).
    augment = instantiate(cfg.augment, sample_rate=data.sample_rate) if cfg.get("augment") else None
    loss_fn = build_loss(cfg.loss).to(device)
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.optim, optimizer, int(trainer.max_steps))
    ema_decay = trainer.get("ema_decay")
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(ema_decay)), use_buffers=True)
           if ema_decay else None)
    validator = Validator(data, task, device, int(trainer.sample_clips))
    phase2_at = phase2_start(trainer, bool(cfg.get("discriminator")))
    stage: AdversarialStage | None = None
    d_every, beta_warmup = int(trainer.d_every), int(trainer.beta_warmup_steps)
    beta_start, beta_end = float(trainer.beta_start), float(trainer.beta_end)
    grad_clip = float(cfg.optim.grad_clip) if cfg.optim.get("grad_clip") else math.inf
    log.info("model %s: %s parameters (%.2f M) on %s%s", cfg.model._target_.rsplit(".", 1)[-1],
             f"{n_params:,}", n_params / 1e6, device, f", {amp} autocast" if amp else "")
    if augment:
        log.info("augmentations: %s", augment.describe())
    record.update(parameters=n_params, device=str(device), precision="bf16" if amp == torch.bfloat16 else "fp32",
                  data=data.info, phase2_start=phase2_at)
    if phase2_at is not None:
        log.info("two-phase training: phase 2 (discriminator %s) from step %d",
                 str(cfg.discriminator.model._target_).rsplit(".", 1)[-1], phase2_at)
        if phase2_at >= int(trainer.max_steps):
            log.warning("trainer.phase1_steps=%d >= trainer.max_steps=%d: phase 2 never starts", phase2_at,
                        int(trainer.max_steps))

    def enter_phase2() -> AdversarialStage:
        if hasattr(model, "freeze_encoder"):
            model.freeze_encoder()
        built = AdversarialStage(cfg.discriminator, loss_fn, device, bool(trainer.d_concat))
        log.info("step %d: phase 2: discriminator with %s parameters, updated every %d steps%s", step,
                 f"{built.n_parameters:,}", d_every, "; encoder frozen" if hasattr(model, "freeze_encoder") else "")
        return built

    # --- restore -------------------------------------------------------------------------------
    step, best_value, best_step = 0, math.inf, None
    latest: dict[str, float] = {}  # the last value of every train/ figure
    if resume:
        # Loaded on CPU: RNG states must stay CPU tensors; load_state_dict moves the rest to the device.
        ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt", map_location="cpu")
        model.load_state_dict(ckpt["model"])
        load_optimizer_state(optimizer, ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        step, best_value, best_step = ckpt["step"], ckpt["best"]["value"], ckpt["best"]["step"]
        if ckpt.get("adversarial") is not None:
            stage = enter_phase2()
            stage.load_state_dict(ckpt["adversarial"])
        latest.update(ckpt.get("latest_train") or {})
        restore_rng(ckpt["rng"])
        record.truncate_metrics_after(step)
        log.info("resumed from step %d (best val/spec_loss %.5f at step %s)", step, best_value, best_step)
    if validator.baseline is not None:
        log.info("val/spec_loss_input (do-nothing baseline): %.5f", validator.baseline)

    def checkpoint(name: str) -> None:
        save_checkpoint(run_dir / "checkpoints" / name,
                        _checkpoint_payload(model, ema, optimizer, scheduler, step, best_value, best_step, cfg, stage,
                                            latest))

    # --- train ---------------------------------------------------------------------------------
    max_steps = int(trainer.max_steps)
    seed = int(trainer.seed)
    crop_length = augment.input_length(data.segment) if augment else data.segment  # pitch needs spare samples
    loader = train_loader(data.train, crop_length, data.batch_size, seed, start_step=step,
                          num_workers=data.num_workers, fixed_batch=bool(trainer.overfit),
                          pin_memory=device.type == "cuda", backend=data.loader)
    batches = iter(loader)
    last_val: dict[str, float] = {}
    outputs_val: torch.Tensor | None = None
    model.train()
    bar = tqdm(total=max_steps, initial=step, desc=run_dir.name, dynamic_ncols=True, leave=False,
               disable=None if trainer.progress else True)
    window_start, window_steps = time.perf_counter(), 0
    steps_run, train_seconds, validate_seconds, pruned = 0, 0.0, 0.0, False
    with stop_on_signals() as received:
        while step < max_steps and not received:
            step_start = time.perf_counter()
            clean = data.train.to_float(next(batches).to(device, non_blocking=True))
            # Overfit mode repeats step 0's crops, augmentation and degradation: one truly fixed batch.
            draw_step = 0 if trainer.overfit else step
            if augment:
                clean = augment(clean, np.random.default_rng([seed, draw_step, 2]), data.segment)
            task_rng = np.random.default_rng([seed, draw_step, 1])
            inputs, targets = task.training_pair(clean, task_rng)
            if phase2_at is not None and step >= phase2_at and stage is None:
                stage = enter_phase2()
            if stage is not None and (step - phase2_at) % d_every == 0:
                # Phase 2, discriminator's turn: the generator only produces audio.
                with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    outputs = model(inputs)
                d_values = stage.discriminator_step(targets, outputs, amp)
                if not all(math.isfinite(v) for v in d_values.values()):
                    raise NonFiniteLossError(f"non-finite discriminator step at step {step + 1}: {d_values} "
                                             "(stopped without checkpointing)")
                stage.optimizer.step()
                latest.update({f"train/{k}": v for k, v in d_values.items()})
            else:
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    outputs, stats = forward_with_stats(model, inputs)
                loss, terms = loss_fn(outputs, targets)
                if "kl" in stats:
                    terms["kl"] = stats["kl"]
                    latest["train/beta"] = beta_at(step, beta_warmup, beta_start, beta_end)
                    if stats["kl"].requires_grad:  # frozen encoder in phase 2: the KL is a constant
                        loss = loss + latest["train/beta"] * stats["kl"]
                if stage is not None:
                    gan_loss, gan_terms = stage.generator_terms(targets, outputs, amp)
                    loss, terms = loss + gan_loss, terms | gan_terms
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                loss_value, grad_value = float(loss.detach()), float(grad_norm)  # one sync per step
                if not (math.isfinite(loss_value) and math.isfinite(grad_value)):
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step + 1}: loss={loss_value}, grad_norm={grad_value}, terms="
                        + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                        + " (stopped without checkpointing; try a lower optim.lr or tighter optim.grad_clip)")
                latest.update({"train/loss": loss_value, "train/grad_norm": grad_value,
                               **{f"train/{k}": float(v.detach()) for k, v in terms.items()}})
                optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            window_steps += 1
            steps_run += 1
            train_seconds += time.perf_counter() - step_start
            bar.update(1)
            if "train/loss" in latest:
                bar.set_postfix(loss=f"{latest['train/loss']:.4f}", refresh=False)

            if step % int(trainer.log_every) == 0 or step == max_steps:
                elapsed = time.perf_counter() - window_start
                # The latest value of every term: in phase 2 a step updates either the generator or the
                # discriminator, so each logged figure comes from the most recent step that computed it.
                metrics = {**latest, "train/lr": scheduler.get_last_lr()[0], "train/phase": 2 if stage else 1}
                audio_seconds = window_steps * data.batch_size * data.segment / data.sample_rate
                perf = {"perf/steps_per_s": window_steps / elapsed, "perf/audio_s_per_s": audio_seconds / elapsed,
                        "perf/peak_mem_gib": peak_memory_gib(device)}
                record.log_metrics(step, metrics | perf)
                tracker.log(metrics | perf, step)
                log.debug("step %d %s", step, " ".join(f"{k}={v:.5g}" for k, v in (metrics | perf).items()))
                window_start, window_steps = time.perf_counter(), 0

            # --- validate, checkpoint, log ---------------------------------------------------------
            if step % int(trainer.val_every) == 0 or step == max_steps:
                validate_start = time.perf_counter()
                last_val, outputs_val = validator.run(ema.module if ema is not None else model, amp)
                if not math.isfinite(last_val["val/spec_loss"]):
                    raise NonFiniteLossError(f"non-finite val/spec_loss at step {step} (not checkpointed)")
                improved = last_val["val/spec_loss"] < best_value
                if improved:
                    best_value, best_step = last_val["val/spec_loss"], step
                checkpoint("last.pt")
                if improved:
                    checkpoint("best.pt")
                record.log_metrics(step, last_val)
                record.update(best_val_spec_loss=best_value, best_step=best_step, step=step)
                tracker.log(last_val, step)
                if validator.sample_index:
                    clips = validator.sample_clips(outputs_val)
                    verdicts = None
                    if stage is not None:  # the discriminator's mean logit on each real and generated clip
                        verdicts = {role: [f"D {v:+.3g}" for v in stage.verdict(torch.from_numpy(np.stack(items))
                                                                                  .to(device))]
                                    for role, items in clips.items() if role in ("output", "target")}
                    _, png = write_samples(run_dir / "samples", step, clips, data.sample_rate, verdicts)
                    tracker.log_media(step, {f"samples/clip{i}_{role}": (audio, data.sample_rate)
                                             for role, items in clips.items() for i, audio in enumerate(items)},
                                      {"samples/spectrograms": png})
                tracker.summary({"best/val_spec_loss": best_value, "best/step": best_step})
                log.info("step %d: val/spec_loss %.5f%s (best %.5f at step %d)", step, last_val["val/spec_loss"],
                         f", val/improvement {last_val['val/improvement']:+.4f}" if "val/improvement" in last_val
                         else "", best_value, best_step)
                window_start, window_steps = time.perf_counter(), 0
                validate_seconds += window_start - validate_start
                if on_validation is not None and on_validation(step, last_val):
                    pruned = True
                    log.info("step %d: pruned by the sweep's pruner", step)
                    break
            if after_step is not None:
                after_step(step)

        if received:
            checkpoint("last.pt")
            log.warning("interrupted at step %d; resume with: python run.py resume=%s", step, run_dir)
    bar.close()
    if hasattr(batches, "close"):  # the threaded loader's generator: stop its threads now
        batches.close()
    status = "interrupted" if received else "pruned" if pruned else "completed"

    # --- evaluate on embeddings (FAD, KID, diversity) ----------------------------------------------
    if status == "completed" and cfg.get("metrics") and cfg.metrics.eval:
        if outputs_val is None:  # resumed at max_steps: nothing was validated in this call
            last_val, outputs_val = validator.run(ema.module if ema is not None else model, amp)
        cache = EmbeddingCache(Path(cfg.paths.cache) / "embeddings")
        key = validation_key(data.info, data.segment, len(validator.targets), OmegaConf.to_container(cfg.task))
        try:
            embedding_metrics = evaluate_validation(cfg.metrics, validator.targets, outputs_val, data.sample_rate,
                                                    device, cache, key)
        except Exception as err:  # noqa: BLE001 - training is done and saved; a broken embedder must not undo that
            log.error("metrics: embedding metrics failed, the run stands: %s: %s", type(err).__name__, err)
            record.update(eval_error=f"{type(err).__name__}: {err}")
            embedding_metrics = None
        if embedding_metrics:
            record.log_metrics(step, embedding_metrics)
            record.update(eval=embedding_metrics)
            tracker.log(embedding_metrics, step)
            tracker.summary(embedding_metrics)
            last_val = {**last_val, **embedding_metrics}
            log.info("step %d: %s", step, ", ".join(f"{k} {v:.5g}" for k, v in embedding_metrics.items()))
    return TrainResult(status=status, step=step, best_value=best_value, best_step=best_step, last_val=last_val,
                       signal=received[0] if received else None, steps_run=steps_run, train_seconds=train_seconds,
                       validate_seconds=validate_seconds)

