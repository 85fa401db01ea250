"""A dataset as an array of clips, cached on disk as a memory map, with training and validation crops.

Every dataset (built-in or a folder of real audio) is reduced to one `(channels, samples)` array with
the clips stored back to back, plus the clip offsets. Training draws random crops from it; validation
uses fixed crops that are the same in every run. Crops for a training step are a pure function of
(seed, step), so resuming at step k replays exactly what an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


@dataclass
class ClipArray:
    """Clips stored back to back in `audio` (channels, samples); clip i is audio[:, offsets[i]:offsets[i+1]]."""

    audio: np.ndarray
    offsets: np.ndarray
    sample_rate: int

    @property
    def lengths(self) -> np.ndarray:
        """Length of every clip in samples."""
        return np.diff(self.offsets)

    @property
    def seconds(self) -> float:
        """Total duration."""
        return float(self.offsets[-1]) / self.sample_rate

    def crop(self, clip: int, start: int, length: int) -> np.ndarray:
        """A (channels, length) float32 slice of one clip."""
        begin = int(self.offsets[clip]) + start
        return np.array(self.audio[:, begin:begin + length], dtype=np.float32)  # a copy: memmaps are read-only


def write_clip_cache(directory: Path, splits: dict[str, Sequence[np.ndarray]], sample_rate: int,
                     meta: dict) -> None:
    """Write each split's clips as `<split>.npy` (float32, memory-mappable) plus `index.json`, atomically."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=directory.name + ".tmp-", dir=directory.parent))
    try:
        index = {"sample_rate": sample_rate, "meta": meta, "splits": {}}
        for name, clips in splits.items():
            clips = [np.atleast_2d(c).astype(np.float32, copy=False) for c in clips]
            offsets = np.concatenate([[0], np.cumsum([c.shape[-1] for c in clips])]).astype(np.int64)
            channels = clips[0].shape[0] if clips else 1
            out = np.lib.format.open_memmap(staging / f"{name}.npy", mode="w+", dtype=np.float32,
                                            shape=(channels, int(offsets[-1])))
            for clip, begin in zip(clips, offsets[:-1], strict=False):
                out[:, begin:begin + clip.shape[-1]] = clip
            out.flush()
            del out
            index["splits"][name] = offsets.tolist()
        (staging / "index.json").write_text(json.dumps(index))
        try:
            os.replace(staging, directory)
        except OSError:
            if not (directory / "index.json").is_file():  # lost a race to an identical cache: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_clip_cache(directory: Path) -> dict[str, ClipArray] | None:
    """Open a cache written by `write_clip_cache` (memory-mapped), or None when absent."""
    index_file = directory / "index.json"
    if not index_file.is_file():
        return None
    index = json.loads(index_file.read_text())
    return {
        name: ClipArray(np.load(directory / f"{name}.npy", mmap_mode="r"), np.asarray(offsets, np.int64),
                        int(index["sample_rate"]))
        for name, offsets in index["splits"].items()
    }


def fixed_crops(clips: ClipArray, segment: int) -> list[tuple[int, int]]:
    """Non-overlapping (clip, start) crops tiling every clip: the validation set, identical in every run."""
    return [(i, start) for i, length in enumerate(clips.lengths) for start in range(0, int(length) - segment + 1,
                                                                                     segment)]


class CropDataset(Dataset):
    """Maps a (clip, start) pair to a (channels, segment) tensor."""

    def __init__(self, clips: ClipArray, segment: int) -> None:
        self.clips = clips
        self.segment = segment

    def __len__(self) -> int:
        return len(self.clips.lengths)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        clip, start = item
        return torch.from_numpy(self.clips.crop(clip, start, self.segment))


class RandomCropSampler(Sampler[list[tuple[int, int]]]):
    """Yields one batch of random (clip, start) crops per training step, seeded by (seed, step)."""

    def __init__(self, clips: ClipArray, segment: int, batch_size: int, seed: int, start_step: int = 0,
                 fixed_batch: bool = False) -> None:
        lengths = clips.lengths
        self.usable = np.flatnonzero(lengths >= segment)
        if len(self.usable) == 0:
            raise ValueError(f"no clip is at least one segment ({segment} samples) long")
        weights = (lengths[self.usable] - segment + 1).astype(np.float64)
        self.probs = weights / weights.sum()  # every start position equally likely
        self.max_start = lengths[self.usable] - segment
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.fixed_batch = fixed_batch

    def batch_for_step(self, step: int) -> list[tuple[int, int]]:
        """The crops of one step: a pure function of (seed, step)."""
        rng = np.random.default_rng([self.seed, 0 if self.fixed_batch else step])
        which = rng.choice(len(self.usable), size=self.batch_size, p=self.probs)
        starts = rng.integers(0, self.max_start[which] + 1)
        return [(int(self.usable[w]), int(s)) for w, s in zip(which, starts, strict=True)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield self.batch_for_step(step)
            step += 1


def train_loader(clips: ClipArray, segment: int, batch_size: int, seed: int, start_step: int,
                 num_workers: int = 0, fixed_batch: bool = False, pin_memory: bool = False) -> DataLoader:
    """An endless loader of (B, channels, segment) training batches starting at `start_step`."""
    sampler = RandomCropSampler(clips, segment, batch_size, seed, start_step, fixed_batch)
    # An own generator: creating the loader's iterator must not draw from the global torch RNG, whose
    # state is part of every checkpoint.
    return DataLoader(CropDataset(clips, segment), batch_sampler=sampler, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed),
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      prefetch_factor=4 if num_workers > 0 else None)


@dataclass
class AudioData:
    """What a dataset builder returns: train and validation clips plus how to crop and batch them."""

    train: ClipArray
    val: ClipArray
    segment: int
    batch_size: int
    num_workers: int = 0

    @property
    def sample_rate(self) -> int:
        """Sample rate shared by both splits."""
        return self.train.sample_rate
