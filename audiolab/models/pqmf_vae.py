"""A RAVE-style variational autoencoder working on PQMF sub-bands (RAVE v2's encoder and decoder shape).

Why written here: RAVE (acids-ircam/RAVE) is the only published implementation and cannot be installed
alongside current torch/scipy (it pins scipy 1.10 and pytorch_lightning 1.9, and its blocks depend on
cached_conv); the architecture below follows `rave/blocks.py` (EncoderV2, GeneratorV2, NoiseGeneratorV2)
and `rave/configs/v2.gin`, `v2_small.gin`, written from those facts.

    audio (B, C, T) -> PQMF analysis (B, C*M, T/M) -> conv (k = 2*kernel+1) -> capacity channels
      per ratio r: residual dilated units (each: act, conv k dilated d, act, conv 1x1, + skip),
                   act, strided conv (kernel 2r, stride r) doubling the channels
      act, conv -> 2 * latent_size channels: mean and scale, std = softplus(scale) + 1e-4
    z (B, latent, T / hop) -> the mirror image with transposed convs (kernel 2r, stride r) halving channels
      act, conv -> 2 * C*M channels: waveform x and amplitude a, combined as x * sigmoid(a)
      (+ filtered noise, see NoiseSynth), tanh, PQMF synthesis -> (B, C, T)

hop = M * prod(ratios): 16 * 128 = 2048 for `pqmf_vae`, a latent frame rate of 21.5 Hz at 44.1 kHz.

KL: the exact KL divergence from N(mean, std^2) to N(0, 1), 0.5 * (mean^2 + std^2 - log std^2 - 1),
summed over latent channels and averaged over batch and time. RAVE's code leaves out the 0.5, so at the
same beta its penalty is twice this one (trainer.beta_end=0.1 here matches RAVE's 5e-2).

Randomness: in training mode the latent is sampled and the noise branch draws from torch's global
generator (saved in checkpoints, so resume is exact). In eval mode the latent is the posterior mean and
the noise comes from a generator seeded afresh on every call, so validation is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from audiolab.models.base import AudioModel
from audiolab.models.pqmf import PQMF

STD_FLOOR = 1e-4  # RAVE's: keeps log(std^2) finite
EVAL_NOISE_SEED = 0


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha with a learned alpha per channel (BigVGAN's periodic activation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the activation channel-wise to (B, C, T)."""
        return x + (self.alpha + 1e-9).reciprocal() * (self.alpha * x).sin().pow(2)


class AdaIN(nn.Module):
    """RAVE v3's adaptive instance normalisation (`blocks.AdaptiveInstanceNormalization`): timbre transfer.

    It is the identity in training and, until it has learned statistics, in eval mode too; so it changes
    nothing about how a model trains. For transfer at inference, set `mode` to "target" and run audio of the
    wanted timbre through the model (eval mode): each channel's mean and std over time are averaged into the
    target statistics. Then do the same with mode "source" on the audio to be converted. With both learned,
    each channel is normalised by the source's statistics and given the target's (mode "off" keeps the
    statistics and only applies them). RAVE keeps one set of statistics per batch slot (up to cached_conv's
    MAX_BATCH_SIZE); here they are averaged over the batch, so any batch size works. They are buffers, saved
    with the weights.
    """

    MODES = ("off", "source", "target")

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mode = "off"
        for side in ("source", "target"):
            self.register_buffer(f"{side}_mean", torch.zeros(channels, 1))
            self.register_buffer(f"{side}_std", torch.ones(channels, 1))
            self.register_buffer(f"{side}_count", torch.zeros(()))

    def reset(self) -> None:
        """Forget both sides' statistics."""
        for side in ("source", "target"):
            getattr(self, f"{side}_mean").zero_()
            getattr(self, f"{side}_std").fill_(1.0)
            getattr(self, f"{side}_count").zero_()

    def _learn(self, side: str, x: torch.Tensor) -> None:
        count = getattr(self, f"{side}_count")
        for name, value in (("mean", x.mean(-1, keepdim=True)), ("std", x.std(-1, keepdim=True))):
            stat = getattr(self, f"{side}_{name}")
            stat += (value.float().mean(0) - stat) / (count + 1)  # running average over calls
        count += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, T): the identity unless both statistics are learned (eval mode only)."""
        if self.training:
            return x
        if self.mode not in self.MODES:
            raise ValueError(f"AdaIN mode {self.mode!r}: allowed {', '.join(self.MODES)}")
        if self.mode != "off":
            self._learn(self.mode, x.detach())
            return x
        if self.source_count > 0 and self.target_count > 0:
            x = (x - self.source_mean) / (self.source_std + 1e-5)
            return (x * self.target_std + self.target_mean).to(x.dtype)
        return x


def make_activation(name: str, channels: int) -> nn.Module:
    """LeakyReLU(0.2) (RAVE's default) or Snake."""
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2)
    if name == "snake":
        return Snake(channels)
    raise ValueError(f"model.activation={name!r}: allowed leaky_relu, snake")


