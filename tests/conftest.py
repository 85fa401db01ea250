"""Shared helpers: compose real configs with Hydra's compose API, run tiny trainings, drive the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from audiolab.common.numbering import allocate
from audiolab.config import register_configs
from audiolab.config.resolvers import register_resolvers
from audiolab.runs.session import RunInterrupted, run_training
from audiolab.train.hooks import TrainResult

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

register_configs()
register_resolvers()


def compose_config(overrides: list[str]) -> DictConfig:
    """The config `python run.py <overrides>` would get (without the hydra node)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def train_run(outputs: Path, cache: Path, *extra: str) -> Path:
    """Train a tiny CPU run (debug=fast plus `extra`) in the next numbered directory of `outputs`; return it."""
    cfg = compose_config(["debug=fast", "logger=none", f"paths.outputs={outputs}", f"paths.cache={cache}", *extra])
    run_dir = allocate(outputs)
    run_training(cfg, run_dir)
    return run_dir


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dataset cache for the whole session, so the synthetic data is generated once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    """A fresh outputs/ directory for numbered runs."""
    return tmp_path / "outputs"


@pytest.fixture
def tiny_overrides(outputs: Path, cache_dir: Path) -> list[str]:
    """Overrides for a tiny CPU run that writes into this test's outputs/."""
    return ["debug=fast", "logger=none", f"paths.outputs={outputs}", f"paths.cache={cache_dir}"]


@pytest.fixture
def run_tiny(tiny_overrides: list[str], outputs: Path) -> Callable[..., tuple[Path, TrainResult]]:
    """Run a tiny training in-process in a new numbered directory; return (run_dir, result)."""

    def run(*extra: str, **kwargs) -> tuple[Path, TrainResult]:
        cfg = compose_config([*tiny_overrides, *extra])
        run_dir = allocate(outputs)
        return run_dir, run_training(cfg, run_dir, **kwargs)

    return run


@pytest.fixture
def interrupted_and_full(run_tiny, outputs: Path) -> Callable[..., tuple[Path, Path]]:
    """Run `extra` uninterrupted (output01) and again with a SIGTERM after step 4 (output02, left interrupted)."""

    def run(*extra: str) -> tuple[Path, Path]:
        full_dir, _ = run_tiny(*extra)

        def interrupt_at_4(step: int) -> None:
            if step == 4:
                signal.raise_signal(signal.SIGTERM)

        with pytest.raises(RunInterrupted):
            run_tiny(*extra, after_step=interrupt_at_4)
        return full_dir, outputs / "output02"

    return run


@pytest.fixture
def cli_env(cache_dir: Path) -> dict[str, str]:
    """Environment for CLI subprocesses: no W&B credentials leak in from the machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(AUDIOLAB_CACHE=str(cache_dir), PYTHONUNBUFFERED="1", WANDB_SILENT="true")
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120,
            script: str = "run.py") -> subprocess.CompletedProcess:
    """Run `python run.py ARGS` (or another entry script) as a user would."""
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
