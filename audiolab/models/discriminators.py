"""Waveform discriminators for the adversarial phase of RAVE-style VAE training.

Every discriminator takes mono audio ``(B, 1, T)`` and returns ``list[list[Tensor]]``: one inner list per
sub-discriminator with its feature maps in order, the last map being that sub-discriminator's logit (score map).
Each map keeps the batch dimension first and no layer mixes rows of the batch, so real and fake audio can be
scored in one call on ``torch.cat([real, fake])`` and separated afterwards with :func:`split_features`.

* ``dac``: descript-audio-codec's own ``Discriminator`` (multi-period + multi-resolution STFT), built by
  :func:`dac_discriminator`.
* ``rave_v2``: :class:`RaveV2Discriminator`, RAVE v2's multi-period + multi-scale waveform discriminator.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

Features = list[list[torch.Tensor]]


def check_mono(x: torch.Tensor, min_length: int = 1) -> None:
    """Raise ValueError unless ``x`` is mono audio shaped (B, 1, T) with T >= ``min_length``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor of shape (B, 1, T), got {type(x).__name__}")
    if x.ndim != 3 or x.shape[1] != 1:
        raise ValueError(
            f"expected mono audio of shape (B, 1, T), got {tuple(x.shape)}; fold channels into the batch first"
        )
    if x.shape[-1] < min_length:
        raise ValueError(f"audio too short for this discriminator: T={x.shape[-1]} < {min_length}")


def split_features(features: Features, n_real: int) -> tuple[Features, Features]:
    """Split every map along the batch dim into its first ``n_real`` rows (real) and the remaining rows (fake)."""
    if not features:
        raise ValueError("no features to split")
    batch = features[0][-1].shape[0]
    if not 0 <= n_real <= batch:
        raise ValueError(f"n_real={n_real} is outside [0, {batch}] (the batch size of the maps)")
    real: Features = []
    fake: Features = []
    for maps in features:
        real.append([m[:n_real] for m in maps])
        fake.append([m[n_real:] for m in maps])
    return real, fake


# ----------------------------------------------------------------------------------------------------- dac


def _dac_too_short(t: int, fft_sizes: Sequence[int], periods: Sequence[int]) -> bool:
    """Whether dac's reflect paddings (period fold, STFT) would fail on length ``t``."""
    # MPD reflect-pads p - t % p samples (a whole period when t is a multiple); reflect needs pad < t.
    if any(p - t % p >= t for p in periods):
        return True
    for n_fft in fft_sizes:
        # audiotools' match_stride STFT reflect-pads (n - hop) // 2 left and that plus a stride remainder right.
        hop = n_fft // 4
        if (n_fft - hop) // 2 + math.ceil(t / hop) * hop - t >= t:
            return True
    return False


def _check_dac_input(fft_sizes: tuple[int, ...], periods: tuple[int, ...], module: nn.Module, args: tuple) -> None:
    """Forward pre-hook giving dac's discriminator the same clear input errors as ours."""
    if len(args) != 1:
        raise ValueError(f"expected one positional input (B, 1, T), got {len(args)}")
    x = args[0]
    check_mono(x)
    if _dac_too_short(x.shape[-1], fft_sizes, periods):
        raise ValueError(f"audio too short for dac's discriminator (reflect padding fails): T={x.shape[-1]}")


