"""Audio samples and spectrogram comparisons written at each validation.

The PNG puts each clip on a row and each role (input/output/target, whichever the recipe gives) in a
column, all on one dB colour scale with one colour bar, on a log-frequency axis; when both output and
target are there, a last column shows output minus target in dB on its own symmetric scale. The
spectrograms are numpy only (no torch), so the review commands could draw them without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs write PNGs, never open windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator  # noqa: E402

N_FFT = 2048
LOW_HZ = 30.0  # the axis starts here: below it a 2048-point STFT has one or two bins, nothing to read
BANDS_PER_OCTAVE = 24
DYNAMIC_RANGE_DB = 80.0  # the shared colour scale spans this far below the loudest bin in the figure
DIFFERENCE_RANGE_DB = 20.0  # fixed, so the difference colours mean the same at every step and in every run
CMAP = "magma"
DIFFERENCE_CMAP = "RdBu_r"  # diverging: red where the output is louder than the target, blue where quieter
POWER_FLOOR = 1e-12  # -120 dB, well below any colour scale's bottom
_FREQ_TICKS = (50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


@dataclass(frozen=True)
class LogSpectrogram:
    """A spectrogram in dB re a full-scale sine on log-spaced frequency bands, with its cell edges for pcolormesh."""

    db: np.ndarray  # (bands, frames)
    freq_edges: np.ndarray  # (bands + 1,) Hz, log-spaced
    time_edges: np.ndarray  # (frames + 1,) s, from 0 to the clip's end


def _fit_n_fft(n_fft: int, length: int) -> int:
    """The largest power of two <= both `n_fft` and the clip, so a short clip still gives one real frame."""
    return int(min(n_fft, 2 ** max(int(math.log2(max(length, 16))), 4)))


def _channels(audio: np.ndarray) -> np.ndarray:
    """(channels, T) float32 from a (T,) or (channels, T) array."""
    x = np.asarray(audio, dtype=np.float32)
    return x.reshape(1, -1) if x.ndim == 1 else x.reshape(-1, x.shape[-1])


def stft_power(audio: np.ndarray, n_fft: int = N_FFT) -> np.ndarray:
    """Power spectrogram (n_fft // 2 + 1, frames) re a full-scale sine, channels averaged, no frame past the clip."""
    x = _channels(audio)
    if x.shape[-1] < n_fft:  # only clips under 16 samples: zeros rather than no frame at all
        x = np.pad(x, ((0, 0), (0, n_fft - x.shape[-1])))
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)  # periodic Hann
    # Frames start at sample 0 and end inside the clip: padding half a window at each end (torch.stft's
    # default) drew bright columns at the edges.
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[:, ::n_fft // 4]  # (channels, frames, n_fft)
    spec = np.fft.rfft(frames * window, axis=-1)
    power = (spec.real ** 2 + spec.imag ** 2).mean(0).T
    return power / (window.sum() / 2) ** 2  # a full-scale sine: 0 dB


def log_spectrogram_db(audio: np.ndarray, n_fft: int = N_FFT) -> np.ndarray:
    """Magnitude spectrogram in dB re a full-scale sine (freq, frames) on linear bins, for plotting."""
    power = stft_power(audio, _fit_n_fft(n_fft, np.shape(audio)[-1]))
    return 10 * np.log10(np.maximum(power, POWER_FLOOR))


def log_band_edges(sample_rate: int, low_hz: float = LOW_HZ, bands_per_octave: int = BANDS_PER_OCTAVE) -> np.ndarray:
    """Log-spaced band edges in Hz from `low_hz` to Nyquist."""
    nyquist = sample_rate / 2
    low = min(low_hz, nyquist / 2)
    return np.geomspace(low, nyquist, max(1, math.ceil(bands_per_octave * math.log2(nyquist / low))) + 1)


@lru_cache(maxsize=8)
def _band_weights(n_fft: int, sample_rate: int) -> np.ndarray:
    """(bands, n_fft // 2 + 1) weights averaging the STFT bins' power over each log band, by overlap in Hz.

    Narrow low bands take the one or two bins they fall in; wide high bands average many, so the top octaves
    are not aliased away when a thousand bins meet a few pixels.
    """
    edges = log_band_edges(sample_rate)
    width = sample_rate / n_fft
    centres = np.arange(n_fft // 2 + 1) * width
    overlap = (np.minimum(centres + width / 2, edges[1:, None]) - np.maximum(centres - width / 2, edges[:-1, None]))
    weights = np.clip(overlap, 0, None)
    weights = (weights / weights.sum(1, keepdims=True)).astype(np.float32)
    weights.flags.writeable = False  # cached and shared between calls
    return weights


def _time_edges(frames: int, n_fft: int, length: int, sample_rate: int) -> np.ndarray:
    """Cell edges midway between frame centres, with the outer ones at 0 and the clip's end."""
    centres = (np.arange(frames) * (n_fft // 4) + n_fft / 2) / sample_rate
    return np.concatenate([[0.0], (centres[:-1] + centres[1:]) / 2, [length / sample_rate]])


def log_frequency_spectrogram(audio: np.ndarray, sample_rate: int, n_fft: int = N_FFT) -> LogSpectrogram:
    """Spectrogram of a (T,) or (channels, T) clip on log-spaced bands from LOW_HZ to Nyquist, in dB."""
    length = int(np.shape(audio)[-1])
    n_fft = _fit_n_fft(n_fft, length)
    power = _band_weights(n_fft, sample_rate) @ stft_power(audio, n_fft)
    db = 10 * np.log10(np.maximum(power, POWER_FLOOR))
    return LogSpectrogram(db, log_band_edges(sample_rate), _time_edges(db.shape[1], n_fft, length, sample_rate))


def shared_db_range(spectra: Iterable[LogSpectrogram],
                    dynamic_range_db: float = DYNAMIC_RANGE_DB) -> tuple[float, float]:
    """One (vmin, vmax) for every panel: the loudest cell rounded up to 5 dB, and `dynamic_range_db` below it."""
    vmax = math.ceil(max(float(s.db.max()) for s in spectra) / 5) * 5
    return vmax - dynamic_range_db, float(vmax)


def difference_db(output: LogSpectrogram, target: LogSpectrogram, floor_db: float) -> np.ndarray:
    """Output dB minus target dB, both first raised to `floor_db` so two inaudible cells differ by 0, not by noise."""
    return np.maximum(output.db, floor_db) - np.maximum(target.db, floor_db)


_HZ_FORMATTER = FuncFormatter(lambda hz, _: f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}")


def _log_frequency_axis(ax: Axes, low: float, high: float) -> None:
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ticks = [t for t in _FREQ_TICKS if low <= t <= high]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())  # log minors would label 30, 40, 60... and crowd the axis
    ax.yaxis.set_major_formatter(_HZ_FORMATTER)


def _panel(ax: Axes, spec: LogSpectrogram, data: np.ndarray, norm: Normalize, cmap: str, title: str) -> None:
    ax.pcolormesh(spec.time_edges, spec.freq_edges, data, norm=norm, cmap=cmap, shading="flat")
    _log_frequency_axis(ax, float(spec.freq_edges[0]), float(spec.freq_edges[-1]))
    ax.xaxis.set_major_locator(MaxNLocator(4, steps=[1, 2, 5, 10], prune="upper"))  # else it meets the next 0
    ax.set_title(title, fontsize=9, y=1.0)  # a fixed y spares matplotlib measuring every axis to place it
    ax.tick_params(labelsize=8)


def figure_title(step: int, run_name: str | None) -> str:
    """The PNG's title: run name and step."""
    return f"{run_name} · step {step}" if run_name else f"step {step}"


# Layout in inches, placed by hand: matplotlib's layout engines took longer than all the drawing.
_PANEL_W, _PANEL_H = 3.2, 1.9
_GAP_W, _GAP_H = 0.12, 0.4  # between panels: no inner tick labels, room for each panel's title
_LEFT, _RIGHT, _TOP, _BOTTOM = 0.6, 0.75, 0.65, 0.5
_BAR_W, _BAR_LABELS_W = 0.14, 0.8  # a colour bar, and the room its ticks and label take beside it


def _column_lefts(n_roles: int, with_difference: bool) -> tuple[list[float], list[float], float]:
    """Left edges in inches of the panel columns and of the colour bars, and the figure's width."""
    lefts = [_LEFT + j * (_PANEL_W + _GAP_W) for j in range(n_roles)]
    bar_lefts = [lefts[-1] + _PANEL_W + _GAP_W]
    if with_difference:
        lefts.append(bar_lefts[0] + _BAR_W + _BAR_LABELS_W)
        bar_lefts.append(lefts[-1] + _PANEL_W + _GAP_W)
    return lefts, bar_lefts, bar_lefts[-1] + _BAR_W + _RIGHT


def _grid(n_clips: int, n_roles: int, with_difference: bool, title: str) -> tuple[Figure, np.ndarray, list[Axes]]:
    """Panels (n_clips, n_roles [+ 1]) and colour-bar axes: one right of the magnitude panels, one right of the rest."""
    lefts, bar_lefts, width = _column_lefts(n_roles, with_difference)
    height = _TOP + n_clips * _PANEL_H + (n_clips - 1) * _GAP_H + _BOTTOM
    fig = plt.figure(figsize=(width, height))
    fig.suptitle(title, y=1 - 0.12 / height)
    axes = np.empty((n_clips, len(lefts)), dtype=object)
    for i in range(n_clips):
        bottom = _BOTTOM + (n_clips - 1 - i) * (_PANEL_H + _GAP_H)
        for j, left in enumerate(lefts):
            axes[i, j] = fig.add_axes((left / width, bottom / height, _PANEL_W / width, _PANEL_H / height))
    span = (n_clips * _PANEL_H + (n_clips - 1) * _GAP_H) / height
    caxes = [fig.add_axes((left / width, _BOTTOM / height, _BAR_W / width, span)) for left in bar_lefts]
    return fig, axes, caxes


def _outer_ticks_only(axes: np.ndarray) -> None:
    """Ticks on the left column and the bottom row only: the panels line up, and ticks are most of the drawing time."""
    for (i, j), ax in np.ndenumerate(axes):
        if j == 0:
            ax.set_ylabel("Hz")
        else:
            ax.yaxis.set_major_locator(NullLocator())
        if i == axes.shape[0] - 1:
            ax.set_xlabel("s")
        else:
            ax.xaxis.set_major_locator(NullLocator())


def spectrogram_figure(clips: dict[str, list[np.ndarray]], sample_rate: int, step: int,
                       run_name: str | None = None, notes: dict[str, list[str]] | None = None) -> Figure:
    """The validation figure: one row per clip, one column per role, then output minus target when both exist."""
    notes = notes or {}
    roles = list(clips)
    spectra = {role: [log_frequency_spectrogram(a, sample_rate) for a in items] for role, items in clips.items()}
    vmin, vmax = shared_db_range(s for items in spectra.values() for s in items)
    norm = Normalize(vmin, vmax)
    with_difference = "output" in spectra and "target" in spectra
    fig, axes, caxes = _grid(len(spectra[roles[0]]), len(roles), with_difference, figure_title(step, run_name))
    for i, row in enumerate(axes):
        for ax, role in zip(row, roles, strict=False):
            note = f" ({notes[role][i]})" if role in notes else ""
            _panel(ax, spectra[role][i], spectra[role][i].db, norm, CMAP, f"clip {i}: {role}{note}")
            ax.set_label(f"clip{i}/{role}")  # lets tests and readers of the Figure find a panel
        if with_difference:
            output, target = spectra["output"][i], spectra["target"][i]
            _panel(row[-1], output, difference_db(output, target, vmin),
                   Normalize(-DIFFERENCE_RANGE_DB, DIFFERENCE_RANGE_DB), DIFFERENCE_CMAP,
                   f"clip {i}: output − target")
            row[-1].set_label(f"clip{i}/difference")
    _outer_ticks_only(axes)
    _colour_bars(fig, axes, caxes)
    return fig


def _colour_bars(fig: Figure, axes: np.ndarray, caxes: list[Axes]) -> None:
    """One bar for all magnitude panels and, beside the difference column, one for it."""
    fig.colorbar(axes[0, 0].collections[0], cax=caxes[0], label="dB re full-scale sine")
    caxes[0].set_label("colorbar/magnitude")
    if len(caxes) > 1:
        fig.colorbar(axes[0, -1].collections[0], cax=caxes[1], label="output − target, dB", extend="both")
        caxes[1].set_label("colorbar/difference")


def _write_wavs(directory: Path, step: int, clips: dict[str, list[np.ndarray]], sample_rate: int) -> dict[str, Path]:
    wavs: dict[str, Path] = {}
    for i in range(len(next(iter(clips.values())))):  # clip by clip, the order callers have always seen
        for role, items in clips.items():
            path = directory / f"step{step:07d}_clip{i}_{role}.wav"
            sf.write(path, np.asarray(items[i], dtype=np.float32).T, sample_rate, subtype="FLOAT")
            wavs[f"clip{i}/{role}"] = path
    return wavs


def write_samples(directory: Path, step: int, clips: dict[str, list[np.ndarray]], sample_rate: int,
                  notes: dict[str, list[str]] | None = None, run_name: str | None = None
                  ) -> tuple[dict[str, Path], Path]:
    """Write WAVs for each role (input/output/target) of each clip and one PNG comparing spectrograms.

    `clips` maps a role name to one (channels, T) array per clip; `notes` optionally adds a text per
    role and clip to the panel titles (the discriminator's verdict in phase 2). Returns the WAV paths
    by `clip{i}/{role}` and the PNG path.
    """
    directory.mkdir(parents=True, exist_ok=True)
    wavs = _write_wavs(directory, step, clips, sample_rate)
    fig = spectrogram_figure(clips, sample_rate, step, run_name, notes)
    png = directory / f"step{step:07d}_spectrograms.png"
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return wavs, png
