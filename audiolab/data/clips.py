"""A dataset as clips in one memory-mapped array on disk, with training and validation crops.

Every dataset (built-in or a folder of real audio) is reduced to one cache directory: `audio.bin`, all
clips back to back as interleaved frames (int16, float16 or float32), and `index.json`, where each clip
has a start, a length and whatever the builder recorded (its source file, its split). Clips are written
block by block, so a dataset larger than RAM is fine, and the directory appears atomically when done.

Training draws random crops from the memory map: no decoding or resampling at train time, and workers
only slice arrays. Crops for a training step are a pure function of (seed, step), so resuming at step k
replays exactly what an uninterrupted run would have seen. Validation uses fixed crops, the same in
every run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

CACHE_FORMAT = 2
DTYPES = ("int16", "float16", "float32")
_INT16_SCALE = 32768.0


@dataclass
class ClipArray:
    """Some clips of a cache: clip i is audio[:, starts[i]:starts[i] + lengths[i]]."""

    audio: np.ndarray  # (channels, frames), usually a view of the memory map
    starts: np.ndarray
    lengths: np.ndarray
    sample_rate: int
    names: list[str] = field(default_factory=list)

    @classmethod
    def from_offsets(cls, audio: np.ndarray, offsets: Sequence[int], sample_rate: int) -> ClipArray:
        """Clips stored back to back: clip i spans offsets[i]:offsets[i+1]."""
        offsets = np.asarray(offsets, np.int64)
        return cls(audio, offsets[:-1], np.diff(offsets), sample_rate)

    @property
    def channels(self) -> int:
        """Audio channels."""
        return int(self.audio.shape[0])

    @property
    def scale(self) -> float:
        """Factor from stored values to float audio in [-1, 1]."""
        return 1.0 / _INT16_SCALE if self.audio.dtype == np.int16 else 1.0

    @property
    def seconds(self) -> float:
        """Total duration of these clips."""
        return float(self.lengths.sum()) / self.sample_rate

    def crop_raw(self, clip: int, start: int, length: int) -> np.ndarray:
        """A (channels, length) copy of one clip's samples in the stored dtype."""
        begin = int(self.starts[clip]) + start
        return np.array(self.audio[:, begin:begin + length])

    def crop(self, clip: int, start: int, length: int) -> np.ndarray:
        """A (channels, length) float32 slice of one clip."""
        raw = self.crop_raw(clip, start, length).astype(np.float32)
        return raw * np.float32(self.scale) if self.scale != 1.0 else raw

    def to_float(self, batch: torch.Tensor) -> torch.Tensor:
        """Stored samples (as loaded, already on the training device) to float32 audio."""
        batch = batch.float()
        return batch * self.scale if self.scale != 1.0 else batch


def to_storage(block: np.ndarray, dtype: str) -> tuple[np.ndarray, int]:
    """Float audio to the cache dtype; also returns how many samples had to be clipped."""
    if dtype == "int16":
        scaled = np.rint(np.asarray(block, np.float64) * _INT16_SCALE)
        clipped = int(np.count_nonzero((scaled < -32768) | (scaled > 32767)))
        return np.clip(scaled, -32768, 32767).astype(np.int16), clipped
    if dtype == "float16":
        clipped = int(np.count_nonzero(np.abs(block) > 65504))  # float16's largest finite value
        return np.clip(block, -65504, 65504).astype(np.float16), clipped
    return np.asarray(block, np.float32), 0


