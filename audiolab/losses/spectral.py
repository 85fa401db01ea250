"""Spectral reconstruction losses from two published codecs: DAC's multi-scale mel L1 and RAVE's spectral distance.

Both take float32 (B, C, T) tensors, treat every channel as its own signal, and return a 0-dim tensor.
STFTs are `torch.stft` with centred frames and reflect padding (what both reference implementations do),
so T must exceed half the largest window. Windows and mel filterbanks are non-persistent buffers:
`.to(device)` moves them, yet they stay out of checkpoints, since they are rebuilt from the constructor args.

Sources checked (see each class): descript-audio-codec's `dac/nn/loss.py` + `conf/base.yml` with
audiotools 0.7.2 (installed here), and acids-ircam/RAVE's `rave/model.py` (v1) and `rave/core.py` (v2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from audiolab.common.distributed import World
from audiolab.losses.global_batch import norm_ratio

# Guards ||Y|| in RAVE's relative L2 against an all-silent target batch (RAVE itself divides by zero there).
_NORM_EPS = 1e-12


def _check_pair(output: torch.Tensor, target: torch.Tensor) -> None:
    """Raise unless output and target are matching (B, C, T) tensors."""
    if output.dim() != 3 or output.shape != target.shape:
        raise ValueError(f"expected two (B, C, T) tensors of one shape, got {tuple(output.shape)} and "
                         f"{tuple(target.shape)}")


def _stft_magnitude(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """|STFT| of (N, T) signals: n_fft = window length, hop = n_fft // 4, centred frames, reflect padding."""
    n_fft = window.shape[-1]
    spec = torch.stft(x, n_fft=n_fft, hop_length=n_fft // 4, win_length=n_fft, window=window.to(x.dtype),
                      center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    return spec.abs()


class MelMultiScaleLoss(nn.Module):
    """DAC's multi-scale mel loss: sum over scales of L1 between log10 mel magnitudes (plus optional linear L1).

    Matches descript-audio-codec's `MelSpectrogramLoss` as configured in its `conf/base.yml` (the defaults
    here: 7 scales, windows 32..2048, n_mels 5..320, clamp 1e-5, mag_weight 0, pow 1.0). DAC's conventions,
    all reproduced: periodic Hann window (scipy "hann"), n_fft = window, hop = window // 4, centred frames
    with reflect padding, magnitude (not power) STFT, librosa's default filterbank (Slaney mel scale and
    Slaney area normalisation, which torchaudio offers as mel_scale="slaney", norm="slaney"), clamp before
    log10, L1 means over every (signal, frame, mel) element, scales summed. DAC's class default pow=2.0 only
    doubles the log term (log10(clamp(m)^2) = 2 log10(clamp(m))): use log_weight=2 to get it.

    Slaney normalisation makes the filters' weights 2 / bandwidth in Hz, so mel values are small and
    the 1e-5 clamp is a level floor that rises as windows shrink (measured: the lowest band's mean reaches
    the clamp for white noise at -25 dBFS RMS at window 32, at -94 dBFS at window 2048; at -40 dBFS, 24%
    of the window-32 mel values sit on the clamp). Quiet content thus barely counts at the short scales.

    Gain: mel is linear in gain, so the log term of (g*x, g*y) equals that of (x, y) whenever every mel
    value of both stays above clamp_eps; a gain that pushes values under the clamp lowers the loss. At
    window 32 that is rare even for loud audio: full-scale white noise (RMS 1) still has mel values down
    to 0.16 * clamp_eps in its lowest band, so strict invariance needs a smaller clamp. The mag term
    scales by g. Identical inputs give exactly 0. With DAC's defaults no filter is empty; a
    config that makes one gets torchaudio's warning at construction (left on: the empty band contributes
    0 to the mean on both sides, as in DAC, but likely means n_mels is too high for the window).
    """

    def __init__(
        self,
        sample_rate: int = 44100,
        n_mels: Sequence[int] = (5, 10, 20, 40, 80, 160, 320),
        window_lengths: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
        clamp_eps: float = 1e-5,
        mag_weight: float = 0.0,
        log_weight: float = 1.0,
        fmin: float = 0.0,
        fmax: float | None = None,
    ) -> None:
        super().__init__()
        n_mels, window_lengths = [int(n) for n in n_mels], [int(w) for w in window_lengths]
        if len(n_mels) != len(window_lengths) or not n_mels:
            raise ValueError(f"n_mels {n_mels} and window_lengths {window_lengths} need the same nonzero length")
        self.sample_rate = int(sample_rate)
        self.n_mels = n_mels
        self.window_lengths = window_lengths
        self.clamp_eps = float(clamp_eps)
        self.mag_weight = float(mag_weight)
        self.log_weight = float(log_weight)
        self.fmin = float(fmin)
        # librosa (and so DAC) takes fmax=None to mean Nyquist.
        self.fmax = self.sample_rate / 2 if fmax is None else float(fmax)
        for i, (n, w) in enumerate(zip(n_mels, window_lengths, strict=True)):
            self.register_buffer(f"window_{i}", torch.hann_window(w, periodic=True), persistent=False)
            fb = torchaudio.functional.melscale_fbanks(w // 2 + 1, self.fmin, self.fmax, n, self.sample_rate,
                                                       norm="slaney", mel_scale="slaney")
            self.register_buffer(f"fbank_{i}", fb, persistent=False)  # (freqs, mels)

    def mel_spectrograms(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Magnitude mel spectrograms of (B, C, T) audio, one (B*C, frames, n_mels) tensor per scale."""
        x = x.reshape(-1, x.shape[-1])
        mels = []
        for i in range(len(self.window_lengths)):
            mag = _stft_magnitude(x, getattr(self, f"window_{i}"))  # (N, freqs, frames)
            mels.append(mag.transpose(1, 2) @ getattr(self, f"fbank_{i}").to(x.dtype))
        return mels

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Summed multi-scale mel distance between (B, C, T) output and target."""
        _check_pair(output, target)
        loss = output.new_zeros(())
        for mo, mt in zip(self.mel_spectrograms(output), self.mel_spectrograms(target), strict=True):
            if self.log_weight:
                loss = loss + self.log_weight * F.l1_loss(mo.clamp_min(self.clamp_eps).log10(),
                                                          mt.clamp_min(self.clamp_eps).log10())
            if self.mag_weight:
                loss = loss + self.mag_weight * F.l1_loss(mo, mt)
        return loss

    def extra_repr(self) -> str:
        """Scales and weights, for printing the module."""
        return (f"sample_rate={self.sample_rate}, n_mels={self.n_mels}, window_lengths={self.window_lengths}, "
                f"clamp_eps={self.clamp_eps}, log_weight={self.log_weight}, mag_weight={self.mag_weight}, "
                f"fmin={self.fmin}, fmax={self.fmax}")


class RaveSpectralLoss(nn.Module):
    """RAVE's multiscale spectral distance: per scale ||X-Y||_2 / ||Y||_2 + mean|log(X+eps) - log(Y+eps)|, summed.

    X and Y are STFT magnitudes of output and target (Hann, n_fft = scale, hop = scale // 4, centred,
    reflect padding); both norms run over the whole batch at once, as in RAVE, so the relative term
    weights loud examples more. This is the formula of RAVE v1 (`rave/model.py`: `torch.norm(x - y) /
    torch.norm(x)` with x the target, log eps 1e-7, same scales). Two differences from RAVE's code: v1 used
    `normalized=True` STFTs (magnitudes / sqrt(n_fft)); here, as in RAVE v2, they are unnormalised, which
    only moves the log floor (v1's 1e-7 equals sqrt(n_fft) * 1e-7 here). RAVE v2's `AudioDistanceV1`
    uses the squared ratio mean((X-Y)^2) / mean(Y^2) instead; this class keeps v1's unsquared ratio.

    Gain: the relative term is exactly gain-invariant (up to the 1e-12 guard on ||Y||). The log term is
    gain-invariant wherever X and Y are far above log_eps, which for audio is nearly always (16-bit
    quantisation noise, -101 dBFS, has 99% of its magnitudes above 5e-6), so loss(g*x, g*y) ~= loss(x, y);
    it shrinks only when the gain pushes magnitudes down towards log_eps (measured on a harmonic tone with
    a -60 dBFS noise floor: gain 0.01 changes the loss by -0.03%, 1e-4 by -2.4%, 1e-6 by -44%). log_eps is
    so small that the log term is in effect unfloored: it weighs differences in near-silent bins as much
    as in loud ones.
    Identical inputs give exactly 0; an all-silent target batch makes the relative term ||X|| / 1e-12.

    `squared=True` gives RAVE v2's `AudioDistanceV1` (rave/core.py): the relative term becomes
    mean((X-Y)^2) / mean(Y^2), the square of v1's ratio. `skip_long_scales=True` drops the scales whose
    half-window does not fit in the signal (reflect padding needs T > n_fft / 2) instead of failing;
    the multiband distance needs it on short training crops, whose bands are M times shorter.
    """

    def __init__(self, scales: Sequence[int] = (2048, 1024, 512, 256, 128), log_eps: float = 1e-7,
                 squared: bool = False, skip_long_scales: bool = False) -> None:
        super().__init__()
        self.scales = [int(s) for s in scales]
        if not self.scales:
            raise ValueError("scales must not be empty")
        self.log_eps = float(log_eps)
        self.squared = squared
        self.skip_long_scales = skip_long_scales
        self.batch_world = World()  # under torchrun: the ranks whose shares make the batch (global_batch.py)
        for i, s in enumerate(self.scales):
            self.register_buffer(f"window_{i}", torch.hann_window(s, periodic=True), persistent=False)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Summed multiscale spectral distance between (B, C, T) output and target."""
        _check_pair(output, target)
        output, target = output.reshape(-1, output.shape[-1]), target.reshape(-1, target.shape[-1])
        length = output.shape[-1]
        used = [i for i, s in enumerate(self.scales) if s // 2 < length or not self.skip_long_scales]
        if not used:
            raise ValueError(f"no STFT scale of {self.scales} fits a signal of {length} samples "
                             "(each needs more than scale / 2): use longer crops or smaller scales")
        loss = output.new_zeros(())
        for i in used:
            window = getattr(self, f"window_{i}")
            x, y = _stft_magnitude(output, window), _stft_magnitude(target, window)
            relative = norm_ratio(x - y, y, self.batch_world, _NORM_EPS)
            if self.squared:
                relative = relative.pow(2)
            log_l1 = (torch.log(x + self.log_eps) - torch.log(y + self.log_eps)).abs().mean()
            loss = loss + relative + log_l1
        return loss

    def extra_repr(self) -> str:
        """Scales and log floor, for printing the module."""
        return (f"scales={self.scales}, log_eps={self.log_eps}, squared={self.squared}, "
                f"skip_long_scales={self.skip_long_scales}")


class MultibandSpectralLoss(nn.Module):
    """RAVE's multiband distance: the spectral distance between the PQMF sub-bands of output and target.

    RAVE compares the decoder's band signals with the analysed input; here both sides are analysed by a
    PQMF bank of the same design (`n_bands`, `attenuation`: identical filters to the model's), so the term
    works for any model. For the PQMF VAE the difference is that the output's bands are re-analysed after
    synthesis, i.e. projected onto what the bank can reproduce. Scales too long for the bands are skipped.
    """

    def __init__(self, n_bands: int = 16, attenuation: float = 100.0,
                 scales: Sequence[int] = (2048, 1024, 512, 256, 128), log_eps: float = 1e-7,
                 squared: bool = True) -> None:
        super().__init__()
        from audiolab.models.pqmf import PQMF  # imports scipy.optimize: paid only by runs with this term

        self.pqmf = PQMF(n_bands, attenuation)
        self.distance = RaveSpectralLoss(scales, log_eps, squared=squared, skip_long_scales=True)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Spectral distance between the band signals of (B, C, T) output and target."""
        _check_pair(output, target)
        return self.distance(self.pqmf.analysis(output), self.pqmf.analysis(target))
