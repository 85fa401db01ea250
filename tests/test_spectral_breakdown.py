"""Where the error is left: the fixed distance per crop and per band, and validation's per-k and per-band figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from audiolab.metrics.spectral import SPEC_BANDS_HZ, SpecDistance
from audiolab.tasks.restore import PitchShiftRestore

SR = 44100


def _music(batch: int, length: int = 16384, seed: int = 0) -> torch.Tensor:
    """Harmonic tones with a little noise: energy in every band."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / SR
    f0 = 110 * 2 ** (torch.randint(0, 24, (batch, 1, 1), generator=gen) / 12)
    tones = sum(torch.sin(2 * torch.pi * f0 * h * t) / h for h in range(1, 30))
    return 0.2 * tones + 0.01 * torch.randn(batch, 1, length, generator=gen)


def test_each_crops_all_bins_figure_is_the_distance_of_that_crop_alone() -> None:
    distance = SpecDistance()
    target = _music(4)
    output = target + 0.05 * torch.randn_like(target)
    per_crop = distance.per_crop(output, target, SR)
    alone = torch.stack([distance(output[i:i + 1], target[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(per_crop["all"], alone, rtol=1e-5, atol=1e-6)
    assert set(per_crop) == {"all", *SPEC_BANDS_HZ} and all(v.shape == (4,) for v in per_crop.values())


def test_an_error_above_4_khz_shows_in_the_high_band_only() -> None:
    distance = SpecDistance()
    target = _music(2)
    hiss = AF.highpass_biquad(0.05 * torch.randn_like(target), SR, 9000.0)
    hiss = AF.highpass_biquad(hiss, SR, 9000.0)  # twice: 24 dB per octave, nothing left below 4 kHz
    per_crop = distance.per_crop(target + hiss, target, SR)
    assert (per_crop["high"] > 0.1).all(), per_crop
    assert (per_crop["low"] < 0.02).all() and (per_crop["mid"] < 0.05).all(), per_crop


def test_the_restoration_task_groups_its_validation_crops_by_shift() -> None:
    task = PitchShiftRestore(SR)
    groups = task.validation_groups(20)
    assert list(groups) == ["k-4", "k-3", "k-2", "k-1", "k+1", "k+2", "k+3", "k+4"]
    assert sorted(i for idx in groups.values() for i in idx) == list(range(20))
    assert groups["k-4"] == [0, 8, 16] and groups["k+4"] == [7, 15]


def test_validation_logs_each_shift_and_band_and_keeps_the_headline(run_tiny) -> None:
    run_dir, _ = run_tiny("trainer.max_steps=2", "trainer.val_every=2", "data.val_max_crops=8")  # one per k
    lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    val = next(line for line in lines if "val/spec_loss" in line)
    for group in ("k-4", "k-3", "k-2", "k-1", "k+1", "k+2", "k+3", "k+4", "low", "mid", "high"):
        assert np.isfinite(val[f"val/spec_loss_{group}"]) and np.isfinite(val[f"val/improvement_{group}"])
    # the per-k figures partition the crops: their crop-weighted mean is the mean per-crop distance, which
    # is near the headline (a batch-level ratio), not equal to it
    record = json.loads((Path(run_dir) / "run.json").read_text())
    assert record["best_val"]["val/spec_loss"] == val["val/spec_loss"]
    per_k = [val[f"val/spec_loss_k{k:+d}"] for k in (-4, -3, -2, -1, 1, 2, 3, 4)]
    assert np.mean(per_k) == pytest.approx(val["val/spec_loss"], rel=0.1)
