"""Training batches: crops drawn from (seed, step), augmented on the device, then degraded by the task.

Everything random in a batch is seeded by (seed, step), so a run resumed at step k sees exactly the
batches an uninterrupted run would have seen from k on. Under torchrun each rank draws the same global
batch and keeps its own rows (`rows`), so N processes see exactly what one process would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from audiolab.data.clips import AudioData, train_loader


@dataclass
class Batch:
    """One training step's (input, target) pair, on the device."""

    inputs: torch.Tensor
    targets: torch.Tensor


def training_batches(data: AudioData, task: Any, augment: Any | None, device: torch.device, seed: int,
                     start_step: int, overfit: bool, rows: slice | None = None) -> Iterator[Batch]:
    """Batches for steps start_step, start_step + 1, ... (overfit: step 0's batch again and again); with `rows`,
    those rows of each global batch."""
    crop_length = augment.input_length(data.segment) if augment else data.segment  # pitch needs spare samples
    loader = train_loader(data.train, crop_length, data.batch_size, seed, start_step=start_step,
                          num_workers=data.num_workers, fixed_batch=overfit, pin_memory=device.type == "cuda",
                          backend=data.loader, rows=rows)
    crops = iter(loader)
    try:
        for step in range(start_step, 2**62):
            clean = data.train.to_float(next(crops).to(device, non_blocking=True))
            draw_step = 0 if overfit else step  # overfit repeats step 0's augmentation and degradation too
            if augment:
                clean = augment(clean, np.random.default_rng([seed, draw_step, 2]), data.segment, rows,
                                data.batch_size)
            inputs, targets = task.training_pair(clean, np.random.default_rng([seed, draw_step, 1]), rows,
                                                 data.batch_size)
            yield Batch(inputs, targets)
    finally:
        if hasattr(crops, "close"):  # the threaded loader's generator: stop its threads now
            crops.close()
