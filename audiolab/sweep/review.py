"""Reviewing a study: its trials as a terminal table, and an HTML report with Optuna's figures and the best runs.

`audiolab sweep show` prints the table and `audiolab sweep report` writes the report: one HTML file
that opens offline (plotly.js inlined once) with its PNGs in `<stem>_files/` beside it. The report
links the top trials' run directories and latest audio samples by relative path, and embeds every
trial as JSON in `<script id="audiolab-trials">` for scripts that want the numbers.

Both compare every trial with doing nothing: each run's metrics.jsonl records `val/spec_loss_input`
(the validation distance of the degraded input itself) and `val/improvement` (1 - val/spec_loss /
val/spec_loss_input). The baseline is shown once, each trial's improvement in its own column, and a
trial whose val/spec_loss is above the baseline is marked "worse than doing nothing".
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import optuna
from optuna.trial import FrozenTrial, TrialState

from audiolab.runs.record import read_metrics
from audiolab.sweep.storage import JOURNAL_PREFIX, display_url
from audiolab.sweep.study import (
    ATTR_BEST_STEP,
    ATTR_FAIL_REASON,
    ATTR_INTERRUPTED,
    ATTR_PRUNED_REASON,
    ATTR_PRUNED_STEP,
    ATTR_RUN_DIR,
    ATTR_RUN_NUMBER,
)

if TYPE_CHECKING:  # plotly and matplotlib are imported by the report alone: `sweep show` answers at once
    import plotly.graph_objects as go

CURVE_METRIC = "val/spec_loss"
BASELINE_METRIC, IMPROVEMENT_METRIC = "val/spec_loss_input", "val/improvement"
WORSE_NOTE = "worse than doing nothing"
SAMPLE_ROLES = ("input", "output", "target")
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
    values = _finite(trial.values)
    pruned_step = attrs.get(ATTR_PRUNED_STEP, trial.last_step) if pruned else None
    step = attrs.get(ATTR_BEST_STEP) if attrs.get(ATTR_BEST_STEP) is not None else pruned_step
    baseline, improvement = _against_input(attrs.get(ATTR_RUN_DIR), step)
    return {
        "number": trial.number,
        "state": trial.state.name,
        # A pruned trial's value is its last intermediate value, not a final result.
        "values": values,
        "params": dict(trial.params),
        "best_step": attrs.get(ATTR_BEST_STEP),
        "run_number": attrs.get(ATTR_RUN_NUMBER),
        "run_dir": attrs.get(ATTR_RUN_DIR),
        "pruned_step": pruned_step,
        "fail_reason": attrs.get(ATTR_FAIL_REASON) if failed else None,
        "pruned_reason": attrs.get(ATTR_PRUNED_REASON) if pruned else None,
        "interrupted": bool(attrs.get(ATTR_INTERRUPTED)),
        # Set by Optuna on the copy of a stale trial that it re-queues.
        "retry_of": trial.system_attrs.get("failed_trial"),
        "duration_s": trial.duration.total_seconds() if trial.duration is not None else None,
        # The run's do-nothing baseline and its val/improvement at the step its value comes from.
        "spec_loss_input": baseline,
        "improvement": improvement,
        "worse": bool(values) and improvement is not None and improvement < 0,
    }


def _against_input(run_dir: str | None, step: int | None) -> tuple[float | None, float | None]:
    """(val/spec_loss_input, val/improvement) from a run's metrics.jsonl: at `step`, else at its last validation."""
    lines = [m for m in _metric_lines(run_dir) if CURVE_METRIC in m and "step" in m]
    if not lines:
        return None, None
    at = next((m for m in reversed(lines) if step is not None and int(m["step"]) == int(step)), lines[-1])
    baseline = _finite_or_none(at.get(BASELINE_METRIC))
    if baseline is None:  # the input's distance is the same at every validation: any line will do
        baseline = next((b for m in reversed(lines) if (b := _finite_or_none(m.get(BASELINE_METRIC))) is not None),
                        None)
    improvement = _finite_or_none(at.get(IMPROVEMENT_METRIC))
    loss = _finite_or_none(at.get(CURVE_METRIC))
    if improvement is None and baseline and loss is not None:
        improvement = 1.0 - loss / baseline
    return baseline, improvement


