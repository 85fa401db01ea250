"""Decode one source file into float blocks at the dataset's rate and channel count, never whole.

A file is read in blocks with soundfile, checked (NaN/Inf, silence), mixed to the target channels and
resampled with a streaming wrapper around torchaudio's resampler. The result goes to a float32 shard
on disk; the cache builder later scales it (normalisation, clipping guard) into the cache. Peak memory
is a few blocks whatever the file's length. Every way a file can be unusable becomes a `FileResult`
with a one-line reason instead of an exception.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio.transforms as AT

from audiolab.data.loudness import LoudnessMeter

BLOCK_FRAMES = 1 << 17  # ~3 s at 44.1 kHz per read: bounded memory, few Python round trips
SILENCE_PEAK = 2.0 ** -16  # below half a 16-bit LSB: the file would store as all zeros
FULL_SCALE = 0.999  # a source sample at or above this (in magnitude) counts as clipped
CLIPPED_NOTE_FRACTION = 0.01  # a note when more than 1 % of the source samples are clipped
# libsndfile's text when it cannot open a file it does not recognise, whatever the cause: useless as a reason.
_GENERIC_OPEN_ERROR = "File does not exist or is not a regular file"
# What mpg123 (inside libsndfile) prints to the C stderr about a damaged MP3, e.g. "Note: Illegal
# Audio-MPEG-Header 0x9690336e at offset 2084." or "[src/libmpg123/id3.c:...] error: Bad tag length".
_MPG123_LINE = re.compile(r"^(Note|Warning|\[src/libmpg123[^\]]*\]\s*(error|warning)?):?\s*", re.IGNORECASE)


class StreamingResampler:
    """torchaudio's sinc resampler applied block by block, equal to resampling the whole signal at once.

    Why not torchaudio alone: `torchaudio.functional.resample` needs the whole signal, and torchaudio
    2.11 no longer ships a streaming reader. Its kernel maps each group of `orig` input samples (rates
    divided by their gcd) to `new` outputs and looks `width` samples to either side, so processing
    input in chunks aligned to `orig`, with `width` (rounded up to a multiple of `orig`) of real
    context on both sides, reproduces the one-shot result up to float rounding.
    """

    def __init__(self, orig_freq: int, new_freq: int, channels: int) -> None:
        self.identity = orig_freq == new_freq
        gcd = math.gcd(orig_freq, new_freq)
        self.orig, self.new = orig_freq // gcd, new_freq // gcd
        self.context = 0
        if not self.identity:
            self.resample = AT.Resample(orig_freq, new_freq)
            self.context = -(-self.resample.width // self.orig) * self.orig  # >= width, a multiple of orig
        # Input kept from global frame (done * orig - context) on; zeros stand in before the start.
        self.buffer = np.zeros((self.context, channels), np.float32)
        self.done = 0  # output groups (of `new` samples) already emitted
        self.received = 0

    def _run(self, chunk: np.ndarray, groups: int) -> np.ndarray:
        out = self.resample(torch.from_numpy(np.ascontiguousarray(chunk.T)))
        skip = self.context // self.orig * self.new
        return out[:, skip:skip + groups * self.new].T.numpy()

    def push(self, block: np.ndarray) -> np.ndarray:
        """Feed (frames, channels) input; return the output frames that are now final."""
        if self.identity:
            return block
        self.received += len(block)
        self.buffer = np.concatenate([self.buffer, block.astype(np.float32, copy=False)])
        groups = (len(self.buffer) - 2 * self.context) // self.orig  # each needs `context` on its right
        if groups <= 0:
            return np.zeros((0, self.buffer.shape[1]), np.float32)
        out = self._run(self.buffer[:2 * self.context + groups * self.orig], groups)
        self.buffer = self.buffer[groups * self.orig:]
        self.done += groups
        return out

    def flush(self) -> np.ndarray:
        """The remaining output, as if the signal ended with zeros (torchaudio's edge handling)."""
        if self.identity:
            return np.zeros((0, self.buffer.shape[1]), np.float32)
        total = -(-self.received * self.new // self.orig)  # torchaudio's output length: ceil
        remaining = total - self.done * self.new
        if remaining <= 0:
            return np.zeros((0, self.buffer.shape[1]), np.float32)
        groups = -(-remaining // self.new)
        padded = np.concatenate([self.buffer, np.zeros((groups * self.orig + self.context, self.buffer.shape[1]),
                                                       np.float32)])
        out = self._run(padded[:2 * self.context + groups * self.orig], groups)
        return out[:remaining]


class _Moments:
    """Running peak, mean and standard deviation of (frames, channels) blocks (float64 sums)."""

    def __init__(self) -> None:
        self.n, self.total, self.squares, self.peak = 0, 0.0, 0.0, 0.0

    def update(self, block: np.ndarray) -> None:
        values = block.astype(np.float64, copy=False)
        self.n += values.size
        self.total += float(values.sum())
        self.squares += float(np.square(values).sum())
        self.peak = max(self.peak, float(np.abs(values).max())) if values.size else self.peak

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def rms(self) -> float:
        return math.sqrt(self.squares / self.n) if self.n else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(max(0.0, self.squares / self.n - self.mean ** 2)) if self.n else 0.0


def mix_channels(block: np.ndarray, channels: int) -> np.ndarray:
    """(frames, C) to (frames, channels): mono is the mean; stereo repeats mono or keeps the first two."""
    have = block.shape[1]
    if have == channels:
        return block
    if channels == 1:
        return block.mean(axis=1, keepdims=True, dtype=np.float32)
    if have == 1:
        return np.repeat(block, channels, axis=1)
    if have > channels:  # WAV channel order puts front left/right first
        return block[:, :channels]
    raise ValueError(f"cannot make {channels} channels from {have}")


@dataclass
class FileResult:
    """What decoding one file gave: usable frames at the target rate, or the reason it was skipped."""

    rel: str
    reason: str | None = None  # None: usable
    frames: int = 0  # at the target rate
    source_rate: int = 0
    source_channels: int = 0
    subtype: str = ""
    peak: float = 0.0  # of the decoded, mixed and resampled audio
    lufs: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the file is usable."""
        return self.reason is None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy for the cache index."""
        data = asdict(self)
        if data["lufs"] is not None and not math.isfinite(data["lufs"]):
            data["lufs"] = None
        return data


def _open_reason(path: Path, err: BaseException) -> str:
    """A one-line reason for a file that could not be opened or read."""
    if isinstance(err, PermissionError):
        return "not readable: permission denied"
    if isinstance(err, OSError) and err.errno == errno.ELOOP:
        return "symlink loop"
    if isinstance(err, FileNotFoundError):
        return "vanished before it could be read"
    if isinstance(err, sf.LibsndfileError):
        message = err.error_string.strip().rstrip(".") or str(err)
        return f"not readable as audio: {message}"
    return f"not readable as audio: {type(err).__name__}: {err}"


@contextlib.contextmanager
def _decoder_messages() -> Iterator[list[str]]:
    """Capture what C code prints to fd 2 meanwhile: mpg123's lines are kept for reasons, the rest re-printed.

    mpg123 writes its diagnostics straight to the C stderr (libsndfile offers no hook), so they would
    interleave with the progress bar, and they hold the only true account of a damaged MP3.
    """
    lines: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (a daemon): nothing would be printed anyway
        yield lines
        return
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            other = []
            for line in sink.read().decode("utf-8", "replace").splitlines():
                (lines if _MPG123_LINE.match(line) else other).append(line)
            if other:
                sys.stderr.write("\n".join(other) + "\n")


def _mpg123_summary(lines: list[str], limit: int = 2) -> str:
    """mpg123's first distinct complaints, without their prefixes, for a reason or a note."""
    seen: list[str] = []
    for line in lines:
        text = _MPG123_LINE.sub("", line).strip().rstrip(".")
        text = re.sub(r"^INT123_\w+\(\):\d+\]\s*", "", text)
        if line.lower().startswith("warning"):  # e.g. a Xing header's size off: truncation, noted on its own
            continue
        if text and not text.startswith("Trying to resync") and text not in seen:
            seen.append(text)
    return "; ".join(seen[:limit])


_SHORT_DATA_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be \d+\)", re.MULTILINE)
_BLOCK_ALIGN = re.compile(r"^\s*Block Align\s*:\s*(\d+)", re.MULTILINE)


def _declared_frames(handle: sf.SoundFile) -> int:
    """Frames the header declares (-1 when unknown).

    For a WAV cut short libsndfile quietly trims `frames` to what is there, and says so only in its log
    ("data : 176400 (should be 88178)"), which is where the header's own figure is read from.
    """
    if not handle.seekable():
        return -1
    log = handle.extra_info
    short, align = _SHORT_DATA_CHUNK.search(log), _BLOCK_ALIGN.search(log)
    if short and align and int(align[1]) > 0:
        return max(handle.frames, int(short[1]) // int(align[1]))
    return handle.frames


def _blocks(handle: sf.SoundFile) -> Iterator[np.ndarray]:
    while True:
        block = handle.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
        if len(block) == 0:
            return
        yield block


def decode_file(path: Path, rel: str, sample_rate: int, channels: int, shard: Path | None,
                measure_loudness: bool = False) -> FileResult:
    """Decode `path` into `shard` (raw float32 frames at `sample_rate`); never raises for bad input."""
    with _decoder_messages() as messages:
        result = _decode_file(path, rel, sample_rate, channels, shard, measure_loudness)
    complaint = _mpg123_summary(messages)
    if complaint and result.reason and _GENERIC_OPEN_ERROR in result.reason:
        result.reason = f"not a readable MP3: no valid MPEG audio frame (mpg123: {complaint})"
    elif complaint and result.reason and result.reason.startswith("decoding failed"):
        result.reason = f"{result.reason.split(': ', 1)[0]}: damaged MPEG data (mpg123: {complaint})"
    elif complaint and result.ok:
        result.notes.append(f"damaged MPEG data skipped by the decoder (mpg123: {complaint})")
    return result


def _decode_file(path: Path, rel: str, sample_rate: int, channels: int, shard: Path | None,
                 measure_loudness: bool) -> FileResult:
    result = FileResult(rel)
    try:
        size = os.stat(path).st_size
        if size == 0:
            result.reason = "empty file (0 bytes)"
            return result
        os.close(os.open(path, os.O_RDONLY))  # libsndfile reports a permission problem as "System error"
        handle = sf.SoundFile(path)
    except Exception as err:  # noqa: BLE001 - every failure to open is a skip reason
        result.reason = _open_reason(path, err)
        return result

    with handle:
        result.source_rate, result.source_channels, result.subtype = handle.samplerate, handle.channels, handle.subtype
        declared = _declared_frames(handle)
        resampler = StreamingResampler(handle.samplerate, sample_rate, channels)
        meter = LoudnessMeter(sample_rate, channels) if measure_loudness else None
        source_peak, read, clipped = 0.0, 0, 0
        mixed = _Moments()  # of what training sees: after the channel mix, before resampling
        out = shard.open("wb") if shard is not None else None
        try:
            def emit(frames: np.ndarray) -> None:
                if len(frames) == 0:
                    return
                result.frames += len(frames)
                result.peak = max(result.peak, float(np.abs(frames).max()))
                if meter is not None:
                    meter.update(frames)
                if out is not None:
                    out.write(np.ascontiguousarray(frames, np.float32).tobytes())

            for block in _blocks(handle):
                finite = np.isfinite(block)
                if not finite.all():
                    bad = read + int(np.argmin(finite.all(axis=1)))
                    result.reason = f"non-finite samples (NaN or Inf) at {bad / handle.samplerate:.3f} s"
                    return result
                magnitude = np.abs(block)
                source_peak = max(source_peak, float(magnitude.max()))
                clipped += int(np.count_nonzero(magnitude >= FULL_SCALE))
                read += len(block)
                block = mix_channels(block, channels)
                mixed.update(block)
                emit(resampler.push(block))
            emit(resampler.flush())
        except Exception as err:  # noqa: BLE001 - a decode error mid-file is a skip reason too
            result.reason = f"decoding failed after {read} frames: {_open_reason(path, err).split(': ', 1)[-1]}"
            return result
        finally:
            if out is not None:
                out.close()

    if read == 0:
        result.reason = "no audio frames"
    elif source_peak < SILENCE_PEAK:
        result.reason = "digital silence (every sample is zero or below half a 16-bit LSB)"
    elif mixed.rms < SILENCE_PEAK and result.source_channels > channels:
        result.reason = (f"silent once mixed to {channels} channel{'s' if channels > 1 else ''}: its "
                         f"{result.source_channels} channels cancel (out of phase)")
    elif mixed.rms < SILENCE_PEAK:
        result.reason = "near silence (its RMS is below half a 16-bit LSB)"
    elif mixed.std < SILENCE_PEAK:
        result.reason = f"a constant signal (DC at {mixed.mean:+.4f}, no variation): no audio in it"
    # a float file above full scale is not clipped (the clipping guard scales it); one pinned at full scale is
    if result.ok and source_peak <= 1.0 and clipped > CLIPPED_NOTE_FRACTION * read * max(1, result.source_channels):
        share = 100 * clipped / (read * max(1, result.source_channels))
        result.notes.append(f"clipped: {share:.1f} % of its samples are at full scale")
    if declared > 0 and read < declared:
        result.notes.append(f"truncated: read {read} of {declared} declared frames")
    if meter is not None and result.ok:
        result.lufs = meter.lufs()
    return result
