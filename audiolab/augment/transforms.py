"""Batched audio augmentations that run on the tensor's device, with every random choice drawn by numpy.

Each transform splits its work in two: `draw` takes the random parameters for a whole batch from a numpy
Generator on the CPU, and `apply` uses them on the device. Drawing on the CPU makes the choices identical
on every device for one seed, and keeps the random stream independent of the data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction

import numpy as np
import torch
import torchaudio.functional as AF

from audiolab.tasks.pitch import semitone_ratio

Params = dict[str, np.ndarray]


def _check_real(name: str, value: object, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a float, or a ValueError naming `name` if it is not a finite number in the given range."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (out < low or (low_open and out == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (out > high or (high_open and out == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")
    return out


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """`value` as an int, or a ValueError naming `name` if it is not an integer in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be in [{low}, {high if high is not None else 'inf'}], got {value!r}")
    return int(value)


def _row_mask(active: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    """The boolean `active` array as a (B, 1, 1) mask on x's device, for torch.where."""
    return torch.from_numpy(np.asarray(active, dtype=bool)).to(x.device).view(-1, *([1] * (x.dim() - 1)))


def _active_index(active: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    """Indices of the active rows, on x's device."""
    return torch.from_numpy(np.flatnonzero(active)).to(x.device)


def _take_rows(params: Params, rows: slice, total: int) -> Params:
    """The per-example parameters of `rows` of a `total`-example batch; batch-wide ones (a seed) unchanged.

    `rows` itself is kept as (start, stop, total), for transforms whose draw covers the whole batch at once.
    """
    taken = {k: v[rows] if np.ndim(v) == 1 and len(v) == total else v for k, v in params.items()}
    taken["rows"] = np.asarray([rows.start, rows.stop, total])
    return taken


def _fast_fft_size(n: int) -> int:
    """The smallest 2^a * 3^b >= n: both cuFFT and pocketfft have fast radix-2 and radix-3 kernels."""
    best = 1 << max(n - 1, 0).bit_length()
    power3 = 3
    while power3 < best:
        size = power3
        while size < n:
            size *= 2
        best = min(best, size)
        power3 *= 3
    return best


class Transform:
    """Base class: one augmentation applied to a random subset (probability p) of a batch's examples."""

    def __init__(self, p: float = 1.0) -> None:
        """Transform each example with probability p."""
        self.p = _check_real("p", p, 0.0, 1.0)

    def draw(self, batch: int, rng: np.random.Generator) -> Params:
        """Random parameters for a batch; subclasses extend it after `active`, drawing the same amount every call."""
        return {"active": rng.random(batch) < self.p}

    def apply(self, x: torch.Tensor, params: Params, sample_rate: int) -> torch.Tensor:
        """Transform the active rows of x (B, C, T); inactive rows come back bit-identical in a new tensor."""
        raise NotImplementedError

    def extra_samples(self, segment: int) -> int:
        """How many input samples beyond `segment` this transform needs to produce `segment` real samples."""
        return 0

    def check_sample_rate(self, sample_rate: int) -> None:
        """Raise ValueError if this transform cannot run at `sample_rate` (Augment calls it when built)."""

    def __repr__(self) -> str:
        """The class and its probability."""
        return f"{type(self).__name__}(p={self.p})"


class PhaseMangle(Transform):
    """RAVE's phase mangling: a random second-order all-pass filter per example (|H| = 1, phase scrambled).

    Why it is written here: RAVE (acids-ircam/RAVE) filters one example at a time on the CPU with
    scipy.signal.lfilter, and torchaudio.functional.lfilter runs a sequential loop over time, which is slow
    on a GPU and needs one filter per call; no maintained package offers a batched per-example all-pass
    that is fast on a GPU. An IIR filter with zero initial state is a convolution with its impulse response,
    which for pole radius r has decayed below 1e-9 after L = ceil(log(1e-9) / log(r)) samples. So evaluating
    H(e^jw) on an rfft grid of N >= T + L points, multiplying and inverting gives the causal filter's first
    T output samples up to float32 rounding (about 1e-6), for the whole batch in two FFTs.

    H is evaluated in factored form rather than as the ratio B/A of its polynomials: with b = a reversed,
    H(e^jw) = e^{-2jw} conj(A) / A = exp(-j(2w + 2 arg A)), and arg A is the sum of the angles of its two
    first-order factors 1 - r e^{j(+-omega - w)}. That keeps |H| exactly 1 and avoids the cancellation in
    A near a low-frequency resonance. The phase is computed in float64 where the device supports it.
    The same filter is used for every channel of an example, so a stereo image is preserved.
    """

    def __init__(self, p: float = 0.8, min_hz: float = 20.0, max_hz: float = 2000.0, pole_radius: float = 0.99) -> None:
        """All-pass centre frequency log-uniform in [min_hz, max_hz], poles at radius `pole_radius`."""
        super().__init__(p)
        self.min_hz = _check_real("min_hz", min_hz, 0.0, low_open=True)
        self.max_hz = _check_real("max_hz", max_hz, self.min_hz)
        self.pole_radius = _check_real("pole_radius", pole_radius, 0.0, 1.0, low_open=True, high_open=True)

    def draw(self, batch: int, rng: np.random.Generator) -> Params:
        """`active` and `hz`, the centre frequency of each example's all-pass."""
        params = super().draw(batch, rng)
        params["hz"] = np.exp(rng.uniform(math.log(self.min_hz), math.log(self.max_hz), batch))
        return params

    def check_sample_rate(self, sample_rate: int) -> None:
        """The centre frequencies must lie below Nyquist."""
        if self.max_hz >= sample_rate / 2:
            raise ValueError(f"max_hz must be below Nyquist ({sample_rate / 2} Hz), got {self.max_hz}")

    def impulse_length(self) -> int:
        """Samples after which the impulse response has decayed below 1e-9 (r^L <= 1e-9)."""
        return math.ceil(math.log(1e-9) / math.log(self.pole_radius))

    def coefficients(self, hz: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        """The (b, a) of the all-pass centred at `hz`, as scipy.signal.lfilter takes them."""
        z0 = self.pole_radius * np.exp(2j * np.pi * hz / sample_rate)
        a = np.array([1.0, -2.0 * z0.real, abs(z0) ** 2])
        return a[::-1].copy(), a

    def response(self, hz: np.ndarray, sample_rate: int, n_fft: int, device: torch.device) -> torch.Tensor:
        """H(e^jw) on the rfft grid of size n_fft for each centre frequency: complex64 (len(hz), n_fft // 2 + 1)."""
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        omega = torch.as_tensor(2 * np.pi * np.asarray(hz) / sample_rate, dtype=dtype, device=device)[:, None]
        w = torch.arange(n_fft // 2 + 1, dtype=dtype, device=device) * (2 * math.pi / n_fft)
        r = self.pole_radius

        def angle(theta: torch.Tensor) -> torch.Tensor:
            # arg(1 - r e^{j theta}); 1 - r cos(theta) >= 1 - r > 0, so there is no cancellation.
            return torch.atan2(-r * torch.sin(theta), 1 - r * torch.cos(theta))

        phase = -2 * w - 2 * (angle(omega - w) + angle(-omega - w))
        return torch.polar(torch.ones_like(phase), phase).to(torch.complex64)

    def apply(self, x: torch.Tensor, params: Params, sample_rate: int) -> torch.Tensor:
        """Filter the active rows through their all-pass, as a zero-state causal IIR filter would."""
        self.check_sample_rate(sample_rate)
        out = x.clone()
        active = np.asarray(params["active"], dtype=bool)
        if not active.any():
            return out
        index = _active_index(active, x)
        length = x.shape[-1]
        n_fft = _fast_fft_size(length + self.impulse_length())
        h = self.response(np.asarray(params["hz"])[active], sample_rate, n_fft, x.device)[:, None, :]
        spectrum = torch.fft.rfft(x[index].float(), n=n_fft, dim=-1)
        out[index] = torch.fft.irfft(spectrum * h, n=n_fft, dim=-1)[..., :length].to(x.dtype)
        return out

    def __repr__(self) -> str:
        """Class, probability, frequency range and pole radius."""
        return f"PhaseMangle(p={self.p}, min_hz={self.min_hz}, max_hz={self.max_hz}, pole_radius={self.pole_radius})"


class Dequantize(Transform):
    """Uniform noise one LSB wide of a `bits`-bit signal in [-1, 1): hides the quantisation grid of the data."""

    def __init__(self, p: float = 1.0, bits: int = 16) -> None:
        """Noise spanning 2 / 2**bits; bits <= 24 because float32 has a 24-bit significand."""
        super().__init__(p)
        self.bits = _check_int("bits", bits, 1, 24)

    @property
    def lsb(self) -> float:
        """One quantisation step of a `bits`-bit signal in [-1, 1)."""
        return 2.0 / 2**self.bits

    def draw(self, batch: int, rng: np.random.Generator) -> Params:
        """`active` and `seed`, one integer seeding the device generator for the whole batch's noise."""
        params = super().draw(batch, rng)
        params["seed"] = np.asarray(rng.integers(0, 2**63 - 1, dtype=np.int64))
        return params

    def apply(self, x: torch.Tensor, params: Params, sample_rate: int) -> torch.Tensor:
        """Add (u - 0.5) * LSB, u ~ U[0, 1), to the active rows."""
        generator = torch.Generator(device=x.device)
        generator.manual_seed(int(params["seed"]))
        # Noise for every row, so a row's noise does not depend on which other rows are active, and for every
        # row of the global batch when x is one rank's share of it (the same noise as in one process).
        start, stop, total = params["rows"].tolist() if "rows" in params else (0, x.shape[0], x.shape[0])
        u = torch.rand((total, *x.shape[1:]), generator=generator, device=x.device, dtype=torch.float32)[start:stop]
        noisy = (x.float() + (u - 0.5) * self.lsb).to(x.dtype)
        return torch.where(_row_mask(params["active"], x), noisy, x)

    def __repr__(self) -> str:
        """Class, probability and bits."""
        return f"Dequantize(p={self.p}, bits={self.bits})"


class RandomGain(Transform):
    """Per-example gain, uniform in decibels (RAVE's gain augmentation returns its input unchanged; this does not)."""

    def __init__(self, p: float = 0.5, min_db: float = -6.0, max_db: float = 6.0) -> None:
        """Gain in dB uniform in [min_db, max_db]."""
        super().__init__(p)
        self.min_db = _check_real("min_db", min_db)
        self.max_db = _check_real("max_db", max_db, self.min_db)

    def draw(self, batch: int, rng: np.random.Generator) -> Params:
        """`active` and `db`, each example's gain in decibels."""
        params = super().draw(batch, rng)
        params["db"] = rng.uniform(self.min_db, self.max_db, batch)
        return params

    def apply(self, x: torch.Tensor, params: Params, sample_rate: int) -> torch.Tensor:
        """Multiply each active row by 10^(db / 20)."""
        gain = torch.as_tensor(10.0 ** (np.asarray(params["db"]) / 20.0), dtype=x.dtype, device=x.device)
        return torch.where(_row_mask(params["active"], x), x * gain.view(-1, *([1] * (x.dim() - 1))), x)

    def __repr__(self) -> str:
        """Class, probability and range."""
        return f"RandomGain(p={self.p}, min_db={self.min_db}, max_db={self.max_db})"


class RandomPitch(Transform):
    """Tape-style pitch change: resample by a rational ratio r, so that every frequency is multiplied by r.

    Resampling changes the length to about T / r. The signal is kept right-aligned: apply returns its input
    length with each active row's last real samples at the end. Samples the resampler's kernel computed
    from the zero padding beyond either edge are dropped, and whatever is missing is left-padded with
    zeros; `extra_samples` makes the input long enough that the padding and the edge samples fall before
    the last `segment` samples, which is all Augment keeps (apply checks this and raises if not).
    """

    #: torchaudio.functional.resample's defaults, passed explicitly because the edge arithmetic depends on them.
    LOWPASS_WIDTH = 6
    ROLLOFF = 0.99

    def __init__(self, p: float = 0.3, max_semitones: float = 2.0, max_denominator: int = 64) -> None:
        """Shift uniform in [-max_semitones, max_semitones], ratio a fraction with denominator <= max_denominator."""
        super().__init__(p)
        self.max_semitones = _check_real("max_semitones", max_semitones, 0.0, 24.0)
        self.max_denominator = _check_int("max_denominator", max_denominator, 1)
        # limit_denominator picks the nearest fraction, which is monotone in its argument, so the extremes
        # of the drawn ratios are the ratios of the extreme shifts.
        self.max_ratio = semitone_ratio(self.max_semitones, self.max_denominator)
        self.min_ratio = semitone_ratio(-self.max_semitones, self.max_denominator)

    def draw(self, batch: int, rng: np.random.Generator) -> Params:
        """`active`, `semitones`, and the ratio as `numerator` / `denominator` (int64 arrays)."""
        params = super().draw(batch, rng)
        semitones = rng.uniform(-self.max_semitones, self.max_semitones, batch)
        ratios = [semitone_ratio(s, self.max_denominator) for s in semitones]
        params["semitones"] = semitones
        params["numerator"] = np.array([r.numerator for r in ratios], dtype=np.int64)
        params["denominator"] = np.array([r.denominator for r in ratios], dtype=np.int64)
        return params

    def _width(self, ratio: Fraction) -> int:
        """Half-width in input samples of torchaudio's resampling kernel for `ratio` (as it computes it)."""
        base = min(ratio.numerator, ratio.denominator) * self.ROLLOFF
        return math.ceil(self.LOWPASS_WIDTH * ratio.numerator / base)

    def _margin(self) -> int:
        """Input samples, beyond the length change, that cover the kernel edges at both ends and rounding."""
        return max(64, 2 * self._width(self.max_ratio) + math.ceil(self.max_ratio) + 3)

    def extra_samples(self, segment: int) -> int:
        """ceil(segment * (r_max - 1)) plus a margin for the resampler's edges; 0 when no shift is possible."""
        if self.max_ratio == 1 and self.min_ratio == 1:
            return 0
        return math.ceil(segment * (self.max_ratio - 1)) + self._margin()

    def _largest_segment(self, length: int) -> int:
        """The largest segment whose input_length fits in `length` (what Augment will keep at most)."""
        segment = max(int((length - self._margin()) / self.max_ratio) + 1, 0)
        while segment > 0 and segment + self.extra_samples(segment) > length:
            segment -= 1
        return segment

    def _shift(self, x: torch.Tensor, ratio: Fraction, segment: int) -> torch.Tensor:
        """Resample x (b, C, L) by `ratio`, right-aligned in length L with only clean samples in the last `segment`."""
        length = x.shape[-1]
        p, q = ratio.numerator, ratio.denominator
        y = AF.resample(x.float(), orig_freq=p, new_freq=q, lowpass_filter_width=self.LOWPASS_WIDTH,
                        rolloff=self.ROLLOFF)
        # Output j sits at input time j * p / q and reads inputs within +-width of it: keep those that read
        # no zero padding.
        width = self._width(ratio)
        first = -(-width * q // p)
        last = min((length - 1 - width) * q // p, y.shape[-1] - 1)
        clean = last - first + 1
        if clean < segment:
            raise RuntimeError(f"RandomPitch: ratio {ratio} leaves {clean} clean samples of {length}, "
                               f"fewer than the segment {segment}; extra_samples is too small")
        y = y[..., first:last + 1]
        if clean >= length:
            return y[..., -length:]
        return torch.nn.functional.pad(y, (length - clean, 0))

    def apply(self, x: torch.Tensor, params: Params, sample_rate: int) -> torch.Tensor:
        """Resample each active row by its ratio, one resample call per distinct ratio."""
        out = x.clone()
        active = np.asarray(params["active"], dtype=bool)
        if not active.any():
            return out
        if x.shape[-1] <= self.extra_samples(0):
            raise ValueError(f"RandomPitch needs more than {self.extra_samples(0)} samples, got {x.shape[-1]}")
        segment = self._largest_segment(x.shape[-1])
        groups: dict[Fraction, list[int]] = {}
        for row in np.flatnonzero(active):
            ratio = Fraction(int(params["numerator"][row]), int(params["denominator"][row]))
            if not self.min_ratio <= ratio <= self.max_ratio:
                raise ValueError(f"RandomPitch: ratio {ratio} outside [{self.min_ratio}, {self.max_ratio}]")
            if ratio != 1:
                groups.setdefault(ratio, []).append(int(row))
        for ratio in sorted(groups):
            index = torch.tensor(groups[ratio], device=x.device)
            out[index] = self._shift(x[index], ratio, segment).to(x.dtype)
        return out

    def __repr__(self) -> str:
        """Class, probability and range."""
        return f"RandomPitch(p={self.p}, max_semitones={self.max_semitones}, max_denominator={self.max_denominator})"


class PolarityInvert(Transform):
    """Flip the sign of the waveform."""

    def __init__(self, p: float = 0.5) -> None:
        """Invert each example with probability p."""
        super().__init__(p)

    def apply(self, x: torch.Tensor, params: Params, sample_rate: int) -> torch.Tensor:
        """Negate the active rows."""
        return torch.where(_row_mask(params["active"], x), -x, x)


class RandomMute(Transform):
    """Replace an example with silence, so the model sees (and must keep) digital silence."""

    def __init__(self, p: float = 0.05) -> None:
        """Mute each example with probability p."""
        super().__init__(p)

    def apply(self, x: torch.Tensor, params: Params, sample_rate: int) -> torch.Tensor:
        """Zero the active rows (zeros rather than x * 0, which would keep -0.0 and turn inf into nan)."""
        return torch.where(_row_mask(params["active"], x), torch.zeros_like(x), x)


class Augment:
    """Named transforms applied in order, on the device, in batch."""

    def __init__(self, sample_rate: int, transforms: Mapping[str, Transform | None] | None = None) -> None:
        """Keep the non-None transforms in order (None lets a config disable one: augment.transforms.gain=null)."""
        self.sample_rate = _check_int("sample_rate", sample_rate, 1)
        if transforms is not None and not isinstance(transforms, Mapping):
            raise ValueError(f"transforms must be a mapping of name to Transform, got {type(transforms).__name__}")
        self.transforms: dict[str, Transform] = {}
        for name, transform in (transforms or {}).items():
            if transform is None:
                continue
            if not isinstance(transform, Transform):
                raise ValueError(f"transforms.{name} must be a Transform, got {type(transform).__name__}")
            transform.check_sample_rate(self.sample_rate)
            self.transforms[str(name)] = transform

    def input_length(self, segment: int) -> int:
        """Samples to feed __call__ so that it returns `segment` real samples."""
        return segment + max((t.extra_samples(segment) for t in self.transforms.values()), default=0)

    def __call__(self, x: torch.Tensor, rng: np.random.Generator, segment: int, rows: slice | None = None,
                 batch: int | None = None) -> torch.Tensor:
        """Augment x (B, C, input_length(segment)) and return its last `segment` samples.

        With `rows`, x is those rows of a global batch of `batch` examples (one rank's share under torchrun):
        the parameters are drawn for the whole batch and each row gets its own, as in one process.
        """
        if x.dim() != 3:
            raise ValueError(f"x must be (batch, channels, time), got shape {tuple(x.shape)}")
        if x.shape[-1] < self.input_length(segment):
            raise ValueError(f"x has {x.shape[-1]} samples, fewer than input_length({segment}) = "
                             f"{self.input_length(segment)}")
        total = x.shape[0] if rows is None else int(batch)
        for transform in self.transforms.values():
            params = transform.draw(total, rng)
            x = transform.apply(x, params if rows is None else _take_rows(params, rows, total), self.sample_rate)
        return x[..., -segment:].contiguous()

    def __bool__(self) -> bool:
        """False when there is nothing to do, so the training loop can skip augmentation."""
        return bool(self.transforms)

    def describe(self) -> str:
        """One line: each transform's name and probability in order, or "none"."""
        return ", ".join(f"{name}(p={t.p})" for name, t in self.transforms.items()) or "none"

    def __repr__(self) -> str:
        """Sample rate and transforms."""
        return f"Augment(sample_rate={self.sample_rate}, transforms={self.transforms!r})"
