"""Compare two runs' metrics.jsonl line by line: the verdict of `audiolab reproduce outputNN --check`.

Pure functions on lists of dicts (the parsed lines), so the logic is testable without training. Lines
of the same step (a train/ line, a val/ line, end-of-run figures) are merged; keys starting with an
ignored prefix (`perf/`: wall-clock throughput and memory, never the same twice) are left out.

Without a tolerance two values are equal only when they are the same float, bit for bit (two NaNs
count as equal). With `rtol`, values count as equal when |a - b| <= rtol * max(|a|, |b|); the
relative difference reported is that same |a - b| / max(|a|, |b|).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

IGNORED_PREFIXES = ("perf/",)


@dataclass(frozen=True)
class Difference:
    """One place where the runs differ: a value, a key present in one run only, or a step in one run only."""

    step: int
    kind: str  # "value" | "missing_key" | "missing_step"
    key: str | None = None  # None for a missing step
    reference: Any = None  # the reference run's value (None where it has none)
    candidate: Any = None  # the candidate run's value (None where it has none)
    relative: float = math.inf  # |a - b| / max(|a|, |b|) for a value; inf for a missing one
    missing_from: str | None = None  # for a missing key or step: the name of the run that lacks it


@dataclass
class Comparison:
    """The outcome of `compare_metrics`: MATCH when `first` is None."""

    reference_name: str
    candidate_name: str
    steps: int  # distinct steps compared (union of both runs, up to max_step)
    keys: int  # distinct keys compared (union of both runs, ignored prefixes aside)
    rtol: float | None = None
    max_step: int | None = None
    ignored: tuple[str, ...] = IGNORED_PREFIXES
    first: Difference | None = None  # the first difference, by step, then key
    differences: int = 0  # values out of tolerance, and missing keys and steps
    missing_steps: dict[str, list[int]] = field(default_factory=dict)  # run name -> steps it lacks
    largest: dict[str, float] = field(default_factory=dict)  # key -> largest relative difference (> 0), largest first

    @property
    def verdict(self) -> str:
        """MATCH or DIFFERS."""
        return "MATCH" if self.first is None else "DIFFERS"

    @property
    def matched(self) -> bool:
        """True on MATCH."""
        return self.first is None

    def largest_text(self, limit: int = 6) -> str:
        """`train/loss 8.4e-05, val/spec_loss 1.2e-06` (the first `limit` keys, largest first)."""
        items = [f"{key} {_rel_text(rel)}" for key, rel in list(self.largest.items())[:limit]]
        more = len(self.largest) - limit
        return ", ".join(items) + (f" and {more} more" if more > 0 else "")

    def verdict_line(self) -> str:
        """One line: MATCH (and how) or DIFFERS (where first, and by how much per key)."""
        ref, cand = self.reference_name, self.candidate_name
        aside = ", ".join(f"{p}*" for p in self.ignored)
        scope = f"{self.steps} steps{f' up to step {self.max_step}' if self.max_step is not None else ''}, " \
                f"{self.keys} keys{f'; {aside} aside' if aside else ''}"
        if self.matched:
            if self.rtol is None:
                return f"MATCH: {cand} reproduces {ref} bitwise ({scope})"
            how = (f"largest relative difference: {self.largest_text()}" if self.largest
                   else "all values bitwise identical")
            return f"MATCH (rtol {self.rtol:g}): {cand} reproduces {ref} within rtol {self.rtol:g} ({scope}); {how}"
        tolerance = f" (rtol {self.rtol:g})" if self.rtol is not None else ""
        parts = [f"DIFFERS{tolerance}: {cand} vs {ref}: first at step {self.first.step}, {self._describe(self.first)}"]
        if self.largest:
            parts.append(f"largest relative difference: {self.largest_text()}")
        parts.append(f"{self.differences} difference{'s' if self.differences != 1 else ''} in all ({scope})")
        return "; ".join(parts)

    def _describe(self, diff: Difference) -> str:
        if diff.kind == "missing_step":
            return f"step {diff.step} is missing from {diff.missing_from}"
        if diff.kind == "missing_key":
            lacks_candidate = diff.missing_from == self.candidate_name
            having = self.reference_name if lacks_candidate else self.candidate_name
            value = diff.reference if lacks_candidate else diff.candidate
            return f"{diff.key} is missing from {diff.missing_from} ({having} has {_value_text(value)})"
        a, b = _distinct_texts(diff.candidate, diff.reference)
        return f"{diff.key} {a} vs {b} (relative difference {_rel_text(diff.relative)})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary, for run.json."""
        first = None
        if self.first is not None:
            first = {"step": self.first.step, "kind": self.first.kind, "key": self.first.key,
                     "reference": self.first.reference, "candidate": self.first.candidate,
                     "missing_from": self.first.missing_from}
        return {"verdict": self.verdict, "rtol": self.rtol, "steps_compared": self.steps, "keys": self.keys,
                "max_step": self.max_step, "differences": self.differences, "first": first,
                "missing_steps": self.missing_steps, "largest_relative": self.largest, "line": self.verdict_line()}


