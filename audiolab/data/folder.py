"""Folder datasets: any directory of audio files, preprocessed once into a memory-mapped cache.

`data=folder data.path=DIR` scans DIR recursively for wav, flac, ogg, mp3 and aiff, decodes every file
in blocks (see `audiolab.data.decode`), mixes it to `data.channels`, resamples it to
`data.sample_rate`, optionally normalises it, and stores it in one int16 (or float16) memory map.

The cache key covers the file list with sizes and mtimes and every preprocessing parameter, so any
change rebuilds it and an unchanged folder reuses it after a stat of each file. The split and the
crop length are not in the key: the train/validation split is a hash of each file's relative path
(adding files never moves old ones), and files shorter than one segment are left out when the cache
is loaded, so sweeping `data.segment` or `data.val_fraction` never rebuilds anything.

Bad input never stops preprocessing: each unusable file is skipped with a one-line reason, listed by
`audiolab data prepare` and in the run's log. Training reads only the cache, so a source file that
changes or disappears afterwards cannot affect a run.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import errno
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import stat
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from audiolab.common.locks import file_lock
from audiolab.data.clips import CACHE_FORMAT, DTYPES, AudioData, ClipCache, ClipCacheWriter, read_clip_cache
from audiolab.data.decode import FileResult, decode_file
from audiolab.data.loudness import gain_to_lufs

log = logging.getLogger(__name__)

EXTENSIONS = ("wav", "flac", "ogg", "mp3", "aiff", "aif")
NORMALIZE = ("none", "peak", "loudness")
_INT16_MAX = 32767 / 32768
_SHOWN_SKIPS = 20  # in a training log; `audiolab data prepare` lists every one


class DataError(ValueError):
    """The dataset cannot be built (missing folder, no usable file); the message says which and why."""


@dataclass(frozen=True)
class SourceFile:
    """One candidate audio file found by the scan."""

    path: Path
    rel: str  # relative to its root, POSIX separators; prefixed "val:" when it comes from data.val_path
    size: int
    mtime_ns: int
    role: str  # "any" (split by hash) | "train" | "val" (from explicit folders)


@dataclass
class Scan:
    """What a folder scan found: candidate files, files it could not even stat, and ignored others."""

    files: list[SourceFile] = field(default_factory=list)
    skipped: list[FileResult] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)  # extension -> count of non-audio files


def scan_folder(root: Path, role: str = "any", extensions: Sequence[str] = EXTENSIONS, prefix: str = "",
                scan: Scan | None = None) -> Scan:
    """Find audio files under root recursively, following symlinks but never a directory twice."""
    scan = scan or Scan()
    root = Path(root)
    try:
        root_stat = os.stat(root)
    except OSError as err:
        raise DataError(f"{root}: {err.strerror or err}") from err
    if not stat.S_ISDIR(root_stat.st_mode):
        raise DataError(f"{root}: not a directory")
    wanted = {e.lower().lstrip(".") for e in extensions}
    visited = {(root_stat.st_dev, root_stat.st_ino)}
    pending = [(root, "")]
    while pending:
        directory, rel_dir = pending.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as err:
            scan.skipped.append(FileResult(prefix + rel_dir + "/", reason=f"directory not readable: {err.strerror}"))
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                info = entry.stat(follow_symlinks=True)
            except OSError as err:
                if entry.name.rsplit(".", 1)[-1].lower() in wanted or entry.is_symlink():
                    reason = "symlink loop" if err.errno == errno.ELOOP else \
                        "broken symlink" if err.errno == errno.ENOENT else f"cannot stat: {err.strerror}"
                    scan.skipped.append(FileResult(prefix + rel, reason=reason))
                continue
            if stat.S_ISDIR(info.st_mode):
                if (info.st_dev, info.st_ino) in visited:
                    reason = "symlink loop: directory already scanned"
                    scan.skipped.append(FileResult(prefix + rel + "/", reason=reason))
                else:
                    visited.add((info.st_dev, info.st_ino))
                    pending.append((Path(entry.path), rel))
                continue
            extension = entry.name.rsplit(".", 1)[-1].lower() if "." in entry.name else ""
            if extension not in wanted:
                scan.ignored["." + extension if extension else "(no extension)"] += 1
                continue
            scan.files.append(SourceFile(Path(entry.path), prefix + rel, info.st_size, info.st_mtime_ns, role))
    scan.files.sort(key=lambda f: f.rel)
    return scan


def split_score(rel: str) -> float:
    """A number in [0, 1) fixed by the file's relative path; files below val_fraction validate."""
    return int.from_bytes(hashlib.sha1(rel.encode()).digest()[:8], "big") / 2.0 ** 64


