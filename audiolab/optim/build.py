"""Build the optimizer and its schedule from the `optim` config group.

`optim.optimizer` is a `_partial_` constructor: the parameter groups are made here in code, because
which parameters get weight decay depends on the model, not on config.
"""

from __future__ import annotations

import math

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights of convs and linears decay; norms, biases, layer scales and gains do not."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            # A 1-D tensor is a bias, a norm's affine parameter, a layer scale or a gain: never decayed.
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Call the configured partial optimizer on the model's parameter groups."""
    factory = instantiate(cfg.optimizer)
    return factory(decay_groups(model, float(cfg.weight_decay)))


def lr_factor(step: int, warmup_steps: int, max_steps: int, decay: str, min_lr_ratio: float) -> float:
    """Multiplier on the base lr: linear warm-up, then constant or cosine down to min_lr_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer,
                    max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following `lr_factor` with the configured warm-up and decay."""
    s = cfg.scheduler
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, int(s.warmup_steps), max_steps, str(s.decay), float(s.min_lr_ratio)),
    )
