"""What a training step calls: the model's `forward_with_stats`, under DDP on several processes, compiled if asked.

The wrappers hold the model but never own it: checkpoints, EMA and validation use the plain model
(`TrainState.model`), so a checkpoint is the same whether a run was compiled or distributed, and any run
resumes under any world size or compile setting.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from audiolab.common.distributed import World

log = logging.getLogger(__name__)

# trainer.compile=auto compiles CUDA models of at least this size (see README, "Compiled steps").
AUTO_COMPILE_MIN_PARAMETERS = 5_000_000


class StatsForward(nn.Module):
    """`forward` is the model's `forward_with_stats`, so that DDP and torch.compile see the call training makes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The model's output and latent statistics."""
        return self.model.forward_with_stats(x)


def compile_wanted(choice: Any, device: torch.device, n_parameters: int) -> bool:
    """trainer.compile: true, false, or auto (CUDA and a model of AUTO_COMPILE_MIN_PARAMETERS or more)."""
    choice = str(choice).lower()
    if choice == "auto":
        return device.type == "cuda" and n_parameters >= AUTO_COMPILE_MIN_PARAMETERS
    return choice == "true"


class TrainingForward:
    """Builds the module a step calls, and builds it again when the set of trained parameters changes."""

    def __init__(self, model: nn.Module, world: World, device: torch.device, compile: bool,
                 backend: str = "inductor") -> None:
        self.model, self.world, self.device = model, world, device
        self.compile, self.backend = compile, backend
        self.module = self.build()

    def build(self) -> nn.Module:
        """StatsForward(model), wrapped in DDP when distributed, then compiled when asked."""
        module: nn.Module = StatsForward(self.model)
        if self.world.distributed:
            # DDP registers the parameters that require grad now: rebuild() after freezing any.
            module = DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda"
                                             else None)
        if self.compile:
            module = torch.compile(module, backend=self.backend)
        return module

    def rebuild(self) -> None:
        """A new wrapper for the parameters that require grad now (phase 2 freezes the encoder)."""
        self.module = self.build()
        log.info("training forward rebuilt for %s trained parameters",
                 f"{sum(p.numel() for p in self.model.parameters() if p.requires_grad):,}")

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The output and stats of a training forward pass."""
        return self.module(x)


def average_gradients(parameters: list[nn.Parameter], world: World) -> None:
    """Average the gradients of `parameters` over the ranks, in one flat all-reduce.

    For networks outside the DDP wrapper: the discriminator of phase 2 runs twice in some steps (real and
    generated audio, `recipe.d_concat=false`) and its gradients are wanted only in its own steps, which
    DDP's per-forward bookkeeping does not allow.
    """
    if not world.distributed:
        return
    import torch.distributed as dist

    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
