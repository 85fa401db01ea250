"""Frequency bands of the per-band validation figures: plain data, so the review commands need no torch."""

from __future__ import annotations

import math

# Where the log's author suspected the error sits ("the lower frequencies are where the problem is"):
# the fundamentals, the low harmonics, and the rest.
SPEC_BANDS_HZ = {"low": (0.0, 500.0), "mid": (500.0, 4000.0), "high": (4000.0, math.inf)}
ALL_BINS = "all"


def describe_bands() -> str:
    """"low < 500 Hz, mid 500 Hz to 4 kHz, high > 4 kHz", for tables and pages."""
    def hz(value: float) -> str:
        return f"{value / 1000:g} kHz" if value >= 1000 else f"{value:g} Hz"

    parts = []
    for name, (low, high) in SPEC_BANDS_HZ.items():
        parts.append(f"{name} < {hz(high)}" if low == 0 else f"{name} > {hz(low)}" if math.isinf(high)
                     else f"{name} {hz(low)} to {hz(high)}")
    return ", ".join(parts)
