"""Adversarial and feature-matching loss terms, for phase 2 (a discriminator is configured).

They sit in the same `loss.terms` dict as the reconstruction terms, each with its own sweepable weight,
but take discriminator outputs instead of (output, target): a list with one list of feature maps per
sub-discriminator, whose last map is that sub-discriminator's logit. `build_loss` sets them apart.

    adversarial:      {_target_: audiolab.losses.adversarial.AdversarialLoss, weight: 1.0, kind: hinge}
    feature_matching: {_target_: audiolab.losses.adversarial.FeatureMatchingLoss, weight: 20.0,
                       relative: true, skip_features: 1}

Conventions (checked against the sources):
- RAVE (`rave/core.py`, `rave/model.py`): hinge or least-squares, summed over sub-discriminators;
  feature matching = per sub-discriminator the mean over its maps (after skipping the first N, logit
  included) of mean|real - fake| / mean|real| (`relative`), then the mean over sub-discriminators.
- DAC (`dac/nn/loss.py` GANLoss): least squares summed over sub-discriminators; feature matching = plain
  L1 summed over every map except each logit (`include_logit: false, reduction: sum, relative: false`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from audiolab.losses.kinds import LossKind

Features = list[list[torch.Tensor]]


class GanTerm(nn.Module):
    """A loss term computed from discriminator outputs rather than from (output, target)."""

    loss_kind: ClassVar[LossKind]


class AdversarialLoss(GanTerm):
    """Hinge or least-squares GAN loss on each sub-discriminator's logit, summed over sub-discriminators."""

    loss_kind = LossKind.ADVERSARIAL

    def __init__(self, kind: str = "hinge") -> None:
        super().__init__()
        if kind not in ("hinge", "ls"):
            raise ValueError(f"loss.terms.adversarial.kind={kind!r}: allowed hinge, ls")
        self.kind = kind

    def discriminator_loss(self, real: Features, fake: Features) -> torch.Tensor:
        """What the discriminator minimises: real logits up (to 1), fake logits down (to -1 or 0)."""
        total = real[0][-1].new_zeros((), dtype=torch.float32)
        for r, f in zip(real, fake, strict=True):
            r_logit, f_logit = r[-1].float(), f[-1].float()
            if self.kind == "hinge":
                total = total + (torch.relu(1 - r_logit).mean() + torch.relu(1 + f_logit).mean())
            else:
                total = total + ((r_logit - 1).pow(2).mean() + f_logit.pow(2).mean())
        return total

    def forward(self, fake: Features) -> torch.Tensor:
        """What the generator minimises: the fake logits judged real."""
        total = fake[0][-1].new_zeros((), dtype=torch.float32)
        for f in fake:
            logit = f[-1].float()
            total = total + (-logit.mean() if self.kind == "hinge" else (logit - 1).pow(2).mean())
        return total

    def extra_repr(self) -> str:
        """The GAN objective."""
        return f"kind={self.kind}"


class FeatureMatchingLoss(GanTerm):
    """L1 between the discriminator's feature maps of real and generated audio (real maps are constants)."""

    loss_kind = LossKind.FEATURE_MATCHING

    def __init__(self, relative: bool = True, skip_features: int = 0, include_logit: bool = True,
                 reduction: str = "mean") -> None:
        super().__init__()
        if skip_features < 0:
            raise ValueError(f"loss.terms.feature_matching.skip_features={skip_features}: must be >= 0")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"loss.terms.feature_matching.reduction={reduction!r}: allowed mean, sum")
        self.relative = relative
        self.skip_features = int(skip_features)
        self.include_logit = include_logit
        self.reduction = reduction

    def forward(self, real: Features, fake: Features) -> torch.Tensor:
        """Per sub-discriminator mean (or sum) over the kept maps, then mean (or sum) over sub-discriminators."""
        per_disc = []
        for r, f in zip(real, fake, strict=True):
            stop = len(r) if self.include_logit else len(r) - 1
            pairs = list(zip(r[self.skip_features:stop], f[self.skip_features:stop], strict=True))
            if not pairs:
                raise ValueError(f"feature matching keeps no map of a {len(r)}-map sub-discriminator "
                                 f"(skip_features={self.skip_features}, include_logit={self.include_logit})")
            distances = []
            for real_map, fake_map in pairs:
                real_map = real_map.detach().float()
                d = (real_map - fake_map.float()).abs().mean()
                if self.relative:
                    d = d / real_map.abs().mean().clamp_min(1e-12)
                distances.append(d)
            stacked = torch.stack(distances)
            per_disc.append(stacked.mean() if self.reduction == "mean" else stacked.sum())
        stacked = torch.stack(per_disc)
        return stacked.mean() if self.reduction == "mean" else stacked.sum()

    def extra_repr(self) -> str:
        """The matching options."""
        return (f"relative={self.relative}, skip_features={self.skip_features}, include_logit={self.include_logit}, "
                f"reduction={self.reduction}")
