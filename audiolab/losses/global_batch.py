"""Batch-wide norms over the global batch, so that a loss under torchrun is the loss of one process.

Most loss terms are means over examples: each rank's mean of its equal share, averaged by DDP, is the
global batch's mean. Two are not: auraloss's spectral convergence, ||Y - X||_F / ||Y||_F, and RAVE's
relative term take one norm over the whole batch. Here each rank's squared norms are summed over the ranks
with torch.distributed.nn's all_reduce, which carries gradients back to every rank; each rank then holds
the global ratio, and since DDP divides the summed gradients by the world size, the step is that of one
process on the whole batch. auraloss has no hook for this, hence the small subclass below.
"""

from __future__ import annotations

import torch
from auraloss.freq import SpectralConvergenceLoss
from torch import nn

from audiolab.common.distributed import World


def norm_ratio(numerator: torch.Tensor, denominator: torch.Tensor, world: World, eps: float = 0.0) -> torch.Tensor:
    """||numerator|| / ||denominator|| (2-norms over every element), both norms over the global batch."""
    if not world.distributed:
        return torch.linalg.vector_norm(numerator) / torch.linalg.vector_norm(denominator).clamp_min(eps)
    from torch.distributed.nn.functional import all_reduce

    sums = all_reduce(torch.stack([numerator.float().pow(2).sum(), denominator.float().pow(2).sum()]))
    return sums[0].sqrt() / sums[1].sqrt().clamp_min(eps)


class GlobalSpectralConvergence(SpectralConvergenceLoss):
    """auraloss's spectral convergence with both Frobenius norms taken over the global batch."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world

    def forward(self, x_mag: torch.Tensor, y_mag: torch.Tensor) -> torch.Tensor:
        """||y - x||_F / ||y||_F over every rank's share."""
        return norm_ratio(y_mag - x_mag, y_mag, self.world)


def use_global_batch(loss: nn.Module, world: World) -> int:
    """Make every batch-wide norm inside `loss` span the ranks; return how many were changed."""
    if not world.distributed:
        return 0
    changed = 0
    for module in list(loss.modules()):
        for name, child in list(module.named_children()):
            if type(child) is SpectralConvergenceLoss:
                setattr(module, name, GlobalSpectralConvergence(world))
                changed += 1
        if hasattr(module, "batch_world"):  # audiolab's own batch-norm losses (RaveSpectralLoss)
            module.batch_world = world
            changed += 1
    return changed
