"""Build the optimizer and its schedule from the `optim` config group.

`optim.optimizer` is a `_partial_` constructor called with parameter groups made here in code,
because which parameter goes where depends on the model, not on config. `optim.groups` names the
split: `decay` (weights decay; norms, biases, layer scales and gains do not) or `muon` (hidden
weights on Muon, the rest on AdamW, for heavyball's SplitOpt).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from audiolab.models.base import AudioModel


def decay_groups(model: torch.nn.Module, cfg: DictConfig) -> list[dict]:
    """Two groups: weights of convs and linears decay; norms, biases, layer scales and gains do not."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            # A 1-D tensor is a bias, a norm's affine parameter, a layer scale or a gain: never decayed.
            (decay if param.ndim >= 2 else no_decay).append(param)
    weight_decay = float(cfg.get("weight_decay", 0.0))
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def muon_groups(model: torch.nn.Module, cfg: DictConfig) -> list[dict]:
    """SplitOpt specs: Muon on hidden weights with >= 2 dims (conv kernels flattened to (out, in*k) by
    heavyball), AdamW on the first and last layers (`model.io_parameters()`), biases, norms and gains."""
    import heavyball

    io = {id(p) for p in (model.io_parameters() if isinstance(model, AudioModel) else [])}
    hidden, io_weights, vectors = [], [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2:
            vectors.append(param)
        elif id(param) in io:
            io_weights.append(param)
        else:
            hidden.append(param)
    weight_decay = float(cfg.get("weight_decay", 0.0))
    # heavyball's defaults differ from the papers': every lr and beta is passed explicitly.
    muon = dict(optimizer=heavyball.Muon, lr=float(cfg.lr), betas=tuple(cfg.muon_betas), weight_decay=weight_decay)
    adamw = dict(optimizer=heavyball.AdamW, lr=float(cfg.adamw_lr), betas=tuple(cfg.adamw_betas), eps=1e-8)
    return [
        {"params": hidden, **muon},
        {"params": io_weights, **adamw, "weight_decay": weight_decay},
        {"params": vectors, **adamw, "weight_decay": 0.0},
    ]


GROUPINGS: dict[str, Callable[[torch.nn.Module, DictConfig], list[dict]]] = {
    "decay": decay_groups,
    "muon": muon_groups,
}


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Call the configured partial optimizer on the parameter groups `cfg.groups` asks for."""
    grouping = cfg.get("groups", "decay")
    if grouping not in GROUPINGS:
        raise ValueError(f"optim.groups={grouping!r}: allowed {', '.join(GROUPINGS)}")
    target = str(cfg.optimizer._target_)
    if target.startswith("heavyball."):
        import heavyball

        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        # heavyball compiles its step with torch.compile; on CPU the first compiled step took 32-986 s.
        heavyball.utils.compile_mode = None if on_cpu else "max-autotune-no-cudagraphs"
    extra = {"fused": True} if fused_wanted(cfg.optimizer, model) else {}
    return instantiate(cfg.optimizer)(GROUPINGS[grouping](model, cfg), **extra)


def fused_wanted(optimizer_cfg: DictConfig, model: torch.nn.Module) -> bool:
    """torch's fused Adam/AdamW (one kernel for every parameter) for a model on CUDA, unless `fused` is set."""
    target = str(optimizer_cfg.get("_target_", ""))
    on_cuda = any(p.is_cuda for p in model.parameters())
    return target in ("torch.optim.AdamW", "torch.optim.Adam") and "fused" not in optimizer_cfg and on_cuda


def lr_factor(step: int, warmup_steps: int, max_steps: int, decay: str, min_lr_ratio: float) -> float:
    """Multiplier on the base lr: linear warm-up, then constant or cosine down to min_lr_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class SchedulerGroup:
    """One LambdaLR per underlying optimizer (heavyball's SplitOpt keeps the lrs in its inner optimizers)."""

    def __init__(self, schedulers: list[torch.optim.lr_scheduler.LambdaLR]) -> None:
        self.schedulers = schedulers

    def step(self) -> None:
        """Advance every schedule by one step."""
        for s in self.schedulers:
            s.step()

    def get_last_lr(self) -> list[float]:
        """The current lr of every group of every optimizer."""
        return [lr for s in self.schedulers for lr in s.get_last_lr()]

    def state_dict(self) -> dict[str, Any]:
        """State of every schedule."""
        return {"schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore every schedule."""
        for s, st in zip(self.schedulers, state["schedulers"], strict=True):
            s.load_state_dict(st)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, max_steps: int) -> SchedulerGroup:
    """Warm-up then constant or cosine, on each underlying optimizer."""
    s = cfg.scheduler

    def factor(step: int) -> float:
        return lr_factor(step, int(s.warmup_steps), max_steps, str(s.decay), float(s.min_lr_ratio))

    inner = getattr(optimizer, "optimizers", [optimizer])
    return SchedulerGroup([torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in inner])


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`optimizer.load_state_dict`, then put back every state tensor's saved dtype and exact value.

    torch's loader casts floating state to the parameter's dtype: PSGD's float64 running bounds came
    back as float32, a ~1e-8 drift that broke bitwise resume. Replacing each tensor by its saved copy
    (moved to the live tensor's device) restores it exactly.
    """
    optimizer.load_state_dict(state)
    _restore_exact(optimizer.state_dict(), state)


def _restore_exact(live: Any, saved: Any) -> None:
    # state_dict() returns the optimizer's own state containers, so writing into them writes the state.
    keys = live.keys() if isinstance(live, dict) else range(len(live)) if isinstance(live, list) else ()
    for k in keys:
        if isinstance(saved, dict) and k not in saved:
            continue
        a, b = live[k], saved[k]
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a.dtype != b.dtype:
                live[k] = b.to(a.device)
        elif isinstance(a, dict | list):
            _restore_exact(a, b)
