"""`audiolab runs`: every numbered run as one row, read from the run directories' own files.

Only the standard library, PyYAML and rich are imported, so the command answers at once (no torch, no
Hydra). A row comes from `run.json`; `--where` on a config key also reads the run's `config_resolved.yaml`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from audiolab.common.numbering import existing_numbers
from audiolab.metrics.bands import SPEC_BANDS_HZ
from audiolab.runs.record import process_alive

# Overrides every run carries for where it writes, not for what it trains: left out of the table.
NOISE_PREFIXES = ("paths.", "hydra.", "logger=", "logger.")
COLUMNS = ("run", "status", "overrides", "best", "best_step", "improvement", "steps", "wall", "params", "group",
           "wandb")
HEADERS = {"best": "best val", "best_step": "at", "improvement": "improv.", "group": "sweep/trial"}
SORTS = ("number", "best", "improvement", "wall", "started")
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, "!=": operator.ne, "==": operator.eq, "=": operator.eq,
    ">": operator.gt, "<": operator.lt,
}
# Keys of a row that --where may name besides config keys (which are dotted: optim.lr).
ROW_KEYS = ("status", "best", "best_step", "improvement", "steps", "wall", "params", "number", "sweep", "study")


@dataclass(frozen=True)
class Condition:
    """One `--where` test: KEY OP VALUE."""

    key: str
    op: str
    value: Any

    @classmethod
    def parse(cls, text: str) -> Condition:
        """Parse `optim.lr>1e-3`, `status=completed`, `model._target_!=...`; ValueError naming the text."""
        match = re.fullmatch(r"\s*([\w./-]+)\s*(>=|<=|!=|==|=|>|<)\s*(.+?)\s*", text)
        if not match:
            raise ValueError(f"--where {text!r}: expected KEY OP VALUE with OP one of {', '.join(OPERATORS)}, "
                             "e.g. --where 'optim.lr>1e-3'")
        key, op, value = match.groups()
        return cls(key, op, _scalar(value))

    def holds(self, value: Any) -> bool:
        """Whether a run whose key has `value` passes; a run without the key never does."""
        if value is None:
            return False
        want = self.value
        if isinstance(want, (int, float)) and not isinstance(value, (int, float)):
            try:
                value = float(value)
            except (TypeError, ValueError):
                return False
        elif isinstance(value, (int, float)) and not isinstance(want, (int, float)):
            value = str(value)
        try:
            return OPERATORS[self.op](value, want)
        except TypeError:
            return False


def _scalar(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "null": None}.get(text.lower(), text)


def read_rows(outputs: Path) -> list[dict[str, Any]]:
    """One row per numbered run under `outputs` that has a run.json, in run order."""
    rows = []
    for number in existing_numbers(outputs):
        run_dir = outputs / f"output{number:02d}"
        try:
            record = json.loads((run_dir / "run.json").read_text())
        except (OSError, ValueError):
            continue  # a directory claimed by a run that never wrote its record, or one being written
        rows.append(row_of(record, run_dir))
    return rows


def row_of(record: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The table's fields of one run.json."""
    best = _finite(record.get("best_val_spec_loss"))
    final = record.get("final") or record.get("best_val") or {}  # a running run has no final line yet
    baseline = _finite(final.get("val/spec_loss_input"))
    improvement = 1.0 - best / baseline if best is not None and baseline else None
    sweep = Path(record["sweep_dir"]).name if record.get("sweep_dir") else None
    study = record.get("study")
    group = f"{study}#{record.get('trial')}" if study else sweep
    status = record.get("status")
    if status == "running" and process_alive(record) is False:
        status = "dead"  # still `running` in run.json, but its process on this host is gone: killed
    return {
        "number": record.get("number"), "run": record.get("name") or run_dir.name, "status": status,
        "overrides": [o for o in record.get("overrides") or [] if not o.startswith(NOISE_PREFIXES)],
        "best": best, "best_step": record.get("best_step"), "improvement": improvement, "steps": record.get("step"),
        "wall": _wall_seconds(record.get("started"), record.get("ended")), "params": record.get("parameters"),
        "sweep": sweep, "study": study, "trial": record.get("trial"), "group": group,
        "wandb": record.get("wandb_id"), "started": record.get("started"), "dir": str(run_dir),
        "breakdown": breakdown_of(record.get("best_val") or {}),
    }


BREAKDOWN_PREFIXES = ("val/improvement_", "val/spec_loss_")
NOT_BREAKDOWN = ("input", "silence")  # val/spec_loss_input and _silence are baselines, not groups


def breakdown_of(best_val: dict[str, Any]) -> dict[str, float]:
    """Per-group figures at the best step, by group: improvement where there is a baseline, else spec_loss."""
    groups: dict[str, float] = {}
    for prefix in BREAKDOWN_PREFIXES:  # improvement first: it wins over spec_loss for the same group
        for key, value in best_val.items():
            group = key.removeprefix(prefix)
            if key.startswith(prefix) and group not in NOT_BREAKDOWN and group not in groups:
                if (number := _finite(value)) is not None:
                    groups[group] = number
    return dict(sorted(groups.items(), key=lambda item: _group_order(item[0])))