@dataclass(frozen=True)
class Preprocessing:
    """Everything that changes the cached audio (and so is part of the cache key)."""

    sample_rate: int = 44100
    channels: int = 1
    dtype: str = "int16"
    normalize: str = "none"
    peak_db: float = -1.0
    loudness_lufs: float = -20.0

    def check(self) -> None:
        """Raise DataError naming the data.* key that is out of range."""
        if self.dtype not in DTYPES:
            raise DataError(f"data.dtype={self.dtype!r}: allowed {', '.join(DTYPES)}")
        if self.normalize not in NORMALIZE:
            raise DataError(f"data.normalize={self.normalize!r}: allowed {', '.join(NORMALIZE)}")
        if self.channels not in (1, 2):
            raise DataError(f"data.channels={self.channels}: allowed 1 or 2")

    def gain(self, result: FileResult) -> tuple[float, str | None]:
        """Linear gain for a decoded file, and a note when the clipping guard lowered it."""
        gain = 1.0
        if self.normalize == "peak" and result.peak > 0:
            gain = 10 ** (self.peak_db / 20) / result.peak
        elif self.normalize == "loudness" and result.lufs is not None:
            gain = gain_to_lufs(result.lufs, self.loudness_lufs)
        if self.dtype != "float32" and result.peak * gain > _INT16_MAX:
            limited = _INT16_MAX / result.peak
            change_db = 20 * math.log10(limited / gain)
            # a full-scale file loses 0.0003 dB to int16's asymmetric range: not worth a note
            return limited, f"scaled by {change_db:+.1f} dB to avoid clipping" if change_db <= -0.05 else None
        return gain, None


def cache_key(scan: Scan, roots: Sequence[Path], params: Preprocessing) -> tuple[str, str]:
    """(key of this exact content, id of the source folders + parameters whatever their content)."""
    source = {"format": CACHE_FORMAT, "roots": [str(Path(r).resolve()) for r in roots], "params": params.__dict__}
    content = {**source, "files": [[f.rel, f.size, f.mtime_ns] for f in scan.files],
               "unstatable": sorted(s.rel for s in scan.skipped)}
    digest = lambda obj: hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]  # noqa: E731
    return digest(content), digest(source)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one file per process; the pool supplies the parallelism


def _decode(args: tuple[str, str, int, int, str, bool]) -> FileResult:
    path, rel, sample_rate, channels, shard, loudness = args
    return decode_file(Path(path), rel, sample_rate, channels, Path(shard), measure_loudness=loudness)