def dac_discriminator(
    periods: Sequence[int] = (2, 3, 5, 7, 11),
    fft_sizes: Sequence[int] = (2048, 1024, 512),
    sample_rate: int = 44100,
    rates: Sequence[int] = (),
    bands: Sequence[tuple[float, float]] | None = None,
) -> nn.Module:
    """descript-audio-codec's ``Discriminator`` (the package's own class), checked to take (B, 1, T) audio.

    Its forward already follows our contract: a list with one list of maps per sub-discriminator (MPDs for
    ``periods``, then MSDs for ``rates``, then MRDs for ``fft_sizes``), the last map being the logit. With the
    defaults that is 5 MPDs (6 maps each) and 3 MRDs (26 maps each: 5 bands x 5 convs + the shared post conv).

    Facts worth knowing before using it:

    * Every input row is DC-removed and peak-normalised to 0.8 first, so the discriminator is blind to gain.
    * ``sample_rate`` does not change the MRDs numerically: their STFT window/hop are given in samples
      (hop = n_fft / 4) and ``bands`` are fractions of the bins up to Nyquist (default 0-0.1, 0.1-0.25, 0.25-0.5,
      0.5-0.75, 0.75-1.0). Those fractions and the 2048/1024/512 windows were tuned for 44.1 kHz audio
      (first band 0-2.2 kHz there); at much lower rates the bands cover proportionally fewer Hz.
      ``sample_rate`` is used only by the MSDs (non-empty ``rates``), which resample to ``sample_rate // rate``.
    * It uses the deprecated ``torch.nn.utils.weight_norm`` (its FutureWarning is silenced here); parameters are
      ``weight_g``/``weight_v`` as in DAC's checkpoints. Legacy weight norm breaks ``copy.deepcopy`` (even of a
      fresh module); the returned one is made copyable, but a grad-enabled forward breaks that again until the
      next ``torch.no_grad()`` forward or :func:`_refresh_legacy_weight_norm` (``state_dict`` always works).
    * audiotools' STFT reflect padding fails on short inputs (every T >= 5/8 of the largest FFT size works, i.e.
      1280 for 2048; some shorter ones do too); a pre-hook raises a ValueError for those and for non-(B, 1, T).
    """
    # dac pulls in audiotools (slow import), so only pay for it when this discriminator is asked for.
    from dac.model.discriminator import BANDS, Discriminator

    with warnings.catch_warnings():
        # dac's WNConv layers call the deprecated weight_norm; nothing the caller can act on.
        warnings.filterwarnings("ignore", message=r".*torch\.nn\.utils\.weight_norm.*", category=FutureWarning)
        disc = Discriminator(
            rates=list(rates),
            periods=list(periods),
            fft_sizes=list(fft_sizes),
            sample_rate=sample_rate,
            bands=list(BANDS if bands is None else bands),
        )
    _refresh_legacy_weight_norm(disc)
    disc.register_forward_pre_hook(functools.partial(_check_dac_input, tuple(fft_sizes), tuple(periods)))
    return disc


def _refresh_legacy_weight_norm(module: nn.Module) -> None:
    """Recompute legacy weight-norm weights without autograd history, so the module can be deep-copied.

    The legacy ``weight_norm`` stores ``weight = g * v / |v|`` as a plain attribute computed with grad, a non-leaf
    tensor that ``copy.deepcopy`` refuses (pytorch#103001). Every forward recomputes it from ``weight_g`` and
    ``weight_v``, so gradients are unaffected; call this again before deep-copying after a grad-enabled forward.
    """
    from torch.nn.utils.weight_norm import WeightNorm

    with torch.no_grad():
        for m in module.modules():
            for hook in m._forward_pre_hooks.values():
                if isinstance(hook, WeightNorm):
                    hook(m, ())


# ------------------------------------------------------------------------------------------------- RAVE v2


class ConvStack(nn.Module):
    """RAVE-style strided conv stack (widths capacity * 2**i, LeakyReLU) ending in a 1x1 conv to a logit."""

    def __init__(
        self,
        ndim: int,
        capacity: int,
        n_layers: int,
        kernel_size: int,
        stride: int,
        in_channels: int = 1,
        negative_slope: float = 0.2,
        use_weight_norm: bool = True,
    ) -> None:
        super().__init__()
        if ndim not in (1, 2):
            raise ValueError(f"ndim must be 1 or 2, got {ndim}")
        conv_cls: type[nn.Conv1d] | type[nn.Conv2d] = nn.Conv1d if ndim == 1 else nn.Conv2d
        pad = (kernel_size - 1) // 2  # "centered" padding, as cached_conv computes it for RAVE
        # The 2-D (period) variant convolves along time only, never across the period axis.
        kernel: int | tuple[int, int] = kernel_size if ndim == 1 else (kernel_size, 1)
        stride_: int | tuple[int, int] = stride if ndim == 1 else (stride, 1)
        padding: int | tuple[int, int] = pad if ndim == 1 else (pad, 0)
        widths = [in_channels] + [capacity * 2**i for i in range(n_layers)]
        self.convs = nn.ModuleList()
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            conv = conv_cls(c_in, c_out, kernel, stride=stride_, padding=padding)
            self.convs.append(weight_norm(conv) if use_weight_norm else conv)
        # RAVE leaves the final 1x1 projection without weight norm.
        self.post = conv_cls(widths[-1], 1, 1)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return every conv output (pre-activation, as RAVE records them); the last is the logit."""
        maps: list[torch.Tensor] = []
        for conv in self.convs:
            x = conv(x)
            maps.append(x)
            x = F.leaky_relu(x, self.negative_slope)
        maps.append(self.post(x))
        return maps


class PeriodDiscriminator(nn.Module):
    """Folds (B, 1, T) into (B, 1, ceil(T/p), p) and scores it with a 2-D conv stack using (k, 1) kernels."""

    def __init__(self, period: int, pad_mode: str = "constant", **stack_kwargs: Any) -> None:
        super().__init__()
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.period = period
        self.pad_mode = pad_mode
        self.net = ConvStack(ndim=2, **stack_kwargs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of the folded signal; each has width ``period``."""
        pad = (self.period - x.shape[-1] % self.period) % self.period
        if pad:
            x = F.pad(x, (0, pad), mode=self.pad_mode)
        return self.net(x.reshape(x.shape[0], x.shape[1], -1, self.period))