def _group_order(group: str) -> tuple[int, float, str]:
    """Shifts in numeric order (k-4 ... k+4), then the bands from low to high, then anything else."""
    if re.fullmatch(r"k[+-]\d+", group):
        return 0, float(group[1:]), group
    bands = list(SPEC_BANDS_HZ)
    return (1, float(bands.index(group)), group) if group in bands else (2, 0.0, group)


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _wall_seconds(started: str | None, ended: str | None) -> float | None:
    if not started or not ended:
        return None
    return (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()


def select(rows: Iterable[dict[str, Any]], *, sweep: str | None = None, status: Sequence[str] = (),
           where: Sequence[Condition] = ()) -> list[dict[str, Any]]:
    """The rows of one sweep (sweepNN) and of the given statuses that pass every condition."""
    kept = []
    for row in rows:
        if sweep is not None and sweep not in (row["sweep"], row["study"]):
            continue
        if status and row["status"] not in status:
            continue
        if all(c.holds(_lookup(row, c.key)) for c in where):
            kept.append(row)
    return kept


def _lookup(row: dict[str, Any], key: str) -> Any:
    if key in ROW_KEYS:
        return row.get(key)
    config = row.get("_config")
    if config is None:
        config = row["_config"] = _resolved_config(Path(row["dir"]))
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _resolved_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    path = run_dir / "config_resolved.yaml"
    if not path.is_file():
        return {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(path.read_text(), Loader=loader) or {}


def sort_rows(rows: Sequence[dict[str, Any]], by: str = "number") -> list[dict[str, Any]]:
    """Rows by run number, or best first (lowest best / wall, highest improvement); runs without a value last."""
    if by == "number":
        return sorted(rows, key=lambda r: r["number"] or 0)
    if by == "started":
        return sorted(rows, key=lambda r: r["started"] or "")
    sign = -1.0 if by == "improvement" else 1.0
    return sorted(rows, key=lambda r: (r[by] is None, sign * (r[by] or 0.0), r["number"] or 0))


def cells(row: dict[str, Any]) -> list[str]:
    """The printed text of each column of one row."""
    return [
        row["run"], row["status"] or "-", " ".join(row["overrides"]) or "(defaults)", _num(row["best"], ".5f"),
        _num(row["best_step"], "d"), _num(row["improvement"], "+.4f"), _num(row["steps"], "d"), _duration(row["wall"]),
        _params(row["params"]), row["group"] or "-", row["wandb"] or "-",
    ]


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _params(count: int | None) -> str:
    if count is None:
        return "-"
    return f"{count / 1e6:.2f} M" if count >= 100_000 else f"{count:,}"


def render_breakdown(rows: Sequence[dict[str, Any]], width: int | None = None) -> str:
    """Where the error is left: each run's per-k and per-band figures at its best step, one column per group."""
    from rich.table import Table

    groups = list(dict.fromkeys(g for row in rows for g in row["breakdown"]))
    groups.sort(key=_group_order)
    improvement = any(r["improvement"] is not None for r in rows)
    title = ("val/improvement at the best step, per shift and band" if improvement
             else "val/spec_loss at the best step, per band")
    table = Table(title=title, header_style="bold")
    table.add_column("run")
    table.add_column("overall", justify="right")
    for group in groups:
        table.add_column(group, justify="right")
    for row in rows:
        overall = row["improvement"] if improvement else row["best"]
        table.add_row(row["run"], _num(overall, "+.4f" if improvement else ".5f"),
                      *(_num(row["breakdown"].get(g), "+.4f" if improvement else ".5f") for g in groups))
    empty = "(no per-group figures: these runs predate them, or have not validated yet)" if not groups else None
    return _text(table, width, empty)


def render(rows: Sequence[dict[str, Any]], title: str | None = None, width: int | None = None) -> str:
    """The rows as a rich table (text, without colour codes when not printing to a terminal)."""
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    justify = {"best": "right", "best_step": "right", "improvement": "right", "steps": "right", "wall": "right",
               "params": "right"}
    texts = [cells(row) for row in rows]
    # a column nobody has (no W&B, no sweep) is left out, so the ones that matter fit a terminal
    shown = [i for i, column in enumerate(COLUMNS) if column in ("run", "overrides")
             or any(t[i] != "-" for t in texts)]
    for i in shown:
        column = COLUMNS[i]
        table.add_column(HEADERS.get(column, column), justify=justify.get(column, "left"), overflow="fold",
                         min_width=16 if column == "overrides" else None, ratio=1 if column == "overrides" else None)
    for row, text in zip(rows, texts, strict=True):
        status = row["status"]
        style = "red" if status in ("failed", "dead") else "dim" if status in ("pruned", "interrupted") else None
        table.add_row(*(text[i] for i in shown), style=style)
    return _text(table, width)


def _text(table: Any, width: int | None, after: str | None = None) -> str:
    """A rich table as plain text (no colour codes), with an optional line after it."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width or 160, force_terminal=False, color_system=None)
    console.print(table)
    if after:
        console.print(after)
    return console.file.getvalue()


def to_json(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a JSON list (strict: no NaN)."""
    return json.dumps([_public(r) for r in rows], indent=2, allow_nan=False)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as CSV with a header line; overrides are joined by spaces, each breakdown group is a column."""
    out = io.StringIO()
    fields = [k for k in (rows[0] if rows else row_of({}, Path("."))) if not k.startswith("_") and k != "breakdown"]
    groups = sorted({g for row in rows for g in row["breakdown"]}, key=_group_order)
    writer = csv.DictWriter(out, fieldnames=[*fields, *(f"breakdown.{g}" for g in groups)])
    writer.writeheader()
    for row in rows:
        public = {k: v for k, v in _public(row).items() if k != "breakdown"}
        writer.writerow({**public, "overrides": " ".join(row["overrides"]),
                         **{f"breakdown.{g}": v for g, v in row["breakdown"].items()}})
    return out.getvalue()


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def sweep_table(sweep_dir: Path, outputs: Path) -> str | None:
    """The table of one grid's runs, best first (printed when a `-m` grid ends); None when it made no run."""
    rows = select(read_rows(outputs), sweep=sweep_dir.name)
    if not rows:
        return None
    return render(sort_rows(rows, "best"), title=f"{sweep_dir.name}: {len(rows)} runs, best first")