def _decode_all(files: list[SourceFile], params: Preprocessing, shards: Path, workers: int,
                progress: bool) -> list[FileResult]:
    """Decode every file into its shard, in worker processes when workers > 1; results in file order."""
    tasks = [(str(f.path), f.rel, params.sample_rate, params.channels, str(shards / f"{i}.f32"),
              params.normalize == "loudness") for i, f in enumerate(files)]
    results: list[FileResult | None] = [None] * len(tasks)
    bar = tqdm(total=len(tasks), unit="file", desc="preparing audio", dynamic_ncols=True, leave=False,
               disable=None if progress else True)
    hours = 0.0
    try:
        if workers <= 1 or len(tasks) <= 1:
            for i, task in enumerate(tasks):
                results[i] = _decode(task)
                hours += results[i].frames / params.sample_rate / 3600
                bar.update(1)
                bar.set_postfix(hours=f"{hours:.2f}", refresh=False)
        else:
            # Spawned, not forked: a fork of a process that already ran torch's OpenMP pool can hang.
            context = multiprocessing.get_context("spawn")
            with futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
                pending = {pool.submit(_decode, task): i for i, task in enumerate(tasks)}
                for done in futures.as_completed(pending):
                    i = pending[done]
                    try:
                        results[i] = done.result()
                    except Exception as err:  # noqa: BLE001 - a crashed worker skips its file, not the build
                        results[i] = FileResult(files[i].rel, reason=f"decoder crashed: {type(err).__name__}: {err}")
                    hours += results[i].frames / params.sample_rate / 3600
                    bar.update(1)
                    bar.set_postfix(hours=f"{hours:.2f}", refresh=False)
    finally:
        bar.close()
    return [r for r in results if r is not None]


def _shard_blocks(shard: Path, channels: int, gain: float, block_frames: int = 1 << 18) -> Iterator[np.ndarray]:
    frames = shard.stat().st_size // (4 * channels)
    if frames == 0:
        return
    data = np.memmap(shard, dtype=np.float32, mode="r", shape=(frames, channels))
    for start in range(0, frames, block_frames):
        block = np.asarray(data[start:start + block_frames])
        yield block * np.float32(gain) if gain != 1.0 else block


def build_cache(directory: Path, scan: Scan, params: Preprocessing, source_id: str, roots: Sequence[Path],
                workers: int, progress: bool = True) -> None:
    """Decode the scanned files and write the cache at `directory` (atomically)."""
    started = time.perf_counter()
    shards = Path(tempfile.mkdtemp(prefix=directory.name + ".shards-", dir=directory.parent))
    try:
        results = _decode_all(scan.files, params, shards, workers, progress)
        with ClipCacheWriter(directory, params.sample_rate, params.channels, params.dtype) as writer:
            for i, (source, result) in enumerate(zip(scan.files, results, strict=True)):
                shard = shards / f"{i}.f32"
                if result.ok:
                    gain, note = params.gain(result)
                    if note:
                        result.notes.append(note)
                    writer.add(_shard_blocks(shard, params.channels, gain), name=source.rel, role=source.role,
                               gain_db=round(20 * math.log10(gain), 3), **_describe(result))
                shard.unlink(missing_ok=True)  # free disk as we go: shards are float32, twice the cache
            skipped = [{"name": r.rel, "reason": r.reason} for r in [*scan.skipped, *results] if not r.ok]
            writer.commit(source_id=source_id, roots=[str(Path(r).resolve()) for r in roots],
                          params=params.__dict__, skipped=skipped, ignored=dict(scan.ignored),
                          build_seconds=round(time.perf_counter() - started, 3))
    finally:
        shutil.rmtree(shards, ignore_errors=True)


def _describe(result: FileResult) -> dict[str, Any]:
    info = result.to_dict()
    return {k: info[k] for k in ("source_rate", "source_channels", "subtype", "lufs", "notes") if info[k]}


def _remove_superseded(cache_dir: Path, keep: Path, source_id: str) -> None:
    """Delete older caches of the same folders and parameters (a run still reading one keeps its mapping)."""
    for other in cache_dir.glob("folder-*"):
        if other == keep or not other.is_dir():
            continue
        try:
            index = json.loads((other / "index.json").read_text())
        except (OSError, ValueError):
            continue
        if index.get("source_id") == source_id:
            shutil.rmtree(other, ignore_errors=True)
            log.info("removed superseded cache %s", other)


@dataclass
class Prepared:
    """An opened folder cache and whether this call built it."""

    cache: ClipCache
    built: bool
    seconds: float


