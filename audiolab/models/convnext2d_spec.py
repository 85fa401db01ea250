"""Spectrogram-domain U-Net of 2-D ConvNeXt blocks: the model of the research log's output17-22.

The log's waveform model (output23) was a "similar setup to spectrogram model but made convs 1d", so this is
the 2-D counterpart of `ConvNeXtUNet1d`:

    audio (B, C, T) -> STFT (Hann, n_fft, hop n_fft // 4, normalised) -> real and imaginary parts as
      2C channels of an image of n_fft // 2 frequency bins (the Nyquist bin is left out) by T / hop frames
    -> per level i: a patchify conv (kernel = stride = factors[i] along frequency, time_factors[i] along
       time), blocks[i] ConvNeXt blocks
    -> the mirror image with transposed convs and skips -> a correction spectrum
    -> inverse STFT of the correction, added to the input waveform.

Representation: real and imaginary parts as channels rather than a complex mask, because a mask can only
rescale and rotate the bins that are there, while the task has to put back energy the pitch shift smeared
away (the low-passed top, transients); the phase is then learned as part of the correction.

With `predict_residual` (the default) the network's output is a correction, added in the waveform domain, and
its last layer starts at zero, so the untrained model is exactly the identity (not STFT -> iSTFT, which is
only equal to float precision). Without it, the inverse STFT of the network's output is the output itself:
the research log's original setup, which output21 replaced by "estimate the difference". Any input length works: the
audio is zero-padded to a multiple of `hop_length` and the output is cropped back, as in the 1-D model. The
Nyquist bin and the last frame of the centred STFT get no correction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from audiolab.models.base import AudioModel
from audiolab.models.convnext1d import ConvNeXtBlock, _check_positive, initialise, unet


class ConvNeXtUNet2dSpec(AudioModel):
    """Waveform in, waveform out; inside, a 2-D ConvNeXt U-Net over the real/imaginary STFT.

    `channels[0]` is the image's input width: 2 per audio channel (real and imaginary part), so 2 for mono.
    `factors[i]` downsamples frequency at level i, and `time_factors[i]` time (default: the same as `factors`).
    The hop is `n_fft // 4 * prod(time_factors)` samples; `n_fft // 2` must be divisible by `prod(factors)`.
    The log's segments (65024, 48640, 32256) are multiples of 512 only, which a time reduction of 2 at an
    STFT hop of 256 fits.
    """

    def __init__(
        self,
        channels: Sequence[int],
        blocks: Sequence[int],
        factors: Sequence[int],
        time_factors: Sequence[int] | None = None,
        n_fft: int = 1024,
        kernel_size: int = 7,
        expansion: int = 4,
        predict_residual: bool = True,
        dropout: float = 0.0,
        init: str = "default",
    ) -> None:
        super().__init__()
        factors = _check_positive("factors", factors)
        time_factors = _check_positive("time_factors", factors if time_factors is None else time_factors)
        channels = _check_positive("channels", channels)
        blocks = _check_positive("blocks", blocks)
        n = len(factors)
        if n == 0:
            raise ValueError("model.factors=[]: needs at least one entry")
        if len(channels) != n + 1 or len(blocks) != n or len(time_factors) != n:
            raise ValueError(f"model.channels needs len(model.factors)+1 = {n + 1} entries, model.blocks and "
                             f"model.time_factors {n} (model.factors={list(factors)}); got {list(channels)}, "
                             f"{list(blocks)} and {list(time_factors)}")
        if channels[0] % 2:
            raise ValueError(f"model.channels[0]={channels[0]}: must be 2 per audio channel (real and imaginary part)")
        if n_fft < 8 or n_fft % 4 or (n_fft // 2) % math.prod(factors):
            raise ValueError(f"model.n_fft={n_fft}: must be a multiple of 4 with n_fft // 2 divisible by prod(factors)"
                             f" = {math.prod(factors)}")
        _check_positive("kernel_size", [kernel_size])
        _check_positive("expansion", [expansion])
        self.channels, self.blocks, self.factors, self.time_factors = channels, blocks, factors, time_factors
        self.audio_channels = channels[0] // 2
        self.predict_residual = predict_residual
        self.n_fft, self.stft_hop = int(n_fft), int(n_fft) // 4
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

        def stage(i: int) -> nn.Sequential:
            return nn.Sequential(*(ConvNeXtBlock(channels[i + 1], kernel_size, expansion, dropout, spatial_dims=2)
                                   for _ in range(blocks[i])))

        patches = [(factors[i], time_factors[i]) for i in range(n)]
        self.down = nn.ModuleList(nn.Conv2d(channels[i], channels[i + 1], patches[i], stride=patches[i])
                                  for i in range(n))
        self.enc = nn.ModuleList(stage(i) for i in range(n))
        self.dec = nn.ModuleList(stage(i) for i in range(n))
        self.up = nn.ModuleList(nn.ConvTranspose2d(channels[i + 1], channels[i], patches[i], stride=patches[i])
                                for i in range(n))
        initialise(self, init, zero=self.up[0] if predict_residual else None)  # zero correction: the identity

    @classmethod
    def hop_for(cls, factors: Sequence[int] = (), n_fft: int = 1024, time_factors: Sequence[int] | None = None,
                **_: object) -> int:
        """Samples per frame at the bottleneck: the STFT hop (n_fft // 4) times prod(time_factors)."""
        return int(n_fft) // 4 * math.prod(int(f) for f in (factors if time_factors is None else time_factors))

    @classmethod
    def audio_channels_for(cls, channels: list[int] | None = None, **_: object) -> int | None:
        """Audio channels: half the spectrogram image's input width (real and imaginary part each)."""
        return None if channels is None else int(channels[0]) // 2

    @property
    def hop_length(self) -> int:
        """Samples per frame at the bottleneck."""
        return self.hop_for(self.factors, self.n_fft, self.time_factors)

    def io_parameters(self) -> list[nn.Parameter]:
        """Parameters of the first and last layers (kept on AdamW by the Muon hybrid)."""
        return [*self.down[0].parameters(), *self.up[0].parameters()]

    def _spectrum(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, 2C, n_fft // 2, T / stft_hop): real and imaginary parts, fp32."""
        b, c, t = audio.shape
        spec = torch.stft(audio.reshape(b * c, t).float(), self.n_fft, self.stft_hop, window=self.window,
                          center=True, normalized=True, return_complex=True)
        spec = spec[:, : self.n_fft // 2, : t // self.stft_hop]  # no Nyquist bin, no extra centred frame
        return torch.view_as_real(spec).reshape(b, c, *spec.shape[1:], 2).permute(0, 1, 4, 2, 3).reshape(
            b, 2 * c, *spec.shape[1:])

    def _waveform(self, image: torch.Tensor, length: int) -> torch.Tensor:
        """Inverse of `_spectrum` for a correction image: (B, 2C, F, N) -> (B, C, length)."""
        b, cc, f, frames = image.shape
        c = cc // 2
        spec = torch.view_as_complex(image.float().reshape(b, c, 2, f, frames).permute(0, 1, 3, 4, 2).contiguous())
        spec = F.pad(spec.reshape(b * c, f, frames), (0, 1, 0, 1))  # zero Nyquist bin and last frame
        audio = torch.istft(spec, self.n_fft, self.stft_hop, window=self.window, center=True, normalized=True,
                            length=length)
        return audio.reshape(b, c, length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C, T) to (B, C, T) for any T >= 1."""
        t = x.shape[-1]
        padded = F.pad(x, (0, -t % self.hop_length))
        with torch.autocast(x.device.type, enabled=False):  # the STFT stays fp32 under bf16 autocast
            h = self._spectrum(padded)
        h = unet(h, self.down, self.enc, self.dec, self.up)
        with torch.autocast(x.device.type, enabled=False):
            y = self._waveform(h, padded.shape[-1])[..., :t].to(x.dtype)
        return x + y if self.predict_residual else y
