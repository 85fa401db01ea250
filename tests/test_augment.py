"""Batched augmentations: each transform against a reference, the presets through Hydra, determinism."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from audiolab.augment import (
    Augment,
    Dequantize,
    PhaseMangle,
    PolarityInvert,
    RandomGain,
    RandomMute,
    RandomPitch,
    Transform,
)

SR = 44100
CONF = Path(__file__).resolve().parents[1] / "conf" / "augment"


def _noise(*shape: int, seed: int = 0, scale: float = 0.3) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32)) * scale


def _preset(name: str, **overrides: object) -> Augment:
    node = OmegaConf.load(CONF / f"{name}.yaml")
    for key, value in overrides.items():
        OmegaConf.update(node, key, value)
    return instantiate(node, sample_rate=SR)


def _mixed(batch: int) -> np.ndarray:
    """An activity pattern with both kinds of row."""
    return np.arange(batch) % 2 == 0


def _peak_hz(x: torch.Tensor) -> float:
    spectrum = torch.fft.rfft(x.double() * torch.hann_window(x.shape[-1], dtype=torch.float64), n=4 * x.shape[-1])
    return float(torch.fft.rfftfreq(4 * x.shape[-1], 1 / SR)[spectrum.abs().argmax()])


# Phase mangling


def test_phase_mangle_equals_scipy_lfilter() -> None:
    mangle = PhaseMangle(p=1.0)
    x = _noise(4, 2, 8192)
    params = mangle.draw(4, np.random.default_rng(1))
    params["hz"][:2] = [mangle.min_hz, mangle.max_hz]  # the extremes: the slowest decay and the highest centre
    out = mangle.apply(x, params, SR)
    for row in range(4):
        b, a = mangle.coefficients(float(params["hz"][row]), SR)
        expected = scipy.signal.lfilter(b, a, x[row].double().numpy(), axis=-1)
        np.testing.assert_allclose(out[row].double().numpy(), expected, rtol=0, atol=1e-5)
        assert float((out[row] - x[row]).abs().max()) > 0.1  # it really filtered


def test_phase_mangle_keeps_the_magnitude_spectrum() -> None:
    x = _noise(3, 1, 65536)
    params = {"active": np.ones(3, dtype=bool), "hz": np.array([20.0, 200.0, 2000.0])}
    out = PhaseMangle(p=1.0).apply(x, params, SR)

    def bands(signal: torch.Tensor) -> torch.Tensor:
        # A finite signal loses the filter's tail, so single bins wobble; 256-bin bands do not.
        return torch.fft.rfft(signal.double()).abs()[..., 1:].reshape(3, -1, 256).mean(-1)

    ratio = bands(out[:, 0]) / bands(x[:, 0])
    assert torch.allclose(ratio.median(-1).values, torch.ones(3, dtype=torch.float64), atol=0.01)
    assert float((ratio - 1).abs().max()) < 0.03
    # Only the phase near each centre frequency moves, so white noise changes by a few per cent of its energy.
    assert float((out - x).pow(2).mean() / x.pow(2).mean()) > 0.01


def test_phase_mangle_draws_are_log_uniform_in_range() -> None:
    mangle = PhaseMangle(p=0.8, min_hz=20.0, max_hz=2000.0)
    params = mangle.draw(20000, np.random.default_rng(2))
    assert params["hz"].min() >= 20.0 and params["hz"].max() <= 2000.0
    assert np.median(params["hz"]) == pytest.approx(200.0, rel=0.05)  # geometric midpoint
    assert params["active"].mean() == pytest.approx(0.8, abs=0.02)


def test_phase_mangle_leaves_inactive_rows_bit_identical() -> None:
    x = _noise(4, 1, 4096)
    params = {"active": _mixed(4), "hz": np.full(4, 440.0)}
    out = PhaseMangle().apply(x, params, SR)
    assert torch.equal(out[1::2], x[1::2])
    assert not torch.equal(out[0::2], x[0::2])


# Gain, dequantisation, polarity, mute


def test_gain_changes_rms_by_the_drawn_decibels() -> None:
    gain = RandomGain(p=0.5, min_db=-6.0, max_db=6.0)
    x = _noise(8, 2, 2048)
    params = gain.draw(8, np.random.default_rng(3))
    params["active"] = _mixed(8)
    out = gain.apply(x, params, SR)

    def rms(t: torch.Tensor) -> torch.Tensor:
        return t.double().pow(2).mean(dim=(-2, -1)).sqrt()

    ratio_db = (20 * torch.log10(rms(out) / rms(x))).numpy()
    expected = np.where(params["active"], params["db"], 0.0)
    np.testing.assert_allclose(ratio_db, expected, rtol=0, atol=1e-4)
    assert np.abs(params["db"][params["active"]]).max() > 0.5
    assert torch.equal(out[1::2], x[1::2])


@pytest.mark.parametrize("bits", [8, 16])
def test_dequantize_adds_zero_mean_noise_within_half_an_lsb(bits: int) -> None:
    deq = Dequantize(p=1.0, bits=bits)
    x = torch.rand(4, 2, 16384) * 2 - 1
    params = deq.draw(4, np.random.default_rng(4))
    params["active"] = _mixed(4)
    out = deq.apply(x, params, SR)
    noise = (out[0::2].double() - x[0::2].double())
    lsb = 2.0 / 2**bits
    assert deq.lsb == lsb
    assert float(noise.abs().max()) <= lsb / 2 + 1e-7
    assert float(noise.std()) == pytest.approx(lsb / math.sqrt(12), rel=0.05)  # U[-lsb/2, lsb/2): never all zero
    assert abs(float(noise.mean())) < 0.01 * lsb
    assert torch.equal(out[1::2], x[1::2])
    assert torch.equal(deq.apply(x, params, SR), out)  # the seed in params fixes the noise
    other = deq.draw(4, np.random.default_rng(5))
    assert not torch.equal(deq.apply(x, other, SR)[0::2], out[0::2])


def test_polarity_and_mute_are_exact() -> None:
    x = _noise(4, 2, 512)
    active = _mixed(4)
    flipped = PolarityInvert().apply(x, {"active": active}, SR)
    assert torch.equal(flipped[0::2], -x[0::2]) and torch.equal(flipped[1::2], x[1::2])
    muted = RandomMute().apply(x, {"active": active}, SR)
    assert torch.equal(muted[0::2], torch.zeros_like(x[0::2])) and not muted[0::2].signbit().any()
    assert torch.equal(muted[1::2], x[1::2])


# Pitch


def test_pitch_moves_a_sine_by_the_drawn_ratio() -> None:
    pitch = RandomPitch(p=1.0, max_semitones=2.0)
    augment = Augment(SR, {"pitch": pitch})
    segment = 16384
    length = augment.input_length(segment)
    x = torch.sin(2 * math.pi * 1000.0 * torch.arange(length) / SR).expand(6, 1, length).contiguous()
    out = augment(x, np.random.default_rng(5), segment)
    params = pitch.draw(6, np.random.default_rng(5))  # Augment drew the same, as pitch is its first transform
    ratios = params["numerator"] / params["denominator"]
    assert out.shape == (6, 1, segment)
    assert np.abs(ratios - 1).max() > 0.02
    for row in range(6):
        assert _peak_hz(out[row, 0]) == pytest.approx(1000.0 * ratios[row], abs=2.0)
        assert float(out[row].abs().max()) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("max_semitones,segment", [(2.0, 1000), (2.0, 4096), (12.0, 64)])
def test_pitch_segment_holds_only_real_audio(max_semitones: float, segment: int) -> None:
    # A constant through the extreme ratios: any padding or kernel-edge sample in the segment would dip.
    pitch = RandomPitch(p=1.0, max_semitones=max_semitones)
    augment = Augment(SR, {"pitch": pitch})
    length = augment.input_length(segment)
    assert length == segment + math.ceil(segment * (pitch.max_ratio - 1)) + 64
    ratios = [pitch.max_ratio, pitch.min_ratio]
    params = {"active": np.ones(2, dtype=bool), "numerator": np.array([r.numerator for r in ratios]),
              "denominator": np.array([r.denominator for r in ratios])}
    out = pitch.apply(torch.ones(2, 1, length), params, SR)
    assert out.shape == (2, 1, length)
    assert float((out[..., -segment:] - 1).abs().max()) < 2e-3
    assert float(out[0, 0, 0]) == 0.0  # pitch up shortened the row: the (discarded) start is padding


def test_pitch_leaves_inactive_and_unit_ratio_rows_unchanged() -> None:
    pitch = RandomPitch(p=0.5)
    x = _noise(4, 2, pitch.extra_samples(2048) + 2048)
    params = pitch.draw(4, np.random.default_rng(6))
    params["active"] = np.array([True, False, True, False])
    params["numerator"][:] = [55, 55, 1, 49]
    params["denominator"][:] = [49, 49, 1, 55]
    out = pitch.apply(x, params, SR)
    assert torch.equal(out[1:], x[1:])
    assert not torch.equal(out[0], x[0])


# Augment and the presets


def test_presets_instantiate_and_describe_themselves() -> None:
    none, rave, full = _preset("none"), _preset("rave"), _preset("full")
    assert not none and none.describe() == "none"
    assert rave.describe() == "phase_mangle(p=0.8), dequantize(p=1.0)"
    assert full.describe() == ("pitch(p=0.3), phase_mangle(p=0.8), gain(p=0.5), polarity(p=0.5), mute(p=0.02), "
                               "dequantize(p=1.0)")
    pitch = full.transforms["pitch"]
    assert isinstance(pitch, RandomPitch) and pitch.max_semitones == 2.0
    assert full.input_length(4096) == 4096 + pitch.extra_samples(4096) > 4096
    assert rave.input_length(4096) == none.input_length(4096) == 4096
    assert _preset("full", **{"transforms.gain": None}).describe().count("gain") == 0
    assert _preset("full", **{"transforms.gain.p": 0.2}).transforms["gain"].p == 0.2


def test_none_entries_are_skipped() -> None:
    augment = Augment(SR, {"gain": None, "flip": PolarityInvert(p=1.0), "mute": None})
    assert bool(augment) and augment.describe() == "flip(p=1.0)"
    assert not Augment(SR, {"gain": None}) and not Augment(SR)
    x = _noise(2, 1, 100)
    assert torch.equal(augment(x, np.random.default_rng(0), 60), -x[..., -60:])


def test_probability_zero_returns_the_input_crop() -> None:
    names = ("pitch", "phase_mangle", "gain", "polarity", "mute", "dequantize")
    zeros = {f"transforms.{name}.p": 0.0 for name in names}
    augment = _preset("full", **zeros)
    x = _noise(3, 2, augment.input_length(2048))
    before = x.clone()
    out = augment(x, np.random.default_rng(7), 2048)
    assert torch.equal(out, x[..., -2048:])
    assert torch.equal(x, before)


def test_full_preset_is_deterministic_and_seed_dependent() -> None:
    augment = _preset("full", **{"transforms.pitch.p": 1.0, "transforms.mute.p": 0.0})
    x = _noise(4, 2, augment.input_length(4096))
    before = x.clone()
    first = augment(x, np.random.default_rng([1, 10, 2]), 4096)
    assert torch.equal(x, before)  # never in place
    assert first.shape == (4, 2, 4096)
    assert torch.equal(first, augment(x, np.random.default_rng([1, 10, 2]), 4096))
    assert not torch.equal(first, augment(x, np.random.default_rng([1, 11, 2]), 4096))


@pytest.mark.parametrize("transform", [PhaseMangle(), Dequantize(), RandomGain(), RandomPitch(), PolarityInvert(),
                                       RandomMute()])
def test_draw_consumes_the_same_randomness_whatever_the_outcome(transform: Transform) -> None:
    tails = []
    for p in (0.0, 1.0):
        transform.p = p
        rng = np.random.default_rng(8)
        assert transform.draw(5, rng)["active"].all() == bool(p)
        tails.append(rng.random())
    assert tails[0] == tails[1]


@pytest.mark.parametrize("build,name", [
    (lambda: PhaseMangle(p=1.5), "p"),
    (lambda: PhaseMangle(min_hz=0.0), "min_hz"),
    (lambda: PhaseMangle(min_hz=100.0, max_hz=50.0), "max_hz"),
    (lambda: PhaseMangle(pole_radius=1.0), "pole_radius"),
    (lambda: Dequantize(bits=0), "bits"),
    (lambda: Dequantize(bits=16.5), "bits"),
    (lambda: RandomGain(min_db=3.0, max_db=-3.0), "max_db"),
    (lambda: RandomPitch(max_semitones=-1.0), "max_semitones"),
    (lambda: RandomPitch(max_denominator=0), "max_denominator"),
    (lambda: RandomMute(p=float("nan")), "p"),
    (lambda: Augment(SR, {"phase_mangle": PhaseMangle(max_hz=30000.0)}), "max_hz"),
    (lambda: Augment(0), "sample_rate"),
    (lambda: Augment(SR, {"gain": "loud"}), "transforms.gain"),
])
def test_bad_arguments_name_themselves(build, name: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        build()


def test_augment_rejects_short_input() -> None:
    augment = _preset("full")
    with pytest.raises(ValueError, match="input_length"):
        augment(torch.zeros(1, 1, 4096), np.random.default_rng(0), 4096)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_is_deterministic() -> None:
    # Dequantize's noise comes from a per-device generator, so compare the devices without it.
    augment = _preset("full", **{"transforms.pitch.p": 1.0, "transforms.dequantize": None})
    x = _noise(4, 2, augment.input_length(4096))
    cpu = augment(x, np.random.default_rng(9), 4096)
    gpu = augment(x.cuda(), np.random.default_rng(9), 4096)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-4)
    full = _preset("full")
    once = full(x.cuda(), np.random.default_rng(9), 4096)
    assert torch.equal(once, full(x.cuda(), np.random.default_rng(9), 4096))
    assert once.device.type == "cuda"


def test_a_ranks_share_of_a_batch_is_augmented_as_in_the_whole_batch() -> None:
    """Under torchrun each rank augments its rows of the global batch: together they give one process's batch."""
    augment = _preset("full", **{"transforms.mute.p": 0.5})
    segment, batch = 4096, 6
    x = _noise(batch, 1, augment.input_length(segment), seed=3)
    whole = augment(x.clone(), np.random.default_rng([0, 7, 2]), segment)
    shares = [augment(x[rows].clone(), np.random.default_rng([0, 7, 2]), segment, rows, batch)
              for rows in (slice(0, 3), slice(3, 6))]
    torch.testing.assert_close(torch.cat(shares), whole, rtol=0, atol=1e-6)
    assert not torch.equal(shares[0], shares[1])  # the shares are not given each other's draws