def prepare_folder(path: str | Path, cache_dir: str | Path, params: Preprocessing, val_path: str | Path | None = None,
                   workers: int = 0, extensions: Sequence[str] = EXTENSIONS, progress: bool = True) -> Prepared:
    """Open the cache for these folders and parameters, building it first when anything changed."""
    params.check()
    started = time.perf_counter()
    roots = [Path(path)] + ([Path(val_path)] if val_path else [])
    try:
        scan = scan_folder(roots[0], "train" if val_path else "any", extensions)
    except DataError as err:
        raise DataError(f"data.path: {err}") from err
    if val_path:
        try:
            scan_folder(roots[1], "val", extensions, prefix="val:", scan=scan)
        except DataError as err:
            raise DataError(f"data.val_path: {err}") from err
    key, source_id = cache_key(scan, roots, params)
    cache_dir = Path(cache_dir)
    directory = cache_dir / f"folder-{key}"
    with file_lock(cache_dir / f"folder-{key}.lock"):  # runs starting together build it once
        cache = read_clip_cache(directory)
        built = cache is None
        if built:
            workers = workers or min(os.cpu_count() or 1, 8)
            log.info("preparing %d audio files from %s into %s (%d worker%s)", len(scan.files),
                     ", ".join(map(str, roots)), directory, workers, "s" if workers > 1 else "")
            build_cache(directory, scan, params, source_id, roots, workers, progress)
            cache = read_clip_cache(directory)
            assert cache is not None
            _remove_superseded(cache_dir, directory, source_id)
    with contextlib.suppress(OSError):
        (cache_dir / f"folder-{key}.lock").unlink()
    return Prepared(cache, built, time.perf_counter() - started)


@dataclass
class FolderSplit:
    """Which cached clips train and which validate, and which were left out (with reasons)."""

    train: list[int]
    val: list[int]
    too_short: list[int]
    notes: list[str] = field(default_factory=list)


def split_clips(cache: ClipCache, segment: int, val_fraction: float) -> FolderSplit:
    """Assign each cached clip to train or val (explicit folder, else path hash); drop clips < segment."""
    train, val, too_short, notes = [], [], [], []
    for i, clip in enumerate(cache.clips):
        if clip["length"] < segment:
            too_short.append(i)
            continue
        role = clip.get("role", "any")
        if role == "any":
            role = "val" if split_score(clip["name"]) < val_fraction else "train"
        (val if role == "val" else train).append(i)
    if not val and len(train) >= 2 and not any(c.get("role") == "val" for c in cache.clips):
        # Too few files for the hash to pick one: take the lowest-scoring file. Only in this case can
        # adding files later change the split; a fixed validation folder (data.val_path) avoids it.
        chosen = min(train, key=lambda i: split_score(cache.clips[i]["name"]))
        train.remove(chosen)
        val.append(chosen)
        notes.append(f"no file fell in the {val_fraction:.0%} validation share; validating on "
                     f"{cache.clips[chosen]['name']} (set data.val_path for a fixed validation set)")
    return FolderSplit(train, val, too_short, notes)


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"


