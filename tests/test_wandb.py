"""W&B tracking: offline fallback with an unreachable server, resume continuity, no leaked secrets."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from audiolab.common.secrets import redact
from audiolab.runs.session import load_resolved_config, run_training
from conftest import run_cli

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again once we leave: nothing listens there


def test_unreachable_server_falls_back_to_offline_quickly(tmp_path: Path, cli_env: dict[str, str]) -> None:
    outputs = tmp_path / "outputs"
    base = ["debug=fast", f"paths.outputs={outputs}"]
    started = time.monotonic()
    plain = run_cli([*base, "logger=none"], cli_env, tmp_path)
    plain_seconds = time.monotonic() - started
    assert plain.returncode == 0, plain.stderr[-2000:]

    env = {**cli_env, "WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": f"http://127.0.0.1:{_closed_port()}",
           "HOME": str(tmp_path)}
    started = time.monotonic()
    proc = run_cli([*base, "logger=wandb"], env, tmp_path, timeout=120)
    overhead = time.monotonic() - started - plain_seconds
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert overhead < 20, f"W&B fallback added {overhead:.1f} s"
    assert "W&B unreachable" in proc.stdout

    run = outputs / "output02"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["wandb_id"]
    assert list((run / "wandb").glob(f"offline-run-*-{info['wandb_id']}"))
    for path in run.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path


def test_resumed_run_continues_the_same_wandb_run(run_tiny, outputs: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir, _ = run_tiny("logger=wandb", "logger.mode=offline")
    first_id = json.loads((run_dir / "run.json").read_text())["wandb_id"]
    assert first_id

    cfg = load_resolved_config(run_dir)
    cfg.trainer.max_steps = 5
    # W&B names offline directories by the second they start in: a resume within the same second would
    # share the first session's directory, and the count below could not tell the two sessions apart.
    time.sleep(1.05 - time.time() % 1)
    run_training(cfg, run_dir, resume=True)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["wandb_id"] == first_id and info["step"] == 5
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{first_id}"))) == 2


def test_secrets_are_redacted() -> None:
    cfg = {"logger": {"api_key": "abc", "project": "p"}, "sweep": {"storage": "postgresql://u:hunter2@db/x"},
           "token": None}
    clean = redact(cfg)
    assert clean["logger"] == {"api_key": "***", "project": "p"}
    assert clean["sweep"]["storage"] == "postgresql://u:***@db/x"
    assert clean["token"] is None
