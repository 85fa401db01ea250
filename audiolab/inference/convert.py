"""Rebuild a trained model from the layers of `audiolab.inference.layers`, for export and streaming.

The rebuilt model (a `Streamable`) computes what the run's model computes in eval mode on a whole signal
(`forward`), and the same as a stream of chunks (`stream`), `latency` samples later. The ConvNeXt waveform
U-Net and the PQMF VAE convert; the spectrogram model does not (`NotStreamable` gives the reason).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from audiolab.inference.layers import Chain, Conv, ConvTranspose, Delay, Pointwise, Residual
from audiolab.models.convnext1d import ConvNeXtBlock, ConvNeXtUNet1d, Transition1d
from audiolab.models.convnext2d_spec import ConvNeXtUNet2dSpec
from audiolab.models.pqmf_vae import AdaIN, DilatedUnit, Downsample, NoiseSynth, PqmfVAE, Snake, StridedConv, Upsample

NOISE_TABLE_FRAMES = 4096  # the exported noise repeats after this many noise frames (12 s for pqmf_vae at 44.1 kHz)
NOISE_TABLE_SEED = 0


class ExportError(ValueError):
    """The model cannot be exported in the asked form; the message says why."""


class NotStreamable(ExportError):
    """The model cannot run as an exact stream; the message says why."""


class Streamable(nn.Module):
    """Base of the rebuilt models: `forward` on a whole signal, `stream` on chunks of a multiple of `hop`."""

    def __init__(self, hop: int, latency: int, channels: int) -> None:
        super().__init__()
        self.hop, self.latency, self.channels = int(hop), int(latency), int(channels)


# --- ConvNeXt waveform U-Net -------------------------------------------------------------------------------


class ConvNeXtMLP(nn.Module):
    """The per-time-step half of a ConvNeXt block: LayerNorm, pointwise MLP, layer scale."""

    def __init__(self, block: ConvNeXtBlock) -> None:
        super().__init__()
        self.norm = copy.deepcopy(block.norm)
        self.pwconv1 = copy.deepcopy(block.pwconv1)
        self.act = copy.deepcopy(block.act)
        self.pwconv2 = copy.deepcopy(block.pwconv2)
        self.register_buffer("gamma", block.gamma.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, T) -> (B, dim, T)."""
        y = self.pwconv2(self.act(self.pwconv1(self.norm(x.movedim(1, -1)))))
        return (self.gamma * y).movedim(-1, 1)


