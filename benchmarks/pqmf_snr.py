#!/usr/bin/env python
"""PQMF reconstruction SNR (analysis then synthesis) on white noise and a 440 Hz tone, with and without the polish.

2^15 samples at 44.1 kHz, attenuation 100 dB, two filter lengths trimmed at each end, float32 on CPU.

    python benchmarks/pqmf_snr.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audiolab.models.pqmf import PQMF, reconstruction_snr_db  # noqa: E402


def main() -> None:
    """Print one row per band count."""
    rng = np.random.default_rng(0)
    n, sr = 2**15, 44100
    signals = {"white noise": rng.standard_normal(n) * 0.3,
               "440 Hz tone": 0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / sr)}
    print("bands  taps  " + "  ".join(f"{name:>12}" for name in signals) + "  | Kaiser only: "
          + "  ".join(f"{name:>12}" for name in signals))
    for m in (4, 8, 16):
        polished = [reconstruction_snr_db(s, m, 100.0) for s in signals.values()]
        kaiser = [reconstruction_snr_db(s, m, 100.0, refine=False) for s in signals.values()]
        print(f"{m:>5}  {PQMF(m, 100.0).taps:>4}  " + "  ".join(f"{v:>9.1f} dB" for v in polished) + "  |              "
              + "  ".join(f"{v:>9.1f} dB" for v in kaiser))


if __name__ == "__main__":
    main()
