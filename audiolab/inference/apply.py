"""`audiolab apply`: run a trained model over audio files in overlapping, cross-faded windows.

A file is never held whole: it is read in blocks, resampled to the run's rate with the streaming
resampler training's data preparation uses, cut into windows of the run's segment length (a quarter of
each overlapping the next), run through the model a batch of windows at a time, cross-faded back
together with complementary sin^2 / cos^2 fades (which sum to exactly 1, so a model that is the identity
gives the input back), resampled to the file's own rate and written block by block. Memory is a few
windows and blocks whatever the file's length.

Channels follow the run: a mono model restores each channel of a file on its own; a stereo model gets a
mono file duplicated (as training's data did) and its output mixed back to mono.

Autoencoders: `latents` writes the posterior mean of each window, keeping each window's central frames,
as `.npy` (channels, latent, frames) with a JSON of what `decode` needs to go back to the file's rate and
length; `decode` turns such files back into audio.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from audiolab.common.files import atomic_path, atomic_write_text
from audiolab.data.decode import StreamingResampler
from audiolab.inference.run_model import RunModel
from audiolab.models.pqmf_vae import EVAL_NOISE_SEED
from audiolab.train.device import autocast

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
READ_FRAMES = 1 << 16
MODES = ("audio", "latents", "decode")


class ApplyError(ValueError):
    """One input could not be processed; the message names it and says why."""


@dataclass
class Outcome:
    """What became of one input."""

    source: Path
    output: Path | None
    error: str | None = None
    seconds: float = 0.0  # audio seconds processed


def collect_inputs(inputs: list[Path], mode: str) -> list[tuple[Path, Path]]:
    """(file, path relative to the output folder) for each input file, and each audio file under an input folder."""
    suffixes = (".npy",) if mode == "decode" else AUDIO_EXTENSIONS
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        if item.is_dir():
            found += [(f, f.relative_to(item)) for f in sorted(item.rglob("*"))
                      if f.is_file() and f.suffix.lower() in suffixes]
        else:
            found.append((item, Path(item.name)))
    return found


class Windows:
    """Window arithmetic at the model's rate: length W (a multiple of the hop), overlap O, step S = W - O."""

    def __init__(self, length: int, hop: int, overlap: float = 0.25) -> None:
        self.length = length
        # A whole number of double hops (so the latents' stitching can split it in two), at most half a window.
        unit = 2 * hop
        self.overlap = min(max(unit, round(length * overlap / unit) * unit), length // 2 // unit * unit)
        self.step = length - self.overlap
        t = (np.arange(self.overlap) + 0.5) / max(self.overlap, 1)
        self.fade_in = (np.sin(np.pi / 2 * t) ** 2).astype(np.float32)

    def count(self, samples: int) -> int:
        """Windows needed to cover `samples` (the last one zero-padded)."""
        return max(1, math.ceil(max(samples - self.overlap, 1) / self.step))


class CrossFader:
    """Joins consecutive window outputs (C, W): each overlap is fade_out * previous + fade_in * next."""

    def __init__(self, windows: Windows) -> None:
        self.w = windows
        self.pending: np.ndarray | None = None

    def add(self, y: np.ndarray, last: bool) -> np.ndarray:
        """The samples that are final once window y is added."""
        o, s = self.w.overlap, self.w.step
        y = y.copy()
        if self.pending is not None and o:
            y[:, :o] = self.pending * (1 - self.w.fade_in) + y[:, :o] * self.w.fade_in
        if last:
            self.pending = None
            return y
        self.pending = y[:, s:]
        return y[:, :s]


def _check_finite(block: np.ndarray, what: str, offset: int = 0) -> None:
    """Raise ApplyError naming the first NaN or infinite value (by its index along the first axis)."""
    bad = ~np.isfinite(block)
    if bad.any():
        index = int(np.argwhere(bad)[0][0])
        raise ApplyError(f"{what} {offset + index} is {'NaN' if np.isnan(block[bad][0]) else 'infinite'}")


class ModelRunner:
    """The run's model on batches of windows, with the run's channel handling and autocast."""

    def __init__(self, run: RunModel, batch: int) -> None:
        self.run, self.batch = run, max(1, batch)

    def _items(self, window: np.ndarray) -> torch.Tensor:
        """(C_file, W) -> model inputs (N, C_model, W)."""
        c_file, c_model = window.shape[0], self.run.channels
        x = torch.from_numpy(window)
        if c_model == c_file:
            return x[None]
        if c_model == 1:
            return x[:, None]
        if c_file == 1:
            return x.expand(c_model, -1)[None]
        raise ApplyError(f"{c_file} channels, but the model takes {c_model} (and 1-channel files)")

    def _back(self, y: torch.Tensor, c_file: int, latent: bool = False) -> np.ndarray:
        """Model outputs (N, C_model, T) -> (C_file, T); latents (N, latent, F) -> (N, latent, F)."""
        c_model = self.run.channels
        if latent:
            return y.numpy()
        if c_model == c_file:
            return y[0].numpy()
        if c_model == 1:
            return y[:, 0].numpy()
        return y[0].mean(0, keepdim=True).numpy()

    @torch.no_grad()
    def map(self, windows: list[np.ndarray], fn: str = "forward") -> list[np.ndarray]:
        """The model's forward (or encode) on each window (C_file, W), batched on the device."""
        items = [self._items(w) for w in windows]
        flat = torch.cat(items)
        results = []
        for start in range(0, len(flat), self.batch):
            x = flat[start:start + self.batch].to(self.run.device)
            with autocast(self.run.device, self.run.amp):
                y = self.run.model.encode(x)[0] if fn == "encode" else self.run.model(x)
            results.append(y.float().cpu())
        y_all = torch.cat(results)
        out, start = [], 0
        for w, item in zip(windows, items, strict=True):
            out.append(self._back(y_all[start:start + len(item)], w.shape[0], latent=fn == "encode"))
            start += len(item)
        return out


def _read_model_rate(handle: sf.SoundFile, rate: int, name: str) -> Iterator[np.ndarray]:
    """The file as (channels, n) blocks at the model's rate, checked for NaN and infinities."""
    resampler = StreamingResampler(handle.samplerate, rate, handle.channels)
    read = 0
    while True:
        try:
            block = handle.read(READ_FRAMES, dtype="float32", always_2d=True)
        except sf.LibsndfileError as err:
            raise ApplyError(f"decoding failed after {read} frames: {err.error_string.strip()}") from None
        if len(block) == 0:
            break
        _check_finite(block, "input sample", read)
        read += len(block)
        out = resampler.push(block)
        if len(out):
            yield out.T
    tail = resampler.flush()
    if len(tail):
        yield tail.T


class _Buffer:
    """A (channels, n) FIFO of samples."""

    def __init__(self, channels: int) -> None:
        self.data = np.zeros((channels, 0), np.float32)

    def push(self, x: np.ndarray) -> None:
        self.data = np.concatenate([self.data, x], axis=1)

    def pop(self, n: int) -> np.ndarray:
        out, self.data = self.data[:, :n], self.data[:, n:]
        return out


def _model_windows(blocks: Iterator[np.ndarray], w: Windows, total: int, channels: int) -> Iterator[np.ndarray]:
    """Windows (C, W) of the model-rate signal of `total` samples, zero-padded at the end."""
    buf = _Buffer(channels)
    for _ in range(w.count(total)):
        while buf.data.shape[1] < w.length:
            block = next(blocks, None)
            if block is None:
                buf.push(np.zeros((channels, w.length - buf.data.shape[1]), np.float32))
                break
            buf.push(block)
        window = buf.data[:, :w.length].copy()
        buf.pop(w.step)
        yield window


LOSSY_FORMATS = ("MP3", "OGG", "MPEG")  # re-encoding would pad or trim the length: written as FLAC instead


def _output_format(handle: sf.SoundFile, out: Path) -> tuple[Path, str, str]:
    """The output path, format and subtype: the input's, except lossy files (FLAC, 24 bit) and unwritable ones."""
    fmt, subtype = handle.format, handle.subtype
    if fmt in LOSSY_FORMATS:
        return out.with_suffix(".flac"), "FLAC", "PCM_24"
    if sf.check_format(fmt, subtype):
        return out, fmt, subtype
    return out.with_suffix(".wav"), "WAV", "FLOAT"


def _finish(out: sf.SoundFile, back: StreamingResampler, frames: int, written: int) -> None:
    """Write the resampler's last samples, cropped or zero-padded (its rounding) to exactly `frames`."""
    tail = back.flush()[:frames - written]
    out.write(tail)
    written += len(tail)
    if written < frames:
        out.write(np.zeros((frames - written, out.channels), np.float32))


class Applier:
    """Applies one run to files (see the module docstring)."""

    def __init__(self, run: RunModel, batch: int = 8, progress: bool = True, overlap: float = 0.25) -> None:
        self.run = run
        self.runner = ModelRunner(run, batch)
        self.windows = Windows(run.segment, run.hop, overlap)
        self.batch = max(1, batch)
        self.progress = progress

    def _bar(self, total: int, name: str) -> tqdm:
        return tqdm(total=total, desc=name, unit="win", disable=not self.progress, leave=False, dynamic_ncols=True)

    def _batches(self, windows: Iterator[np.ndarray], bar: tqdm) -> Iterator[np.ndarray]:
        """The model's output for each window, in order, computed a batch at a time."""
        pending: list[np.ndarray] = []
        for window in windows:
            pending.append(window)
            if len(pending) * (window.shape[0] if self.run.channels == 1 else 1) >= self.batch:
                yield from self._run(pending, bar)
                pending = []
        if pending:
            yield from self._run(pending, bar)

    def _run(self, pending: list[np.ndarray], bar: tqdm, fn: str = "forward") -> list[np.ndarray]:
        outs = self.runner.map(pending, fn)
        for i, y in enumerate(outs):
            _check_finite(y.reshape(-1), f"the model's output at window {bar.n + i}, value")
        bar.update(len(pending))
        return outs

    def audio(self, source: Path, target: Path) -> tuple[Path, float]:
        """Restore (or reconstruct) one file; return the written path and the audio seconds."""
        sr = self.run.sample_rate
        with sf.SoundFile(str(source)) as handle:
            frames, rate, channels = handle.frames, handle.samplerate, handle.channels
            if frames <= 0:
                raise ApplyError("no audio frames")
            total = -(-frames * sr // rate)
            target, fmt, subtype = _output_format(handle, target)
            target.parent.mkdir(parents=True, exist_ok=True)
            windows = _model_windows(_read_model_rate(handle, sr, source.name), self.windows, total, channels)
            back = StreamingResampler(sr, rate, channels)
            fader = CrossFader(self.windows)
            n_windows = self.windows.count(total)
            written = 0
            with atomic_path(target) as tmp, sf.SoundFile(str(tmp), "w", rate, channels, subtype, format=fmt) as out, \
                    self._bar(n_windows, source.name) as bar:
                def write(model_rate: np.ndarray) -> None:
                    nonlocal written
                    block = back.push(np.ascontiguousarray(model_rate.T))[:frames - written]
                    out.write(block)
                    written += len(block)
                for i, y in enumerate(self._batches(windows, bar)):
                    write(fader.add(y, last=i == n_windows - 1))
                _finish(out, back, frames, written)
        return target, frames / rate

    def latents(self, source: Path, target: Path) -> tuple[Path, float]:
        """Encode one file: the central frames of each window's posterior mean, as .npy plus its JSON."""
        sr, hop, w = self.run.sample_rate, self.run.hop, self.windows
        with sf.SoundFile(str(source)) as handle:
            frames, rate, channels = handle.frames, handle.samplerate, handle.channels
            if frames <= 0:
                raise ApplyError("no audio frames")
            total = -(-frames * sr // rate)
            n_windows, n_frames = w.count(total), -(-total // hop)
            windows = _model_windows(_read_model_rate(handle, sr, source.name), w, total, channels)
            parts: list[np.ndarray] = []
            keep_from = w.overlap // 2 // hop
            with self._bar(n_windows, source.name) as bar:
                for i, window in enumerate(windows):
                    z = self._run([window], bar, "encode")[0]  # (C, latent, W / hop)
                    first = 0 if i == 0 else keep_from
                    last = z.shape[-1] if i == n_windows - 1 else (w.step // hop) + keep_from
                    parts.append(z[..., first:last])
        latents = np.concatenate(parts, axis=-1)[..., :n_frames]
        target = target.with_suffix(".npy")
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, latents.astype(np.float32))
        meta = {"run": self.run.run_dir.name, "checkpoint": self.run.checkpoint, "step": self.run.step,
                "sample_rate": sr, "hop": hop, "latent_rate_hz": sr / hop, "shape": list(latents.shape),
                "source": source.name, "source_rate": rate, "source_channels": channels, "source_frames": frames}
        atomic_write_text(target.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
        return target, frames / rate

    def decode(self, source: Path, target: Path) -> tuple[Path, float]:
        """Latents (.npy from `latents`) back to audio, at the source file's rate and length when its JSON says."""
        sr, hop, w = self.run.sample_rate, self.run.hop, self.windows
        try:
            z = np.load(source)
        except (OSError, ValueError) as err:
            raise ApplyError(f"not a .npy array: {err}") from None
        latent = int(self.run.model.latent_size)
        if z.ndim == 2:
            z = z[None]
        if z.ndim != 3 or z.shape[1] != latent:
            raise ApplyError(f"latents of shape {list(z.shape)}: expected (channels, {latent}, frames)")
        _check_finite(z.reshape(-1), "latent value")
        meta_path = source.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        rate = int(meta.get("source_rate", sr))
        frames = int(meta.get("source_frames", -(-z.shape[-1] * hop * rate // sr)))
        channels = z.shape[0] if self.run.channels == 1 else self.run.channels
        if meta.get("source_channels"):
            channels = int(meta["source_channels"])
        total = z.shape[-1] * hop
        n_windows = w.count(total)
        step_frames, win_frames = w.step // hop, w.length // hop
        back = StreamingResampler(sr, rate, channels)
        fader = CrossFader(w)
        target = target.with_suffix(".wav")
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with atomic_path(target) as tmp, sf.SoundFile(str(tmp), "w", rate, channels, "FLOAT", format="WAV") as out, \
                self._bar(n_windows, source.name) as bar:
            for i in range(n_windows):
                piece = z[..., i * step_frames:i * step_frames + win_frames]
                piece = np.pad(piece, ((0, 0), (0, 0), (0, win_frames - piece.shape[-1])))
                y = self._run_decode(piece, bar)  # (C, W)
                if y.shape[0] != channels:
                    y = np.repeat(y, channels, axis=0) if y.shape[0] == 1 else y.mean(0, keepdims=True)
                block = back.push(np.ascontiguousarray(fader.add(y, last=i == n_windows - 1).T))[:frames - written]
                out.write(block)
                written += len(block)
            _finish(out, back, frames, written)
        return target, frames / rate

    def _run_decode(self, piece: np.ndarray, bar: tqdm) -> np.ndarray:
        """Decode (C_latent, latent, frames) -> (C, W) audio."""
        x = torch.from_numpy(np.ascontiguousarray(piece, dtype=np.float32)).to(self.run.device)
        with torch.no_grad(), autocast(self.run.device, self.run.amp):
            y = self.run.model.decode(x, torch.Generator(device=x.device).manual_seed(EVAL_NOISE_SEED)).float().cpu()
        bar.update(1)
        y_np = y.reshape(-1, y.shape[-1]).numpy() if self.run.channels == 1 else y[0].numpy()
        _check_finite(y_np.reshape(-1), f"the model's output at window {bar.n - 1}, value")
        return y_np


def apply_run(run: RunModel, inputs: list[Path], out_dir: Path, mode: str = "audio", batch: int = 8,
              progress: bool = True) -> list[Outcome]:
    """Apply the run to every input; a bad input becomes an Outcome with its error, and the others go on."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: allowed {', '.join(MODES)}")
    if mode != "audio" and run.task != "autoencode":
        raise ValueError(f"--{mode} needs an autoencoder run (task=autoencode); {run.run_dir.name} is task={run.task}")
    applier = Applier(run, batch, progress)
    work = {"audio": applier.audio, "latents": applier.latents, "decode": applier.decode}[mode]
    outcomes: list[Outcome] = []
    for source, rel in collect_inputs(inputs, mode):
        try:
            written, seconds = work(source, out_dir / rel)
            outcomes.append(Outcome(source, written, seconds=seconds))
        except ApplyError as err:
            outcomes.append(Outcome(source, None, str(err)))
        except sf.LibsndfileError as err:
            outcomes.append(Outcome(source, None, f"not readable as audio: {err.error_string.strip().rstrip('.')}"))
        except (OSError, RuntimeError) as err:
            outcomes.append(Outcome(source, None, f"{type(err).__name__}: {err}"))
    return outcomes