def _same_conv(conv: nn.Conv1d, in_delay: int) -> Conv:
    """A stride-1 conv with PyTorch's 'same' (or a symmetric integer) padding."""
    if conv.padding == "same":
        total = conv.dilation[0] * (conv.kernel_size[0] - 1)
        pad = (total // 2, total - total // 2)
    else:
        pad = (int(conv.padding[0]), int(conv.padding[0]))
    return Conv(conv.weight, conv.bias, conv.stride[0], conv.dilation[0], conv.groups, pad, in_delay)


def _convnext_block(block: ConvNeXtBlock, in_delay: int) -> Residual:
    conv = _same_conv(block.dwconv, in_delay)
    return Residual(Chain([conv, Pointwise(ConvNeXtMLP(block), conv.out_delay)], in_delay))


def _blocks(stage: nn.Sequential, in_delay: int) -> Chain:
    layers: list[nn.Module] = []
    for block in stage:
        layers.append(_convnext_block(block, layers[-1].out_delay if layers else in_delay))
    return Chain(layers, in_delay)


def _down(t: Transition1d, in_delay: int) -> Conv:
    """The down transition as one strided conv: alpha * strided (kernel 2f) + (1 - alpha) * fold (kernel f)."""
    f = t.factor
    if t.strided is None:  # fold only: space-to-depth then 1x1 is a conv with kernel f and stride f
        assert t.fold is not None
        w = t.fold.weight.reshape(t.fold.out_channels, -1, f)
        return Conv(w, t.fold.bias, stride=f, in_delay=in_delay)
    w = t.strided.weight.detach() * t.alpha
    b = t.strided.bias.detach() * t.alpha
    if t.fold is not None:
        w = w.clone()
        w[..., f // 2:f // 2 + f] += (1 - t.alpha) * t.fold.weight.detach().reshape(t.fold.out_channels, -1, f)
        b = b + (1 - t.alpha) * t.fold.bias.detach()
    return Conv(w, b, stride=f, pad=(f // 2, f - f // 2), in_delay=in_delay)


def _up(t: Transition1d, in_delay: int) -> ConvTranspose:
    """The up transition as one transposed conv: strided (kernel 2f, crop f/2) plus the depth-to-space path."""
    f = t.factor
    fold_w = fold_b = None
    if t.fold is not None:  # 1x1 conv to C*f channels then depth-to-space: channel c*f + j -> sample n*f + j
        c_out = t.fold.out_channels // f
        fold_w = t.fold.weight.detach().reshape(c_out, f, -1).permute(2, 0, 1)  # (in, out, f)
        fold_b = t.fold.bias.detach().reshape(c_out, f)
    if t.strided is None:
        assert fold_w is not None and fold_b is not None
        return ConvTranspose(fold_w, fold_b, stride=f, crop_left=0, in_delay=in_delay)
    w = t.strided.weight.detach() * t.alpha
    b = (t.strided.bias.detach() * t.alpha)[:, None]
    if fold_w is not None and fold_b is not None:
        w = w.clone()
        w[..., f // 2:f // 2 + f] += (1 - t.alpha) * fold_w
        b = b + (1 - t.alpha) * fold_b
    return ConvTranspose(w, b, stride=f, crop_left=f // 2, in_delay=in_delay)


class Level(nn.Module):
    """One U-Net level: down, blocks, the deeper levels, blocks, up; plus the skip of this resolution."""

    def __init__(self, model: ConvNeXtUNet1d, i: int, in_delay: int) -> None:
        super().__init__()
        self.down = _down(model.down[i], in_delay)
        self.enc = _blocks(model.enc[i], self.down.out_delay)
        deeper = i + 1 < len(model.down)
        self.inner = Level(model, i + 1, self.enc.out_delay) if deeper else Pointwise(nn.Identity(), self.enc.out_delay)
        self.dec = _blocks(model.dec[i], self.inner.out_delay)
        self.up = _up(model.up[i], self.dec.out_delay)
        self.has_skip = i > 0  # level 0's input is the audio: the model adds it only with predict_residual
        self.skip = Delay(self.up.out_delay - in_delay)
        self.in_delay, self.out_delay = in_delay, self.up.out_delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The level on a whole signal."""
        h = self.up(self.dec(self.inner(self.enc(self.down(x)))))
        return h + x if self.has_skip else h

    @torch.jit.export
    def reset(self) -> None:
        """Forget the stream."""
        self.down.reset()
        self.enc.reset()
        self.inner.reset()
        self.dec.reset()
        self.up.reset()
        self.skip.reset()

    @torch.jit.export
    def stream(self, x: torch.Tensor) -> torch.Tensor:
        """The level on one chunk."""
        h = self.up.stream(self.dec.stream(self.inner.stream(self.enc.stream(self.down.stream(x)))))
        return h + self.skip.stream(x) if self.has_skip else h


class StreamingUNet1d(Streamable):
    """`ConvNeXtUNet1d` rebuilt: equal offline, and a stream `latency` samples late."""

    def __init__(self, model: ConvNeXtUNet1d) -> None:
        top = Level(model, 0, 0)
        super().__init__(model.hop_length, top.out_delay, model.channels[0])
        self.top = top
        self.predict_residual = bool(model.predict_residual)
        self.residual = Delay(top.out_delay)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, T) for any T, as `ConvNeXtUNet1d.forward`."""
        t = x.shape[-1]
        h = self.top(F.pad(x, (0, (self.hop - t % self.hop) % self.hop)))[..., :t]
        return x + h if self.predict_residual else h

    @torch.jit.export
    def reset(self) -> None:
        """Forget the stream."""
        self.top.reset()
        self.residual.reset()

    @torch.jit.export
    def stream(self, x: torch.Tensor) -> torch.Tensor:
        """One chunk (a multiple of hop samples) in, the output `latency` samples earlier out."""
        h = self.top.stream(x)
        return self.residual.stream(x) + h if self.predict_residual else h


# --- PQMF VAE ----------------------------------------------------------------------------------------------


class Affine(nn.Module):
    """An AdaIN with learned statistics, in its 'off' mode: a fixed per-channel affine map."""

    def __init__(self, adain: AdaIN) -> None:
        super().__init__()
        self.register_buffer("scale", (adain.target_std / (adain.source_std + 1e-5)).detach().clone())
        self.register_buffer("shift", (adain.target_mean - adain.source_mean * self.scale).detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, T)."""
        return x * self.scale + self.shift


def _vae_layer(m: nn.Module, in_delay: int) -> nn.Module | None:
    """One layer of the VAE's encoder or decoder, rebuilt (None: a layer that does nothing in eval mode)."""
    if isinstance(m, nn.Conv1d):
        return _same_conv(m, in_delay)
    if isinstance(m, StridedConv):
        c = m.conv
        return Conv(c.weight, c.bias, c.stride[0], c.dilation[0], c.groups, m.pad, in_delay)
    if isinstance(m, DilatedUnit):
        return Residual(_vae_chain(list(m.net), in_delay))
    if isinstance(m, Downsample):
        return _vae_chain(list(m), in_delay)
    if isinstance(m, Upsample):
        act = Pointwise(copy.deepcopy(m.act), in_delay)
        c = m.conv
        conv = ConvTranspose(c.weight, c.bias.detach()[:, None], c.stride[0], m.crop[0], c.groups, in_delay)
        return Chain([act, conv], in_delay)
    if isinstance(m, AdaIN):
        learned = bool(m.source_count > 0 and m.target_count > 0)
        return Pointwise(Affine(m), in_delay) if learned else None
    if isinstance(m, nn.LeakyReLU | Snake | nn.Identity):
        return Pointwise(copy.deepcopy(m), in_delay)
    raise NotStreamable(f"{type(m).__name__} has no streaming form")


def _vae_chain(modules: list[nn.Module], in_delay: int) -> Chain:
    layers: list[nn.Module] = []
    for m in modules:
        layer = _vae_layer(m, layers[-1].out_delay if layers else in_delay)
        if layer is not None:
            layers.append(layer)
    return Chain(layers, in_delay)


def _zero_phase_basis(noise_bands: int, window: torch.Tensor) -> torch.Tensor:
    """(noise_bands, taps): magnitudes @ basis = irfft(magnitudes, taps), rolled by taps // 2 and windowed."""
    taps = 2 * (noise_bands - 1)
    k = torch.arange(noise_bands, dtype=torch.float64)[:, None]
    t = (torch.arange(taps, dtype=torch.float64) - taps // 2)[None, :]  # the roll: output t holds irfft's t - taps/2
    weight = torch.full((noise_bands, 1), 2.0, dtype=torch.float64)
    weight[0] = weight[-1] = 1.0  # DC and Nyquist appear once in a real inverse DFT
    basis = weight * torch.cos(2 * torch.pi * k * t / taps) / taps
    return (basis * window.double()[None, :]).float()


class NoiseStream(nn.Module):
    """`NoiseSynth` with its uniform noise taken from a fixed table, indexed by frame, so a stream equals a whole pass.

    The run's model draws fresh noise in training and a seeded draw per call in eval, which depends on the call's
    length; here noise frame n is table[n % NOISE_TABLE_FRAMES] (drawn once with seed NOISE_TABLE_SEED). The
    filters are the model's (zero-phase, windowed), computed with matrix products instead of FFTs so that the ONNX
    exporter and runtime take them.
    """

    def __init__(self, synth: NoiseSynth, in_delay: int) -> None:
        super().__init__()
        self.net = _vae_chain(list(synth.net), in_delay)
        self.out_bands, self.noise_bands, self.frame = synth.out_bands, synth.noise_bands, synth.frame
        taps = 2 * (self.noise_bands - 1)
        self.register_buffer("basis", _zero_phase_basis(self.noise_bands, synth.window))
        gen = torch.Generator().manual_seed(NOISE_TABLE_SEED)
        self.register_buffer("table", torch.rand(self.out_bands, NOISE_TABLE_FRAMES, self.frame, generator=gen) * 2 - 1)
        # Output sample i of a frame is sum_j noise[j] * ir[i + taps // 2 - j]: the centred part of the convolution.
        lag = torch.arange(self.frame)[:, None] + taps // 2 - torch.arange(self.frame)[None, :]
        self.register_buffer("lag", lag.clamp(0, taps - 1))
        self.register_buffer("lag_valid", ((lag >= 0) & (lag < taps)).float())
        self.in_delay = in_delay
        self.out_delay = self.net.out_delay * self.frame  # in band samples
        self.frames_out = 0

    def _synth(self, x: torch.Tensor, first: int) -> torch.Tensor:
        amp = 2 * torch.sigmoid(x - 5).pow(2.3) + 1e-7
        b, _, frames = amp.shape
        amp = amp.float().reshape(b, self.out_bands, self.noise_bands, frames).transpose(2, 3)
        ir = amp @ self.basis  # (B, bands, frames, taps)
        index = torch.remainder(torch.arange(first, first + frames, device=x.device), self.table.shape[1])
        noise = self.table.index_select(1, index)  # (bands, frames, frame)
        kernel = ir.index_select(-1, self.lag.flatten()).reshape(b, self.out_bands, frames, self.frame, self.frame)
        kernel = kernel * self.lag_valid
        filtered = (kernel @ noise.unsqueeze(-1)).squeeze(-1)
        return filtered.reshape(b, self.out_bands, frames * self.frame).to(x.dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, H, T') -> noise (B, bands, T') for a whole signal."""
        return self._synth(self.net(hidden), 0)

    @torch.jit.export
    def reset(self) -> None:
        """Forget the stream."""
        self.net.reset()
        self.frames_out = 0

    @torch.jit.export
    def stream(self, hidden: torch.Tensor) -> torch.Tensor:
        """One chunk of band samples in, the noise of the frames it completes out."""
        x = self.net.stream(hidden)
        first = self.frames_out - self.net.out_delay
        self.frames_out += x.shape[-1]
        return self._synth(x, first)


class StreamingVAE(Streamable):
    """`PqmfVAE` rebuilt (posterior mean, noise from a fixed table): encode, decode, reconstruct, and a stream."""

    def __init__(self, model: PqmfVAE) -> None:
        pqmf = model.pqmf
        m, c = pqmf.n_bands, model.channels
        filters = pqmf.filters.detach().float().repeat(c, 1, 1)  # (C*M, 1, taps): one group per audio channel
        analysis = Conv(filters, None, stride=m, groups=c, pad=(pqmf.taps // 2, pqmf.taps // 2))
        enc_layers = list(model.encoder.net)
        last = enc_layers.pop()  # the conv to mean and scale: only the mean is kept
        encoder = _vae_chain(enc_layers, analysis.out_delay)
        latent = model.latent_size
        to_mean = Conv(last.weight[:latent], last.bias[:latent] if last.bias is not None else None,
                       pad=(last.padding[0], last.padding[0]), in_delay=encoder.out_delay)
        encoder = Chain([*encoder.layers, to_mean], analysis.out_delay)
        decoder = _vae_chain(list(model.decoder.net), encoder.out_delay)
        waveform = _same_conv(model.decoder.waveform, decoder.out_delay)
        has_noise = model.decoder.noise is not None
        noise = NoiseStream(model.decoder.noise, decoder.out_delay) if model.decoder.noise is not None else None
        bands_delay = max(waveform.out_delay, noise.out_delay if noise is not None else 0)
        synthesis = ConvTranspose(filters * m, torch.zeros(c, 1), stride=m, crop_left=pqmf.taps // 2, groups=c,
                                  in_delay=bands_delay)
        super().__init__(model.hop_length, synthesis.out_delay, c)
        self.analysis, self.encoder, self.decoder, self.waveform = analysis, encoder, decoder, waveform
        self.align_waveform = Delay(bands_delay - waveform.out_delay)
        self.has_noise = has_noise
        self.noise = noise if noise is not None else Pointwise(nn.Identity(), decoder.out_delay)
        self.align_noise = Delay(bands_delay - (noise.out_delay if noise is not None else 0))
        self.synthesis = synthesis
        self.latent_size = latent
        self.encoder_latency = m * encoder.out_delay  # audio samples from input to latent frame, when streaming

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, (self.hop - x.shape[-1] % self.hop) % self.hop))

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Audio (B, C, T) -> latent (B, latent, ceil(T / hop)): the posterior mean."""
        return self.encoder(self.analysis(self._pad(x)))

    def _bands(self, hidden: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        wave, amp = self.waveform(hidden).chunk(2, dim=1)
        return torch.tanh(wave * torch.sigmoid(amp) + noise)

    @torch.jit.export
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, latent, N) -> audio (B, C, N * hop)."""
        hidden = self.decoder(z)
        noise = self.noise(hidden) if self.has_noise else torch.zeros_like(hidden[:, :1])
        return self.synthesis(self._bands(hidden, noise))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct (B, C, T) for any T (zero-padded to the hop, then cropped back)."""
        return self.decode(self.encode(x))[..., :x.shape[-1]]

    @torch.jit.export
    def reset(self) -> None:
        """Forget the stream."""
        self.analysis.reset()
        self.encoder.reset()
        self.decoder.reset()
        self.waveform.reset()
        self.align_waveform.reset()
        self.noise.reset()
        self.align_noise.reset()
        self.synthesis.reset()

    @torch.jit.export
    def stream(self, x: torch.Tensor) -> torch.Tensor:
        """One chunk (a multiple of hop samples) in, the reconstruction `latency` samples earlier out."""
        hidden = self.decoder.stream(self.encoder.stream(self.analysis.stream(x)))
        wave, amp = self.align_waveform.stream(self.waveform.stream(hidden)).chunk(2, dim=1)
        if self.has_noise:
            bands = wave * torch.sigmoid(amp) + self.align_noise.stream(self.noise.stream(hidden))
        else:
            bands = wave * torch.sigmoid(amp)
        return self.synthesis.stream(torch.tanh(bands))


def streamable(model: nn.Module) -> Streamable:
    """The model rebuilt for export and streaming, in eval mode; NotStreamable says why a model cannot be."""
    if isinstance(model, ConvNeXtUNet2dSpec):
        raise NotStreamable(
            "the spectrogram model (convnext2d_spec) cannot stream exactly: its STFT is centred (each frame reaches "
            f"n_fft/2 = {model.n_fft // 2} samples into the future and the first frames see reflected padding), "
            "and its 2-D convolutions mix neighbouring frames of a spectrogram whose inverse is an overlap-add; "
            "export it without --streaming")
    if isinstance(model, ConvNeXtUNet1d):
        built: Streamable = StreamingUNet1d(model)
    elif isinstance(model, PqmfVAE):
        built = StreamingVAE(model)
    else:
        raise NotStreamable(f"{type(model).__name__} has no streaming form (convertible: ConvNeXtUNet1d, PqmfVAE)")
    return built.eval()
