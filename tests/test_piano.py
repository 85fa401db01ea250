"""Tests of the synthetic piano-music generator (audiolab.data.piano)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from audiolab.data.piano import PianoParams, generate_clips, synthesize_piece

SR = 44100
SHORT = PianoParams(clip_seconds=2.5)


def _frame_rms_db(x: np.ndarray, frame: int) -> np.ndarray:
    """RMS level in dB of consecutive non-overlapping frames."""
    x = x[: x.size // frame * frame].astype(np.float64).reshape(-1, frame)
    return 10 * np.log10(np.mean(x * x, axis=1) + 1e-20)


@pytest.fixture(scope="module")
def pieces() -> list[np.ndarray]:
    """A few short pieces shared by the signal tests."""
    return generate_clips(SHORT, 4 * SHORT.clip_seconds, seed=123)


def test_same_seed_is_bit_identical() -> None:
    a = generate_clips(SHORT, 5.0, seed=7)
    b = generate_clips(SHORT, 5.0, seed=7)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        assert x.tobytes() == y.tobytes()


def test_different_seeds_and_pieces_differ() -> None:
    a = generate_clips(SHORT, 5.0, seed=7)
    b = generate_clips(SHORT, 5.0, seed=8)
    assert not np.array_equal(a[0], b[0])
    assert not np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])


def test_piece_is_independent_of_how_many_are_generated() -> None:
    two = generate_clips(SHORT, 2 * SHORT.clip_seconds, seed=3)
    five = generate_clips(SHORT, 5 * SHORT.clip_seconds, seed=3)
    assert len(two) == 2 and len(five) == 5
    for j in range(2):
        assert two[j].tobytes() == five[j].tobytes()
    direct = synthesize_piece(SHORT, np.random.default_rng([3, 1]))
    assert direct.tobytes() == five[1].tobytes()


def test_number_of_pieces_is_ceil() -> None:
    params = PianoParams(clip_seconds=0.5)
    assert len(generate_clips(params, 1.2, seed=0)) == 3
    assert len(generate_clips(params, 1.5, seed=0)) == 3
    assert generate_clips(params, 0.0, seed=0) == []


def test_shape_dtype_and_level(pieces: list[np.ndarray]) -> None:
    n = round(SHORT.clip_seconds * SHORT.sample_rate)
    for x in pieces:
        assert x.shape == (n,)
        assert x.dtype == np.float32
        assert np.all(np.isfinite(x))
        peak = float(np.max(np.abs(x)))
        assert 0.05 < peak <= 1.0
        assert peak == pytest.approx(SHORT.peak, rel=1e-5)


def test_odd_lengths_and_rates() -> None:
    for params in (PianoParams(clip_seconds=0.37, sample_rate=16000), PianoParams(clip_seconds=1.01)):
        x = synthesize_piece(params, np.random.default_rng(0))
        assert x.shape == (round(params.clip_seconds * params.sample_rate),)
        assert x.dtype == np.float32 and np.all(np.isfinite(x)) and np.max(np.abs(x)) <= 1.0


def test_spectrum_is_harmonic_and_bright(pieces: list[np.ndarray]) -> None:
    for x in pieces:
        mag = np.abs(np.fft.rfft(x.astype(np.float64)))
        freqs = np.fft.rfftfreq(x.size, 1 / SR)
        power = mag**2
        # energy well spread above 2 kHz, up to 8 kHz
        assert power[freqs > 2000].sum() / power.sum() > 1e-3
        assert power[(freqs > 4000) & (freqs < 8000)].sum() / power.sum() > 1e-5
        # clear spectral peaks (partials) rather than a noise-like spectrum
        band = (freqs >= 50) & (freqs <= 5000)
        assert mag[band].max() / np.median(mag[band]) > 50


def test_partials_stay_below_nyquist() -> None:
    params = PianoParams(clip_seconds=2.0, sample_rate=16000, hammer_noise=0.0, reverb_mix=0.0)
    x = synthesize_piece(params, np.random.default_rng(5)).astype(np.float64)
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / params.sample_rate)
    assert power[freqs > 0.97 * params.sample_rate / 2].sum() / power.sum() < 1e-5


def test_has_onsets(pieces: list[np.ndarray]) -> None:
    frame = int(0.02 * SR)
    for x in pieces:
        level = _frame_rms_db(x[: x.size - int(0.1 * SR)], frame)  # skip the final fade-out
        assert level.max() - level.min() > 10.0
        # sharp rises: some frame is > 6 dB louder than the previous one
        assert np.max(np.diff(level)) > 6.0


def test_params_are_frozen_hashable_and_versioned() -> None:
    a, b = PianoParams(), PianoParams()
    assert a == b and hash(a) == hash(b)
    assert isinstance(a.version, int) and a.version >= 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.clip_seconds = 3.0  # type: ignore[misc]
    bumped = dataclasses.replace(a, version=a.version + 1)
    assert bumped != a and hash(bumped) != hash(a)
    assert len({a, b, bumped}) == 2
    json.dumps(dataclasses.asdict(a))  # usable as a cache key
    assert a.sample_rate == 44100 and a.clip_seconds == 10.0


@pytest.mark.parametrize("bad", [dict(peak=1.5), dict(pitch_min=90, pitch_max=80), dict(velocity_min=0.0),
                                 dict(tempo_min_bpm=200, tempo_max_bpm=100), dict(chord_prob=2.0)])
def test_invalid_params_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        PianoParams(**bad)