class ClipCacheWriter:
    """Builds a cache directory clip by clip and block by block; nothing is visible until `commit`."""

    def __init__(self, directory: Path, sample_rate: int, channels: int, dtype: str = "float32") -> None:
        if dtype not in DTYPES:
            raise ValueError(f"cache dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        self.directory = Path(directory)
        self.sample_rate = sample_rate
        self.channels = channels
        self.dtype = dtype
        self.clips: list[dict[str, Any]] = []
        self.frames = 0
        self._staging: Path | None = None
        self._file: BinaryIO | None = None

    def __enter__(self) -> ClipCacheWriter:
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        self._staging = Path(tempfile.mkdtemp(prefix=self.directory.name + ".tmp-", dir=self.directory.parent))
        self._file = (self._staging / "audio.bin").open("wb")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)

    def add(self, blocks: Iterable[np.ndarray], **fields: Any) -> dict[str, Any]:
        """Append one clip given as (frames, channels) float blocks; return its index entry."""
        assert self._file is not None, "use ClipCacheWriter as a context manager"
        start, clipped = self.frames, 0
        for block in blocks:
            block = np.asarray(block).reshape(-1, self.channels)
            stored, n_clipped = to_storage(block, self.dtype)
            clipped += n_clipped
            self._file.write(np.ascontiguousarray(stored).tobytes())
            self.frames += len(stored)
        entry = {**fields, "start": start, "length": self.frames - start}
        if clipped:
            entry["clipped_samples"] = clipped
        self.clips.append(entry)
        return entry

    def commit(self, **index_fields: Any) -> None:
        """Write index.json and move the finished cache into place atomically."""
        assert self._file is not None and self._staging is not None
        self._file.close()
        self._file = None
        index = {"format": CACHE_FORMAT, "sample_rate": self.sample_rate, "channels": self.channels,
                 "dtype": self.dtype, "frames": self.frames, "clips": self.clips, **index_fields}
        (self._staging / "index.json").write_text(json.dumps(index))
        try:
            os.replace(self._staging, self.directory)
        except OSError:
            if not (self.directory / "index.json").is_file():  # lost a race to an identical cache: fine
                raise


@dataclass
class ClipCache:
    """An opened cache directory: the memory-mapped audio and the index of its clips."""

    directory: Path
    audio: np.ndarray
    sample_rate: int
    index: dict[str, Any]

    @property
    def clips(self) -> list[dict[str, Any]]:
        """Index entries, one per clip."""
        return self.index["clips"]

    def select(self, indices: Sequence[int]) -> ClipArray:
        """A ClipArray of the given clips (sharing the memory map)."""
        entries = [self.clips[i] for i in indices]
        return ClipArray(self.audio, np.array([e["start"] for e in entries], np.int64),
                         np.array([e["length"] for e in entries], np.int64), self.sample_rate,
                         [str(e.get("name", i)) for e, i in zip(entries, indices, strict=True)])

    def split(self, name: str) -> ClipArray:
        """The clips whose index entry has split == name."""
        return self.select([i for i, e in enumerate(self.clips) if e.get("split") == name])


def read_clip_cache(directory: Path) -> ClipCache | None:
    """Open a cache written by ClipCacheWriter (memory-mapped), or None when absent or of an older format."""
    index_file = Path(directory) / "index.json"
    if not index_file.is_file():
        return None
    index = json.loads(index_file.read_text())
    if index.get("format") != CACHE_FORMAT:
        return None
    channels, frames = int(index["channels"]), int(index["frames"])
    if frames:
        flat = np.memmap(Path(directory) / "audio.bin", dtype=index["dtype"], mode="r", shape=(frames, channels))
    else:  # numpy cannot map an empty file
        flat = np.zeros((0, channels), index["dtype"])
    return ClipCache(Path(directory), flat.T, int(index["sample_rate"]), index)


def write_clip_cache(directory: Path, splits: dict[str, Sequence[np.ndarray]], sample_rate: int,
                     meta: dict[str, Any]) -> None:
    """Write in-memory clips, (channels, samples) or (samples,) each, tagged with their split."""
    first = next((c for clips in splits.values() for c in clips), np.zeros(1))
    channels = np.atleast_2d(first).shape[0]
    with ClipCacheWriter(directory, sample_rate, channels, "float32") as writer:
        for name, clips in splits.items():
            for i, clip in enumerate(clips):
                writer.add([np.atleast_2d(clip).T], name=f"{name}/{i}", split=name)
        writer.commit(meta=meta)


