"""`audiolab compare`: runs side by side on one self-contained HTML page, and its listening section.

The page holds what tells runs apart: the config keys that differ between them (from each run's
`config_resolved.yaml`), their best `val/spec_loss`, their validation curves on one plot, and for each
fixed validation clip the input, every run's output and the target, each with a player and a
spectrogram. Everything is embedded (PNG and 16-bit WAV data URIs, inline CSS): the file opens
offline, mailed or moved, with nothing beside it.

The clips are the WAVs a run writes at each validation (`samples/step{step:07d}_clip{i}_{role}.wav`,
`audiolab/runs/samples.py`). The validation crops are fixed, so clip i is the same audio in every run;
each run's outputs come from its best step (`best_step` in run.json), or from its last samples when the
best step has none, and the page says which step each column comes from. Every spectrogram on the page
shares one colour scale (one vmin/vmax, drawn once as a colour bar), so brightness compares across runs.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: the page's figures are PNGs, no window opens
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator  # noqa: E402

from audiolab.runs.record import read_metrics  # noqa: E402

CURVE_METRIC = "val/spec_loss"
ROLES = ("input", "output", "target")  # the roles samples.py writes, in the order a reader compares them
DYNAMIC_RANGE_DB = 80.0  # the shared colour scale spans this far below the loudest bin on the page
N_FFT = 2048
CMAP = "magma"
_SAMPLE_WAV = re.compile(r"^step(\d+)_clip(\d+)_([A-Za-z]+)\.wav$")
_FREQ_TICKS = (20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


# ----------------------------------------------------------------------------------------------- reading runs


@dataclass
class SampleSet:
    """The sample WAVs of one run at one step: clips[i][role] is a path."""

    step: int
    clips: dict[int, dict[str, Path]]
    best_step: int | None  # the run's best step, when known

    @property
    def source(self) -> str:
        """Which step these samples are from, in words."""
        if self.best_step is None:
            return f"step {self.step} (last samples; no best step recorded)"
        if self.step == self.best_step:
            return f"step {self.step} (best)"
        return f"step {self.step} (last samples; best step {self.best_step} has none)"


@dataclass
class RunView:
    """What the page shows of one run directory."""

    dir: Path
    name: str
    info: dict[str, Any]
    config: dict[str, Any]  # flattened: dotted key -> value
    metrics: list[dict[str, Any]] = field(default_factory=list)
    samples: SampleSet | None = None

    def curve(self, metric: str = CURVE_METRIC) -> list[tuple[int, float]]:
        """(step, value) of `metric`, by step."""
        return sorted((int(m["step"]), float(m[metric])) for m in self.metrics if metric in m and "step" in m)

    def best(self) -> tuple[float | None, int | None]:
        """Best val/spec_loss and its step: run.json's, else the lowest in metrics.jsonl."""
        value, step = self.info.get("best_val_spec_loss"), self.info.get("best_step")
        if value is not None and step is not None:
            return float(value), int(step)
        finite = [(v, s) for s, v in self.curve() if math.isfinite(v)]
        if not finite:
            return None, None
        v, s = min(finite)
        return v, s

    def metric_at(self, metric: str, step: int | None) -> float | None:
        """`metric` logged at `step` (None when it was not)."""
        if step is None:
            return None
        for m in self.metrics:
            if m.get("step") == step and metric in m:
                return float(m[metric])
        return None


def load_config(run_dir: Path) -> dict[str, Any]:
    """The run's saved config: config_resolved.yaml, else Hydra's .hydra/config.yaml; {} when neither is there."""
    for path in (run_dir / "config_resolved.yaml", run_dir / ".hydra" / "config.yaml"):
        if path.is_file():
            loaded = yaml.safe_load(path.read_text())
            return loaded if isinstance(loaded, dict) else {}
    return {}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (`optim.lr`); lists and scalars are leaves."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def find_samples(run_dir: Path, best_step: int | None = None) -> SampleSet | None:
    """The run's sample WAVs from `best_step` when it has them, else from its last step with samples."""
    folder = Path(run_dir) / "samples"
    if not folder.is_dir():
        return None
    by_step: dict[int, dict[int, dict[str, Path]]] = {}
    for path in folder.iterdir():
        match = _SAMPLE_WAV.match(path.name)
        if match:
            by_step.setdefault(int(match[1]), {}).setdefault(int(match[2]), {})[match[3]] = path
    if not by_step:
        return None
    step = best_step if best_step in by_step else max(by_step)
    return SampleSet(step, dict(sorted(by_step[step].items())), best_step)


