"""Wall-clock bookkeeping of a training call, and the perf/ figures logged with every train/ line."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

from audiolab.train.device import peak_memory_gib


class Clock:
    """Seconds spent training and validating, and throughput since the last logged step."""

    def __init__(self, audio_seconds_per_step: float, device: torch.device) -> None:
        self.audio_seconds_per_step, self.device = audio_seconds_per_step, device
        self.steps, self.train_seconds, self.validate_seconds = 0, 0.0, 0.0
        self.window_start, self.window_steps = time.perf_counter(), 0

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Time one training step."""
        start = time.perf_counter()
        yield
        self.train_seconds += time.perf_counter() - start
        self.steps += 1
        self.window_steps += 1

    @contextlib.contextmanager
    def validating(self) -> Iterator[None]:
        """Time a validation (with its checkpoints and samples); throughput is measured afresh after it."""
        start = time.perf_counter()
        yield
        self.window_start, self.window_steps = time.perf_counter(), 0
        self.validate_seconds += self.window_start - start

    def perf(self) -> dict[str, float]:
        """Steps and audio seconds per wall second since the last call, and peak memory so far."""
        elapsed = time.perf_counter() - self.window_start
        figures = {"perf/steps_per_s": self.window_steps / elapsed,
                   "perf/audio_s_per_s": self.window_steps * self.audio_seconds_per_step / elapsed,
                   "perf/peak_mem_gib": peak_memory_gib(self.device)}
        self.window_start, self.window_steps = time.perf_counter(), 0
        return figures