def by_step(lines: Iterable[Mapping[str, Any]], *, ignored: tuple[str, ...] = IGNORED_PREFIXES,
            max_step: int | None = None) -> dict[int, dict[str, Any]]:
    """Merge lines into {step: {key: value}}, without ignored keys or steps past max_step.

    A key logged twice at one step keeps both: the second as `key#2` (and so on), so nothing is lost.
    """
    merged: dict[int, dict[str, Any]] = {}
    for line in lines:
        step = int(line["step"])
        if max_step is not None and step > max_step:
            continue
        into = merged.setdefault(step, {})
        for key, value in line.items():
            if key == "step" or key.startswith(ignored):
                continue
            name, n = key, 1
            while name in into:
                n += 1
                name = f"{key}#{n}"
            into[name] = value
    return merged


def relative_difference(a: Any, b: Any) -> float:
    """|a - b| / max(|a|, |b|): 0 for equal values (two NaNs too), inf when only one is NaN or not a number."""
    if _identical(a, b):
        return 0.0
    if not (_is_number(a) and _is_number(b)):
        return math.inf
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b) or math.isinf(a) or math.isinf(b):
        return 0.0 if a == b else math.inf
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale else 0.0  # scale 0: +0.0 vs -0.0


def compare_metrics(reference: Iterable[Mapping[str, Any]], candidate: Iterable[Mapping[str, Any]], *,
                    rtol: float | None = None, max_step: int | None = None,
                    ignored: tuple[str, ...] = IGNORED_PREFIXES, reference_name: str = "reference",
                    candidate_name: str = "candidate") -> Comparison:
    """Compare two runs' metrics lines (reference: the original run; candidate: the re-run)."""
    if rtol is not None and not rtol >= 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    ref, cand = by_step(reference, ignored=ignored, max_step=max_step), by_step(candidate, ignored=ignored,
                                                                               max_step=max_step)
    steps = sorted(set(ref) | set(cand))
    keys: set[str] = set()
    result = Comparison(reference_name, candidate_name, steps=len(steps), keys=0, rtol=rtol, max_step=max_step,
                        ignored=tuple(ignored))
    found: list[Difference] = []
    for step in steps:
        if step not in ref or step not in cand:
            lacking = reference_name if step not in ref else candidate_name
            result.missing_steps.setdefault(lacking, []).append(step)
            keys.update(ref.get(step, {}) or cand.get(step, {}))
            found.append(Difference(step, "missing_step", missing_from=lacking))
            continue
        a, b = ref[step], cand[step]
        ordered = list(a) + [k for k in b if k not in a]  # the reference's logging order, then the rest
        keys.update(ordered)
        for key in ordered:
            if key not in a or key not in b:
                lacking = reference_name if key not in a else candidate_name
                found.append(Difference(step, "missing_key", key, a.get(key), b.get(key), missing_from=lacking))
                continue
            rel = relative_difference(a[key], b[key])
            if rel > 0:
                result.largest[key] = max(result.largest.get(key, 0.0), rel)
            equal = _identical(a[key], b[key]) if rtol is None else rel <= rtol
            if not equal:
                found.append(Difference(step, "value", key, a[key], b[key], rel))
    result.keys = len(keys)
    result.differences = len(found)
    result.first = found[0] if found else None
    result.largest = dict(sorted(result.largest.items(), key=lambda item: -item[1]))
    return result


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _identical(a: Any, b: Any) -> bool:
    """Bitwise-equal floats (NaN equals NaN, -0.0 differs from 0.0), or equal other values."""
    if _is_number(a) and _is_number(b):
        return struct.pack("<d", float(a)) == struct.pack("<d", float(b)) or (math.isnan(a) and math.isnan(b))
    return a == b


def _value_text(x: Any) -> str:
    return f"{x:.6g}" if _is_number(x) else repr(x)


def _distinct_texts(a: Any, b: Any) -> tuple[str, str]:
    """The two values with the fewest significant digits (at least 6) that tell them apart."""
    if not (_is_number(a) and _is_number(b)):
        return _value_text(a), _value_text(b)
    for digits in range(6, 18):
        ta, tb = f"{float(a):.{digits}g}", f"{float(b):.{digits}g}"
        if ta != tb:
            return ta, tb
    return repr(float(a)), repr(float(b))


def _rel_text(rel: float) -> str:
    return "inf" if math.isinf(rel) else f"{rel:.2g}"
