"""Experiment trackers behind one small interface: W&B (online or offline) or nothing.

`metrics.jsonl` in the run directory is always written (by `RunRecord`); a tracker is an extra view.
"""

from __future__ import annotations

import logging
import netrc
import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from audiolab.common.secrets import redact

log = logging.getLogger(__name__)

STEP_METRIC = "trainer/step"  # the x axis of every logged figure, so that resumed runs line up
# The summary of a figure is its best value, not its last: lower is better except for these.
HIGHER_IS_BETTER = ("val/improvement", "val/active_dims")
HIGHER_IS_BETTER_PREFIXES = ("val/improvement_",)  # the per-k and per-band figures, named as they first appear


class NullLogger:
    """Tracks nothing (`logger=none`)."""

    run_id: str | None = None

    def start(self, run_dir: Path, name: str, group: str, config: dict, run_id: str | None = None,
              job_type: str = "train", tags: tuple[str, ...] = ()) -> str | None:
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
                 tags: list[str] | None = None, init_timeout: float = 10.0, system_stats: bool = False,
                 system_stats_interval_s: float = 15.0, api_key: str | None = None) -> None:
        if mode not in ("auto", "online", "offline"):
            raise ValueError(f"logger.mode={mode!r}: allowed auto, online, offline (logger=none turns W&B off)")
        if not system_stats_interval_s > 0:
            raise ValueError(f"logger.system_stats_interval_s={system_stats_interval_s!r}: must be > 0 seconds")
        self.project, self.entity, self.mode = project, entity, mode
        self.tags = list(tags or [])
        self.init_timeout = init_timeout
        self.system_stats, self.system_stats_interval_s = bool(system_stats), float(system_stats_interval_s)
        self.api_key = api_key or None  # `+logger.api_key=...`: kept in memory only, never written
        self.run = None
        self.offline = False
        self._maximised: set[str] = set()  # per-group improvement figures already told to W&B

    def _init(self, mode: str, **kwargs: Any) -> Any:
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # no crash reports to the network
        import wandb

        settings = wandb.Settings(init_timeout=self.init_timeout, silent=True, console="off",
                                  x_disable_stats=not self.system_stats,
                                  x_stats_sampling_interval=self.system_stats_interval_s)
        argv = sys.argv
        sys.argv = redact(list(argv))  # W&B records the command line in the run's metadata
        try:
            return wandb.init(mode=mode, settings=settings, **kwargs)
        finally:
            sys.argv = argv

    def start(self, run_dir: Path, name: str, group: str, config: dict, run_id: str | None = None,
              job_type: str = "train", tags: tuple[str, ...] = ()) -> str | None:
        """Open (or resume, when run_id is given) the W&B run; return its id (None if W&B is off)."""
        import wandb

        kwargs = dict(project=self.project, entity=self.entity, name=name, group=group, job_type=job_type,
                      tags=list(dict.fromkeys([*self.tags, *tags])), config=redact(config), dir=str(run_dir),
                      id=run_id or wandb.util.generate_id(), reinit="finish_previous")
        if self.api_key:
            os.environ["WANDB_API_KEY"] = self.api_key  # how wandb.init reads a key without a login prompt
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
            self.offline = True
        self._define_metrics()
        return self.run.id

    def _define_metrics(self) -> None:
        """Plot every figure against the training step, and summarise each val/* figure by its best value."""
        self.run.define_metric(STEP_METRIC)
        for pattern in ("train/*", "perf/*", "eval/*"):
            self.run.define_metric(pattern, step_metric=STEP_METRIC)
        self.run.define_metric("val/*", step_metric=STEP_METRIC, summary="min")
        for name in HIGHER_IS_BETTER:  # a named metric takes precedence over the glob
            self.run.define_metric(name, step_metric=STEP_METRIC, summary="max")

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log scalars at a training step."""
        if self.run is None:
            return
        for name in metrics:
            if name.startswith(HIGHER_IS_BETTER_PREFIXES) and name not in self._maximised:
                self.run.define_metric(name, step_metric=STEP_METRIC, summary="max")
                self._maximised.add(name)
        self.run.log({**metrics, STEP_METRIC: step}, step=step)

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
            sync_dir = Path(self.run.dir).parent  # .../wandb/offline-run-<time>-<id>, what `wandb sync` takes
            self.run.finish(exit_code=0 if status in ("completed", "pruned") else 1)
            self.run = None
            if self.offline:
                log.info("W&B: this run was logged offline; upload it with: wandb sync %s", sync_dir)
