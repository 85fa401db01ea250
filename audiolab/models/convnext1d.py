"""Waveform U-Net built from 1-D ConvNeXt blocks.

The encoder alternates a down transition (channels[i] -> channels[i+1], time / factors[i]) with
blocks[i] ConvNeXt blocks; the decoder mirrors it with blocks then an up transition, adding the
encoder activation of the same resolution as a skip. Inputs of any length are zero-padded to a
multiple of ``hop_length`` and the output is cropped back. With ``predict_residual`` the network
predicts a correction that is added to the input, and starts out as the exact identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from audiolab.models.base import AudioModel
from audiolab.models.fft_conv import FFT_MIN_KERNEL, same_depthwise_conv1d_fft


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: depthwise conv, LayerNorm, inverted-bottleneck MLP, layer scale, residual.

    `spatial_dims` 1 for waveforms (B, dim, T), 2 for spectrograms (B, dim, F, N).
    """

    def __init__(self, dim: int, kernel_size: int = 7, expansion: int = 4, dropout: float = 0.0,
                 spatial_dims: int = 1) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d}[spatial_dims]
        self.dwconv = conv(dim, dim, kernel_size, padding="same", groups=dim)
        # Long 1-D kernels run by FFT: same result (to fp32 rounding), a fraction of the time on a CPU.
        self.fft = spatial_dims == 1 and kernel_size >= FFT_MIN_KERNEL
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, expansion * dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.pwconv2 = nn.Linear(expansion * dim, dim)
        # Tiny layer scale keeps every block close to the identity at init, as in ConvNeXt.
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, dim, *spatial) to the same shape."""
        y = same_depthwise_conv1d_fft(x, self.dwconv) if self.fft else self.dwconv(x)
        y = y.movedim(1, -1)  # channels-last so LayerNorm and Linear act per position
        y = self.pwconv2(self.drop(self.act(self.pwconv1(self.norm(y)))))
        return x + (self.gamma * y).movedim(-1, 1)


def _space_to_depth(x: torch.Tensor, f: int) -> torch.Tensor:
    """Fold f consecutive time steps into channels: (B, C, T) -> (B, C*f, T/f)."""
    b, c, t = x.shape
    return x.reshape(b, c, t // f, f).transpose(2, 3).reshape(b, c * f, t // f)


def _depth_to_space(x: torch.Tensor, f: int) -> torch.Tensor:
    """Inverse of :func:`_space_to_depth`: (B, C*f, N) -> (B, C, N*f)."""
    b, cf, n = x.shape
    return x.reshape(b, cf // f, f, n).transpose(2, 3).reshape(b, cf // f, n * f)


class Transition1d(nn.Module):
    """Resample time by ``factor`` and change width, mixing a strided-conv path and a fold path."""

    def __init__(self, in_channels: int, out_channels: int, factor: int, alpha: float, up: bool) -> None:
        super().__init__()
        self.factor, self.alpha, self.up = factor, alpha, up
        f = factor
        self.strided: nn.Module | None = None
        self.fold: nn.Conv1d | None = None
        if alpha > 0:
            cls = nn.ConvTranspose1d if up else nn.Conv1d
            self.strided = cls(in_channels, out_channels, 2 * f, stride=f)
        if alpha < 1:
            self.fold = nn.Conv1d(in_channels * (1 if up else f), out_channels * (f if up else 1), 1)

    def _strided(self, x: torch.Tensor) -> torch.Tensor:
        assert self.strided is not None
        f = self.factor
        if self.up:
            # Cropping (instead of padding/output_padding) gives exactly N*f for odd f too.
            n = x.shape[-1]
            return self.strided(x)[..., f // 2 : f // 2 + n * f]
        # Pad f in total (f//2 left) so the output length is exactly T/f for any f.
        return self.strided(F.pad(x, (f // 2, f - f // 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C_in, T) to (B, C_out, T*f) when up, else (B, C_out, T/f)."""
        out: torch.Tensor | None = None
        if self.strided is not None:
            out = self.alpha * self._strided(x) if self.alpha != 1 else self._strided(x)
        if self.fold is not None:
            if self.up:
                y = _depth_to_space(self.fold(x), self.factor)
            else:
                y = self.fold(_space_to_depth(x, self.factor))
            y = (1 - self.alpha) * y if self.alpha != 0 else y
            out = y if out is None else out + y
        assert out is not None
        return out


def _check_positive(name: str, values: Sequence[int]) -> tuple[int, ...]:
    """Return values as a tuple of ints, raising ValueError naming ``name`` if any is < 1."""
    vals = tuple(int(v) for v in values)
    if any(v < 1 for v in vals):
        raise ValueError(f"model.{name}={list(vals)}: every entry must be >= 1")
    return vals


def unet(h: torch.Tensor, down: nn.ModuleList, enc: nn.ModuleList, dec: nn.ModuleList, up: nn.ModuleList
         ) -> torch.Tensor:
    """The U-Net pass: per level down then enc; back up with dec then up, adding the skip of each resolution."""
    skips: list[torch.Tensor] = []
    for i, (down_i, enc_i) in enumerate(zip(down, enc, strict=True)):
        if i > 0:
            skips.append(h)
        h = enc_i(down_i(h))
    for i in reversed(range(len(down))):
        h = up[i](dec[i](h))
        if i > 0:
            h = h + skips[i - 1]
    return h


# `model.init`: how conv and linear weights start (PyTorch's own default, or the original TODO's Xavier).
INITS = {
    "default": None,
    "xavier": nn.init.xavier_uniform_,
    "kaiming": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
}


