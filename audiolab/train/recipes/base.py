"""The recipe interface, and what every recipe is built from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from audiolab.common.distributed import SINGLE, World
from audiolab.losses.composite import WeightedLoss
from audiolab.train.batches import Batch
from audiolab.train.state import TrainState


class NonFiniteLossError(RuntimeError):
    """The loss, gradient norm or validation distance became NaN or infinite."""


@dataclass
class RecipeParts:
    """What a recipe trains with; the model, optimizer and schedule are in the `TrainState`."""

    loss: WeightedLoss
    device: torch.device
    amp: torch.dtype | None  # autocast dtype, None for fp32
    grad_clip: float  # max gradient norm of the model (inf: no clipping)
    max_steps: int
    discriminator: DictConfig | None  # the `discriminator` group, for recipes with a GAN phase
    world: World = SINGLE  # under torchrun: the ranks that share each step's global batch


class Recipe:
    """One training step, plus what a recipe adds to logs, run.json and sample plots."""

    def __init__(self, parts: RecipeParts) -> None:
        self.parts = parts

    def setup(self, state: TrainState) -> None:
        """Build and register what the recipe owns (before a checkpoint is restored)."""

    def step(self, state: TrainState, batch: Batch) -> None:
        """Train on one batch; put each train/ figure in `state.latest`. The loop then calls `state.end_step`."""
        raise NotImplementedError

    def figures(self) -> dict[str, float]:
        """Figures logged with every train/ line (beside `state.latest`)."""
        return {"train/phase": 1}

    def record(self) -> dict[str, Any]:
        """Fields for run.json."""
        return {}

    def sample_notes(self, clips: dict[str, list[np.ndarray]]) -> dict[str, list[str]] | None:
        """A short text per role and clip for the validation spectrogram titles (None: none)."""
        return None


def build_recipe(cfg: DictConfig, parts: RecipeParts) -> Recipe:
    """The recipe `cfg` (the `recipe` group) names, built from `parts` and its own values."""
    recipe = instantiate(cfg, _partial_=True)(parts)
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe._target_={cfg._target_} is not an audiolab.train.recipes.Recipe")
    return recipe
