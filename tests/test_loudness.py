"""The streaming BS.1770-4 meter: agrees with torchaudio, ignores block boundaries, reads calibrated levels."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from audiolab.data.loudness import LoudnessMeter, gain_to_lufs


def _noise(sr: int, channels: int, seconds: float, level: float = 0.05, seed: int = 0) -> np.ndarray:
    """Gaussian noise (frames, channels), quiet enough that torchaudio's filter clamping never kicks in."""
    return level * np.random.default_rng(seed).standard_normal((int(seconds * sr), channels))


def _sine(sr: int, channels: int, seconds: float, amplitude: float = 0.5, freq: float = 997.0) -> np.ndarray:
    """The same sine on every channel, (frames, channels)."""
    t = np.arange(int(seconds * sr)) / sr
    return np.repeat((amplitude * np.sin(2 * np.pi * freq * t))[:, None], channels, axis=1)


def _gated(sr: int, channels: int) -> np.ndarray:
    """Loud, then 30 dB quieter (removed by the relative gate), then silent (removed by the absolute gate)."""
    loud = _noise(sr, channels, 1.5, 0.05, seed=1)
    quiet = _noise(sr, channels, 1.0, 0.05 * 10 ** (-30 / 20), seed=2)
    return np.concatenate([loud, quiet, np.zeros((sr, channels))])


def _measure(x: np.ndarray, sr: int, sizes: Iterator[int] | None = None) -> float:
    """Feed `x` to a fresh meter, whole or in blocks of the given sizes (the rest in one block)."""
    meter = LoudnessMeter(sr, x.shape[1])
    pos = 0
    for size in sizes or ():
        if pos >= len(x):
            break
        meter.update(x[pos:pos + size])
        pos += size
    meter.update(x[pos:])
    return meter.lufs()


def _torchaudio(x: np.ndarray, sr: int) -> float:
    """torchaudio's whole-signal reference; it wants (channels, time)."""
    return float(AF.loudness(torch.from_numpy(np.ascontiguousarray(x.T)), sr))


@pytest.mark.parametrize("sr", [44100, 48000])
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda sr: _noise(sr, 1, 3.0), id="mono-noise"),
        pytest.param(lambda sr: _noise(sr, 2, 3.0, seed=3), id="stereo-noise"),
        pytest.param(lambda sr: _sine(sr, 1, 3.0), id="mono-sine"),
        pytest.param(lambda sr: _sine(sr, 2, 2.5, amplitude=0.3, freq=60.0), id="stereo-sine-60hz"),
        pytest.param(lambda sr: _gated(sr, 2), id="stereo-gated"),
    ],
)
def test_matches_torchaudio(sr: int, make) -> None:
    x = make(sr)
    # Same filter design, framing and gating, so only float rounding separates the two.
    assert _measure(x, sr) == pytest.approx(_torchaudio(x, sr), abs=1e-6)


@pytest.mark.parametrize(
    "sr, channels",
    [
        pytest.param(11025, 2, id="11025Hz-gate-not-4-steps"),  # gate 4410 = 4 * 1102 + 2
        pytest.param(16000, 1, id="16000Hz"),
        pytest.param(48000, 5, id="5ch-surround-weights"),
    ],
)
def test_matches_torchaudio_other_rates_and_layouts(sr: int, channels: int) -> None:
    x = _gated(sr, channels)
    x[:, channels - 1] *= 2  # so a wrong surround weight changes the reading
    assert _measure(x, sr) == pytest.approx(_torchaudio(x, sr), abs=1e-6)


def test_exactly_one_gating_block_matches_torchaudio() -> None:
    sr = 48000
    x = _noise(sr, 2, 0.4)
    assert len(x) == 19200
    assert _measure(x, sr) == pytest.approx(_torchaudio(x, sr), abs=1e-6)


def _random_sizes(rng: np.random.Generator) -> Iterator[int]:
    """Empty and 1-frame blocks among tiny and large ones, so boundaries land everywhere in the sub-blocks."""
    # Frame by frame past the first sub-block boundary (>= 1102 frames at any rate tested), so every offset in a
    # sub-block, including those inside the r-sample head of a gate that is not 4 steps, ends some block.
    yield from [1] * 1200
    for _ in range(300):
        yield 0
        yield int(rng.integers(1, 4))
        yield 1
        yield int(rng.integers(2, 3000))


