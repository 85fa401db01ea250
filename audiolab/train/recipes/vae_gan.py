"""recipe=vae_gan: RAVE-style two-phase training.

Phase 1 (steps before `phase1_steps`; null = half of trainer.max_steps): the reconstruction terms of
`loss.terms` plus beta * KL, with beta warmed up in log space from `beta_start` to `beta_end` over
`beta_warmup_steps` (RAVE v2's 20k steps).

Phase 2 (only with `discriminator=`): the model's encoder is frozen, the discriminator and its
optimizer are built (an `AdversarialStage`), and 1 step in `d_every` updates the discriminator instead
of the generator. Generator steps add the weighted adversarial and feature-matching terms of
`loss.terms`. The recipe checkpoints its phase and the discriminator under `extras.vae_gan`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from audiolab.models.base import AudioModel
from audiolab.train.adversarial import AdversarialStage, beta_at
from audiolab.train.batches import Batch
from audiolab.train.device import autocast
from audiolab.train.recipes.base import NonFiniteLossError, RecipeParts
from audiolab.train.recipes.supervised import SupervisedRecipe, Terms
from audiolab.train.state import TrainState

log = logging.getLogger(__name__)


class VaeGanRecipe(SupervisedRecipe):
    """Beta-weighted KL in phase 1; a frozen encoder and alternating discriminator/generator steps in phase 2."""

    def __init__(self, parts: RecipeParts, phase1_steps: int | None, beta_warmup_steps: int, beta_start: float,
                 beta_end: float, d_every: int, d_concat: bool) -> None:
        super().__init__(parts)
        self.phase2_at = None if parts.discriminator is None else (
            parts.max_steps // 2 if phase1_steps is None else int(phase1_steps))
        self.beta = (int(beta_warmup_steps), float(beta_start), float(beta_end))
        self.d_every, self.d_concat = int(d_every), bool(d_concat)
        self.stage: AdversarialStage | None = None
        self.model: AudioModel | None = None
        self.state: TrainState | None = None

    def setup(self, state: TrainState) -> None:
        """Keep the phase and the discriminator in every checkpoint."""
        self.model, self.state = state.model, state
        state.register("vae_gan", self)
        if self.phase2_at is None:
            return
        log.info("two-phase training: phase 2 (discriminator %s) from step %d",
                 str(self.parts.discriminator.model._target_).rsplit(".", 1)[-1], self.phase2_at)
        if self.phase2_at >= self.parts.max_steps:
            log.warning("recipe.phase1_steps=%d >= trainer.max_steps=%d: phase 2 never starts", self.phase2_at,
                        self.parts.max_steps)

    def step(self, state: TrainState, batch: Batch) -> None:
        """A generator step, or in phase 2 every `d_every`-th step a discriminator step."""
        if self.phase2_at is not None and state.step >= self.phase2_at and self.stage is None:
            self.enter_phase2(state.step)
        if self.stage is not None and (state.step - self.phase2_at) % self.d_every == 0:
            self.discriminator_step(state, batch)
        else:
            self.generator_step(state, batch)

    def enter_phase2(self, step: int | None) -> None:
        """Freeze the encoder, and build the discriminator with its optimizer."""
        frozen = self.model.freeze_encoder()
        if frozen and self.state is not None and self.state.forward is not None:
            self.state.forward.rebuild()  # DDP must know that the encoder no longer trains
        self.stage = AdversarialStage(self.parts.discriminator, self.parts.loss, self.parts.device, self.d_concat,
                                      self.parts.world)
        log.info("%sphase 2: discriminator with %s parameters, updated every %d steps%s",
                 f"step {step}: " if step is not None else "resumed in ", f"{self.stage.n_parameters:,}",
                 self.d_every, "; encoder frozen" if frozen else "")

    def discriminator_step(self, state: TrainState, batch: Batch) -> None:
        """The generator only produces audio; the discriminator learns from it."""
        with torch.no_grad(), autocast(self.parts.device, self.parts.amp):
            outputs = state.model(batch.inputs)
        d_values = self.stage.discriminator_step(batch.targets, outputs, self.parts.amp)
        if not all(math.isfinite(v) for v in d_values.values()):
            raise NonFiniteLossError(f"non-finite discriminator step at step {state.step + 1}: {d_values} "
                                     "(stopped without checkpointing)")
        self.stage.optimizer.step()
        state.latest.update({f"train/{k}": v for k, v in d_values.items()})

    def extra_terms(self, state: TrainState, batch: Batch, outputs: torch.Tensor, stats: Terms,
                    loss: torch.Tensor, terms: Terms) -> torch.Tensor:
        """beta * KL (while the encoder trains), and in phase 2 the weighted GAN terms."""
        if "kl" in stats:
            terms["kl"] = stats["kl"]
            state.latest["train/beta"] = beta_at(state.step, *self.beta)
            if stats["kl"].requires_grad:  # frozen encoder in phase 2: the KL is a constant
                loss = loss + state.latest["train/beta"] * stats["kl"]
        if self.stage is not None:
            gan_loss, gan_terms = self.stage.generator_terms(batch.targets, outputs, self.parts.amp)
            loss = loss + gan_loss
            terms.update(gan_terms)
        return loss

    def figures(self) -> dict[str, float]:
        """The phase."""
        return {"train/phase": 2 if self.stage is not None else 1}

    def record(self) -> dict[str, Any]:
        """The step phase 2 starts at (None: never)."""
        return {"phase2_start": self.phase2_at}

    def sample_notes(self, clips: dict[str, list[np.ndarray]]) -> dict[str, list[str]] | None:
        """In phase 2, the discriminator's mean logit on each real and generated clip."""
        if self.stage is None:
            return None
        return {role: [f"D {v:+.3g}" for v in self.stage.verdict(torch.from_numpy(np.stack(items))
                                                                  .to(self.parts.device))]
                for role, items in clips.items() if role in ("output", "target")}

    def state_dict(self) -> dict[str, Any]:
        """The phase, and the discriminator with its optimizer (None in phase 1)."""
        return {"phase": 2 if self.stage is not None else 1,
                "discriminator": self.stage.state_dict() if self.stage is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-enter phase 2 when the checkpoint was in it."""
        if state.get("discriminator") is not None:
            if self.stage is None:
                self.enter_phase2(None)
            self.stage.load_state_dict(state["discriminator"])