def initialise(model: nn.Module, init: str, zero: nn.Module | None) -> None:
    """Re-initialise conv and linear weights by `model.init` (biases to 0), then zero `zero`'s parameters.

    A zeroed last layer makes a residual model start as exactly the identity (x + 0).
    """
    if init not in INITS:
        raise ValueError(f"model.init={init!r}: allowed {', '.join(sorted(INITS))}")
    if init != "default":
        for module in model.modules():
            if isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
                INITS[init](module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    for p in zero.parameters() if zero is not None else ():
        nn.init.zeros_(p)


class ConvNeXtUNet1d(AudioModel):
    """Waveform U-Net of ConvNeXt-1D blocks mapping (B, channels[0], T) to the same shape.

    ``scale_vs_channels`` (one alpha in [0, 1] per level, default all 1.0) decides how each level's
    resampling by f = factors[i] is learned. It is this project's definition of the research log's
    knob of the same name:

    * scale (alpha weight): a strided Conv1d, kernel 2f and stride f, on the way down and a
      ConvTranspose1d, kernel 2f and stride f, on the way up, so time resolution is traded by a
      learned, overlapping filter;
    * channels (1 - alpha weight): lossless space-to-depth that folds f consecutive samples into
      C*f channels followed by a 1x1 conv to the new width; the up path is a 1x1 conv to C_out*f
      followed by depth-to-space.

    A transition outputs ``alpha * strided + (1 - alpha) * fold`` and only builds the paths whose
    weight is non-zero (alpha=1: strided conv only, alpha=0: fold path only).
    """

    def __init__(
        self,
        channels: Sequence[int],
        blocks: Sequence[int],
        factors: Sequence[int],
        kernel_size: int = 7,
        expansion: int = 4,
        scale_vs_channels: Sequence[float] | None = None,
        predict_residual: bool = True,
        dropout: float = 0.0,
        init: str = "default",
        blocks_per_level: int | None = None,
        kernel_sizes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        factors = _check_positive("factors", factors)
        if blocks_per_level is not None:  # one scalar for depth, which a sweep can search
            blocks = [int(blocks_per_level)] * len(factors)
        channels = _check_positive("channels", channels)
        blocks = _check_positive("blocks", blocks)
        n = len(factors)
        if n == 0:
            raise ValueError("model.factors=[]: needs at least one entry")
        if len(channels) != n + 1:
            raise ValueError(f"model.channels={list(channels)} has {len(channels)} entries: it needs one per level "
                             f"plus the input, len(model.factors)+1 = {n + 1} (model.factors={list(factors)})")
        if len(blocks) != n:
            raise ValueError(f"model.blocks={list(blocks)} has {len(blocks)} entries: it needs one per level, "
                             f"len(model.factors) = {n} (model.factors={list(factors)})")
        _check_positive("kernel_size", [kernel_size])
        kernels = _check_positive("kernel_sizes", kernel_sizes) if kernel_sizes is not None else (kernel_size,) * n
        if len(kernels) != n:
            raise ValueError(f"model.kernel_sizes={list(kernels)} has {len(kernels)} entries: it needs one per level, "
                             f"len(model.factors) = {n} (model.factors={list(factors)})")
        _check_positive("expansion", [expansion])
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout={dropout}: must be in [0, 1)")
        alphas = tuple(float(a) for a in (scale_vs_channels if scale_vs_channels is not None else [1.0] * n))
        if len(alphas) != n or any(not 0.0 <= a <= 1.0 for a in alphas):
            raise ValueError(f"model.scale_vs_channels={list(alphas)}: needs {n} values in [0, 1], one per level")
        self.channels, self.blocks, self.factors, self.scale_vs_channels = channels, blocks, factors, alphas
        self.kernel_sizes = kernels
        self.predict_residual = predict_residual

        def stage(i: int) -> nn.Sequential:
            return nn.Sequential(
                *(ConvNeXtBlock(channels[i + 1], kernels[i], expansion, dropout) for _ in range(blocks[i]))
            )

        self.down = nn.ModuleList(
            Transition1d(channels[i], channels[i + 1], factors[i], alphas[i], up=False) for i in range(n)
        )
        self.enc = nn.ModuleList(stage(i) for i in range(n))
        self.dec = nn.ModuleList(stage(i) for i in range(n))
        self.up = nn.ModuleList(
            Transition1d(channels[i + 1], channels[i], factors[i], alphas[i], up=True) for i in range(n)
        )
        initialise(self, init, zero=self.up[0] if predict_residual else None)

    def io_parameters(self) -> list[nn.Parameter]:
        """Parameters of the first and last layers (kept on AdamW by the Muon hybrid)."""
        return [*self.down[0].parameters(), *self.up[0].parameters()]

    @classmethod
    def hop_for(cls, factors: Sequence[int] = (), **_: object) -> int:
        """Total time reduction at the bottleneck: the product of `factors`."""
        return math.prod(int(f) for f in factors)

    @property
    def hop_length(self) -> int:
        """Total time reduction at the bottleneck (product of factors)."""
        return self.hop_for(self.factors)

    @property
    def num_parameters(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, channels[0], T) to (B, channels[0], T) for any T >= 1."""
        t = x.shape[-1]
        h = F.pad(x, (0, -t % self.hop_length))
        h = unet(h, self.down, self.enc, self.dec, self.up)
        h = h[..., :t]
        return x + h if self.predict_residual else h
