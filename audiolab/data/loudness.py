"""Streaming ITU-R BS.1770-4 integrated loudness (LUFS) for signals fed in blocks.

Why this exists: audiolab's folder-dataset preprocessing decodes huge files in blocks and must never hold a whole
file in RAM, while `torchaudio.functional.loudness` and pyloudnorm both need the whole signal at once. This meter
takes blocks of any size, keeps the K-weighting filter state and the partial 100 ms sub-block between them, and
stores one float64 per 100 ms gating step (about 280 KiB per hour of audio), whatever the channel count.

It reproduces `torchaudio.functional.loudness` (torchaudio 2.11), including its framing and its K-weighting
coefficients, except where noted:

- torchaudio's `lfilter` clamps each biquad's output to [-1, 1]; this meter does not, as BS.1770 does not. Signals
  whose K-weighted peaks exceed 1 (near-full-scale content, above all high-frequency content, which the shelf
  boosts by 4 dB) read lower in torchaudio: a full-scale 997 Hz sine reads -3.28 there, -3.05 here.
- torchaudio returns NaN for silence (everything gated out) and raises for input shorter than one gating block;
  this meter returns -inf for both.
- torchaudio designs the K-weighting as an RBJ high shelf (+4 dB, 1500 Hz, Q 1/sqrt(2)) and an RBJ high-pass
  (38 Hz, Q 0.5), which only approximates the BS.1770 filter table: the high-pass numerator is 0.995 * [1, -2, 1]
  instead of [1, -2, 1], so passband gains sit about 0.04 dB below the standard's. A 0 dBFS 1 kHz sine on one
  channel reads about -3.05 LUFS instead of the standard's -3.01. The torchaudio design is kept so results agree
  with torchaudio (and it works at every sample rate, where the BS.1770 table is given for 48 kHz only).

Gating blocks are torchaudio's: `gate = round(0.4 * sr)` samples every `step = round(gate / 4)` samples, the last
block ending at or before the end of the signal. Where `gate` is not `4 * step` (e.g. 11025 Hz: 4410 = 4 * 1102 + 2)
a block is q whole sub-blocks of `step` samples plus the first r samples of the next, so the framing still matches
exactly. Channel weights are torchaudio's: 1.0 for channels 0-2 and 1.41 for channels 3-4, by position, whatever
the layout; like torchaudio, at most 5 channels are accepted (an LFE channel must be dropped by the caller).
"""

from __future__ import annotations

import math
from array import array

import numpy as np

_GATE_SECONDS = 0.4
_OVERLAP = 0.75
_ABSOLUTE_GATE_LUFS = -70.0
_RELATIVE_GATE_LU = -10.0
_K_WEIGHT_BIAS = -0.691
# BS.1770 weights for L, R, C, Ls, Rs; torchaudio applies them by channel position.
_CHANNEL_WEIGHTS = (1.0, 1.0, 1.0, 1.41, 1.41)


def k_weighting_sos(sample_rate: int) -> np.ndarray:
    """K-weighting as second-order sections (2, 6), designed exactly as torchaudio.functional.loudness does."""
    # High shelf: torchaudio's treble_biquad(gain=4.0, central_freq=1500.0, Q=1/sqrt(2)).
    w0 = 2 * math.pi * 1500.0 / sample_rate
    alpha = math.sin(w0) / 2 / (1 / math.sqrt(2))
    a = math.exp(4.0 / 40 * math.log(10))
    temp1 = 2 * math.sqrt(a) * alpha
    temp2 = (a - 1) * math.cos(w0)
    temp3 = (a + 1) * math.cos(w0)
    shelf_b = (a * ((a + 1) + temp2 + temp1), -2 * a * ((a - 1) + temp3), a * ((a + 1) + temp2 - temp1))
    shelf_a = ((a + 1) - temp2 + temp1, 2 * ((a - 1) - temp3), (a + 1) - temp2 - temp1)
    # RLB high-pass: torchaudio's highpass_biquad(cutoff_freq=38.0, Q=0.5).
    w0 = 2 * math.pi * 38.0 / sample_rate
    alpha = math.sin(w0) / 2.0 / 0.5
    hp_b = ((1 + math.cos(w0)) / 2, -1 - math.cos(w0), (1 + math.cos(w0)) / 2)
    hp_a = (1 + alpha, -2 * math.cos(w0), 1 - alpha)
    # torchaudio's lfilter divides by a0; sosfilt wants a0 == 1.
    return np.array([[*(c / den[0] for c in num), *(c / den[0] for c in den)]
                     for num, den in ((shelf_b, shelf_a), (hp_b, hp_a))])


