"""A weighted sum of named loss terms, each built from config and logged separately.

Config shape (`conf/loss/*.yaml`):

    terms:
      mrstft: {_target_: auraloss.freq.MultiResolutionSTFTLoss, weight: 1.0, ...constructor args}
      l1:     {_target_: torch.nn.L1Loss, weight: 0.1}

Every weight is its own key, so any of them can be swept (`loss.terms.mrstft.weight=2`).
Terms whose class declares a discriminator-based `loss_kind` (`audiolab.losses.kinds`) go to
`gan_terms`: they only count in phase 2 of `recipe=vae_gan` (see audiolab/train/adversarial.py).
"""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from audiolab.losses.kinds import loss_kind


class WeightedLoss(torch.nn.Module):
    """Sum of weight * term(output, target); terms are computed in fp32 (STFTs are not bf16-safe)."""

    def __init__(self, terms: dict[str, torch.nn.Module], weights: dict[str, float],
                 gan_terms: dict[str, torch.nn.Module] | None = None) -> None:
        super().__init__()
        self.terms = torch.nn.ModuleDict(terms)
        self.gan_terms = torch.nn.ModuleDict(gan_terms or {})
        self.weights = dict(weights)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the weighted total and each unweighted term."""
        values: dict[str, torch.Tensor] = {}
        total = output.new_zeros((), dtype=torch.float32)
        with torch.autocast(device_type=output.device.type, enabled=False):
            output, target = output.float(), target.float()
            for name, term in self.terms.items():
                if self.weights[name] == 0:
                    continue
                values[name] = term(output, target)
                total = total + self.weights[name] * values[name]
        return total, values


def build_loss(cfg: DictConfig) -> WeightedLoss:
    """Instantiate every term of `cfg.terms` and pair it with its weight."""
    terms, gan_terms, weights = {}, {}, {}
    for name, spec in cfg.terms.items():
        spec = OmegaConf.to_container(spec, resolve=True)
        weights[name] = float(spec.pop("weight"))
        term = instantiate(spec)
        (gan_terms if loss_kind(term).needs_discriminator else terms)[name] = term
    return WeightedLoss(terms, weights, gan_terms)
