"""A finished run's model, ready to use: its config, best (or last) weights, rate, channels and window length."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from audiolab.models.base import AudioModel, audio_channels_of
from audiolab.runs.session import load_resolved_config
from audiolab.train.checkpoint import load_checkpoint
from audiolab.train.device import autocast_dtype, pick_device
from audiolab.train.state import checkpoint_step, inference_weights, upgrade
from audiolab.train.trainer import build_model

CHECKPOINTS = ("best", "last")


@dataclass
class RunModel:
    """A run's model in eval mode on `device`, with what using it needs to know."""

    run_dir: Path
    cfg: DictConfig
    model: AudioModel
    checkpoint: str
    step: int
    weights: str            # "ema" or "model": which weights were loaded
    device: torch.device
    amp: torch.dtype | None  # autocast dtype the run trained with on this device (bf16 on CUDA), or None

    @property
    def sample_rate(self) -> int:
        """The rate the run trained at."""
        return int(self.cfg.data.sample_rate)

    @property
    def channels(self) -> int:
        """Audio channels the model takes (from the model's config, else the data's)."""
        return int(audio_channels_of(self.cfg.model) or self.cfg.data.get("channels", 1) or 1)

    @property
    def segment(self) -> int:
        """The run's training crop length: the window `apply` cuts files into."""
        return int(self.cfg.data.segment)

    @property
    def hop(self) -> int:
        """The model's hop: window lengths are multiples of it."""
        return int(self.model.hop_length)

    @property
    def task(self) -> str:
        """'restore' or 'autoencode' (the last part of the task's class name, lower case)."""
        target = str(self.cfg.task.get("_target_", ""))
        return "autoencode" if "autoencode" in target.lower() else "restore"


def load_run_model(run_dir: Path, checkpoint: str = "best", device: str | None = None,
                   trust: bool = False) -> RunModel:
    """Load `run_dir`'s model with its `checkpoint` (best: the EMA weights where the run kept one)."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"--checkpoint {checkpoint!r}: allowed {', '.join(CHECKPOINTS)}")
    cfg = load_resolved_config(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no checkpoints/{checkpoint}.pt (has the run validated yet?)")
    where = pick_device(device or str(cfg.trainer.device))
    trust = trust or bool(cfg.trainer.get("trust_checkpoint"))
    payload = upgrade(load_checkpoint(path, map_location="cpu", trust=trust))
    model = build_model(cfg.model, torch.device("cpu"))
    # `best`: the weights validation scored (the EMA's where kept); `last`: the trained weights themselves.
    ema = bool(payload.get("ema")) and checkpoint == "best"
    model.load_state_dict(inference_weights(payload) if checkpoint == "best" else payload["model"])
    model = model.to(where).eval()
    return RunModel(run_dir, cfg, model, checkpoint, checkpoint_step(payload), "ema" if ema else "model", where,
                    autocast_dtype(where, str(cfg.trainer.precision)))