@pytest.mark.parametrize("sr", [44100, 11025])
def test_block_size_does_not_matter(sr: int) -> None:
    x = _gated(sr, 2)
    whole = _measure(x, sr)
    assert math.isfinite(whole)
    assert _measure(x, sr, iter(lambda: 1000, None)) == pytest.approx(whole, abs=1e-6)
    assert _measure(x, sr, _random_sizes(np.random.default_rng(0))) == pytest.approx(whole, abs=1e-6)


def test_reading_mid_stream_changes_nothing() -> None:
    sr = 22050
    x = _gated(sr, 1)
    meter = LoudnessMeter(sr, 1)
    for start in range(0, len(x), 7000):
        meter.update(x[start:start + 7000])
        meter.lufs()
    assert meter.lufs() == pytest.approx(_measure(x, sr), abs=1e-9)


def test_memory_stays_bounded_while_streaming() -> None:
    sr = 8000
    meter = LoudnessMeter(sr, 2)
    for seed in range(60):
        meter.update(_noise(sr, 2, 1.0, seed=seed))
    # 60 s of audio: 597 gating blocks kept, but only the sub-blocks the next gating block needs.
    assert len(meter._blocks) == 597
    assert len(meter._full) < 5


@pytest.mark.parametrize("sr", [44100, 48000])
@pytest.mark.parametrize("channels, channel", [(1, 0), (2, 0), (2, 1), (3, 2)])
def test_full_scale_997hz_sine_in_one_channel_reads_minus_3_01(sr: int, channels: int, channel: int) -> None:
    # BS.1770 calibration. torchaudio's filter design reads ~0.04 LU low here (see the module docstring), and
    # torchaudio itself reads -3.28 because it clamps the boosted signal; this meter does not clamp.
    x = np.zeros((2 * sr, channels))
    x[:, channel] = _sine(sr, 1, 2.0, amplitude=1.0)[:, 0]
    assert _measure(x, sr) == pytest.approx(-3.01, abs=0.1)


def test_silence_and_very_quiet_signals_are_gated_out() -> None:
    sr = 44100
    assert _measure(np.zeros((3 * sr, 2)), sr) == -math.inf
    # About -100 LUFS: under the -70 LUFS absolute gate.
    assert _measure(_noise(sr, 2, 3.0, level=1e-5), sr) == -math.inf


def test_shorter_than_one_gating_block_is_minus_inf() -> None:
    sr = 48000
    loud = _noise(sr, 2, 1.0, level=0.3)
    assert _measure(loud[:19199], sr) == -math.inf
    assert math.isfinite(_measure(loud[:19200], sr))
    assert LoudnessMeter(sr, 2).lufs() == -math.inf


@pytest.mark.parametrize("target", [-23.0, -14.0, -30.0])
def test_gain_to_lufs_hits_target(target: float) -> None:
    sr = 44100
    x = _gated(sr, 2)
    measured = _measure(x, sr)
    gain = gain_to_lufs(measured, target)
    assert abs(gain - 1.0) > 0.1  # the test would pass trivially otherwise
    assert _measure(gain * x, sr) == pytest.approx(target, abs=0.01)


def test_gain_to_lufs_leaves_silence_alone() -> None:
    assert gain_to_lufs(-math.inf, -23.0) == 1.0
    assert gain_to_lufs(-20.0, -26.0) == pytest.approx(10 ** (-6 / 20))


def test_rejects_bad_layouts() -> None:
    with pytest.raises(ValueError, match="channels"):
        LoudnessMeter(48000, 6)
    with pytest.raises(ValueError, match="channels"):
        LoudnessMeter(48000, 0)
    with pytest.raises(ValueError, match="sample_rate"):
        LoudnessMeter(0, 2)
    meter = LoudnessMeter(48000, 2)
    with pytest.raises(ValueError, match="block"):
        meter.update(np.zeros((100, 1)))
    with pytest.raises(ValueError, match="block"):
        meter.update(np.zeros(100))


def test_accepts_float32_blocks() -> None:
    sr = 48000
    x = _noise(sr, 2, 2.0).astype(np.float32)
    assert _measure(x, sr) == pytest.approx(_torchaudio(x.astype(np.float64), sr), abs=1e-6)
