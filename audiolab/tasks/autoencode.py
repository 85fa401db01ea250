"""Autoencoding: the target is the (augmented) input itself, as for RAVE-style VAEs.

There is no do-nothing baseline: returning the input would score a perfect 0. Validation logs the
distance of silence instead (`val/spec_loss_silence`), the score of a model that outputs nothing, as a
fixed upper reference; any two autoencoding runs share it.
"""

from __future__ import annotations

import numpy as np
import torch


class Autoencode:
    """(input, target) = (x, x); latent statistics are validated with `active_threshold`."""

    has_input_baseline = False

    def __init__(self, sample_rate: int, active_threshold: float = 0.01) -> None:
        if active_threshold <= 0:
            raise ValueError(f"task.active_threshold={active_threshold}: must be > 0")
        self.sample_rate = sample_rate
        self.active_threshold = float(active_threshold)

    def training_pair(self, clean: torch.Tensor, rng: np.random.Generator, rows: slice | None = None,
                      batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The clip is both input and target."""
        return clean, clean

    def validation_pair(self, clean: torch.Tensor, first_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The clip is both input and target."""
        return clean, clean


def active_dimensions(latents: torch.Tensor, threshold: float) -> int:
    """Latent channels whose posterior mean varies across the data by more than `threshold` (variance).

    `latents` is (N, channels, frames); every crop and frame is one observation (Burda et al.'s
    active units, with their 0.01 threshold as the default).
    """
    flat = latents.transpose(0, 1).reshape(latents.shape[1], -1).double()
    return int((flat.var(dim=1, unbiased=False) > threshold).sum())
