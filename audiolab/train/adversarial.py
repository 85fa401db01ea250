"""Phase 2 of two-phase training: a discriminator, its optimizer, and the losses that use it.

From `recipe.phase1_steps` on, recipe=vae_gan builds an `AdversarialStage` and, every `recipe.d_every`-th
step, updates the discriminator instead of the generator (RAVE v2: 1 step in 4). The generator's
steps add the weighted `adversarial` and `feature_matching` terms of `loss.terms`.

Discriminators see mono audio: channels are folded into the batch. With `recipe.d_concat=true`
real and generated audio go through the discriminator as one batch and every feature map is split
afterwards; `false` runs it twice. Both give the same losses (no layer mixes examples of a batch);
`benchmarks/bench_vae.py` measures which is faster.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from audiolab.common.distributed import SINGLE, World
from audiolab.losses.adversarial import Features
from audiolab.losses.composite import WeightedLoss
from audiolab.losses.kinds import LossKind, loss_kind
from audiolab.models.discriminators import split_features
from audiolab.optim.build import load_optimizer_state
from audiolab.train.device import autocast
from audiolab.train.wrap import average_gradients

log = logging.getLogger(__name__)


def beta_at(step: int, warmup_steps: int, start: float, end: float) -> float:
    """KL weight: from `start` to `end` linearly in log space over `warmup_steps`, then constant."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    t = step / warmup_steps
    return math.exp(math.log(start) + t * (math.log(end) - math.log(start)))


class AdversarialStage:
    """The discriminator with its optimizer, and the adversarial / feature-matching terms with their weights."""

    def __init__(self, cfg: DictConfig, loss_fn: WeightedLoss, device: torch.device, concat: bool,
                 world: World = SINGLE) -> None:
        self.discriminator: torch.nn.Module = instantiate(cfg.model).to(device)
        self.optimizer: torch.optim.Optimizer = instantiate(cfg.optimizer)(self.discriminator.parameters())
        self.grad_clip = float(cfg.grad_clip) if cfg.get("grad_clip") else math.inf
        self.concat = concat
        self.world = world  # under torchrun: the discriminator's gradients are averaged over it
        # Every discriminator-based term of loss.terms with its weight; the adversarial one also trains D.
        self.gan_terms = {name: (term, loss_fn.weights[name]) for name, term in loss_fn.gan_terms.items()}
        self.adversarial = next((t for t, _ in self.gan_terms.values() if loss_kind(t) is LossKind.ADVERSARIAL), None)
        if self.adversarial is None:
            raise ValueError("a discriminator needs an adversarial loss term: use loss=rave or loss=dac_gan, or add "
                             "loss.terms.adversarial={_target_: audiolab.losses.adversarial.AdversarialLoss, "
                             "weight: 1.0}")
        self.n_parameters = sum(p.numel() for p in self.discriminator.parameters())

    @staticmethod
    def _mono(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, 1, x.shape[-1])

    def features(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[Features, Features]:
        """Feature maps of real and generated (B, C, T) audio, in one pass or two (`d_concat`)."""
        real, fake = self._mono(real), self._mono(fake)
        if self.concat:
            return split_features(self.discriminator(torch.cat([real, fake])), real.shape[0])
        return self.discriminator(real), self.discriminator(fake)

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor, amp: torch.dtype | None
                           ) -> dict[str, float]:
        """Gradients of the discriminator's loss on real and (detached) generated audio; the caller steps."""
        self.discriminator.train()
        with autocast(real.device, amp):
            real_f, fake_f = self.features(real.float(), fake.detach().float())
        loss = self.adversarial.discriminator_loss(real_f, fake_f)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(list(self.discriminator.parameters()), self.world)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), self.grad_clip)
        figures = self.world.mean({"d_loss": float(loss.detach()), "d_real": _mean_logit(real_f),
                                   "d_fake": _mean_logit(fake_f)})
        return {"d_loss": figures["d_loss"], "d_grad_norm": float(grad_norm), "d_real": figures["d_real"],
                "d_fake": figures["d_fake"]}

    def generator_terms(self, real: torch.Tensor, fake: torch.Tensor, amp: torch.dtype | None
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted adversarial + feature-matching loss for a generator step, and each unweighted term."""
        self.discriminator.train()
        for p in self.discriminator.parameters():  # gradients flow through the discriminator, not into it
            p.requires_grad_(False)
        try:
            with autocast(real.device, amp):
                real_f, fake_f = self.features(real.detach().float(), fake.float())
        finally:
            for p in self.discriminator.parameters():
                p.requires_grad_(True)
        terms: dict[str, torch.Tensor] = {}
        total = fake.new_zeros((), dtype=torch.float32)
        for name, (term, weight) in self.gan_terms.items():
            if weight:
                terms[name] = term(fake_f) if loss_kind(term) is LossKind.ADVERSARIAL else term(real_f, fake_f)
                total = total + weight * terms[name]
        return total, terms

    @torch.no_grad()
    def verdict(self, audio: torch.Tensor) -> list[float]:
        """Mean logit over sub-discriminators for each (C, T) clip of a (N, C, T) batch (the PNG's 'D' figure)."""
        was_training = self.discriminator.training
        self.discriminator.eval()
        try:
            scores = []
            for clip in audio:
                feats = self.discriminator(self._mono(clip[None].float()))
                scores.append(_mean_logit(feats))
        finally:
            self.discriminator.train(was_training)
        return scores

    def state_dict(self) -> dict[str, Any]:
        """Discriminator weights and optimizer state, for checkpoints."""
        return {"model": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Undo `state_dict`."""
        self.discriminator.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])


def _mean_logit(features: Features) -> float:
    """Average over sub-discriminators of each one's mean logit."""
    return float(torch.stack([maps[-1].detach().float().mean() for maps in features]).mean())
