"""The files that make a run directory self-describing: `run.json` and `metrics.jsonl`."""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from audiolab.common.files import atomic_write_text
from audiolab.common.numbering import parse_number
from audiolab.common.secrets import redact
from audiolab.runs.snapshot import git_state as git_state  # re-exported: resume records it
from audiolab.runs.snapshot import snapshot_code

STATUSES = ("running", "completed", "failed", "interrupted", "pruned")


def now_iso() -> str:
    """Current UTC time, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def versions() -> dict[str, str | None]:
    """Versions of python and the packages that decide a run's numbers."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("audiolab", "torch", "torchaudio", "numpy", "hydra-core", "omegaconf", "auraloss", "wandb"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def finite_or_null(value: Any) -> Any:
    """`value` with every NaN and infinity (in nested dicts and lists too) made None: JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def strict_json(value: Any, **kwargs: Any) -> str:
    """JSON text that any strict parser reads: non-finite numbers become null (Python would write `Infinity`)."""
    return json.dumps(finite_or_null(value), allow_nan=False, **kwargs)


class RunRecord:
    """Reads and updates `run.json` and appends scalars to `metrics.jsonl` in one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)
        self.json_path = self.dir / "run.json"
        self.metrics_path = self.dir / "metrics.jsonl"
        self.data: dict[str, Any] = json.loads(self.json_path.read_text()) if self.json_path.exists() else {}

    @classmethod
    def create(cls, run_dir: Path, **fields: Any) -> RunRecord:
        """Start a fresh record for a new run; a dirty work tree's diff is saved beside it as code.patch."""
        record = cls(run_dir)
        record.data = {
            "number": parse_number(record.dir.name),
            "name": record.dir.name,
            "dir": str(record.dir),
            "status": "running",
            "started": now_iso(),
            "ended": None,
            "git": snapshot_code(record.dir),
            "host": socket.gethostname(),
            "pid": os.getpid(),  # with host: lets the review commands tell a killed run from a running one
            "argv": redact(list(sys.argv)),
            "versions": versions(),
            **fields,
        }
        record.save()
        return record

    def update(self, **fields: Any) -> None:
        """Merge fields into run.json and write it atomically."""
        self.data.update(fields)
        self.save()

    def save(self) -> None:
        """Write run.json atomically."""
        atomic_write_text(self.json_path, strict_json(self.data, indent=2, default=str) + "\n")

    def finish(self, status: str, **fields: Any) -> None:
        """Record the final status and end time."""
        assert status in STATUSES, status
        self.update(status=status, ended=now_iso(), **fields)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Append one line {"step": step, key: value, ...} to metrics.jsonl (a NaN or infinite value as null)."""
        line = strict_json({"step": step, **{k: float(v) for k, v in metrics.items()}})
        with self.metrics_path.open("a") as f:
            f.write(line + "\n")

    def truncate_metrics_after(self, step: int) -> None:
        """Drop lines logged after `step` (by a run that crashed past its last checkpoint)."""
        if not self.metrics_path.exists():
            return
        keep = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in keep))


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """All lines of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_metrics_by_step(run_dir: Path) -> dict[int, dict[str, float]]:
    """A run's metrics merged by step: the train line and the validation line of one step in one dict."""
    merged: dict[int, dict[str, float]] = {}
    for row in read_metrics(run_dir):
        merged.setdefault(int(row["step"]), {}).update({k: v for k, v in row.items() if k != "step"})
    return merged


def process_alive(record: dict[str, Any]) -> bool | None:
    """Whether the process that is writing a `running` record still exists: None when it runs on another host."""
    pid, host = record.get("pid"), record.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True
