"""Experiment trackers behind one small interface: W&B (online or offline) or nothing.

`metrics.jsonl` in the run directory is always written (by `RunRecord`); a tracker is an extra view.
"""

from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from audiolab.common.secrets import redact

log = logging.getLogger(__name__)

class NullLogger:
    """Tracks nothing (`logger=none`)."""

    run_id: str | None = None

    def start(self, run_dir: Path, name: str, group: str, config: dict, run_id: str | None = None) -> str | None:
        """Nothing to start."""
        return None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Drop scalars."""

    def log_media(self, step: int, audio: dict[str, tuple[np.ndarray, int]], images: dict[str, Path]) -> None:
        """Drop media."""

    def summary(self, values: dict[str, Any]) -> None:
        """Drop summary values."""

    def add_tags(self, *tags: str) -> None:
        """Drop tags."""

    def finish(self, status: str) -> None:
        """Nothing to close."""


def wandb_api_key_configured() -> bool:
    """True when W&B has a key: WANDB_API_KEY, or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_server_error(timeout: float) -> str | None:
    """Why the W&B server cannot be reached (None when a TCP connection to it succeeds)."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=timeout):
            return None
    except OSError as err:
        return f"{url.hostname}:{port}: {err.strerror or err}"


class WandbLogger(NullLogger):
    """Logs to W&B: online when a key is configured and the server answers, offline otherwise.

    With a key but an unreachable server `wandb.init` retries for about 100 s before raising, and
    after a failed online init the same process could not start an offline run either (measured with
    wandb 0.25: the second init timed out too). So the server is probed first, with a short timeout,
    and an unreachable server means offline from the start (sync later with
    `wandb sync <run_dir>/wandb/offline-run-*`). If the server answers but online init still fails,
    the run goes on without W&B; metrics.jsonl has everything. It never prompts: no key means offline.
    """

    def __init__(self, project: str = "audiolab", entity: str | None = None, mode: str = "auto",
                 tags: list[str] | None = None, init_timeout: float = 10.0) -> None:
        if mode not in ("auto", "online", "offline"):
            raise ValueError(f"logger.mode={mode!r}: allowed auto, online, offline (logger=none turns W&B off)")
        self.project, self.entity, self.mode = project, entity, mode
        self.tags = list(tags or [])
        self.init_timeout = init_timeout
        self.run = None

    def _init(self, mode: str, **kwargs: Any) -> Any:
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # no crash reports to the network
        import wandb

        settings = wandb.Settings(init_timeout=self.init_timeout, silent=True, console="off",
                                  x_disable_stats=True)
        return wandb.init(mode=mode, settings=settings, **kwargs)

    def start(self, run_dir: Path, name: str, group: str, config: dict, run_id: str | None = None) -> str | None:
        """Open (or resume, when run_id is given) the W&B run; return its id (None if W&B is off)."""
        import wandb

        kwargs = dict(project=self.project, entity=self.entity, name=name, group=group, tags=self.tags,
                      config=redact(config), dir=str(run_dir), id=run_id or wandb.util.generate_id(),
                      reinit="finish_previous")
        mode = self.mode
        if mode == "auto":
            mode = "online" if wandb_api_key_configured() else "offline"
        if mode == "online":
            unreachable = wandb_server_error(timeout=min(self.init_timeout, 5.0))
            if unreachable:
                log.warning("W&B unreachable (%s); logging offline to %s/wandb", unreachable, run_dir)
                mode = "offline"
        if mode == "online":
            try:
                # Offline runs cannot resume (a new offline run with the same id is made instead).
                self.run = self._init("online", resume="allow", **kwargs)
            except Exception as err:  # noqa: BLE001 - whatever W&B raises, the run itself must go on
                first_line = (str(err).strip() or type(err).__name__).splitlines()[0]
                log.warning("W&B online init failed (%s); continuing without W&B", first_line[:200])
                return None
        else:
            self.run = self._init("offline", **kwargs)
        return self.run.id

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log scalars at a training step."""
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_media(self, step: int, audio: dict[str, tuple[np.ndarray, int]], images: dict[str, Path]) -> None:
        """Log audio clips and images at a training step."""
        if self.run is None:
            return
        import wandb

        payload: dict[str, Any] = {k: wandb.Audio(a.squeeze(), sample_rate=sr) for k, (a, sr) in audio.items()}
        payload.update({k: wandb.Image(str(p)) for k, p in images.items()})
        self.run.log(payload, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        """Set run summary values (e.g. the best val/spec_loss)."""
        for k, v in values.items():
            if self.run is not None:
                self.run.summary[k] = v

    def add_tags(self, *tags: str) -> None:
        """Add tags to the run."""
        if self.run is not None:
            self.run.tags = tuple(dict.fromkeys([*self.run.tags, *tags]))

    def finish(self, status: str) -> None:
        """Close the run; failed and interrupted runs exit non-zero (a pruned run is not an error)."""
        if self.run is not None:
            self.run.finish(exit_code=0 if status in ("completed", "pruned") else 1)
            self.run = None