def _finite_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _metric_lines(run_dir: str | Path | None) -> list[dict[str, Any]]:
    if not run_dir or not (Path(run_dir) / "metrics.jsonl").is_file():
        return []
    try:
        return read_metrics(Path(run_dir))
    except (OSError, ValueError):  # a half-written last line of a run that is still going
        return []


def baselines(rows: Sequence[dict[str, Any]]) -> list[float]:
    """The distinct do-nothing baselines of the trials' runs (one, unless the search changes the validation data)."""
    return sorted({r["spec_loss_input"] for r in rows if r.get("spec_loss_input") is not None})


def baseline_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The baseline once ("do nothing: 0.73184"), and how many trials with a value are worse than it."""
    found = baselines(rows)
    if not found:
        return []
    where = f"{BASELINE_METRIC}, the degraded input scored as it is"
    if len(found) == 1:
        lines = [f"do nothing: {found[0]:.5f} ({where})"]
    else:
        lines = [f"do nothing: {found[0]:.5f} to {found[-1]:.5f} ({where}; it differs between trials, "
                 "each is compared with its own)"]
    judged = [r for r in rows if r["values"] and r.get("improvement") is not None]
    worse = [r for r in judged if r["worse"]]
    if judged and len(worse) == len(judged):
        best = max(r["improvement"] for r in judged)
        lines.append(f"all {len(judged)} trials with a value are {WORSE_NOTE}: the best {IMPROVEMENT_METRIC} is "
                     f"{best:+.4f} (every model returns audio further from the target than its input)")
    elif worse:
        lines.append(f"{len(worse)} of {len(judged)} trials with a value are {WORSE_NOTE}: "
                     + ", ".join(f"#{r['number']}" for r in sorted(worse, key=lambda r: r["number"])))
    return lines


def format_improvement(value: float | None) -> str:
    """val/improvement as a signed fraction (+0.1234: 12 % below the input's distance), or "-"."""
    return "-" if value is None else f"{value:+.4f}"


def _finite(values: Sequence[float] | None) -> list[float | None] | None:
    # NaN and inf are not JSON; browsers' JSON.parse would reject the embedded table.
    if values is None:
        return None
    return [float(v) if math.isfinite(v) else None for v in values]


def study_directions(study: optuna.Study) -> list[str]:
    """The study's directions as "minimize"/"maximize"."""
    return [d.name.lower() for d in study.directions]


def objective_names(study: optuna.Study) -> list[str]:
    """The objectives the sweeper recorded on the study (or its metric names), else generic names."""
    n = len(study.directions)
    names = list(study.user_attrs.get("objectives") or [])
    if len(names) != n:
        names = list(study.metric_names or [])
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
    header = ["#", "state", "value", "improvement", "best", "pruned@", "run", "params", "run dir", "note"]
    right = {0, 2, 3, 4, 5}
    cells = [_cells(r) for r in sort_rows(rows, sort, directions)]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def _cells(row: dict[str, Any]) -> list[str]:
    return [str(row["number"]), row["state"], format_values(row["values"]), format_improvement(row["improvement"]),
            _or_dash(row["best_step"]),
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
    notes = [WORSE_NOTE] if row.get("worse") else []
    if row["fail_reason"]:
        first = next((ln.strip() for ln in str(row["fail_reason"]).splitlines() if ln.strip()), "")
        notes.append(first if len(first) <= _NOTE_WIDTH else first[:_NOTE_WIDTH - 3] + "...")
    if row.get("pruned_reason"):
        notes.append(str(row["pruned_reason"]).split(" > ")[0])  # "over the step-time budget: 0.31 s per step"
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
    """The newest step with samples in run_dir/samples: its step, input/output/target WAVs and spectrogram PNG.

    `wavs` lists ("clip0 input", path) in clip then role order; `clips` the same as (clip, {role: path}).
    """
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
    found = sorted(by_step[step]["wavs"])
    clips: dict[int, dict[str, Path]] = {}
    for clip, _, role, path in found:
        clips.setdefault(clip, {})[role] = path
    return {"step": step, "wavs": [(f"clip{clip} {role}", path) for clip, _, role, path in found],
            "clips": sorted(clips.items()), "png": by_step[step]["png"]}


def metric_curve(run_dir: str | Path | None, metric: str = CURVE_METRIC) -> list[tuple[int, float]]:
    """(step, value) of `metric` from a run's metrics.jsonl; empty when the run or its metrics are missing."""
    lines = _metric_lines(run_dir)
    return sorted((int(m["step"]), float(m[metric])) for m in lines if metric in m and "step" in m)


def short_labels(names: Sequence[str]) -> dict[str, str]:
    """Each dotted parameter name cut to its last two components (`loss.terms.l1.weight` -> `l1.weight`),
    keeping more of the names that would otherwise share a label."""
    parts = {n: n.split(".") for n in names}
    depth = dict.fromkeys(names, 2)
    while True:
        short = {n: ".".join(parts[n][-depth[n]:]) for n in names}
        taken = Counter(short.values())
        clashing = [n for n in names if taken[short[n]] > 1 and depth[n] < len(parts[n])]
        if not clashing:
            return short
        for n in clashing:
            depth[n] += 1


def _param_names(study: optuna.Study) -> list[str]:
    return sorted({p for t in study.get_trials(deepcopy=False) for p in t.params})


def relabel_parallel_coordinate(fig: go.Figure, study: optuna.Study,
                                target: Callable[[FrozenTrial], float] | None = None) -> go.Figure:
    """Optuna's parallel-coordinate figure with short, whole parameter labels (Optuna cuts them at 17
    characters: `loss.terms.l1.we...`) and margins that keep the labels and tick values in view."""
    ticks = list(fig.layout.xaxis.ticktext or [])
    # Optuna draws the objective, then the parameters of the completed trials with a finite target, sorted.
    used = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if _finite_or_none(target(t) if target else t.value) is not None]
    params = sorted({p for t in used for p in t.params})
    if ticks and len(ticks) > len(params):
        short = short_labels(params)
        n_objectives = len(ticks) - len(params)
        fig.update_xaxes(ticktext=ticks[:n_objectives] + [short[p] for p in params],
                         range=(-0.45, len(ticks) - 0.7), tickangle=-20 if len(ticks) > 5 else 0, automargin=True)
    fig.update_layout(margin={"l": 60, "r": 60, "b": 90, "t": 60})
    return fig


def relabel_importances(fig: go.Figure) -> go.Figure:
    """Optuna's importance bars labelled with short parameter names (the hover keeps the full name)."""
    names = sorted({str(y) for trace in fig.data for y in (trace.y or ())})
    short = short_labels(names)
    for trace in fig.data:
        trace.y = [short.get(str(y), y) for y in trace.y or ()]
    # Optuna's "Hyperparameter" axis title only repeats what the bars say, and it is cut off at the left edge.
    fig.update_yaxes(automargin=True, title_text="")
    fig.update_layout(margin={"l": 20, "r": 80})
    return fig


def _baseline_trace(x0: float, x1: float, baseline: float) -> go.Scatter:
    import plotly.graph_objects as go

    if x0 == x1:  # one validation step (or one trial): a line of no length would not show
        x0, x1 = x0 - 0.5, x1 + 0.5
    return go.Scatter(x=[x0, x1], y=[baseline, baseline], mode="lines", name=f"do nothing ({baseline:.5f})",
                      line={"color": "#555", "dash": "dot", "width": 2}, hoverinfo="name")


def intermediate_figure(study: optuna.Study, baseline: float | None = None) -> go.Figure | None:
    """Each trial's reported values by step; pruned trials dashed red with a × where the pruner stopped them,
    and the do-nothing baseline (when given) as a dotted line."""
    import plotly.graph_objects as go

    fig = go.Figure()
    everything: list[float] = []
    steps_seen: list[int] = []
    for i, trial in enumerate(t for t in study.get_trials(deepcopy=False) if t.intermediate_values):
        steps = sorted(trial.intermediate_values)
        values = [trial.intermediate_values[s] for s in steps]
        everything += values
        steps_seen += steps
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
    if baseline is not None:
        fig.add_trace(_baseline_trace(min(steps_seen), max(steps_seen), baseline))
        everything.append(baseline)
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
    found = baselines(rows)
    baseline = found[0] if len(found) == 1 else None  # one line only when every trial shares it
    body = [
        _header_html(study, rows, storage or storage_label(study)),
        _section(f"Top {len(top)} trials", _top_html(top, base)),
        _section("Listening: the top trials side by side", _listening_of(top)),
        _section("Latest samples of the top trials", _samples_sections(top, base, files_dir)),
        _section(f"Validation curves ({CURVE_METRIC}) of the top trials",
                 _curves_html(top, files_dir, base, baseline)),
        *_figure_sections(study, baseline),
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
             "tr.worse td{background:#fdecea}.worse-summary{color:#b22;font-weight:bold}"
             ".trial-samples{margin:1em 0 2em}.trial-samples audio{width:260px;display:block}"
             "img.spectrograms{display:block;max-width:100%;height:auto;border:1px solid #ccc;cursor:zoom-in}"
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
    against = "".join(f'<li class="worse-summary">{_e(line)}</li>\n' if WORSE_NOTE in line else f"<li>{_e(line)}</li>\n"
                      for line in baseline_lines(rows))
    return (f"<h1>Study {_e(study.study_name)}</h1>\n<ul>\n<li>storage: <code>{_e(storage)}</code></li>\n"
            f"<li>objectives: {_e(goals)}</li>\n<li>{len(rows)} trials: {_e(counts)}</li>\n{against}"
            + (f"<li>sweep directories: {sweeps}</li>\n" if sweeps else "")
            + f"<li>generated {_e(generated)}</li>\n</ul>\n"
            + (f"<table><tr><th>search space</th><th>expression</th></tr>{space_rows}</table>" if space_rows else ""))


def _row_class(row: dict[str, Any]) -> str:
    return ' class="worse"' if row.get("worse") else ""


def _top_html(top: list[dict[str, Any]], base: Path) -> str:
    if not top:
        return _note_html("No trial has a value yet.")
    head = "".join(f"<th>{h}</th>" for h in ("rank", "#", "state", "value", IMPROVEMENT_METRIC, "best step", "run",
                                             "params", "samples", "note"))
    body = []
    for rank, row in enumerate(top, 1):
        body.append(f"<tr{_row_class(row)}><td class=num>{rank}</td><td class=num>{row['number']}</td>"
                    f"<td class={row['state']}>{row['state']}</td><td class=num>{_e(format_values(row['values']))}"
                    f"</td><td class=num>{_e(format_improvement(row['improvement']))}</td>"
                    f"<td class=num>{_e(_or_dash(row['best_step']))}</td><td>{_run_link(row, base)}</td>"
                    f"<td><code>{_e(format_params(row['params']))}</code></td>"
                    f'<td><a href="#samples-trial{row["number"]}">listen</a></td><td>{_e(_note(row))}</td></tr>')
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _run_link(row: dict[str, Any], base: Path) -> str:
    name = run_name(row["run_number"])
    if not row["run_dir"]:
        return _e(name)
    label = name if name != "-" else Path(row["run_dir"]).name
    return f'<a href="{_rel(row["run_dir"], base)}/">{_e(label)}</a>'


def _listening_of(top: list[dict[str, Any]]) -> str:
    """The compare page's listening section for the top trials: each fixed clip's input, every trial's output
    at its best step, and the target, on one colour scale."""
    from audiolab.runs.listening import listening_section_html

    with_runs = [r for r in top if r.get("run_dir") and (Path(r["run_dir"]) / "samples").is_dir()]
    if not with_runs:
        return _note_html("None of the top trials has samples in its run directory.")
    names = [f"#{r['number']} {run_name(r['run_number'])}" for r in with_runs]
    return listening_section_html([Path(r["run_dir"]) for r in with_runs], names, heading=None)


def _samples_sections(top: list[dict[str, Any]], base: Path, files_dir: Path) -> str:
    if not top:
        return _note_html("No trial has a value yet.")
    return "\n".join(_samples_html(row, base, files_dir) for row in top)


def _samples_html(row: dict[str, Any], base: Path, files_dir: Path) -> str:
    """One top trial's latest samples: input, output and target of each clip side by side, then the
    spectrogram PNG at its own size (click to open it alone)."""
    found = latest_samples(row["run_dir"])
    title = (f"#{row['number']} {run_name(row['run_number'])}: value {format_values(row['values'])}, "
             f"{IMPROVEMENT_METRIC} {format_improvement(row['improvement'])}"
             + (f" ({WORSE_NOTE})" if row.get("worse") else ""))
    parts = [f'<div class="trial-samples" id="samples-trial{row["number"]}">', f"<h3>{_e(title)}</h3>"]
    if found is None:
        return "".join([*parts, _note_html("No samples in its run directory."), "</div>"])
    parts.append(f"<p>step {found['step']}</p>")
    if found["clips"]:
        head = "".join(f"<th>{role}</th>" for role in SAMPLE_ROLES)
        cells = []
        for clip, paths in found["clips"]:
            audio = "".join(f'<td><audio controls preload="none" src="{_rel(paths[role], base)}"></audio>'
                            f'<a href="{_rel(paths[role], base)}">clip{clip} {role}</a></td>'
                            if role in paths else '<td class="note">none</td>' for role in SAMPLE_ROLES)
            cells.append(f"<tr><td>clip {clip}</td>{audio}</tr>")
        parts.append(f"<table><tr><th>clip</th>{head}</tr>{''.join(cells)}</table>")
    if found["png"] is not None:
        # A copy beside the report keeps the picture when the report and its folder are moved elsewhere.
        copy = files_dir / f"trial{row['number']}_step{found['step']:07d}_spectrograms.png"
        shutil.copyfile(found["png"], copy)
        parts.append(f'<p><a href="{_rel(copy, base)}" target="_blank">'
                     f'<img class="spectrograms" src="{_rel(copy, base)}" '
                     f'alt="spectrograms of trial {row["number"]}"></a>'
                     f'<a href="{_rel(found["png"], base)}">spectrograms in the run directory</a></p>')
    return "".join([*parts, "</div>"])


def _curves_html(top: list[dict[str, Any]], files_dir: Path, base: Path, baseline: float | None = None) -> str:
    png = files_dir / "validation_curves.png"
    if not _curves_png(top, png, baseline):
        return _note_html(f"No {CURVE_METRIC} in the metrics.jsonl of the top trials' run directories.")
    return f'<img src="{_rel(png, base)}" alt="validation curves">'


def _curves_png(top: list[dict[str, Any]], path: Path, baseline: float | None = None) -> bool:
    import matplotlib

    matplotlib.use("Agg")  # headless: the report is written on clusters without a display
    import matplotlib.pyplot as plt

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
        if baseline is not None:
            ax.axhline(baseline, color="#555", linestyle=":", linewidth=1.5, label=f"do nothing ({baseline:.5f})")
        scale = everything + ([baseline] if baseline is not None else [])
        ax.set(xlabel="step", ylabel=CURVE_METRIC, yscale="log" if _wide_positive(scale) else "linear")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return bool(everything)


def _figures(study: optuna.Study, baseline: float | None = None
             ) -> list[tuple[str, Callable[[], go.Figure | None]]]:
    """(title, builder) of each Optuna figure this study supports."""
    vis = optuna.visualization
    names = objective_names(study)
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def importances(**kwargs: Any) -> go.Figure:
        if complete < 2:
            raise ValueError(f"needs at least 2 completed trials ({complete} so far)")
        return relabel_importances(vis.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), **kwargs))

    def history(name: str, target: Callable[[FrozenTrial], float] | None = None) -> go.Figure:
        fig = vis.plot_optimization_history(study, target=target, target_name=name)
        numbers = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if baseline is not None and name == CURVE_METRIC and numbers:
            fig.add_trace(_baseline_trace(min(numbers), max(numbers), baseline))
        return fig

    def parallel(name: str, target: Callable[[FrozenTrial], float] | None = None) -> go.Figure:
        return relabel_parallel_coordinate(vis.plot_parallel_coordinate(study, target=target, target_name=name),
                                           study, target)

    if len(names) == 1:
        return [("Optimisation history", lambda: history(names[0])),
                ("Intermediate values", lambda: intermediate_figure(study, baseline)),
                ("Parallel coordinates", lambda: parallel(names[0])),
                ("Parameter importances", lambda: importances(target_name=names[0]))]
    # Multi-objective: Optuna's single-objective plots need a target, so draw them once per objective.
    figures: list[tuple[str, Callable[[], go.Figure | None]]] = [
        ("Pareto front", lambda: vis.plot_pareto_front(study, target_names=names))]
    for i, name in enumerate(names):
        figures.append((f"Optimisation history: {name}",
                        lambda i=i, name=name: history(name, lambda t: t.values[i])))
        figures.append((f"Parallel coordinates: {name}",
                        lambda i=i, name=name: parallel(name, lambda t: t.values[i])))
    figures.append(("Parameter importances", importances))
    return figures