def _dilated_units(channels: int, kernel: int, dilations: Sequence[int], activation: str, norm: bool,
                   adain: bool) -> list[nn.Module]:
    """One level's residual dilated units, each after an AdaIN when `adain` (as RAVE v3's adain.gin places them)."""
    units: list[nn.Module] = []
    for d in dilations:
        units += [AdaIN(channels)] if adain else []
        units.append(DilatedUnit(channels, kernel, d, activation, norm))
    return units


def _conv(in_ch: int, out_ch: int, kernel: int, dilation: int = 1, norm: bool = True) -> nn.Conv1d:
    """A 'same'-length odd-kernel conv, weight-normalised unless norm=False."""
    conv = nn.Conv1d(in_ch, out_ch, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)
    return weight_norm(conv) if norm else conv


class DilatedUnit(nn.Module):
    """x + conv1x1(act(conv_k,d(act(x)))): one residual dilated unit."""

    def __init__(self, channels: int, kernel: int, dilation: int, activation: str, norm: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(make_activation(activation, channels),
                                 _conv(channels, channels, kernel, dilation, norm),
                                 make_activation(activation, channels),
                                 _conv(channels, channels, 1, 1, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual update of (B, C, T)."""
        return x + self.net(x)


class StridedConv(nn.Module):
    """A conv with kernel 2r and stride r: T -> T / r exactly (padding r/2 on each side)."""

    def __init__(self, in_ch: int, out_ch: int, ratio: int, norm: bool) -> None:
        super().__init__()
        conv = nn.Conv1d(in_ch, out_ch, 2 * ratio, stride=ratio)
        self.conv = weight_norm(conv) if norm else conv
        self.pad = (ratio // 2, ratio - ratio // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, T) -> (B, out, T / r)."""
        return self.conv(F.pad(x, self.pad))


class Downsample(nn.Sequential):
    """act, then a strided conv (kernel 2r, stride r)."""

    def __init__(self, in_ch: int, out_ch: int, ratio: int, activation: str, norm: bool) -> None:
        super().__init__(make_activation(activation, in_ch), StridedConv(in_ch, out_ch, ratio, norm))


class Upsample(nn.Module):
    """act, then a transposed conv with kernel 2r and stride r, cropped so that T -> T * r exactly."""

    def __init__(self, in_ch: int, out_ch: int, ratio: int, activation: str, norm: bool) -> None:
        super().__init__()
        self.act = make_activation(activation, in_ch)
        conv = nn.ConvTranspose1d(in_ch, out_ch, 2 * ratio, stride=ratio)
        self.conv = weight_norm(conv) if norm else conv
        self.crop = (ratio // 2, ratio - ratio // 2)  # the output is T*r + r long

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, T) -> (B, out, T * r)."""
        y = self.conv(self.act(x))
        return y[..., self.crop[0]:y.shape[-1] - self.crop[1]]


def _levels(ratios: Sequence[int], dilations: Sequence[Sequence[int]] | Sequence[int]) -> list[list[int]]:
    """Dilations per level: one list for all levels, or one list per ratio."""
    if not dilations:
        raise ValueError("model.dilations must not be empty")
    if all(isinstance(d, int) for d in dilations):
        return [[int(d) for d in dilations] for _ in ratios]
    if len(dilations) != len(ratios):
        raise ValueError(f"model.dilations has {len(dilations)} lists but model.ratios has {len(ratios)} levels")
    return [[int(d) for d in level] for level in dilations]


class Encoder(nn.Module):
    """Band signals (B, C*M, T/M) -> mean and scale (B, 2 * latent, T / hop)."""

    def __init__(self, in_channels: int, capacity: int, ratios: Sequence[int], latent_size: int, kernel_size: int,
                 dilations: list[list[int]], activation: str, norm: bool, adain: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(in_channels, capacity, 2 * kernel_size + 1, norm=norm)]
        channels = capacity
        for ratio, level in zip(ratios, dilations, strict=True):
            layers += _dilated_units(channels, kernel_size, level, activation, norm, adain)
            layers.append(Downsample(channels, 2 * channels, ratio, activation, norm))
            channels *= 2
        layers += [make_activation(activation, channels), _conv(channels, 2 * latent_size, kernel_size, norm=norm)]
        self.net = nn.Sequential(*layers)

    def forward(self, bands: torch.Tensor) -> torch.Tensor:
        """Mean and scale stacked on the channel axis."""
        return self.net(bands)


class NoiseSynth(nn.Module):
    """Filtered noise in the band domain: per band and frame, a zero-phase FIR shaped by learned amplitudes.

    Strided convs (kernel 2r, stride r per noise ratio) turn the decoder's last hidden state into
    `noise_bands` amplitudes per PQMF band and frame (RAVE's mod_sigmoid(x - 5) keeps them small at
    first). The amplitudes are a zero-phase magnitude response: irfft gives a symmetric impulse
    response of 2 * (noise_bands - 1) taps, centred and Hann-windowed. Each frame's uniform noise
    (prod(noise_ratios) band samples) is convolved with its frame's filter, keeping the centred part.
    """

    def __init__(self, in_channels: int, out_bands: int, hidden: int, ratios: Sequence[int], noise_bands: int,
                 activation: str, norm: bool) -> None:
        super().__init__()
        if noise_bands < 2:
            raise ValueError(f"model.noise_bands={noise_bands}: need at least 2")
        widths = [in_channels] + [hidden] * (len(ratios) - 1) + [out_bands * noise_bands]
        layers: list[nn.Module] = []
        for i, ratio in enumerate(ratios):
            if i:
                layers.append(make_activation(activation, widths[i]))
            layers.append(StridedConv(widths[i], widths[i + 1], int(ratio), norm))
        self.net = nn.Sequential(*layers)
        self.out_bands = out_bands
        self.noise_bands = noise_bands
        self.frame = math.prod(int(r) for r in ratios)
        # Periodic: symmetric about index taps // 2, where the rolled impulse response is centred.
        self.register_buffer("window", torch.hann_window(2 * (noise_bands - 1), periodic=True), persistent=False)

    def amplitudes(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, H, T') -> (B, bands, frames, noise_bands) filter magnitudes."""
        x = self.net(hidden)
        amp = 2 * torch.sigmoid(x - 5).pow(2.3) + 1e-7  # RAVE's mod_sigmoid
        b, _, frames = amp.shape
        return amp.reshape(b, self.out_bands, self.noise_bands, frames).transpose(2, 3)

    def forward(self, hidden: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, H, T') -> noise (B, bands, T') at the band rate."""
        amp = self.amplitudes(hidden).float()
        taps = 2 * (self.noise_bands - 1)
        ir = torch.fft.irfft(amp, n=taps)  # zero-phase: symmetric around index 0
        ir = torch.roll(ir, taps // 2, dims=-1) * self.window.to(ir.dtype)  # centred at taps // 2
        b, bands, frames, _ = ir.shape
        noise = torch.rand(b, bands, frames, self.frame, generator=generator, device=ir.device, dtype=ir.dtype)
        noise = noise * 2 - 1
        n = self.frame + taps  # linear (not circular) convolution
        filtered = torch.fft.irfft(torch.fft.rfft(noise, n=n) * torch.fft.rfft(ir, n=n), n=n)
        filtered = filtered[..., taps // 2:taps // 2 + self.frame]  # the centred part: zero phase
        return filtered.reshape(b, bands, frames * self.frame).to(hidden.dtype)


class Decoder(nn.Module):
    """Latent (B, latent, T / hop) -> band signals (B, C*M, T/M) in [-1, 1]."""

    def __init__(self, out_bands: int, capacity: int, ratios: Sequence[int], latent_size: int, kernel_size: int,
                 dilations: list[list[int]], activation: str, norm: bool, noise: bool, noise_hidden: int,
                 noise_ratios: Sequence[int], noise_bands: int, adain: bool = False) -> None:
        super().__init__()
        channels = capacity * 2 ** len(ratios)
        layers: list[nn.Module] = [_conv(latent_size, channels, kernel_size, norm=norm)]
        for ratio, level in zip(reversed(ratios), reversed(dilations), strict=True):
            layers.append(Upsample(channels, channels // 2, ratio, activation, norm))
            channels //= 2
            layers += _dilated_units(channels, kernel_size, level, activation, norm, adain)
        layers.append(make_activation(activation, channels))
        self.net = nn.Sequential(*layers)
        self.waveform = _conv(channels, 2 * out_bands, 2 * kernel_size + 1, norm=norm)  # waveform and amplitude
        self.noise = (NoiseSynth(channels, out_bands, noise_hidden, noise_ratios, noise_bands, activation, norm)
                      if noise else None)

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Band signals from a latent; `generator` seeds the noise branch."""
        hidden = self.net(z)
        wave, amp = self.waveform(hidden).chunk(2, dim=1)
        bands = wave * torch.sigmoid(amp)
        if self.noise is not None:
            bands = bands + self.noise(hidden, generator)
        return torch.tanh(bands)


def gaussian_kl(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(0, 1)) summed over channels (dim 1), averaged over batch and time."""
    var = std.pow(2)
    return (0.5 * (mean.pow(2) + var - torch.log(var) - 1)).sum(1).mean()


class PqmfVAE(AudioModel):
    """RAVE-style VAE: PQMF bands, a variational encoder, and a decoder with amplitude and noise branches."""

    variational = True

    def __init__(self, channels: int = 1, n_bands: int = 16, attenuation: float = 100.0, capacity: int = 96,
                 ratios: Sequence[int] = (4, 4, 4, 2), latent_size: int = 128, kernel_size: int = 3,
                 dilations: Sequence[Sequence[int]] | Sequence[int] = (1, 3, 9), activation: str = "leaky_relu",
                 weight_norm: bool = True, noise: bool = True, noise_hidden: int = 64,
                 noise_ratios: Sequence[int] = (2, 2, 2), noise_bands: int = 32, adain: bool = False) -> None:
        super().__init__()
        ratios = [int(r) for r in ratios]
        if not ratios or any(r < 1 for r in ratios):
            raise ValueError(f"model.ratios={ratios}: need a non-empty list of integers >= 1")
        if kernel_size % 2 == 0:
            raise ValueError(f"model.kernel_size={kernel_size}: must be odd")
        if noise and math.prod(ratios) % math.prod(noise_ratios):
            raise ValueError(f"model.noise_ratios={list(noise_ratios)}: their product must divide prod(model.ratios)"
                             f" = {math.prod(ratios)}")
        make_activation(activation, 1)  # rejects an unknown name now, not deep inside the build
        levels = _levels(ratios, dilations)
        self.channels = int(channels)
        self.latent_size = int(latent_size)
        self.ratios = ratios
        self.pqmf = PQMF(n_bands, attenuation)
        bands = self.channels * n_bands
        self.encoder = Encoder(bands, capacity, ratios, latent_size, kernel_size, levels, activation, weight_norm,
                               adain)
        self.decoder = Decoder(bands, capacity, ratios, latent_size, kernel_size, levels, activation, weight_norm,
                               noise, noise_hidden, noise_ratios, noise_bands, adain)
        self.encoder_frozen = False

    @classmethod
    def hop_for(cls, n_bands: int = 16, ratios: Sequence[int] = (4, 4, 4, 2), **_: object) -> int:
        """Audio samples per latent frame: n_bands * prod(ratios)."""
        return int(n_bands) * math.prod(int(r) for r in ratios)

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame: n_bands * prod(ratios)."""
        return self.hop_for(self.pqmf.n_bands, self.ratios)

    def io_parameters(self) -> list[nn.Parameter]:
        """First and last layers' weights (kept on AdamW under optim=muon)."""
        first = self.encoder.net[0]
        return [p for m in (first, self.decoder.waveform) for p in m.parameters() if p.ndim >= 2]

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != self.channels or x.shape[-1] % self.hop_length:
            raise ValueError(f"expected audio (B, {self.channels}, T) with T a multiple of the hop "
                             f"{self.hop_length}, got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and std, each (B, latent, T / hop)."""
        self._check(x)
        mean, scale = self.encoder(self.pqmf.analysis(x)).chunk(2, dim=1)
        return mean, F.softplus(scale) + STD_FLOOR

    def decode(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Audio (B, C, T) from a latent (B, latent, T / hop)."""
        return self.pqmf.synthesis(self.decoder(z, generator))

    def _eval_generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(EVAL_NOISE_SEED)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct x: a sampled latent in training mode, the posterior mean (and fixed noise) in eval."""
        return self.forward_with_stats(x)[0]

    def forward_with_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruction plus the KL term and the posterior mean ('kl', 'latent')."""
        if self.encoder_frozen:
            with torch.no_grad():  # phase 2: the latent is a constant for the decoder
                mean, std = self.encode(x)
        else:
            mean, std = self.encode(x)
        kl = gaussian_kl(mean.float(), std.float())
        if self.training:
            z = mean + std * torch.randn_like(mean)
            y = self.decode(z)
        else:
            y = self.decode(mean, self._eval_generator(x.device))
        return y, {"kl": kl, "latent": mean}

    def set_adain_mode(self, mode: str) -> int:
        """Put every AdaIN layer in `mode` (off | source | target); return how many there are."""
        layers = [m for m in self.modules() if isinstance(m, AdaIN)]
        if mode not in AdaIN.MODES:
            raise ValueError(f"AdaIN mode {mode!r}: allowed {', '.join(AdaIN.MODES)}")
        for layer in layers:
            layer.mode = mode
        return len(layers)

    def freeze_encoder(self) -> bool:
        """Phase 2: stop training the encoder (no gradients reach it, so optimizers skip its parameters)."""
        self.encoder_frozen = True
        for p in self.encoder.parameters():
            p.requires_grad_(False)
            p.grad = None
        return True
