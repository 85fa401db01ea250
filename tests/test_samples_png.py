"""The validation samples: WAVs, and the spectrogram PNG's scale, axes, difference panel and edges."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
import soundfile as sf
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure

from audiolab.runs.samples import (
    DIFFERENCE_RANGE_DB,
    DYNAMIC_RANGE_DB,
    N_FFT,
    difference_db,
    log_frequency_spectrogram,
    log_spectrogram_db,
    spectrogram_figure,
    write_samples,
)

RATE = 44100
SECONDS = 0.5
GAIN_DB = -6.0  # the output is the target attenuated by this much
BIN = 93  # a sine at an STFT bin centre: 93 * 44100 / 2048 = 2002.6 Hz
SINE_HZ = BIN * RATE / N_FFT


def sine(hz: float = SINE_HZ, amplitude: float = 0.5, phase: float = 0.3) -> np.ndarray:
    """(1, T) float32."""
    t = np.arange(int(SECONDS * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t + phase))[None].astype(np.float32)


def clips(roles: tuple[str, ...] = ("input", "output", "target"), n: int = 2) -> dict[str, list[np.ndarray]]:
    """Each role of `n` clips: the target a sine, the output it at GAIN_DB, the input it plus a little noise."""
    rng = np.random.default_rng(0)
    make = {"target": lambda x: x, "output": lambda x: x * 10 ** (GAIN_DB / 20),
            "input": lambda x: x + 0.01 * rng.standard_normal(x.shape).astype(np.float32)}
    base = [sine(hz=SINE_HZ * (i + 1)) for i in range(n)]
    return {role: [make[role](x) for x in base] for role in roles}


def panels(fig: Figure) -> dict[str, Axes]:
    """The figure's panels by their label, `clip{i}/{role}` or `clip{i}/difference`."""
    return {ax.get_label(): ax for ax in fig.axes if ax.get_label().startswith("clip")}