def _label_key_html(study: optuna.Study) -> str:
    """Which full parameter name each shortened label stands for."""
    cut = [(s, n) for n, s in short_labels(_param_names(study)).items() if s != n]
    if not cut:
        return ""
    return ('<p class="note">labels: ' + "; ".join(f"<code>{_e(s)}</code> = <code>{_e(n)}</code>" for s, n in cut)
            + "</p>")


def _figure_sections(study: optuna.Study, baseline: float | None = None) -> list[str]:
    sections, inlined = [], False
    key = _label_key_html(study)
    for title, build in _figures(study, baseline):
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
        labelled = title.startswith(("Parallel coordinates", "Parameter importances"))
        sections.append(_section(title, fig.to_html(full_html=False, include_plotlyjs=not inlined,
                                                    default_height="520px") + (key if labelled else "")))
        inlined = True
    return sections


def _trials_html(rows: list[dict[str, Any]], base: Path) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("#", "state", "value", IMPROVEMENT_METRIC, "best step", "pruned at",
                                             "run", "params", "note"))
    body = "".join(
        f"<tr{_row_class(r)}><td class=num>{r['number']}</td><td class={r['state']}>{r['state']}</td>"
        f"<td class=num>{_e(format_values(r['values']))}</td><td class=num>{_e(format_improvement(r['improvement']))}"
        f"</td><td class=num>{_e(_or_dash(r['best_step']))}</td>"
        f"<td class=num>{_e(_or_dash(r['pruned_step']))}</td><td>{_run_link(r, base)}</td>"
        f"<td><code>{_e(format_params(r['params']))}</code></td><td>{_e(_note(r))}</td></tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _json_script(rows: list[dict[str, Any]]) -> str:
    # Escaped so no string in it (a fail reason, a path) can close the script element early.
    text = json.dumps(rows, default=str).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="audiolab-trials">{text}</script>'
