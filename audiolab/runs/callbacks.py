"""Hydra callbacks of audiolab's own (listed under `hydra.callbacks` in conf/config.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class PrintRunsTable(Callback):
    """At the end of a `-m` grid or sweep, print the table of its runs, best first (as `audiolab runs --sweep`)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from audiolab.runs.table import sweep_table

        sweep_dir = Path(str(config.hydra.sweep.dir))
        text = sweep_table(sweep_dir, Path(str(config.paths.outputs)))
        if text:
            print(text, end="", flush=True)
