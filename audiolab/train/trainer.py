"""Build what a run trains (model, data, task, loss, optimizer, state, recipe, validator), restore it, and fit.

The build order is fixed: the global RNG is seeded once and the model, then the loss, draw their
initial weights from it in this order, so the same config always starts from the same weights.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from audiolab.common.distributed import SINGLE, World, init_world
from audiolab.common.secrets import redact
from audiolab.data.clips import AudioData
from audiolab.data.folder import DataError
from audiolab.losses.composite import build_loss
from audiolab.losses.global_batch import use_global_batch
from audiolab.models.base import AudioModel
from audiolab.optim.build import build_optimizer, build_scheduler
from audiolab.train.batches import training_batches
from audiolab.train.checkpoint import load_checkpoint
from audiolab.train.device import autocast_dtype, pick_device
from audiolab.train.hooks import Hook, Hooks, TrainResult
from audiolab.train.loop import fit
from audiolab.train.recipes import Recipe, RecipeParts, build_recipe
from audiolab.train.state import TrainState
from audiolab.train.validate import Validator
from audiolab.train.wrap import TrainingForward, compile_wanted

log = logging.getLogger("audiolab.train")


@dataclass
class Training:
    """Everything one training call works with; hooks get it in `on_start` and `on_validation`."""

    cfg: DictConfig
    device: torch.device
    amp: torch.dtype | None
    state: TrainState
    recipe: Recipe
    data: AudioData
    task: Any
    augment: Any | None
    validator: Validator
    resumed: bool = False
    world: World = SINGLE  # under torchrun: this process's rank among the run's processes

    @property
    def max_steps(self) -> int:
        """The step training stops at."""
        return int(self.cfg.trainer.max_steps)

    @property
    def log_every(self) -> int:
        """Steps between train/ lines."""
        return int(self.cfg.trainer.log_every)

    @property
    def val_every(self) -> int:
        """Steps between validations."""
        return int(self.cfg.trainer.val_every)

    @property
    def audio_seconds_per_step(self) -> float:
        """Seconds of audio in one (global) batch."""
        return self.data.batch_size * self.data.segment / self.data.sample_rate

    @property
    def n_parameters(self) -> int:
        """The model's parameter count."""
        return sum(p.numel() for p in self.state.model.parameters())


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_data(data_cfg: DictConfig) -> AudioData:
    """Instantiate the dataset; a DataError (no usable file, missing folder) comes out as itself."""
    try:
        return instantiate(data_cfg)
    except InstantiationException as err:
        if isinstance(err.__cause__, DataError):
            raise err.__cause__ from None
        raise


def build_model(model_cfg: DictConfig, device: torch.device) -> AudioModel:
    """Instantiate the model on `device`; it must be an AudioModel (audiolab/models/base.py)."""
    model = instantiate(model_cfg).to(device)
    if not isinstance(model, AudioModel):
        raise TypeError(f"model._target_={model_cfg._target_} is not an audiolab.models.base.AudioModel")
    return model


def build_training(cfg: DictConfig) -> Training:
    """Every part of a run, freshly initialised from the config (nothing restored yet)."""
    trainer = cfg.trainer
    if trainer.threads:
        torch.set_num_threads(int(trainer.threads))
    world = init_world(float(trainer.dist_timeout_s))
    world.rows(int(cfg.data.batch_size))  # fails early when the global batch does not split evenly
    device = pick_device(trainer.device, world.local_rank)
    amp = autocast_dtype(device, trainer.precision)
    seed_everything(int(trainer.seed))
    model = build_model(cfg.model, device)
    data = build_data(cfg.data)
    task = instantiate(cfg.task, sample_rate=data.sample_rate)
    # Augmentations run on the device, in batch, on clean audio (before a task's degradation).
    augment = instantiate(cfg.augment, sample_rate=data.sample_rate) if cfg.get("augment") else None
    loss = build_loss(cfg.loss).to(device)
    use_global_batch(loss, world)  # batch-wide norms span the ranks: the loss of one process on the global batch
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.optim, optimizer, int(trainer.max_steps))
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(trainer.ema_decay)), use_buffers=True)
           if trainer.ema_decay else None)
    validator = Validator(data, task, device, int(trainer.sample_clips),  # configs saved before val_cdpam: off
                          cdpam=bool(OmegaConf.select(cfg, "metrics.val_cdpam", default=False)))
    state = TrainState(model, optimizer, scheduler, ema, config=redact(OmegaConf.to_container(cfg, resolve=True)))
    grad_clip = float(cfg.optim.grad_clip) if cfg.optim.get("grad_clip") else math.inf
    recipe = build_recipe(cfg.recipe, RecipeParts(loss, device, amp, grad_clip, int(trainer.max_steps),
                                                  cfg.get("discriminator") or None, world))
    training = Training(cfg, device, amp, state, recipe, data, task, augment, validator, world=world)
    compiled = compile_wanted(trainer.compile, device, training.n_parameters)
    log.info("model %s: %s parameters (%.2f M) on %s%s%s%s", cfg.model._target_.rsplit(".", 1)[-1],
             f"{training.n_parameters:,}", training.n_parameters / 1e6, device, f", {amp} autocast" if amp else "",
             f", compiled ({trainer.compile_backend})" if compiled else "",
             f", rank {world.rank} of {world.size} (pid {os.getpid()}, global batch {cfg.data.batch_size})"
             if world.distributed else "")
    if augment:
        log.info("augmentations: %s", augment.describe())
    if world.distributed or compiled:
        state.forward = TrainingForward(model, world, device, compiled, str(trainer.compile_backend))
    recipe.setup(state)
    return training


def train(cfg: DictConfig, run_dir: Path, hooks: Sequence[Hook] = (), resume: bool = False) -> TrainResult:
    """Train `cfg` (resolved and validated) in `run_dir`; with resume=True continue from checkpoints/last.pt."""
    training = build_training(cfg)
    state = training.state
    last = Path(run_dir) / "checkpoints" / "last.pt"
    if resume and not last.is_file():
        # killed before its first validation wrote last.pt: nothing to continue, so start over in place (the
        # lines it logged are dropped by the record as past the checkpoint, here step 0)
        training.resumed = True
        log.warning("%s has no checkpoint yet (stopped before its first validation): training it from step 0",
                    Path(run_dir).name)
    elif resume:
        # Loaded on CPU: RNG states must stay CPU tensors; load_state_dict moves the rest to the device.
        state.load_state_dict(load_checkpoint(last, map_location="cpu",
                                             trust=bool(cfg.trainer.get("trust_checkpoint"))))
        training.resumed = True
        log.info("resumed from step %d (best val/spec_loss %.5f at step %s)", state.step, state.best_value,
                 state.best_step)
    if training.validator.baseline is not None:
        log.info("val/spec_loss_input (do-nothing baseline): %.5f", training.validator.baseline)
    everyone = Hooks(hooks)
    everyone.on_start(training)
    batches = training_batches(training.data, training.task, training.augment, training.device,
                               int(cfg.trainer.seed), state.step, bool(cfg.trainer.overfit),
                               training.world.rows(training.data.batch_size) if training.world.distributed else None)
    try:
        return fit(training, batches, everyone)
    finally:
        batches.close()