class LoudnessMeter:
    """Integrated loudness (LUFS, BS.1770-4 gating) of a signal fed in blocks of any size."""

    def __init__(self, sample_rate: int, channels: int) -> None:
        """Meter for `channels` interleaved channels (1 to 5) at `sample_rate` Hz."""
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if not 1 <= channels <= len(_CHANNEL_WEIGHTS):
            raise ValueError(f"channels must be 1 to {len(_CHANNEL_WEIGHTS)} (BS.1770 weights), got {channels}")
        self.sample_rate = sample_rate
        self.channels = channels
        self._sos = k_weighting_sos(sample_rate)
        self._zi = np.zeros((self._sos.shape[0], 2, channels))
        self._weights = np.asarray(_CHANNEL_WEIGHTS[:channels])
        self._gate = int(round(_GATE_SECONDS * sample_rate))
        self._step = max(1, int(round(self._gate * (1 - _OVERLAP))))
        self._q, self._r = divmod(self._gate, self._step)
        # Channel-weighted sum of squares per sub-block of `step` samples (`_full`) and over each sub-block's
        # first r samples (`_heads`); both lists start at absolute sub-block index `_base`, so the entries no
        # pending gating block needs can be dropped.
        self._full: list[float] = []
        self._heads: list[float] = []
        self._base = 0
        self._fill = 0
        self._acc = 0.0
        self._head_acc = 0.0
        # Mean channel-weighted power of every complete gating block: gating needs all of them at the end.
        self._blocks = array("d")

    def update(self, block: np.ndarray) -> None:
        """Feed the next `(frames, channels)` block; any number of frames, including 0."""
        x = np.asarray(block, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ValueError(f"block must be (frames, {self.channels}), got shape {x.shape}")
        if x.shape[0] == 0:
            return
        from scipy.signal import sosfilt  # here: importing scipy.signal costs ~1.4 s, and most runs never meter

        y, self._zi = sosfilt(self._sos, x, axis=0, zi=self._zi)
        # The weighted channel sum is linear, so summing it per sample equals torchaudio's per-channel means.
        power = np.square(y) @ self._weights
        start = 0
        if self._fill:
            start = min(self._step - self._fill, power.size)
            self._feed_partial(power[:start])
        whole = (power.size - start) // self._step
        if whole:
            subs = power[start:start + whole * self._step].reshape(whole, self._step)
            self._full.extend(subs.sum(axis=1).tolist())
            if self._r:
                self._heads.extend(subs[:, :self._r].sum(axis=1).tolist())
            start += whole * self._step
        self._feed_partial(power[start:])
        self._emit_blocks()

    def _feed_partial(self, seg: np.ndarray) -> None:
        """Add samples that all fall into the current (incomplete) sub-block."""
        if seg.size == 0:
            return
        begin, end = self._fill, self._fill + seg.size
        if begin < self._r:
            self._head_acc += float(seg[:self._r - begin].sum())
            if end >= self._r:
                self._heads.append(self._head_acc)
        self._acc += float(seg.sum())
        self._fill = end
        if end == self._step:
            self._full.append(self._acc)
            self._acc = self._head_acc = 0.0
            self._fill = 0

    def _emit_blocks(self) -> None:
        """Turn every newly complete gating block into its mean power and drop sub-blocks no longer needed."""
        first = len(self._blocks)
        # Block k needs whole sub-blocks k..k+q-1 and, when r > 0, the head of sub-block k+q.
        available = self._base + len(self._full) - self._q + 1
        if self._r:
            available = min(available, self._base + len(self._heads) - self._q)
        if available <= first:
            return
        lo = first - self._base
        full = np.asarray(self._full[lo:lo + available - first + self._q - 1])
        # Each window summed on its own (not as cumsum differences), so a quiet block after a loud stretch keeps
        # its precision.
        energy = np.lib.stride_tricks.sliding_window_view(full, self._q).sum(axis=1)
        if self._r:
            energy += np.asarray(self._heads[lo + self._q:lo + self._q + available - first])
        self._blocks.extend((energy / self._gate).tolist())
        drop = available - self._base
        del self._full[:drop]
        del self._heads[:drop]
        self._base = available

    def lufs(self) -> float:
        """Integrated loudness so far; -inf when everything is gated out (silence, or shorter than one 400 ms block)."""
        if not self._blocks:
            return -math.inf
        power = np.asarray(self._blocks)
        with np.errstate(divide="ignore"):
            block_lufs = _K_WEIGHT_BIAS + 10 * np.log10(power)
        gated = block_lufs > _ABSOLUTE_GATE_LUFS
        if not gated.any():
            return -math.inf
        relative_gate = _K_WEIGHT_BIAS + 10 * math.log10(power[gated].mean()) + _RELATIVE_GATE_LU
        # The loudest block always passes (it is above the mean), so the mean below is never empty.
        gated &= block_lufs > relative_gate
        return _K_WEIGHT_BIAS + 10 * math.log10(power[gated].mean())


def gain_to_lufs(measured: float, target: float) -> float:
    """Linear gain that moves a signal measured at `measured` LUFS to `target` LUFS (1.0 when measured is -inf)."""
    if not math.isfinite(measured):
        return 1.0
    return 10 ** ((target - measured) / 20)