def load_run(run_dir: Path, name: str | None = None) -> RunView:
    """Read a run directory; ValueError when it holds no run (no run.json and no saved config)."""
    run_dir = Path(run_dir).absolute()
    json_path = run_dir / "run.json"
    info = json.loads(json_path.read_text()) if json_path.is_file() else {}
    config = load_config(run_dir)
    if not info and not config:
        raise ValueError(f"{run_dir} is not a run directory (no run.json, config_resolved.yaml or .hydra/config.yaml)")
    try:
        metrics = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
    except ValueError:  # a half-written last line of a run that is still going
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()[:-1]
        metrics = [json.loads(line) for line in lines if line.strip()]
    view = RunView(run_dir, name or run_dir.name, info, flatten(config), metrics)
    view.samples = find_samples(run_dir, view.best()[1])
    return view


def _names(run_dirs: Sequence[Path]) -> list[str]:
    """Column names: the directory names, with the parent's prepended where two runs share a name."""
    dirs = [Path(d).absolute() for d in run_dirs]
    if len(set(dirs)) != len(dirs):
        twice = sorted({str(d) for d in dirs if dirs.count(d) > 1})
        raise ValueError(f"run given twice: {', '.join(twice)}")
    plain = [d.name for d in dirs]
    return [f"{d.parent.name}/{d.name}" if plain.count(d.name) > 1 else d.name for d in dirs]


# ------------------------------------------------------------------------------------------- config differences


def _is_run_specific(key: str, runs: Sequence[RunView]) -> bool:
    """True for keys whose value names the run's own directory (a `resume` path, a run dir): they always differ."""
    for run in runs:
        value = run.config.get(key)
        if isinstance(value, str) and value and (str(run.dir) in value or run.dir.name == Path(value).name):
            return True
    return False


