"""Test-only models that fail on purpose."""

from __future__ import annotations

import os
import signal

import torch

from audiolab.models.convnext1d import ConvNeXtUNet1d


class NaNAfter(ConvNeXtUNet1d):
    """A ConvNeXt U-Net whose training forward returns NaN from its `nan_at`-th call on."""

    def __init__(self, nan_at: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_at = nan_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.nan_at:
                return out * float("nan")
        return out


class RaiseAfter(ConvNeXtUNet1d):
    """A ConvNeXt U-Net whose training forward raises from its `raise_at`-th call on (a crashing trial)."""

    def __init__(self, raise_at: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.raise_at = raise_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls >= self.raise_at:
                raise RuntimeError("injected fault")
        return super().forward(x)


class SignalAt(ConvNeXtUNet1d):
    """A ConvNeXt U-Net that sends SIGTERM to its own process during its `signal_at`-th training forward, on
    torchrun rank `rank` only (0: never): a signal that reaches one rank of a distributed run."""

    def __init__(self, signal_at: int = 0, rank: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.signal_at, self.rank = signal_at, rank
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.signal_at and int(os.environ.get("RANK", "0")) == self.rank:
                os.kill(os.getpid(), signal.SIGTERM)
        return super().forward(x)


class RecordingLogger:
    """A tracker (`logger._target_=helpers.RecordingLogger`) that writes what it was told to tracker.json in the run."""

    def __init__(self) -> None:
        self.calls: dict = {"tags": [], "summary": {}}
        self.run_dir = None

    def start(self, run_dir, name: str, group: str, config: dict, run_id: str | None = None,
              job_type: str = "train", tags: tuple[str, ...] = ()) -> str | None:
        self.run_dir = run_dir
        self.calls.update(name=name, group=group, run_id=f"rec-{name}", job_type=job_type,
                          start_tags=list(tags))
        return self.calls["run_id"]

    def log(self, metrics: dict, step: int) -> None:
        pass

    def log_media(self, step: int, audio: dict, images: dict) -> None:
        pass

    def summary(self, values: dict) -> None:
        self.calls["summary"].update({k: v for k, v in values.items() if isinstance(v, (int, float, str))})

    def add_tags(self, *tags: str) -> None:
        self.calls["tags"].extend(tags)

    def finish(self, status: str) -> None:
        import json

        self.calls["status"] = status
        (self.run_dir / "tracker.json").write_text(json.dumps(self.calls))