def fixed_crops(clips: ClipArray, segment: int, max_crops: int | None = None) -> list[tuple[int, int]]:
    """Non-overlapping (clip, start) crops tiling every clip; at most `max_crops`, evenly spread.

    This is the validation set: identical in every run on the same data.
    """
    crops = [(i, start) for i, length in enumerate(clips.lengths)
             for start in range(0, int(length) - segment + 1, segment)]
    if max_crops is not None and len(crops) > max_crops:
        keep = np.linspace(0, len(crops) - 1, max_crops).round().astype(int)
        crops = [crops[i] for i in keep]
    return crops


class CropBatches(Dataset):
    """Maps a list of (clip, start) pairs to one (B, channels, length) tensor in the stored dtype.

    Whole batches per item: a worker fills one array with B slices instead of collating B tensors.
    """

    def __init__(self, clips: ClipArray, length: int) -> None:
        self.clips = clips
        self.length = length

    def __len__(self) -> int:
        return len(self.clips.lengths)

    def fill(self, crops: list[tuple[int, int]], out: np.ndarray) -> None:
        """Copy the crops into `out` (B, channels, length), e.g. a view of pinned memory."""
        audio, length = self.clips.audio, self.length
        for row, (clip, start) in enumerate(crops):
            begin = int(self.clips.starts[clip]) + start
            out[row] = audio[:, begin:begin + length]

    def __getitem__(self, crops: list[tuple[int, int]]) -> torch.Tensor:
        out = np.empty((len(crops), self.clips.channels, self.length), dtype=self.clips.audio.dtype)
        self.fill(crops, out)
        return torch.from_numpy(out)


class RandomCropSampler(Sampler[list[tuple[int, int]]]):
    """Yields one batch of random (clip, start) crops per training step, seeded by (seed, step)."""

    def __init__(self, clips: ClipArray, segment: int, batch_size: int, seed: int, start_step: int = 0,
                 fixed_batch: bool = False, rows: slice | None = None) -> None:
        lengths = clips.lengths
        self.usable = np.flatnonzero(lengths >= segment)
        if len(self.usable) == 0:
            raise ValueError(f"no clip is at least one crop ({segment} samples) long")
        weights = (lengths[self.usable] - segment + 1).astype(np.float64)
        self.probs = weights / weights.sum()  # every start position equally likely
        self.max_start = lengths[self.usable] - segment
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.fixed_batch = fixed_batch
        self.rows = rows  # under torchrun: this rank's share of the global batch

    def batch_for_step(self, step: int) -> list[tuple[int, int]]:
        """The crops of one step (this rank's rows of them): a pure function of (seed, step)."""
        rng = np.random.default_rng([self.seed, 0 if self.fixed_batch else step])
        which = rng.choice(len(self.usable), size=self.batch_size, p=self.probs)
        starts = rng.integers(0, self.max_start[which] + 1)
        crops = [(int(self.usable[w]), int(s)) for w, s in zip(which, starts, strict=True)]
        return crops[self.rows] if self.rows is not None else crops

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield self.batch_for_step(step)
            step += 1


