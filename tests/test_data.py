"""The clip cache, crop sampling and the built-in dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import audiolab.data.synth as synth
from audiolab.data.clips import (
    ClipArray,
    ClipCacheWriter,
    CropBatches,
    RandomCropSampler,
    fixed_crops,
    read_clip_cache,
    train_loader,
    write_clip_cache,
)


def _build(cache: Path, seed: int = 0) -> synth.AudioData:
    return synth.build_synth_data(sample_rate=44100, segment=4096, batch_size=2, cache_dir=str(cache),
                                  train_seconds=4, val_seconds=2, clip_seconds=2, seed=seed)


def test_synth_is_cached_and_keyed_by_parameters(tmp_path: Path, monkeypatch) -> None:
    calls = []
    real = synth.generate_clips
    monkeypatch.setattr(synth, "generate_clips", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = _build(tmp_path)
    assert len(calls) == 2  # train and val generated once
    second = _build(tmp_path)
    assert len(calls) == 2  # reused from the memory-mapped cache
    assert isinstance(second.train.audio.base, np.memmap)
    assert np.array_equal(first.train.audio, second.train.audio)
    assert first.train.seconds == 4 and first.val.seconds == 2
    _build(tmp_path, seed=1)
    assert len(calls) == 4 and len(list(tmp_path.glob("synth-*"))) == 2


def test_same_seed_same_audio_in_fresh_caches(tmp_path: Path) -> None:
    a, b = _build(tmp_path / "a"), _build(tmp_path / "b")
    assert np.array_equal(a.train.audio, b.train.audio)
    assert np.array_equal(a.train.crop(0, 0, 88200), b.train.crop(0, 0, 88200))
    assert not np.array_equal(a.train.crop(0, 0, 88200), a.val.crop(0, 0, 88200))


def test_cache_round_trip_and_crops(tmp_path: Path) -> None:
    clips = [np.arange(10, dtype=np.float32), np.arange(100, 107, dtype=np.float32)]
    write_clip_cache(tmp_path / "c", {"train": clips, "val": clips[:1]}, 8000, meta={})
    cache = read_clip_cache(tmp_path / "c")
    arr = cache.split("train")
    assert list(arr.lengths) == [10, 7] and list(cache.split("val").lengths) == [10]
    assert arr.crop(1, 2, 3).tolist() == [[102, 103, 104]]
    assert fixed_crops(arr, 4) == [(0, 0), (0, 4), (1, 0)]
    assert fixed_crops(arr, 2, max_crops=3) == [(0, 0), (0, 8), (1, 4)]  # evenly spread over all 8
    assert read_clip_cache(tmp_path / "missing") is None


def test_int16_cache_is_written_in_blocks_and_scaled_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-1, 1, (1000, 2)).astype(np.float32)
    stereo[0] = [1.5, -1.5]  # out of range: clipped and counted
    with ClipCacheWriter(tmp_path / "c", 16000, channels=2, dtype="int16") as writer:
        entry = writer.add((stereo[i:i + 300] for i in range(0, 1000, 300)), name="a")
        writer.add([stereo[:10]], name="b")
        writer.commit()
    assert entry == {"name": "a", "start": 0, "length": 1000, "clipped_samples": 2}
    cache = read_clip_cache(tmp_path / "c")
    arr = cache.select([0, 1])
    assert arr.audio.dtype == np.int16 and arr.channels == 2 and arr.names == ["a", "b"]
    got = arr.crop(0, 1, 999)
    assert got.shape == (2, 999) and np.abs(got - stereo[1:].T).max() <= 0.5 / 32768 + 1e-7
    assert arr.crop(0, 0, 1)[:, 0].tolist() == [32767 / 32768, -1.0]
    batch = CropBatches(arr, 5)[[(1, 0), (0, 3)]]
    assert batch.dtype == torch.int16 and batch.shape == (2, 2, 5)
    assert torch.allclose(arr.to_float(batch)[1], torch.from_numpy(arr.crop(0, 3, 5)))


def test_writer_leaves_nothing_behind_on_error(tmp_path: Path) -> None:
    def failing():
        yield np.zeros((10, 1), np.float32)
        raise RuntimeError("decoder died")

    with pytest.raises(RuntimeError), ClipCacheWriter(tmp_path / "c", 8000, 1) as writer:
        writer.add(failing())
    assert list(tmp_path.iterdir()) == [] and read_clip_cache(tmp_path / "c") is None


def test_crop_sampler_is_a_pure_function_of_seed_and_step() -> None:
    arr = ClipArray.from_offsets(np.zeros((1, 1000), np.float32), [0, 300, 1000], 8000)
    sampler = RandomCropSampler(arr, 200, batch_size=4, seed=3)
    assert sampler.batch_for_step(7) == RandomCropSampler(arr, 200, 4, seed=3, start_step=7).batch_for_step(7)
    assert sampler.batch_for_step(7) != sampler.batch_for_step(8)
    resumed = iter(RandomCropSampler(arr, 200, 4, seed=3, start_step=5))
    assert next(resumed) == sampler.batch_for_step(5)
    for clip, start in sampler.batch_for_step(1):
        assert 0 <= start <= arr.lengths[clip] - 200
    fixed = RandomCropSampler(arr, 200, 4, seed=3, fixed_batch=True)
    assert fixed.batch_for_step(0) == fixed.batch_for_step(9)


def test_threaded_and_process_loaders_yield_the_sampler_batches_in_order() -> None:
    audio = np.arange(3000, dtype=np.int16)[None]
    arr = ClipArray.from_offsets(audio, [0, 1000, 3000], 8000)
    sampler = RandomCropSampler(arr, 100, batch_size=3, seed=5)
    expected = [CropBatches(arr, 100)[sampler.batch_for_step(s)] for s in range(4, 12)]
    for backend, workers in (("threads", 0), ("threads", 2), ("processes", 0), ("processes", 2)):
        batches = iter(train_loader(arr, 100, 3, seed=5, start_step=4, num_workers=workers, backend=backend))
        got = [next(batches) for _ in range(8)]
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True)), (backend, workers)
        if hasattr(batches, "close"):
            batches.close()
    with pytest.raises(ValueError, match="data.loader='fibres'"):
        train_loader(arr, 100, 3, seed=5, start_step=0, backend="fibres")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (pinned host memory)")
def test_pinned_batches_are_pinned_and_identical() -> None:
    arr = ClipArray.from_offsets(np.arange(3000, dtype=np.int16)[None], [0, 1000, 3000], 8000)
    plain = iter(train_loader(arr, 100, 3, seed=5, start_step=0, num_workers=2))
    pinned = iter(train_loader(arr, 100, 3, seed=5, start_step=0, num_workers=2, pin_memory=True))
    for _ in range(5):
        batch = next(pinned)
        assert batch.is_pinned() and torch.equal(batch, next(plain))
