"""Reviewing a study: its trials as a terminal table, and an HTML report with Optuna's figures and the best runs.

`audiolab sweep show` prints the table and `audiolab sweep report` writes the report: one HTML file
that opens offline (plotly.js inlined once) with its PNGs in `<stem>_files/` beside it. The report
links the top trials' run directories and latest audio samples by relative path, and embeds every
trial as JSON in `<script id="audiolab-trials">` for scripts that want the numbers.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import matplotlib

matplotlib.use("Agg")  # headless: the report is written on clusters without a display
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from audiolab.runs.record import read_metrics  # noqa: E402
from audiolab.sweep.storage import JOURNAL_PREFIX, display_url  # noqa: E402
from audiolab.sweep.study import (  # noqa: E402
    ATTR_BEST_STEP,
    ATTR_FAIL_REASON,
    ATTR_INTERRUPTED,
    ATTR_PRUNED_STEP,
    ATTR_RUN_DIR,
    ATTR_RUN_NUMBER,
)

CURVE_METRIC = "val/spec_loss"
SAMPLE_ROLES = ("output", "target")
_SAMPLE = re.compile(r"^step(\d+)_(?:clip(\d+)_([A-Za-z]+)\.wav|spectrograms\.png)$")
# Completed trials avoid red, which marks pruned trials in the intermediate-values figure.
_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#ff7f0e")
_PRUNED_COLOR = "#d62728"
_NOTE_WIDTH = 80


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One JSON-ready dict per trial, in trial order: state, params, values and the run it trained."""
    return [_row(t) for t in study.get_trials(deepcopy=False)]


