"""Atomic allocation of numbered directories (`outputNN`, `sweepNN`).

Hydra's timestamped directories collide when jobs start in the same second (hydra#2925). Here a
number is claimed by an exclusive `mkdir`: of any processes racing for the same number exactly one
succeeds, and the others rescan and try the next.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

RUN_PREFIX = "output"
SWEEP_PREFIX = "sweep"


def existing_numbers(root: Path, prefix: str = RUN_PREFIX) -> list[int]:
    """Numbers of the `<prefix>NN` directories under root, ascending."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)$")
    if not root.is_dir():
        return []
    found = (pattern.match(entry.name) for entry in os.scandir(root))
    return sorted(int(m.group(1)) for m in found if m)


def format_name(number: int, prefix: str = RUN_PREFIX) -> str:
    """`output07` for 7: at least two digits, more when needed."""
    return f"{prefix}{number:02d}"


def allocate(root: str | os.PathLike, prefix: str = RUN_PREFIX, attempts: int = 1000) -> Path:
    """Create and return `root/<prefix>NN` with NN one more than the highest present."""
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        numbers = existing_numbers(root, prefix)
        candidate = root / format_name((numbers[-1] + 1) if numbers else 1, prefix)
        try:
            candidate.mkdir()
        except FileExistsError:
            continue  # another process won this number; rescan
        return candidate
    raise RuntimeError(f"could not allocate a {prefix}NN directory under {root} after {attempts} attempts")


def parse_number(name: str, prefix: str = RUN_PREFIX) -> int | None:
    """The NN of `outputNN` (or None when the name is not a numbered run)."""
    m = re.fullmatch(rf"{re.escape(prefix)}(\d+)", name)
    return int(m.group(1)) if m else None


def find_run_dir(ref: str, outputs: str | os.PathLike = "outputs") -> Path:
    """Resolve `output12`, `12` or a path to an existing run directory; FileNotFoundError names it."""
    as_path = Path(ref)
    if as_path.is_dir():
        return as_path.absolute()
    candidates = []
    if ref.isdigit():
        candidates.append(Path(outputs) / format_name(int(ref)))
    candidates.append(Path(outputs) / ref)
    for c in candidates:
        if c.is_dir():
            return c.absolute()
    looked = ", ".join(str(c) for c in [as_path, *candidates])
    raise FileNotFoundError(f"no run directory {ref!r} (looked for {looked})")