class CropLoader:
    """Endless training batches sliced from the memory map by background threads, prefetched and optionally pinned.

    Why threads and not DataLoader worker processes: a batch is only B slice copies (0.25 ms for 32 x 48640
    int16 here), and numpy releases the GIL while copying, page faults of a cold cache included. Handing a
    3 MB batch from a worker process to the trainer through shared memory costs ten times that (measured:
    2.8 ms per batch with 2 workers against 0.37 ms with 2 threads, `benchmarks/bench_data.py`).
    `data.loader=processes` still gives the DataLoader route.
    """

    def __init__(self, clips: ClipArray, length: int, batch_size: int, seed: int, start_step: int = 0,
                 workers: int = 2, prefetch: int = 4, fixed_batch: bool = False, pin_memory: bool = False,
                 rows: slice | None = None) -> None:
        self.sampler = RandomCropSampler(clips, length, batch_size, seed, start_step, fixed_batch, rows)
        self.batches = CropBatches(clips, length)
        self.workers = workers
        self.prefetch = max(prefetch, 1) * max(workers, 1)
        self.pin_memory = pin_memory
        self._pool: ThreadPoolExecutor | None = None

    def _make(self, crops: list[tuple[int, int]]) -> torch.Tensor:
        if not self.pin_memory:
            return self.batches[crops]
        # Sliced straight into pinned memory, so .to(device, non_blocking=True) overlaps with compute; torch's
        # caching host allocator reuses these buffers once their copy has finished.
        clips = self.batches.clips
        out = torch.empty((len(crops), clips.channels, self.batches.length), pin_memory=True,
                          dtype=torch.from_numpy(clips.audio[:, :0]).dtype)
        self.batches.fill(crops, out.numpy())
        return out

    def __iter__(self) -> Iterator[torch.Tensor]:
        crops = iter(self.sampler)
        if self.workers <= 0:
            for batch_crops in crops:
                yield self._make(batch_crops)
            return
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="audiolab-crops")
        try:
            pending = deque(self._pool.submit(self._make, next(crops)) for _ in range(self.prefetch))
            while True:
                batch = pending.popleft().result()
                pending.append(self._pool.submit(self._make, next(crops)))
                yield batch
        finally:
            self.close()

    def close(self) -> None:
        """Stop the threads (queued batches are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def train_loader(clips: ClipArray, length: int, batch_size: int, seed: int, start_step: int,
                 num_workers: int = 0, fixed_batch: bool = False, pin_memory: bool = False,
                 prefetch_factor: int = 4, backend: str = "threads", rows: slice | None = None
                 ) -> Iterable[torch.Tensor]:
    """An endless loader of (B, channels, length) training batches, in the stored dtype, from `start_step`.

    With `rows`, each batch is those rows of the global batch of `batch_size` (one rank's share).
    """
    if backend == "threads":
        return CropLoader(clips, length, batch_size, seed, start_step, num_workers, prefetch_factor, fixed_batch,
                          pin_memory, rows)
    if backend != "processes":
        raise ValueError(f"data.loader={backend!r}: allowed threads, processes")
    sampler = RandomCropSampler(clips, length, batch_size, seed, start_step, fixed_batch, rows)
    # An own generator: creating the loader's iterator must not draw from the global torch RNG, whose
    # state is part of every checkpoint.
    return DataLoader(CropBatches(clips, length), sampler=sampler, batch_size=None, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, prefetch_factor=prefetch_factor if num_workers > 0 else None)


@dataclass
class AudioData:
    """What a dataset builder returns: train and validation clips plus how to crop and batch them."""

    train: ClipArray
    val: ClipArray
    segment: int
    batch_size: int
    num_workers: int = 0
    val_max_crops: int | None = None
    loader: str = "threads"  # threads | processes (see CropLoader)
    info: dict[str, Any] = field(default_factory=dict)  # recorded in run.json (source, cache, counts)
    val_segment: int | None = None  # validation crop length; None: the training segment
    val_batch_size: int | None = None  # crops per validation batch; None: the training batch size

    @property
    def validation_segment(self) -> int:
        """Samples per validation crop: fixed apart from training's, so runs that train differently compare."""
        return int(self.val_segment or self.segment)

    @property
    def validation_batch_size(self) -> int:
        """Crops per validation batch (the headline distance's spectral convergence is a ratio over a batch)."""
        return int(self.val_batch_size or self.batch_size)

    @property
    def sample_rate(self) -> int:
        """Sample rate shared by both splits."""
        return self.train.sample_rate

    @property
    def channels(self) -> int:
        """Audio channels of every clip."""
        return self.train.channels
