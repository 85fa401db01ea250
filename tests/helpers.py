"""Test-only models that fail on purpose."""

from __future__ import annotations

import torch

from audiolab.models.convnext1d import ConvNeXtUNet1d


class NaNAfter(ConvNeXtUNet1d):
    """A ConvNeXt U-Net whose training forward returns NaN from its `nan_at`-th call on."""

    def __init__(self, nan_at: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_at = nan_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.nan_at:
                return out * float("nan")
        return out


class RaiseAfter(ConvNeXtUNet1d):
    """A ConvNeXt U-Net whose training forward raises from its `raise_at`-th call on (a crashing trial)."""

    def __init__(self, raise_at: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.raise_at = raise_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls >= self.raise_at:
                raise RuntimeError("injected fault")
        return super().forward(x)
