"""recipe=supervised: one generator step per batch (restoration, and autoencoding without a KL)."""

from __future__ import annotations

import math

import torch

from audiolab.train.batches import Batch
from audiolab.train.device import autocast
from audiolab.train.recipes.base import NonFiniteLossError, Recipe
from audiolab.train.state import TrainState

Terms = dict[str, torch.Tensor]


class SupervisedRecipe(Recipe):
    """Output, weighted loss, backward, clip, optimizer step; every figure into `state.latest`."""

    def step(self, state: TrainState, batch: Batch) -> None:
        """One generator step."""
        self.generator_step(state, batch)

    def generator_step(self, state: TrainState, batch: Batch) -> None:
        """Forward under autocast, the loss in fp32, then the update."""
        with autocast(self.parts.device, self.parts.amp):
            outputs, stats = state.train_forward(batch.inputs)
        loss, terms = self.parts.loss(outputs, batch.targets)
        loss = self.extra_terms(state, batch, outputs, stats, loss, terms)
        self.descend(state, loss, terms)

    def extra_terms(self, state: TrainState, batch: Batch, outputs: torch.Tensor, stats: Terms,
                    loss: torch.Tensor, terms: Terms) -> torch.Tensor:
        """The loss with a subclass's own terms added (each also put in `terms`); none here."""
        return loss

    def descend(self, state: TrainState, loss: torch.Tensor, terms: Terms) -> None:
        """Backward, clip, check for NaN/inf, record the figures, and step the optimizer.

        Under torchrun DDP has averaged the gradients during backward, so the gradient norm is the global
        batch's; the loss figures are averaged over the ranks here, so every rank logs (and, on a NaN, stops
        on) the global batch's values.
        """
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), self.parts.grad_clip)
        figures = self.parts.world.mean({"train/loss": float(loss.detach()),
                                         **{f"train/{k}": float(v.detach()) for k, v in terms.items()}})
        loss_value, grad_value = figures["train/loss"], float(grad_norm)
        if not (math.isfinite(loss_value) and math.isfinite(grad_value)):
            raise NonFiniteLossError(
                f"non-finite loss at step {state.step + 1}: loss={loss_value}, grad_norm={grad_value}, terms="
                + ", ".join(f"{k[len('train/'):]}={v:.4g}" for k, v in figures.items() if k != "train/loss")
                + " (stopped without checkpointing; try a lower optim.lr or tighter optim.grad_clip)")
        state.latest.update({"train/loss": loss_value, "train/grad_norm": grad_value, **figures})
        state.optimizer.step()