def format_summary(prepared: Prepared, split: FolderSplit, segment: int, max_skips: int | None = None) -> str:
    """A readable summary: files used, durations per split, and every skipped file with its reason."""
    cache, index = prepared.cache, prepared.cache.index
    rate, channels = cache.sample_rate, int(index["channels"])
    seconds = lambda ids: sum(cache.clips[i]["length"] for i in ids) / rate  # noqa: E731
    used = split.train + split.val
    skipped = [(s["name"], s["reason"]) for s in index["skipped"]]
    skipped += [(cache.clips[i]["name"], f"shorter than one segment ({cache.clips[i]['length'] / rate:.3f} s < "
                 f"{segment / rate:.3f} s)") for i in split.too_short]
    state = f"built in {prepared.seconds:.1f} s" if prepared.built else "reused"
    lines = [
        f"cache {cache.directory} ({state}): {rate} Hz, {'mono' if channels == 1 else f'{channels} channels'}, "
        f"{index['dtype']}",
        f"used {_files(len(used))}, {_duration(seconds(used))}: train {_files(len(split.train))} "
        f"({_duration(seconds(split.train))}), val {_files(len(split.val))} ({_duration(seconds(split.val))})",
    ]
    lines += [f"note: {n}" for n in split.notes]
    noted = [(cache.clips[i]["name"], note) for i in used for note in cache.clips[i].get("notes", [])]
    if noted:
        lines.append(f"{len(noted)} note{'s' if len(noted) > 1 else ''} on used files:")
        lines += [f"  {name}: {note}" for name, note in noted]
    if skipped:
        lines.append(f"skipped {_files(len(skipped))}:")
        shown = skipped if max_skips is None else skipped[:max_skips]
        lines += [f"  {name}: {reason}" for name, reason in shown]
        if len(shown) < len(skipped):
            lines.append(f"  ... and {len(skipped) - len(shown)} more (`audiolab data prepare` lists them all)")
    if index.get("ignored"):
        lines.append("ignored (not audio by extension): " + ", ".join(f"{n} {ext}" for ext, n in
                                                                        sorted(index["ignored"].items())))
    return "\n".join(lines)


def skip_reasons(prepared: Prepared, split: FolderSplit) -> Counter:
    """How many files were left out for each kind of reason (the text before any detail)."""
    reasons = Counter(s["reason"].split(":")[0].split(" (")[0] for s in prepared.cache.index["skipped"])
    if split.too_short:
        reasons["shorter than one segment"] += len(split.too_short)
    return reasons


def build_folder_data(path: str, sample_rate: int, segment: int, batch_size: int, cache_dir: str,
                      val_path: str | None = None, channels: int = 1, val_fraction: float = 0.1,
                      val_max_crops: int | None = 256, dtype: str = "int16", normalize: str = "none",
                      peak_db: float = -1.0, loudness_lufs: float = -20.0, num_workers: int = 2,
                      prepare_workers: int = 0, extensions: Sequence[str] = EXTENSIONS,
                      progress: bool = True, loader: str = "threads", val_segment: int | None = None,
                      val_batch_size: int | None = None) -> AudioData:
    """The folder dataset, ready to train on: prepare (or reuse) its cache, split it, and summarise it."""
    params = Preprocessing(sample_rate, channels, dtype, normalize, peak_db, loudness_lufs)
    prepared = prepare_folder(path, cache_dir, params, val_path, prepare_workers, list(extensions), progress)
    split = split_clips(prepared.cache, segment, val_fraction)
    where = f"{path}" + (f" and {val_path}" if val_path else "")
    if not split.train or not split.val:
        missing = "training" if not split.train else "validation"
        reasons = skip_reasons(prepared, split)
        detail = "; ".join(f"{n} {reason}" for reason, n in reasons.most_common()) or "no audio files found"
        raise DataError(f"no usable {missing} audio in {where} ({detail}). "
                        f"Run `audiolab data prepare {path}` for the list of files and reasons.")
    for line in format_summary(prepared, split, segment, max_skips=_SHOWN_SKIPS).splitlines():
        log.info("data: %s", line)
    cache = prepared.cache
    train, val = cache.select(split.train), cache.select(split.val)
    return AudioData(train=train, val=val, segment=segment, batch_size=batch_size, num_workers=num_workers,
                     val_max_crops=val_max_crops, loader=loader, val_segment=val_segment,
                     val_batch_size=val_batch_size,
                     info={"source": where, "cache": str(cache.directory), "train_files": len(split.train),
                           "val_files": len(split.val), "skipped": len(cache.index["skipped"]) + len(split.too_short),
                           "train_seconds": round(train.seconds, 3), "val_seconds": round(val.seconds, 3)})