def _row(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    pruned, failed = trial.state == TrialState.PRUNED, trial.state == TrialState.FAIL
    return {
        "number": trial.number,
        "state": trial.state.name,
        # A pruned trial's value is its last intermediate value, not a final result.
        "values": _finite(trial.values),
        "params": dict(trial.params),
        "best_step": attrs.get(ATTR_BEST_STEP),
        "run_number": attrs.get(ATTR_RUN_NUMBER),
        "run_dir": attrs.get(ATTR_RUN_DIR),
        "pruned_step": attrs.get(ATTR_PRUNED_STEP, trial.last_step) if pruned else None,
        "fail_reason": attrs.get(ATTR_FAIL_REASON) if failed else None,
        "interrupted": bool(attrs.get(ATTR_INTERRUPTED)),
        # Set by Optuna on the copy of a stale trial that it re-queues.
        "retry_of": trial.system_attrs.get("failed_trial"),
        "duration_s": trial.duration.total_seconds() if trial.duration is not None else None,
    }


def _finite(values: Sequence[float] | None) -> list[float | None] | None:
    # NaN and inf are not JSON; browsers' JSON.parse would reject the embedded table.
    if values is None:
        return None
    return [float(v) if math.isfinite(v) else None for v in values]


def study_directions(study: optuna.Study) -> list[str]:
    """The study's directions as "minimize"/"maximize"."""
    return [d.name.lower() for d in study.directions]


def objective_names(study: optuna.Study) -> list[str]:
    """The objectives the sweeper recorded on the study, or generic names when it recorded none."""
    names = list(study.user_attrs.get("objectives") or [])
    n = len(study.directions)
    return names if len(names) == n else ([f"objective {i}" for i in range(n)] if n > 1 else ["value"])


def state_counts(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many trials are in each state, in Optuna's order of states."""
    counts = {s.name: sum(r["state"] == s.name for r in rows) for s in TrialState}
    return {name: n for name, n in counts.items() if n}


def sort_rows(rows: Sequence[dict[str, Any]], sort: str = "value",
              directions: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows by trial number, or best first: completed trials by value, then other trials with a value, then the rest."""
    if sort == "number":
        return sorted(rows, key=lambda r: r["number"])
    if sort != "value":
        raise ValueError(f"sort={sort!r}: expected 'value' or 'number'")
    signs = [-1.0 if d == "maximize" else 1.0 for d in directions or ()]

    def key(row: dict[str, Any]) -> tuple[int, tuple[float, ...], int]:
        values = row["values"]
        if not values or any(v is None for v in values):
            return 2, (), row["number"]
        signed = tuple(v * (signs[i] if i < len(signs) else 1.0) for i, v in enumerate(values))
        # Pruned values come from an earlier step than final ones, so they never outrank a completed trial.
        return (0 if row["state"] == TrialState.COMPLETE.name else 1), signed, row["number"]

    return sorted(rows, key=key)


def format_table(rows: Sequence[dict[str, Any]], sort: str = "value", directions: Sequence[str] | None = None) -> str:
    """The trials as an aligned plain-text table, best first (sort="value") or in trial order (sort="number")."""
    header = ["#", "state", "value", "best", "pruned@", "run", "params", "run dir", "note"]
    right = {0, 2, 3, 4}
    cells = [_cells(r) for r in sort_rows(rows, sort, directions)]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def _cells(row: dict[str, Any]) -> list[str]:
    return [str(row["number"]), row["state"], format_values(row["values"]), _or_dash(row["best_step"]),
            _or_dash(row["pruned_step"]), run_name(row["run_number"]), format_params(row["params"]) or "-",
            row["run_dir"] or "-", _note(row) or "-"]


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def format_values(values: Sequence[float | None] | None) -> str:
    """Objective values to 5 significant digits, comma-separated for multi-objective studies."""
    if not values:
        return "-"
    return ", ".join("-" if v is None else f"{v:.5g}" for v in values)


def format_params(params: dict[str, Any]) -> str:
    """Parameters as compact `k=v` pairs, floats to 4 significant digits."""
    return " ".join(f"{k}={f'{v:.4g}' if isinstance(v, float) else v}" for k, v in params.items())


def run_name(number: Any) -> str:
    """The numbered run directory's name (outputNN), or "-" for a trial that never started one."""
    return f"output{number:02d}" if isinstance(number, int) else "-"


def _note(row: dict[str, Any]) -> str:
    notes = []
    if row["fail_reason"]:
        first = next((ln.strip() for ln in str(row["fail_reason"]).splitlines() if ln.strip()), "")
        notes.append(first if len(first) <= _NOTE_WIDTH else first[:_NOTE_WIDTH - 3] + "...")
    if row["interrupted"]:
        notes.append("interrupted")
    if row["retry_of"] is not None:
        notes.append(f"retry of #{row['retry_of']}")
    return "; ".join(notes)


def storage_label(study: optuna.Study) -> str:
    """Where the study is stored, as far as its storage object tells, with any password masked."""
    storage = study._storage
    storage = getattr(storage, "_backend", storage) if type(storage).__name__ == "_CachedStorage" else storage
    url = getattr(storage, "url", None)
    if url:
        return display_url(str(url))
    path = getattr(getattr(storage, "_backend", None), "_file_path", None)
    return JOURNAL_PREFIX + str(path) if path else type(storage).__name__


def latest_samples(run_dir: str | Path | None) -> dict[str, Any] | None:
    """The newest step with samples in run_dir/samples: its step, output/target WAVs and spectrogram PNG."""
    samples = Path(run_dir) / "samples" if run_dir else None
    if samples is None or not samples.is_dir():
        return None
    by_step: dict[int, dict[str, Any]] = {}
    for path in samples.iterdir():
        match = _SAMPLE.match(path.name)
        if not match:
            continue
        entry = by_step.setdefault(int(match[1]), {"wavs": [], "png": None})
        if match[3] is None:
            entry["png"] = path
        elif match[3] in SAMPLE_ROLES:
            entry["wavs"].append((int(match[2]), SAMPLE_ROLES.index(match[3]), match[3], path))
    if not by_step:
        return None
    step = max(by_step)
    wavs = [(f"clip{clip} {role}", path) for clip, _, role, path in sorted(by_step[step]["wavs"])]
    return {"step": step, "wavs": wavs, "png": by_step[step]["png"]}


def metric_curve(run_dir: str | Path | None, metric: str = CURVE_METRIC) -> list[tuple[int, float]]:
    """(step, value) of `metric` from a run's metrics.jsonl; empty when the run or its metrics are missing."""
    if not run_dir or not (Path(run_dir) / "metrics.jsonl").is_file():
        return []
    try:
        lines = read_metrics(Path(run_dir))
    except (OSError, ValueError):  # a half-written last line of a run that is still going
        return []
    return sorted((int(m["step"]), float(m[metric])) for m in lines if metric in m and "step" in m)


def intermediate_figure(study: optuna.Study) -> go.Figure | None:
    """Each trial's reported values by step; pruned trials dashed red with a × where the pruner stopped them."""
    fig = go.Figure()
    everything: list[float] = []
    for i, trial in enumerate(t for t in study.get_trials(deepcopy=False) if t.intermediate_values):
        steps = sorted(trial.intermediate_values)
        values = [trial.intermediate_values[s] for s in steps]
        everything += values
        pruned = trial.state == TrialState.PRUNED
        line = {"color": _PRUNED_COLOR, "dash": "dash"} if pruned else {"color": _COLORS[i % len(_COLORS)]}
        if trial.state == TrialState.FAIL:
            line = {"color": "#7f7f7f", "dash": "dot"}
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", line=line, legendgroup=str(trial.number),
                                 name=f"#{trial.number} {trial.state.name.lower()}"))
        if pruned:
            fig.add_trace(go.Scatter(x=[steps[-1]], y=[values[-1]], mode="markers", legendgroup=str(trial.number),
                                     marker={"symbol": "x", "size": 13, "color": _PRUNED_COLOR}, showlegend=False,
                                     hovertext=f"#{trial.number} pruned at step {steps[-1]}", hoverinfo="text"))
    if not fig.data:
        return None
    fig.update_layout(title="Intermediate values (pruned: dashed red, × where stopped)", xaxis_title="step",
                      yaxis_title=objective_names(study)[0])
    if _wide_positive(everything):
        fig.update_yaxes(type="log")
    return fig


def _wide_positive(values: Sequence[float]) -> bool:
    # One diverged trial (a loss of 200 beside 0.6) flattens every other curve on a linear axis.
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 20


def write_report(study: optuna.Study, out_path: Path, top_k: int = 5, *, storage: str | None = None) -> Path:
    """Write the study's HTML report to out_path, its PNGs into `<stem>_files/` beside it; return out_path."""
    out_path = Path(out_path).absolute()
    files_dir = out_path.with_name(f"{out_path.stem}_files")
    files_dir.mkdir(parents=True, exist_ok=True)
    for old in files_dir.glob("*.png"):  # a previous report's top trials may differ
        old.unlink()
    base, rows = out_path.parent, trial_rows(study)
    ranked = sort_rows(rows, "value", study_directions(study))
    top = [r for r in ranked if r["values"] and None not in r["values"]][:max(top_k, 0)]
    body = [
        _header_html(study, rows, storage or storage_label(study)),
        _section(f"Top {len(top)} trials", _top_html(top, base, files_dir)),
        _section(f"Validation curves ({CURVE_METRIC}) of the top trials", _curves_html(top, files_dir, base)),
        *_figure_sections(study),
        _section("All trials", _trials_html(ranked, base)),
        _json_script(rows),
    ]
    out_path.write_text(_page(f"Study {study.study_name}", body))
    return out_path


def _page(title: str, body: list[str]) -> str:
    style = ("body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1400px;color:#222}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;"
             "vertical-align:top;text-align:left}th{background:#eee}.num{text-align:right}"
             ".note{color:#666;font-style:italic}.PRUNED{color:#b22}.FAIL{color:#777}.COMPLETE{color:#171}"
             "code{font-size:12px}img{max-width:100%}")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_e(title)}</title>\n'
            f"<style>{style}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def _e(value: Any) -> str:
    return html.escape(str(value))