class RaveV2Discriminator(nn.Module):
    """RAVE v2's discriminator: multi-period (2-D convs) plus multi-scale (1-D convs on 2x-pooled audio).

    Defaults reproduce ``rave/configs/v2.gin`` of acids-ircam/RAVE, which includes ``rave/configs/v1.gin``:

    * ``discriminator.CombineDiscriminators`` = [MultiPeriodDiscriminator, MultiScaleDiscriminator], in that order.
    * ``discriminator.ConvNet`` (shared by both, v1.gin): ``n_layers=4``, ``stride=4``, ``capacity=%CAPACITY``;
      v2.gin redefines the macro ``CAPACITY = 96`` (v1 had 64), so widths are 96, 192, 384, 768, then 1x1 to 1.
    * periods (v2.gin): ``periods=[2, 3, 5, 7, 11]``, ``Conv2d`` with ``kernel_size=(5, 1)``.
    * scales (v1.gin): ``n_discriminators=3``, ``Conv1d`` with ``kernel_size=15``; scale i sees the audio
      ``avg_pool1d(x, 2)`` applied i times (rave/discriminator.py, ``MultiScaleDiscriminator``).
    * ``blocks.normalization.mode = 'weight_norm'`` (v1.gin, not overridden by v2.gin) on every strided conv;
      the final 1x1 conv is not normalised. LeakyReLU slope 0.2; padding (k - 1) // 2 ("centered").
    * The period fold right-pads T with zeros to a multiple of p (``pad_mode="constant"``); ``"reflect"`` is
      offered for HiFi-GAN/DAC-style folding.

    Feature maps are the conv outputs before activation, as RAVE's ``ConvNet`` collects them.
    """

    def __init__(
        self,
        periods: Sequence[int] = (2, 3, 5, 7, 11),
        n_scales: int = 3,
        capacity: int = 96,
        n_layers: int = 4,
        period_kernel_size: int = 5,
        scale_kernel_size: int = 15,
        stride: int = 4,
        negative_slope: float = 0.2,
        use_weight_norm: bool = True,
        period_pad_mode: str = "constant",
    ) -> None:
        super().__init__()
        if n_scales < 0 or (n_scales == 0 and not periods):
            raise ValueError("need at least one period or one scale")
        stack: dict[str, Any] = {
            "capacity": capacity,
            "n_layers": n_layers,
            "stride": stride,
            "negative_slope": negative_slope,
            "use_weight_norm": use_weight_norm,
        }
        self.periods = tuple(periods)
        self.n_scales = n_scales
        self.period_discriminators = nn.ModuleList(
            PeriodDiscriminator(p, pad_mode=period_pad_mode, kernel_size=period_kernel_size, **stack)
            for p in self.periods
        )
        self.scale_discriminators = nn.ModuleList(
            ConvStack(ndim=1, kernel_size=scale_kernel_size, **stack) for _ in range(n_scales)
        )
        # Each extra scale halves T; reflect folding additionally needs more than max(p) samples.
        self.min_length = max(2 ** max(n_scales - 1, 0), max(self.periods, default=0) + 1)

    def forward(self, x: torch.Tensor) -> Features:
        """Maps of the period discriminators (in ``periods`` order), then of the scales (finest first)."""
        check_mono(x, self.min_length)
        features: Features = [d(x) for d in self.period_discriminators]
        for i, d in enumerate(self.scale_discriminators):
            if i:
                x = F.avg_pool1d(x, 2)
            features.append(d(x))
        return features


# ------------------------------------------------------------------------------------------------ registry
