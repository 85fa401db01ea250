"""Known-value tests for the DAC mel and RAVE spectral losses, and for the loss presets that use them."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torchaudio

from audiolab.losses.composite import build_loss
from audiolab.losses.spectral import MelMultiScaleLoss, RaveSpectralLoss
from conftest import compose_config

SR = 44100
T = 8192
LOSSES = [MelMultiScaleLoss, RaveSpectralLoss]


def _tone(batch: int = 2, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """A decaying harmonic tone with random partial amplitudes plus faint noise: (batch, channels, T)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T) / SR
    f0 = 110 * 2 ** (torch.rand(batch, channels, 1, generator=g) * 3)
    k = torch.arange(1, 9).view(1, 1, 8, 1)
    amps = torch.rand(batch, channels, 8, 1, generator=g) / k
    x = (amps * torch.sin(2 * math.pi * f0.unsqueeze(-1) * k * t)).sum(2) * torch.exp(-3 * t)
    return 0.3 * x + 1e-3 * torch.randn(batch, channels, T, generator=g)


def _noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Unit white noise from its own seed."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --- shared battery ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", LOSSES)
def test_identical_inputs_give_zero(cls: type[torch.nn.Module]) -> None:
    y = _tone()
    value = cls()(y, y.clone())
    assert value.dim() == 0 and abs(value.item()) <= 1e-6


@pytest.mark.parametrize("cls", LOSSES)
def test_loss_grows_with_added_noise(cls: type[torch.nn.Module]) -> None:
    loss, y = cls(), _tone()
    n = _noise(y.shape, seed=1)
    values = [loss(y + a * n, y).item() for a in (0.001, 0.01, 0.1)]
    assert 0 < values[0] < values[1] < values[2], values


@pytest.mark.parametrize("cls", LOSSES)
@pytest.mark.parametrize("pair", ["random", "zeros", "identical", "silent_target"])
def test_gradients_wrt_output_are_finite(cls: type[torch.nn.Module], pair: str) -> None:
    y = _tone()
    out, target = {
        "random": (y + 0.05 * _noise(y.shape, 2), y),
        "zeros": (torch.zeros_like(y), torch.zeros_like(y)),  # every magnitude on the clamp / eps
        "identical": (y.clone(), y),  # RAVE's ||X - Y|| at its kink
        "silent_target": (y.clone(), torch.zeros_like(y)),  # RAVE's ||Y|| guard
    }[pair]
    out.requires_grad_(True)
    value = cls()(out, target)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    assert out.grad is not None and torch.isfinite(out.grad).all()


@pytest.mark.parametrize("cls", LOSSES)
def test_channels_are_folded_into_the_batch(cls: type[torch.nn.Module]) -> None:
    loss, y = cls(), _tone(batch=2, channels=2)
    out = y + 0.02 * _noise(y.shape, 3)
    stereo = loss(out, y)
    assert stereo.dim() == 0
    torch.testing.assert_close(stereo, loss(out.reshape(4, 1, T), y.reshape(4, 1, T)))


@pytest.mark.parametrize("cls", LOSSES)
def test_windows_are_non_persistent_buffers_that_follow_to(cls: type[torch.nn.Module]) -> None:
    loss = cls()
    assert dict(loss.named_buffers()) and not loss.state_dict()
    loss = loss.to(torch.float64)
    assert all(b.dtype == torch.float64 for b in loss.buffers())
    y = _tone().double()
    assert loss(y + 0.01, y).dtype == torch.float64


