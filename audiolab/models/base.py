"""What training asks of a model: its hop, its I/O layers, its latent statistics, and encoder freezing.

Every model family subclasses `AudioModel`, so the training code calls these methods directly instead
of probing for them. The hop is also known from the config alone (`hop_length_of`), so checking that a
segment fits the model does not need the model built.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn


class AudioModel(nn.Module):
    """A waveform model mapping (B, C, T) audio to (B, C, T) audio, with T a multiple of its hop."""

    #: True for models whose `forward_with_stats` returns a KL term to be weighted (VAEs).
    variational: ClassVar[bool] = False

    @classmethod
    def hop_for(cls, **kwargs: Any) -> int:
        """The hop a model built with these constructor arguments would have."""
        return 1

    @classmethod
    def audio_channels_for(cls, channels: int | list[int] | None = None, **_: Any) -> int | None:
        """The audio channel count a model built with these arguments takes (`channels`, or its first entry)."""
        if channels is None:
            return None
        return int(channels) if isinstance(channels, int) else int(channels[0])

    @property
    def hop_length(self) -> int:
        """Audio samples per frame at the model's coarsest resolution; input lengths are multiples of it."""
        raise NotImplementedError

    def io_parameters(self) -> list[nn.Parameter]:
        """Parameters of the first and last layers (kept on AdamW by the Muon hybrid); none by default."""
        return []

    def forward_with_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The output plus latent statistics (a VAE's 'kl' and 'latent'); none by default."""
        return self(x), {}

    def freeze_encoder(self) -> bool:
        """Stop training the encoder (phase 2 of two-phase training); False when the model has none."""
        return False


def model_class(model_cfg: DictConfig) -> type:
    """The class `model_cfg._target_` names, imported but not built."""
    return get_class(str(model_cfg._target_))


def _model_kwargs(model_cfg: DictConfig) -> tuple[type, dict[str, Any]]:
    kwargs = OmegaConf.to_container(model_cfg, resolve=True)
    return model_class(model_cfg), {k: v for k, v in kwargs.items() if not k.startswith("_")}


def hop_length_of(model_cfg: DictConfig) -> int | None:
    """The hop of the configured model, from its config alone (None for a model that is not an AudioModel)."""
    cls, kwargs = _model_kwargs(model_cfg)
    return cls.hop_for(**kwargs) if issubclass(cls, AudioModel) else None


def audio_channels_of(model_cfg: DictConfig) -> int | None:
    """The audio channel count of the configured model, from its config alone (None when it does not say)."""
    cls, kwargs = _model_kwargs(model_cfg)
    return cls.audio_channels_for(**kwargs) if issubclass(cls, AudioModel) else None
