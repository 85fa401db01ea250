"""Everything a run's training carries from step to step, and the one place that knows the checkpoint layout.

`TrainState.state_dict()` writes a checkpoint and `load_state_dict()` reads one back: no other code
names checkpoint keys (readers of finished runs use `inference_weights` and `checkpoint_step`). A
recipe adds what it owns (the discriminator and its optimizer, the phase) with `register`, so a
checkpoint is complete by construction.

Format 2 (written now):
    format, step, model, ema (or None), optimizer, scheduler, best {value, step}, latest_train,
    extras {name: what each registered object's state_dict returned}, rng, config
Format 1 (audiolab before the recipes) kept `phase` and `adversarial` at the top; `upgrade` maps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch.optim.swa_utils import AveragedModel

from audiolab.optim.build import load_optimizer_state
from audiolab.train.checkpoint import capture_rng, restore_rng

FORMAT = 2


class Stateful(Protocol):
    """Anything a checkpoint can hold."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


@dataclass
class TrainState:
    """Model, optimizer, schedule, EMA, counters, best value, RNG, and whatever the recipe registered."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: AveragedModel | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config, saved for reference
    step: int = 0
    best_value: float = math.inf
    best_step: int | None = None
    latest: dict[str, float] = field(default_factory=dict)  # the last value of every train/ figure
    extras: dict[str, Stateful] = field(default_factory=dict)
    # What a training step calls (audiolab/train/wrap.py: DDP, torch.compile); never checkpointed.
    forward: Any = None

    def train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The model's output and stats for a training step, through the run's DDP/compile wrapper if any."""
        return self.forward(x) if self.forward is not None else self.model.forward_with_stats(x)

    def register(self, name: str, obj: Stateful) -> None:
        """Checkpoint `obj` under `extras[name]` from now on."""
        if name in self.extras:
            raise ValueError(f"checkpoint extra {name!r} is registered twice")
        self.extras[name] = obj

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights validation scores: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def end_step(self) -> None:
        """What every step ends with, whichever network it trained: the lr schedule, the EMA, the counter."""
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1

    def observe(self, value: float) -> bool:
        """Take a validation value; True when it is the best so far."""
        if value < self.best_value:
            self.best_value, self.best_step = value, self.step
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """A format-2 checkpoint of everything above, plus every RNG's state."""
        return {
            "format": FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            # With EMA on, validation scores these weights (keys prefixed `module.`): use them for inference.
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best": {"value": self.best_value, "step": self.best_step},
            "latest_train": dict(self.latest),  # so that a resumed run logs the same figures
            "extras": {name: obj.state_dict() for name, obj in self.extras.items()},
            "rng": capture_rng(),
            "config": self.config,
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        """Continue from a checkpoint of either format (RNGs last, after anything that draws from them)."""
        payload = upgrade(payload)
        self.model.load_state_dict(payload["model"])
        load_optimizer_state(self.optimizer, payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(payload["ema"])
        self.step = int(payload["step"])
        self.best_value, self.best_step = payload["best"]["value"], payload["best"]["step"]
        self.latest = dict(payload.get("latest_train") or {})
        unknown = set(payload["extras"]) - set(self.extras)
        if unknown:
            raise ValueError(f"the checkpoint holds {sorted(unknown)}, which this run's recipe does not use; "
                             "was it written with another recipe?")
        for name, obj in self.extras.items():
            if name in payload["extras"]:  # absent: saved before the extra had state (still phase 1)
                obj.load_state_dict(payload["extras"][name])
        restore_rng(payload["rng"])


def upgrade(payload: dict[str, Any]) -> dict[str, Any]:
    """The same checkpoint in format 2."""
    version = payload.get("format", 1)
    if version == FORMAT:
        return payload
    if version != 1:
        raise ValueError(f"checkpoint format {version} is newer than this audiolab reads ({FORMAT})")
    payload = dict(payload)
    phase, adversarial = payload.pop("phase", 1), payload.pop("adversarial", None)
    # Format 1's phase 2 is the vae_gan recipe's; its phase 1 had nothing of the recipe's to keep.
    payload["extras"] = {"vae_gan": {"phase": phase, "discriminator": adversarial}} if adversarial else {}
    payload["format"] = FORMAT
    return payload


def checkpoint_step(payload: dict[str, Any]) -> int:
    """The step a checkpoint was written at."""
    return int(upgrade(payload)["step"])


def inference_weights(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights validation scored: the EMA's when the run kept one, else the model's."""
    payload = upgrade(payload)
    ema = payload.get("ema")
    if ema:
        return {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
    return payload["model"]
