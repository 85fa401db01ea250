"""Batched, on-device audio augmentations configured by the `augment` config group."""

from audiolab.augment.transforms import (
    Augment,
    Dequantize,
    PhaseMangle,
    PolarityInvert,
    RandomGain,
    RandomMute,
    RandomPitch,
    Transform,
)

__all__ = [
    "Augment",
    "Dequantize",
    "PhaseMangle",
    "PolarityInvert",
    "RandomGain",
    "RandomMute",
    "RandomPitch",
    "Transform",
]