def mesh(ax: Axes) -> QuadMesh:
    (quads,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    return quads


@pytest.fixture
def figure() -> Iterator[Figure]:
    fig = spectrogram_figure(clips(), RATE, 1200, run_name="output07")
    yield fig
    plt.close(fig)


def test_write_samples_writes_wavs_at_the_rate_and_a_valid_png(tmp_path: Path) -> None:
    given = clips()
    given["target"] = [np.concatenate([x, -x]) for x in given["target"]]  # a stereo role too
    wavs, png = write_samples(tmp_path / "samples", 42, given, RATE, run_name="output07")
    assert list(wavs) == [f"clip{i}/{role}" for i in range(2) for role in ("input", "output", "target")]
    for key, path in wavs.items():
        i, role = key.removeprefix("clip").split("/")
        assert path.name == f"step0000042_clip{i}_{role}.wav"
        audio, rate = sf.read(path, always_2d=True)
        assert rate == RATE
        np.testing.assert_allclose(audio.T, given[role][int(i)], atol=1e-7)
    assert png == tmp_path / "samples" / "step0000042_spectrograms.png"
    image = mpimg.imread(png)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 800
    assert image[..., :3].std() > 0.05  # something is drawn, not a blank canvas


def test_one_colour_scale_with_one_colour_bar(figure: Figure) -> None:
    found = panels(figure)
    magnitude = [mesh(ax) for label, ax in found.items() if not label.endswith("difference")]
    assert len(magnitude) == 6
    loudest = max(float(m.get_array().max()) for m in magnitude)
    vmax = np.ceil(loudest / 5) * 5
    assert {(m.norm.vmin, m.norm.vmax) for m in magnitude} == {(vmax - DYNAMIC_RANGE_DB, vmax)}
    bars = [m.colorbar for m in magnitude if m.colorbar is not None]
    assert len(bars) == 1 and "dB" in bars[0].ax.get_ylabel()
    assert (bars[0].norm.vmin, bars[0].norm.vmax) == (vmax - DYNAMIC_RANGE_DB, vmax)
    assert [ax.get_label() for ax in figure.axes].count("colorbar/magnitude") == 1


def test_log_frequency_axis_from_30_hz_to_nyquist_and_title(figure: Figure) -> None:
    for ax in panels(figure).values():
        assert ax.get_yscale() == "log"
        low, high = ax.get_ylim()
        assert low == pytest.approx(30) and high == pytest.approx(RATE / 2)
        edges = mesh(ax).get_coordinates()[:, 0, 1]
        assert np.allclose(np.diff(np.log(edges)), np.log(edges[1] / edges[0]))  # log-spaced bands
    labels = [t.get_text() for t in panels(figure)["clip1/input"].get_yticklabels()]
    assert "1k" in labels and "10k" in labels
    assert figure.get_suptitle() == "output07 · step 1200"


def test_title_without_a_run_name() -> None:
    fig = spectrogram_figure(clips(("output", "target"), 1), RATE, 7)
    assert fig.get_suptitle() == "step 7"
    plt.close(fig)


@pytest.mark.parametrize(("roles", "has_difference"), [(("input", "output", "target"), True),
                                                        (("output", "target"), True),
                                                        (("output",), False), (("input", "target"), False)])
def test_difference_panel_only_with_output_and_target(roles: tuple[str, ...], has_difference: bool) -> None:
    fig = spectrogram_figure(clips(roles), RATE, 3)
    labels = set(panels(fig))
    assert labels == {f"clip{i}/{role}" for i in range(2) for role in roles} | (
        {"clip0/difference", "clip1/difference"} if has_difference else set())
    assert ("colorbar/difference" in [ax.get_label() for ax in fig.axes]) == has_difference
    plt.close(fig)


def test_difference_is_output_db_minus_target_db(figure: Figure) -> None:
    found = panels(figure)
    vmin = mesh(found["clip0/output"]).norm.vmin
    for i, given in enumerate(zip(clips()["output"], clips()["target"], strict=True)):
        output, target = (log_frequency_spectrogram(x, RATE) for x in given)
        quads = mesh(found[f"clip{i}/difference"])
        np.testing.assert_allclose(quads.get_array(), difference_db(output, target, vmin), atol=1e-4)
        np.testing.assert_allclose(quads.get_array(), np.maximum(output.db, vmin) - np.maximum(target.db, vmin),
                                   atol=1e-4)
        band = np.searchsorted(output.freq_edges, SINE_HZ * (i + 1)) - 1
        np.testing.assert_allclose(quads.get_array()[band], GAIN_DB, atol=0.01)  # the known attenuation
        assert (quads.norm.vmin, quads.norm.vmax) == (-DIFFERENCE_RANGE_DB, DIFFERENCE_RANGE_DB)
        assert quads.get_cmap().name == "RdBu_r"
    assert "dB" in mesh(found["clip0/difference"]).colorbar.ax.get_ylabel()


def test_db_is_relative_to_a_full_scale_sine() -> None:
    db = log_spectrogram_db(sine(amplitude=0.5))
    np.testing.assert_allclose(db[BIN], 20 * np.log10(0.5), atol=0.05)
    assert db.argmax(axis=0).tolist() == [BIN] * db.shape[1]


def test_channels_are_averaged_not_laid_end_to_end() -> None:
    mono = sine()
    stereo = np.concatenate([mono, mono])
    assert log_spectrogram_db(stereo).shape == log_spectrogram_db(mono).shape
    np.testing.assert_allclose(log_spectrogram_db(stereo), log_spectrogram_db(mono), atol=1e-3)


@pytest.mark.parametrize("hz", [SINE_HZ, 1000.0, 440.0])
def test_no_padding_columns_at_the_edges(hz: float) -> None:
    """A steady sine is as loud in the first and last columns as in the middle one (padding made them differ)."""
    db = log_spectrogram_db(sine(hz=hz))
    k = round(hz * N_FFT / RATE)
    middle = db[k, db.shape[1] // 2]
    assert abs(db[k, 0] - middle) < 1 and abs(db[k, -1] - middle) < 1
    spec = log_frequency_spectrogram(sine(hz=hz), RATE)
    band = np.searchsorted(spec.freq_edges, hz) - 1
    middle = spec.db[band, spec.db.shape[1] // 2]
    assert abs(spec.db[band, 0] - middle) < 1 and abs(spec.db[band, -1] - middle) < 1


def test_time_axis_spans_the_clip(figure: Figure) -> None:
    quads = mesh(panels(figure)["clip0/target"])
    times = quads.get_coordinates()[0, :, 0]
    assert times[0] == 0 and times[-1] == pytest.approx(SECONDS)
    assert np.all(np.diff(times) > 0)
    assert quads.get_array().shape[1] == (int(SECONDS * RATE) - N_FFT) // (N_FFT // 4) + 1  # every frame inside


def test_a_clip_shorter_than_the_fft_still_draws(tmp_path: Path) -> None:
    short = {role: [items[0][:, :300]] for role, items in clips(("output", "target"), 1).items()}
    _, png = write_samples(tmp_path, 1, short, RATE)
    assert mpimg.imread(png).ndim == 3