@pytest.mark.parametrize("cls", LOSSES)
def test_mismatched_shapes_are_rejected(cls: type[torch.nn.Module]) -> None:
    with pytest.raises(ValueError, match="B, C, T"):
        cls()(torch.zeros(2, 1, T), torch.zeros(2, 1, T - 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", LOSSES)
def test_cuda_matches_cpu(cls: type[torch.nn.Module]) -> None:
    loss, y = cls(), _tone()
    out = y + 0.02 * _noise(y.shape, 4)
    cpu = loss(out, y)
    gpu = loss.to("cuda")(out.cuda(), y.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


# --- MelMultiScaleLoss ------------------------------------------------------------------------------------------

def _above_clamp(loss: MelMultiScaleLoss, *xs: torch.Tensor) -> bool:
    """Whether every mel value of every signal clears the clamp."""
    return all(m.min().item() > loss.clamp_eps for x in xs for m in loss.mel_spectrograms(x))


def test_mel_matches_dac_reference() -> None:
    dac_loss = pytest.importorskip("dac.nn.loss")
    audiotools = pytest.importorskip("audiotools")
    # DAC's conf/base.yml settings; our defaults.
    ref = dac_loss.MelSpectrogramLoss(n_mels=[5, 10, 20, 40, 80, 160, 320],
                                      window_lengths=[32, 64, 128, 256, 512, 1024, 2048], mel_fmin=[0.0] * 7,
                                      mel_fmax=[None] * 7, pow=1.0, clamp_eps=1e-5, mag_weight=0.0)
    y = _tone(channels=2)
    for amp in (1.0, 0.01):  # 0.01 puts part of the short scales on the clamp
        out = y * amp + 0.3 * amp * _noise(y.shape, 5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # audiotools' "stft_data changed shape"
            expected = ref(audiotools.AudioSignal(out, SR), audiotools.AudioSignal(y * amp, SR))
        torch.testing.assert_close(MelMultiScaleLoss()(out, y * amp), expected, rtol=1e-5, atol=1e-6)


def test_mel_filterbank_has_no_empty_bands_at_dac_defaults_but_warns_when_one_is() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MelMultiScaleLoss()
    with pytest.warns(UserWarning, match="all zero values"):
        MelMultiScaleLoss(n_mels=(64,), window_lengths=(32,))


def test_mel_known_value_for_doubled_output() -> None:
    # DAC's 1e-5 clamp catches part of any realistic signal at window 32; a tiny clamp keeps all of it.
    loss, y = MelMultiScaleLoss(clamp_eps=1e-12), _tone()
    assert _above_clamp(loss, y)
    # Mel is linear in gain: every log10 difference is log10(2), on each of the 7 scales.
    torch.testing.assert_close(loss(2 * y, y), torch.tensor(7 * math.log10(2)), rtol=1e-5, atol=0)


def test_mel_log_term_is_gain_invariant_above_the_clamp_only() -> None:
    y = _tone()
    out = y + 0.05 * _noise(y.shape, 6)
    loss = MelMultiScaleLoss(clamp_eps=1e-12)
    assert _above_clamp(loss, 0.01 * y, 0.01 * out)
    base = loss(out, y)
    torch.testing.assert_close(loss(4 * out, 4 * y), base, rtol=1e-5, atol=0)
    torch.testing.assert_close(loss(0.01 * out, 0.01 * y), base, rtol=1e-5, atol=0)
    # With DAC's clamp the short scales already sit partly on it; attenuating pushes more under it,
    # which flattens differences and lowers the loss.
    dac = MelMultiScaleLoss()
    assert not _above_clamp(dac, y)
    assert dac(0.01 * out, 0.01 * y) < 0.5 * dac(out, y)


def test_mel_magnitude_term_scales_with_gain() -> None:
    loss, y = MelMultiScaleLoss(mag_weight=1.0, log_weight=0.0), _tone()
    out = y + 0.05 * _noise(y.shape, 7)
    torch.testing.assert_close(loss(3 * out, 3 * y), 3 * loss(out, y), rtol=1e-5, atol=0)


# --- RaveSpectralLoss -------------------------------------------------------------------------------------------

def _rave_reference(out: torch.Tensor, target: torch.Tensor, scales: tuple[int, ...], eps: float) -> torch.Tensor:
    """RAVE v1's formula, through torchaudio's Spectrogram rather than our torch.stft path."""
    total = torch.zeros(())
    for s in scales:
        spec = torchaudio.transforms.Spectrogram(n_fft=s, hop_length=s // 4, power=1.0)
        x, y = spec(out.reshape(-1, T)), spec(target.reshape(-1, T))
        total = total + torch.norm(x - y) / torch.norm(y) + (torch.log(x + eps) - torch.log(y + eps)).abs().mean()
    return total


def test_rave_matches_its_formula() -> None:
    y = _tone(channels=2)
    out = y + 0.05 * _noise(y.shape, 8)
    torch.testing.assert_close(RaveSpectralLoss()(out, y), _rave_reference(out, y, (2048, 1024, 512, 256, 128), 1e-7),
                               rtol=1e-5, atol=1e-6)


def test_rave_known_value_for_doubled_output() -> None:
    # Per scale: ||2Y - Y|| / ||Y|| = 1 exactly, and log(2Y) - log(Y) = log 2 wherever Y >> 1e-7.
    y = _tone()
    torch.testing.assert_close(RaveSpectralLoss()(2 * y, y), torch.tensor(5 * (1 + math.log(2))), rtol=1e-4, atol=0)


def test_rave_is_gain_invariant_unless_magnitudes_near_log_eps() -> None:
    loss, y = RaveSpectralLoss(), _tone()
    out = y + 0.05 * _noise(y.shape, 9)
    base = loss(out, y)
    torch.testing.assert_close(loss(2 * out, 2 * y), base, rtol=1e-5, atol=0)
    # The tone's -60 dBFS noise floor, attenuated 40 dB more, starts to feel log_eps (measured -0.03%).
    torch.testing.assert_close(loss(0.01 * out, 0.01 * y), base, rtol=1e-3, atol=0)
    # At 1e-6 most magnitudes sit near log_eps = 1e-7, which flattens the log term (measured -44%).
    assert loss(1e-6 * out, 1e-6 * y) < 0.7 * base


# --- presets ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset,names", [
    ("mel_multiscale", {"mel"}),
    ("rave_spectral", {"rave_spectral"}),
    ("mel_multiscale_mrstft", {"mel", "mrstft"}),
])
def test_presets_compose_build_and_run(preset: str, names: set[str]) -> None:
    cfg = compose_config([f"loss={preset}"])
    assert set(cfg.loss.terms) == names
    loss = build_loss(cfg.loss)
    if "mel" in names:
        assert loss.terms["mel"].sample_rate == cfg.data.sample_rate
    out, target = _noise((2, 1, T), 10), _noise((2, 1, T), 11)
    total, values = loss(out, target)
    assert set(values) == names and total.dim() == 0 and torch.isfinite(total)
    assert all(torch.isfinite(v) and v > 0 for v in values.values())
