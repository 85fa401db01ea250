"""Pitch-shift restoration: undo the artefacts of a +k / -k semitone pitch-shift round trip.

Each clean clip x is shifted by k semitones and back by -k (phase vocoder plus resampling, see
`audiolab.tasks.pitch`); the model maps the degraded clip back to x.

Impossible frequencies. Shifting up by k > 0 multiplies every frequency f by r = 2^(k/12). At sample
rate sr, anything with r*f > sr/2 lands above Nyquist and the resampler's anti-alias filter removes
it, so the original content above

    f_c = (sr / 2) * 2^(-k/12)

is destroyed before the shift back down; no model can know what it was. The target is therefore
low-passed at f_c (zero-phase), so the loss does not reward inventing it. Shifting down first (k < 0)
maps f to f/r <= sr/2 and back, so nothing is lost and the target stays untouched.
`lowpass_impossible=false` turns this off. With the rational ratio p/q used here f_c = (sr/2) * q/p
exactly.

Cutoff bank. The low-pass is not applied at each example's exact f_c but at the nearest of
`lowpass_bank` (default 10) discrete cutoffs at or below it, spread evenly in Hz between the lowest and
the highest f_c of the configured upward shifts; the original experiments went from 6 to 10 filters.
Both ends of the bank are exact cutoffs, so no example ever keeps content above its own f_c.
`lowpass_bank: null` uses each f_c exactly. At 44.1 kHz with the default k in ±1..4 (bank of 10,
366.9 Hz apart):

    k   ratio   true f_c (Hz)   bank cutoff used (Hz)
    1   53/50   20801.9         20801.9
    2   55/49   19644.5         19334.4
    3   44/37   18542.0         18233.8
    4   63/50   17500.0         17500.0

(`audiolab.tasks.restore.cutoff_table` prints this for any rate and set.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from audiolab.tasks.pitch import lowpass_fft, pitch_shift, semitone_ratio


class PitchShiftRestore:
    """Makes (degraded, target) pairs on the training device, batched by semitone shift."""

    has_input_baseline = True  # the degraded input is a meaningful do-nothing baseline

    def __init__(self, sample_rate: int, semitones: Sequence[int] = (-4, -3, -2, -1, 1, 2, 3, 4),
                 lowpass_impossible: bool = True, n_fft: int = 512, max_denominator: int = 64,
                 lowpass_bank: int | None = 10) -> None:
        self.sample_rate = sample_rate
        self.semitones = [int(k) for k in semitones]
        self.lowpass_impossible = lowpass_impossible
        self.n_fft = n_fft
        self.ratios = {k: semitone_ratio(k, max_denominator) for k in self.semitones}
        if lowpass_bank is not None and lowpass_bank < 1:
            raise ValueError(f"lowpass_bank={lowpass_bank}: need at least 1 cutoff, or null for exact cutoffs")
        exact = sorted({c for k in self.semitones if (c := self.cutoff_hz(k)) is not None})
        self.bank: np.ndarray | None = None
        if lowpass_bank and exact:
            self.bank = np.linspace(exact[0], exact[-1], lowpass_bank) if lowpass_bank > 1 else np.array(exact[:1])

    def cutoff_hz(self, k: int) -> float | None:
        """Highest recoverable frequency after a +k/-k round trip (None: nothing is lost)."""
        ratio = self.ratios[k]
        return self.sample_rate / 2 / float(ratio) if ratio > 1 else None

    def lowpass_hz(self, k: int) -> float | None:
        """The cutoff actually applied to the target for shift k: the bank's nearest at or below cutoff_hz(k)."""
        cutoff = self.cutoff_hz(k)
        if cutoff is None or self.bank is None:
            return cutoff
        return float(self.bank[self.bank <= cutoff * (1 + 1e-9)].max())

    def degrade(self, clean: torch.Tensor, semitones: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Round-trip each example of clean (B, C, T) by its own k; return (degraded, target)."""
        degraded = torch.empty_like(clean)
        target = clean.clone()
        ks = torch.as_tensor(list(semitones))
        for k in sorted(set(int(v) for v in semitones)):  # one batched shift per distinct k
            idx = torch.nonzero(ks == k).flatten().to(clean.device)
            group = clean.index_select(0, idx)
            ratio = self.ratios[k]
            shifted = pitch_shift(pitch_shift(group, ratio, self.n_fft), 1 / ratio, self.n_fft)
            degraded.index_copy_(0, idx, shifted)
            cutoff = self.lowpass_hz(k)
            if self.lowpass_impossible and cutoff is not None:
                target.index_copy_(0, idx, lowpass_fft(group, cutoff, self.sample_rate))
        return degraded, target

    def training_pair(self, clean: torch.Tensor, rng: np.random.Generator, rows: slice | None = None,
                      batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A pair with k drawn at random per example from the configured set (for `rows` of a `batch`: theirs)."""
        ks = rng.choice(self.semitones, size=clean.shape[0] if rows is None else int(batch))
        return self.degrade(clean, (ks if rows is None else ks[rows]).tolist())

    def validation_pair(self, clean: torch.Tensor, first_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A pair with k cycling through the set by crop index, identical in every run."""
        return self.degrade(clean, self._validation_shifts(first_index, clean.shape[0]))

    def validation_groups(self, n_crops: int) -> dict[str, list[int]]:
        """The validation crops of each shift, by label ("k-4" ... "k+4"), for the per-k figures."""
        shifts = self._validation_shifts(0, n_crops)
        return {f"k{k:+d}": [i for i, s in enumerate(shifts) if s == k] for k in sorted(set(shifts))}

    def _validation_shifts(self, first_index: int, count: int) -> list[int]:
        n = len(self.semitones)
        return [self.semitones[(first_index + i) % n] for i in range(count)]


def cutoff_table(sample_rate: int = 44100, semitones: Sequence[int] = (1, 2, 3, 4), lowpass_bank: int | None = 10,
                 max_denominator: int = 64) -> str:
    """The k -> (ratio, true cutoff, bank cutoff) table for the docs, for any rate and shift set."""
    task = PitchShiftRestore(sample_rate, semitones, lowpass_bank=lowpass_bank, max_denominator=max_denominator)
    rows = ["k   ratio   true f_c (Hz)   bank cutoff used (Hz)"]
    for k in sorted(k for k in task.semitones if task.cutoff_hz(k) is not None):
        ratio = task.ratios[k]
        rows.append(f"{k:<3} {f'{ratio.numerator}/{ratio.denominator}':<7} {task.cutoff_hz(k):<15.1f} "
                    f"{task.lowpass_hz(k):.1f}")
    return "\n".join(rows)