def config_differences(runs: Sequence[RunView]) -> tuple[list[str], int]:
    """Dotted keys whose values are not the same in every run (a key missing from a run counts), in config
    order, run-specific keys left out; and how many keys were equal everywhere."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.config))
    missing = object()
    differing, equal = [], 0
    for key in keys:
        values = [run.config.get(key, missing) for run in runs]
        if all(_same(values[0], v) for v in values[1:]):
            equal += 1
        elif not _is_run_specific(key, runs):
            differing.append(key)
    return differing, equal


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


# ------------------------------------------------------------------------------------------------ spectrograms


@dataclass
class Spectrogram:
    """A magnitude spectrogram in dB relative to a full-scale sine; bin 0 (DC) dropped for the log axis."""

    freqs: np.ndarray  # (F,) Hz, bin centres
    seconds: float
    db: np.ndarray  # (F, frames)
    sample_rate: int


def spectrogram(audio: np.ndarray, sample_rate: int, n_fft: int = N_FFT) -> Spectrogram:
    """Spectrogram of a (frames,) or (frames, channels) array; channels are averaged in power."""
    x = np.asarray(audio, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    n_fft = int(min(n_fft, 2 ** max(int(math.log2(max(x.shape[0], 16))), 4)))
    hop = max(n_fft // 8, 1)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    padded = np.pad(x, ((n_fft // 2, n_fft // 2), (0, 0)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=0)[::hop]  # (frames, channels, n_fft)
    spec = np.fft.rfft(frames * window, axis=-1)
    power = (np.abs(spec) ** 2).mean(axis=1).T / (window.sum() / 2) ** 2  # (F, frames); a full-scale sine: 0 dB
    db = 10 * np.log10(np.maximum(power, 1e-12))
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    return Spectrogram(freqs[1:], x.shape[0] / sample_rate, db[1:], sample_rate)


def shared_scale(spectrograms: Sequence[Spectrogram],
                 dynamic_range_db: float = DYNAMIC_RANGE_DB) -> tuple[float, float]:
    """One (vmin, vmax) for every panel: the loudest bin on the page, rounded up to 5 dB, and `dynamic_range_db`
    below it."""
    loudest = max((float(s.db.max()) for s in spectrograms), default=0.0)
    vmax = math.ceil(loudest / 5) * 5
    return vmax - dynamic_range_db, float(vmax)


def _log_freq_axis(ax: Any, low: float, high: float) -> None:
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ticks = [t for t in _FREQ_TICKS if low <= t <= high]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_yticklabels([f"{t // 1000}k" if t >= 1000 else str(t) for t in ticks])


def spectrogram_png(spec: Spectrogram, vmin: float, vmax: float, width_px: int = 300, height_px: int = 190) -> bytes:
    """One panel: time in s, log frequency in Hz, colours on the page's shared scale."""
    dpi = 100
    fig, ax = plt.subplots(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    f = spec.freqs
    edges = np.concatenate([[f[0] - (f[1] - f[0]) / 2 if len(f) > 1 else f[0] / 2],
                            (f[:-1] + f[1:]) / 2, [f[-1] + (f[-1] - f[-2]) / 2 if len(f) > 1 else f[0] * 1.5]])
    edges[0] = max(edges[0], f[0] / 2)
    t = np.linspace(0, spec.seconds, spec.db.shape[1] + 1)
    ax.pcolormesh(t, edges, spec.db, vmin=vmin, vmax=vmax, cmap=CMAP, shading="flat", rasterized=True)
    _log_freq_axis(ax, max(edges[0], 20.0), spec.sample_rate / 2)
    ax.tick_params(labelsize=7, length=2, pad=1)
    ax.set_xlabel("s", fontsize=7, labelpad=0)
    ax.set_ylabel("Hz", fontsize=7, labelpad=0)
    fig.subplots_adjust(left=0.15, right=0.98, top=0.97, bottom=0.17)
    return _png(fig)


def colorbar_png(vmin: float, vmax: float, width_px: int = 420, height_px: int = 62) -> bytes:
    """The shared colour scale, horizontal, in dB."""
    dpi = 100
    fig = plt.figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    ax = fig.add_axes((0.04, 0.55, 0.92, 0.3))
    mappable = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(vmin, vmax), cmap=CMAP)
    bar = fig.colorbar(mappable, cax=ax, orientation="horizontal")
    bar.ax.tick_params(labelsize=7, length=2, pad=1)
    bar.set_label("dB re full-scale sine", fontsize=7, labelpad=1)
    return _png(fig)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def wav_data_uri(audio: np.ndarray, sample_rate: int) -> str:
    """16-bit PCM WAV as a data URI (every browser decodes it; half the size of the runs' float WAVs)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(np.asarray(audio, dtype=np.float32), -1, 1), sample_rate, format="WAV", subtype="PCM_16")
    return _data_uri("audio/wav", buffer.getvalue())


# ------------------------------------------------------------------------------------------------------ HTML


def _e(value: Any) -> str:
    return html.escape(str(value))


LISTENING_STYLE = (
    ".al-listen table{border-collapse:collapse}"
    ".al-listen td,.al-listen th{border:1px solid #ddd;padding:4px;vertical-align:top;text-align:center}"
    ".al-listen th{background:#f2f2f2;font-size:13px}.al-listen th small{font-weight:normal;color:#555}"
    ".al-listen th.clip{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap}"
    ".al-listen .panel img{display:block;width:300px;height:190px}"
    ".al-listen audio{width:300px;height:32px;display:block;margin-top:3px}"
    ".al-listen .scroll{overflow-x:auto}.al-listen .note{color:#666;font-style:italic;font-size:13px}"
    ".al-listen .missing{width:300px;color:#999;font-style:italic;font-size:13px;padding-top:80px}"
)


@dataclass
class _Panel:
    label: str
    audio: np.ndarray
    sample_rate: int
    spec: Spectrogram | None = None


def _read(path: Path) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return audio, int(rate)


def listening_section_html(run_dirs: Sequence[Path], names: Sequence[str] | None = None, *,
                           max_clips: int | None = None, heading: str | None = "Listening") -> str:
    """An HTML fragment (with its own <style>): for each fixed validation clip, the input, each run's output and
    the target, side by side, each with an <audio> player and a spectrogram on one colour scale shared by the
    whole fragment. Input and target come from the first run that has them; a run whose input or target is not
    the first run's is named in a note. Usable on its own (the sweep report's top trials)."""
    runs = [load_run(d, n) for d, n in zip(run_dirs, names or _names(run_dirs), strict=True)]
    return _listening_html(runs, max_clips=max_clips, heading=heading)


def _listening_html(runs: Sequence[RunView], *, max_clips: int | None = None, heading: str | None = "Listening") -> str:
    clip_ids = sorted({i for r in runs if r.samples for i in r.samples.clips})
    if max_clips is not None:
        clip_ids = clip_ids[:max(max_clips, 0)]
    parts = [f'<section class="al-listen">\n<style>{LISTENING_STYLE}</style>']
    if heading:
        parts.append(f"<h2>{_e(heading)}</h2>")
    if not clip_ids:
        parts.append('<p class="note">No run has sample WAVs (samples/stepNNNNNNN_clipI_ROLE.wav).</p></section>')
        return "\n".join(parts)

    notes: list[str] = []
    rows: list[tuple[int, list[_Panel | None]]] = []
    shared_roles = [role for role in ("input", "target")
                    if any(role in r.samples.clips.get(i, {}) for r in runs if r.samples for i in clip_ids)]
    for i in clip_ids:
        shared: dict[str, _Panel | None] = {}
        for role in shared_roles:
            shared[role] = None
            for run in runs:
                path = run.samples.clips.get(i, {}).get(role) if run.samples else None
                if path is None:
                    continue
                audio, rate = _read(path)
                if shared[role] is None:
                    shared[role] = _Panel(f"{role} (from {run.name})" if len(runs) > 1 else role, audio, rate)
                elif not _same_audio(shared[role], audio, rate):
                    notes.append(f"clip {i}: {run.name}'s {role} is not the one shown ({shared[role].label}): "
                                 "the runs' validation data differ")
        outputs: list[_Panel | None] = []
        for run in runs:
            path = run.samples.clips.get(i, {}).get("output") if run.samples else None
            outputs.append(_Panel(run.name, *_read(path)) if path is not None else None)
        row = ([shared["input"]] if "input" in shared else []) + outputs + ([shared["target"]] if "target" in shared
                                                                             else [])
        rows.append((i, row))

    panels = [p for _, row in rows for p in row if p is not None]
    for p in panels:
        p.spec = spectrogram(p.audio, p.sample_rate)
    vmin, vmax = shared_scale([p.spec for p in panels])

    parts.append(f'<p>Each run\'s output is from the step named under its name; the validation clips are the same '
                 f'in every run. Every spectrogram below shares one colour scale: {vmin:g} to {vmax:g} dB '
                 f'(relative to a full-scale sine), log-frequency axis.</p>')
    parts.append(f'<img class="colorbar" data-vmin="{vmin:g}" data-vmax="{vmax:g}" alt="colour scale {vmin:g} to '
                 f'{vmax:g} dB" src="{_data_uri("image/png", colorbar_png(vmin, vmax))}">')
    for note in dict.fromkeys(notes):
        parts.append(f'<p class="note">{_e(note)}</p>')

    header = ['<th></th>']
    if "input" in shared_roles:
        header.append("<th>input<br><small>degraded, given to the model</small></th>")
    for run in runs:
        source = run.samples.source if run.samples else "no samples"
        header.append(f"<th>{_e(run.name)}<br><small>output, {_e(source)}</small></th>")
    if "target" in shared_roles:
        header.append("<th>target<br><small>what the output should be</small></th>")
    parts.append('<div class="scroll"><table>\n<tr>' + "".join(header) + "</tr>")
    for i, row in rows:
        cells = [f'<th class="clip">clip {i}</th>']
        for panel in row:
            cells.append(_panel_html(panel, vmin, vmax, i))
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table></div>\n</section>")
    return "\n".join(parts)


def _same_audio(panel: _Panel, audio: np.ndarray, rate: int) -> bool:
    return rate == panel.sample_rate and audio.shape == panel.audio.shape and np.allclose(audio, panel.audio, atol=1e-6)


def _panel_html(panel: _Panel | None, vmin: float, vmax: float, clip: int) -> str:
    if panel is None:
        return '<td><div class="missing">no WAV for this clip</div></td>'
    assert panel.spec is not None
    png = spectrogram_png(panel.spec, vmin, vmax)
    seconds = panel.audio.shape[0] / panel.sample_rate
    alt = f"spectrogram of clip {clip}, {panel.label}"
    return (f'<td class="panel"><img data-vmin="{vmin:g}" data-vmax="{vmax:g}" alt="{_e(alt)}" '
            f'src="{_data_uri("image/png", png)}">'
            f'<audio controls preload="metadata" title="{_e(panel.label)}, clip {clip} ({seconds:.2f} s, '
            f'{panel.sample_rate} Hz)" src="{wav_data_uri(panel.audio, panel.sample_rate)}"></audio></td>')


def curves_png(runs: Sequence[RunView], metric: str = CURVE_METRIC) -> bytes | None:
    """`metric` against step for every run on one plot, each run's best step starred; None when no run logged it."""
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=100)
    everything: list[float] = []
    for n, run in enumerate(runs):
        curve = run.curve(metric)
        if not curve:
            continue
        steps, values = zip(*curve, strict=True)
        everything += [v for v in values if math.isfinite(v)]
        color = f"C{n % 10}"
        ax.plot(steps, values, marker="o", markersize=3, color=color, label=run.name)
        best, best_step = run.best()
        if metric == CURVE_METRIC and best is not None:
            ax.plot([best_step], [best], marker="*", markersize=12, color=color, linestyle="none")
    if not everything:
        plt.close(fig)
        return None
    wide = min(everything) > 0 and max(everything) / min(everything) > 20
    ax.set(xlabel="step", ylabel=metric, yscale="log" if wide else "linear",
           title=f"{metric} at each validation (★ best)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _fmt(value: float | None, digits: int = 5) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _summary_html(runs: Sequence[RunView]) -> str:
    bests = [r.best() for r in runs]
    finite = [b for b, _ in bests if b is not None and math.isfinite(b)]
    lowest = min(finite) if finite else None
    rows: list[tuple[str, list[str]]] = [
        ("status", [_e(r.info.get("status", "—")) for r in runs]),
        ("steps", [_e(r.info.get("step", "—")) for r in runs]),
        (f"best {CURVE_METRIC}", [(f"<b>{_fmt(b)}</b>" if b is not None and b == lowest and len(runs) > 1
                                   else _fmt(b)) for b, _ in bests]),
        ("best step", [_e("—" if s is None else s) for _, s in bests]),
    ]
    improvement = [r.metric_at("val/improvement", s) for r, (_, s) in zip(runs, bests, strict=True)]
    if any(v is not None for v in improvement):
        rows.append(("val/improvement at best step", [_fmt(v, 4) for v in improvement]))
    for key, label in (("val/spec_loss_input", "val/spec_loss_input (do nothing)"),
                       ("val/spec_loss_silence", "val/spec_loss_silence")):
        values = [r.metric_at(key, s) for r, (_, s) in zip(runs, bests, strict=True)]
        if any(v is not None for v in values):
            rows.append((label, [_fmt(v) for v in values]))
    params = [r.info.get("parameters") for r in runs]
    if any(p is not None for p in params):
        rows.append(("parameters", ["—" if p is None else f"{p:,}" for p in params]))
    rows.append(("clips from", [_e(r.samples.source) if r.samples else "no samples" for r in runs]))
    head = "<tr><th></th>" + "".join(f"<th>{_e(r.name)}</th>" for r in runs) + "</tr>"
    body = "".join(f"<tr><th>{_e(label)}</th>" + "".join(f'<td class="num">{c}</td>' for c in cells) + "</tr>"
                   for label, cells in rows)
    return f'<table class="summary">{head}{body}</table>'


def _breakdown_html(runs: Sequence[RunView]) -> str:
    """Where the error is left: per shift and band, each run's figure at its best step; the best per row bold."""
    from audiolab.metrics.bands import describe_bands
    from audiolab.runs.table import breakdown_of

    at_best, improvement = [], False
    for run in runs:
        _, step = run.best()
        line = next((m for m in run.metrics if m.get("step") == step and CURVE_METRIC in m), {})
        at_best.append(breakdown_of(line))
        improvement = improvement or "val/improvement" in line
    groups = list(dict.fromkeys(g for figures in at_best for g in figures))
    if not groups:
        return '<p class="note">These runs logged no per-shift or per-band figures.</p>'

    pick = max if improvement else min
    head = "<tr><th>group</th>" + "".join(f"<th>{_e(r.name)}</th>" for r in runs) + "</tr>"
    body = []
    for group in groups:
        values = [figures.get(group) for figures in at_best]
        present = [v for v in values if v is not None]
        best = pick(present) if len(present) > 1 else None
        cells = "".join(f'<td class="num">{"<b>" + _fmt(v, 4) + "</b>" if v is not None and v == best else _fmt(v, 4)}'
                        "</td>" for v in values)
        body.append(f"<tr><th>{_e(group)}</th>{cells}</tr>")
    what = ("val/improvement (1 - distance / do-nothing distance; higher is better)" if improvement
            else "val/spec_loss (lower is better)")
    return (f'<table class="summary">{head}{"".join(body)}</table><p class="note">{what} at each run\'s best step, '
            f"per semitone shift k and per band ({_e(describe_bands())}).</p>")


def _config_html(runs: Sequence[RunView]) -> str:
    keys, equal = config_differences(runs)
    missing = object()
    if not keys:
        text = "No config key differs between these runs." if len(runs) > 1 else "Only one run: nothing to compare."
        return f'<p class="note">{text} ({equal} keys)</p>'
    head = "<tr><th>key</th>" + "".join(f"<th>{_e(r.name)}</th>" for r in runs) + "</tr>"
    body = []
    for key in keys:
        cells = []
        for run in runs:
            value = run.config.get(key, missing)
            cells.append('<td class="absent">absent</td>' if value is missing else f"<td><code>{_e(_value_text(value))}"
                                                                                   "</code></td>")
        body.append(f"<tr><th><code>{_e(key)}</code></th>{''.join(cells)}</tr>")
    return (f'<table class="config">{head}{"".join(body)}</table>'
            f'<p class="note">{len(keys)} keys differ; {equal} keys equal in all runs are not shown.</p>')


PAGE_STYLE = ("body{font-family:system-ui,sans-serif;margin:1.2em auto;max-width:1400px;padding:0 1em;color:#222}"
              "h1{font-size:22px}h2{font-size:18px;margin-top:1.4em}"
              "table.summary,table.config{border-collapse:collapse;font-size:13px}"
              "table.summary td,table.summary th,table.config td,table.config th{border:1px solid #ccc;"
              "padding:3px 8px;text-align:left;vertical-align:top}"
              "table.summary th,table.config th{background:#eee}td.num{text-align:right}"
              "td.absent{color:#999;font-style:italic}code{font-size:12px}.note{color:#666;font-style:italic}"
              "img.curves{max-width:100%}")


def compare_page_html(run_dirs: Sequence[Path]) -> str:
    """The whole page for these runs, as one string."""
    if not run_dirs:
        raise ValueError("no runs to compare")
    runs = [load_run(d, n) for d, n in zip(run_dirs, _names(run_dirs), strict=True)]
    names = ", ".join(r.name for r in runs)
    curves = curves_png(runs)
    curves_html = (f'<img class="curves" alt="{CURVE_METRIC} of {_e(names)}" src="{_data_uri("image/png", curves)}">'
                   if curves else f'<p class="note">No {CURVE_METRIC} in these runs\' metrics.jsonl.</p>')
    dirs = "".join(f"<li><b>{_e(r.name)}</b>: <code>{_e(r.dir)}</code></li>" for r in runs)
    body = [
        f"<h1>Compare {_e(names)}</h1>",
        f'<p class="note">Written {datetime.now(UTC).isoformat(timespec="seconds")} by <code>audiolab compare</code>.'
        "</p>",
        f"<ul>{dirs}</ul>",
        "<h2>Summary</h2>", _summary_html(runs),
        "<h2>Config differences</h2>", _config_html(runs),
        f"<h2>Validation curves ({CURVE_METRIC})</h2>", curves_html,
        "<h2>Where the error is left</h2>", _breakdown_html(runs),
        _listening_html(runs),
    ]
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Compare {_e(names)}</title>\n'
            f"<style>{PAGE_STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def default_page_path(run_dirs: Sequence[Path]) -> Path:
    """Where `audiolab compare` writes by default: <first run's outputs dir>/compare/compare_<names>.html."""
    first = Path(run_dirs[0]).absolute()
    return first.parent / "compare" / f"compare_{'_'.join(Path(d).name for d in run_dirs)}.html"


def write_compare_page(run_dirs: list[Path], out_path: Path) -> Path:
    """Write the self-contained comparison page of `run_dirs` to `out_path` (folders created); return its path."""
    page = compare_page_html([Path(d) for d in run_dirs])
    out_path = Path(out_path).absolute()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(page)
    return out_path
