"""The built-in dataset: deterministic piano-like music, generated once and cached as a memory map."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

from audiolab.data.clips import CACHE_FORMAT, AudioData, read_clip_cache, write_clip_cache
from audiolab.data.piano import PianoParams, generate_clips

log = logging.getLogger(__name__)

_VAL_SEED_OFFSET = 1_000_003  # validation pieces never coincide with training pieces


def synth_cache_dir(cache_dir: str | Path, params: PianoParams, train_seconds: float, val_seconds: float,
                    seed: int) -> Path:
    """Cache location keyed by every generator parameter (a change of any gives a new cache)."""
    key = json.dumps({"params": dataclasses.asdict(params), "train_seconds": train_seconds,
                      "val_seconds": val_seconds, "seed": seed, "format": CACHE_FORMAT}, sort_keys=True)
    return Path(cache_dir) / f"synth-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def build_synth_data(sample_rate: int, segment: int, batch_size: int, cache_dir: str, train_seconds: float,
                     val_seconds: float, clip_seconds: float, seed: int, num_workers: int = 0,
                     val_max_crops: int | None = None, loader: str = "threads", val_segment: int | None = None,
                     val_batch_size: int | None = None) -> AudioData:
    """Load the synthetic piano dataset from its cache, generating it on first use."""
    params = PianoParams(sample_rate=sample_rate, clip_seconds=clip_seconds)
    directory = synth_cache_dir(cache_dir, params, train_seconds, val_seconds, seed)
    cache = read_clip_cache(directory)
    if cache is None:
        started = time.perf_counter()
        log.info("generating %.0f s + %.0f s of synthetic piano audio into %s", train_seconds, val_seconds,
                 directory)
        write_clip_cache(directory, {
            "train": generate_clips(params, train_seconds, seed),
            "val": generate_clips(params, val_seconds, seed + _VAL_SEED_OFFSET),
        }, sample_rate, meta={"generator": "piano", "params": dataclasses.asdict(params)})
        log.info("generated in %.1f s", time.perf_counter() - started)
        cache = read_clip_cache(directory)
        assert cache is not None
    return AudioData(train=cache.split("train"), val=cache.split("val"), segment=segment, batch_size=batch_size,
                     num_workers=num_workers, val_max_crops=val_max_crops, loader=loader, val_segment=val_segment,
                     val_batch_size=val_batch_size, info={"source": "synth", "cache": str(directory)})
