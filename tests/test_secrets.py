"""Secrets given as overrides, in URLs or in the environment reach no file a run writes (W&B's included)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from audiolab.common.secrets import redact
from conftest import run_cli

# made at run time: a literal here would be in code.patch, the diff a run of an uncommitted tree saves
KEY_OVERRIDE = f"sk-{uuid.uuid4().hex}"
KEY_ENV = uuid.uuid4().hex + uuid.uuid4().hex[:8]


def _files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_a_grid_with_secrets_writes_none_of_them(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """Overrides, argv, .hydra files, multirun.yaml, runs.jsonl, checkpoints, W&B's offline files: all masked."""
    outputs = tmp_path / "outputs"
    env = {**cli_env, "WANDB_API_KEY": KEY_ENV, "HOME": str(tmp_path)}
    proc = run_cli(["-m", "debug=fast", "logger=wandb", "logger.mode=offline", f"+logger.api_key={KEY_OVERRIDE}",
                    "optim.lr=1e-3", f"paths.outputs={outputs}"], env, tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = outputs / "output01"
    assert (run / "checkpoints" / "last.pt").is_file() and list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert (outputs / "multirun" / "sweep01" / "multirun.yaml").is_file()
    assert (outputs / "multirun" / "sweep01" / "runs.jsonl").is_file()
    for secret in (KEY_OVERRIDE, KEY_ENV):
        assert _files_holding(tmp_path, secret) == [], secret
    # (Hydra's launcher echoes each job's overrides to the terminal, not to a file: that line is not ours to mask)
    assert "+logger.api_key=***" in (run / "run.json").read_text()


@pytest.mark.parametrize(("given", "written"), [
    ({"logger": {"api_key": "abc", "project": "p"}}, {"logger": {"api_key": "***", "project": "p"}}),
    ({"storage": "postgresql://u:hunter2@db/x"}, {"storage": "postgresql://u:***@db/x"}),
    (["+logger.api_key=sk-1", "++api_key=sk-2", "x.auth_token=t", "optim.lr=1e-3"],
     ["+logger.api_key=***", "++api_key=***", "x.auth_token=***", "optim.lr=1e-3"]),
    (["run.py", "hydra.sweeper.storage=postgresql://u:pw@h/db"], ["run.py", "hydra.sweeper.storage=postgresql://u:***@h/db"]),
    ({"token": None, "n": 3}, {"token": None, "n": 3}),
])
def test_redact_masks_keys_assignments_and_url_passwords(given: object, written: object) -> None:
    assert redact(given) == written