def _section(title: str, content: str) -> str:
    return f"<section>\n<h2>{_e(title)}</h2>\n{content}\n</section>"


def _note_html(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _rel(path: str | Path, base: Path) -> str:
    return quote(os.path.relpath(Path(path).absolute(), base))


def _header_html(study: optuna.Study, rows: list[dict[str, Any]], storage: str) -> str:
    counts = ", ".join(f"{n} {name.lower()}" for name, n in state_counts(rows).items()) or "no trials"
    goals = ", ".join(f"{d} {o}" for d, o in zip(study_directions(study), objective_names(study), strict=True))
    space = study.user_attrs.get("search_space") or {}
    space_rows = "".join(f"<tr><td><code>{_e(k)}</code></td><td><code>{_e(v)}</code></td></tr>"
                         for k, v in space.items())
    sweeps = ", ".join(f"<code>{_e(d)}</code>" for d in study.user_attrs.get("sweep_dirs") or [])
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    return (f"<h1>Study {_e(study.study_name)}</h1>\n<ul>\n<li>storage: <code>{_e(storage)}</code></li>\n"
            f"<li>objectives: {_e(goals)}</li>\n<li>{len(rows)} trials: {_e(counts)}</li>\n"
            + (f"<li>sweep directories: {sweeps}</li>\n" if sweeps else "")
            + f"<li>generated {_e(generated)}</li>\n</ul>\n"
            + (f"<table><tr><th>search space</th><th>expression</th></tr>{space_rows}</table>" if space_rows else ""))


def _top_html(top: list[dict[str, Any]], base: Path, files_dir: Path) -> str:
    if not top:
        return _note_html("No trial has a value yet.")
    head = "<tr><th>rank</th><th>#</th><th>state</th><th>value</th><th>best step</th><th>run</th><th>params</th>" \
           "<th>latest samples</th></tr>"
    body = []
    for rank, row in enumerate(top, 1):
        body.append(f"<tr><td class=num>{rank}</td><td class=num>{row['number']}</td>"
                    f"<td class={row['state']}>{row['state']}</td><td class=num>{_e(format_values(row['values']))}"
                    f"</td><td class=num>{_e(_or_dash(row['best_step']))}</td><td>{_run_link(row, base)}</td>"
                    f"<td><code>{_e(format_params(row['params']))}</code></td>"
                    f"<td>{_samples_html(row, base, files_dir)}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _run_link(row: dict[str, Any], base: Path) -> str:
    name = run_name(row["run_number"])
    if not row["run_dir"]:
        return _e(name)
    label = name if name != "-" else Path(row["run_dir"]).name
    return f'<a href="{_rel(row["run_dir"], base)}/">{_e(label)}</a>'


def _samples_html(row: dict[str, Any], base: Path, files_dir: Path) -> str:
    found = latest_samples(row["run_dir"])
    if found is None:
        return '<span class="note">none</span>'
    parts = [f"step {found['step']}:"]
    for label, path in found["wavs"]:
        href = _rel(path, base)
        parts.append(f'<div><a href="{href}">{_e(label)}</a> '
                     f'<audio controls preload="none" src="{href}"></audio></div>')
    if found["png"] is not None:
        # A copy beside the report keeps the picture when the report and its folder are moved elsewhere.
        copy = files_dir / f"trial{row['number']}_step{found['step']:07d}_spectrograms.png"
        shutil.copyfile(found["png"], copy)
        parts.append(f'<div><a href="{_rel(found["png"], base)}">spectrograms</a><br>'
                     f'<img src="{_rel(copy, base)}" width="360" alt="spectrograms of trial {row["number"]}"></div>')
    return "".join(parts)


def _curves_html(top: list[dict[str, Any]], files_dir: Path, base: Path) -> str:
    png = files_dir / "validation_curves.png"
    if not _curves_png(top, png):
        return _note_html(f"No {CURVE_METRIC} in the metrics.jsonl of the top trials' run directories.")
    return f'<img src="{_rel(png, base)}" alt="validation curves">'


def _curves_png(top: list[dict[str, Any]], path: Path) -> bool:
    fig, ax = plt.subplots(figsize=(9, 4.8))
    everything: list[float] = []
    for row in top:
        curve = metric_curve(row["run_dir"])
        if not curve:
            continue
        steps, values = zip(*curve, strict=True)
        everything += values
        pruned = row["state"] == TrialState.PRUNED.name
        ax.plot(steps, values, marker="x" if pruned else "o", markersize=7 if pruned else 3,
                linestyle="--" if pruned else "-",
                label=f"#{row['number']} {run_name(row['run_number'])} ({row['state'].lower()})")
    if everything:
        ax.set(xlabel="step", ylabel=CURVE_METRIC, yscale="log" if _wide_positive(everything) else "linear")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return bool(everything)


def _figures(study: optuna.Study) -> list[tuple[str, Callable[[], go.Figure | None]]]:
    """(title, builder) of each Optuna figure this study supports."""
    vis = optuna.visualization
    names = objective_names(study)
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def importances(**kwargs: Any) -> go.Figure:
        if complete < 2:
            raise ValueError(f"needs at least 2 completed trials ({complete} so far)")
        return vis.plot_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                                          **kwargs)

    if len(names) == 1:
        return [("Optimisation history", lambda: vis.plot_optimization_history(study, target_name=names[0])),
                ("Intermediate values", lambda: intermediate_figure(study)),
                ("Parallel coordinates", lambda: vis.plot_parallel_coordinate(study, target_name=names[0])),
                ("Parameter importances", lambda: importances(target_name=names[0]))]
    # Multi-objective: Optuna's single-objective plots need a target, so draw them once per objective.
    figures: list[tuple[str, Callable[[], go.Figure | None]]] = [
        ("Pareto front", lambda: vis.plot_pareto_front(study, target_names=names))]
    for i, name in enumerate(names):
        figures.append((f"Optimisation history: {name}", lambda i=i, name=name: vis.plot_optimization_history(
            study, target=lambda t: t.values[i], target_name=name)))
        figures.append((f"Parallel coordinates: {name}", lambda i=i, name=name: vis.plot_parallel_coordinate(
            study, target=lambda t: t.values[i], target_name=name)))
    figures.append(("Parameter importances", importances))
    return figures


def _figure_sections(study: optuna.Study) -> list[str]:
    sections, inlined = [], False
    for title, build in _figures(study):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fig = build()
        except Exception as err:  # one figure Optuna cannot draw must not cost the rest of the report
            sections.append(_section(title, _note_html(f"Not available: {type(err).__name__}: {err}")))
            continue
        if fig is None:
            sections.append(_section(title, _note_html("No trial reported intermediate values.")))
            continue
        # plotly.js (~4.8 MB) goes inline once, with the first figure, so the file opens offline.
        sections.append(_section(title, fig.to_html(full_html=False, include_plotlyjs=not inlined,
                                                    default_height="520px")))
        inlined = True
    return sections


def _trials_html(rows: list[dict[str, Any]], base: Path) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("#", "state", "value", "best step", "pruned at", "run", "params", "note"))
    body = "".join(
        f"<tr><td class=num>{r['number']}</td><td class={r['state']}>{r['state']}</td>"
        f"<td class=num>{_e(format_values(r['values']))}</td><td class=num>{_e(_or_dash(r['best_step']))}</td>"
        f"<td class=num>{_e(_or_dash(r['pruned_step']))}</td><td>{_run_link(r, base)}</td>"
        f"<td><code>{_e(format_params(r['params']))}</code></td><td>{_e(_note(r))}</td></tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _json_script(rows: list[dict[str, Any]]) -> str:
    # Escaped so no string in it (a fail reason, a path) can close the script element early.
    text = json.dumps(rows, default=str).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="audiolab-trials">{text}</script>'
