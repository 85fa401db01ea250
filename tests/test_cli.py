"""The real command line: grids, resume and signals, as a user drives them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from audiolab.runs.record import read_metrics
from conftest import REPO, run_cli


def test_grid_makes_one_numbered_run_per_job(tmp_path: Path, cli_env: dict[str, str]) -> None:
    outputs = tmp_path / "outputs"
    proc = run_cli(["-m", "model=convnext1d", "optim.lr=1e-3,5e-3", "debug=fast", "logger=none",
                    f"paths.outputs={outputs}"], cli_env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = sorted(p.name for p in outputs.glob("output*"))
    assert runs == ["output01", "output02"]
    lrs = sorted(yaml.safe_load((outputs / r / "config_resolved.yaml").read_text())["optim"]["lr"] for r in runs)
    assert lrs == [1e-3, 5e-3]

    sweep = outputs / "multirun" / "sweep01"
    assert (sweep / "multirun.yaml").is_file()
    members = [json.loads(line) for line in (sweep / "runs.jsonl").read_text().splitlines()]
    assert sorted(m["run"] for m in members) == [1, 2]
    for r in runs:
        info = json.loads((outputs / r / "run.json").read_text())
        assert info["status"] == "completed" and info["sweep_dir"] == str(sweep)
        assert info["job_index"] in (0, 1)
        assert (outputs / r / ".hydra" / "overrides.yaml").is_file()


def test_resume_from_the_cli_keeps_the_original_config(tmp_path: Path, cli_env: dict[str, str]) -> None:
    outputs = tmp_path / "outputs"
    first = run_cli(["debug=fast", "logger=none", f"paths.outputs={outputs}"], cli_env, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    run = outputs / "output01"
    original = (run / ".hydra" / "config.yaml").read_text()

    again = run_cli([f"resume={run}", "trainer.max_steps=5", "trainer.val_every=5"], cli_env, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(p.name for p in outputs.glob("output*")) == ["output01"]  # same directory, no new number
    assert (run / ".hydra" / "config.yaml").read_text() == original
    assert (run / ".hydra" / "resume" / "overrides.yaml").is_file()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["step"] == 5
    assert info["resumes"][0]["overrides"] == ["trainer.max_steps=5", "trainer.val_every=5"]
    assert [m["step"] for m in read_metrics(run) if "train/loss" in m] == [1, 2, 3, 4, 5]

    missing = run_cli([f"resume={tmp_path / 'nope'}"], cli_env, tmp_path)
    assert missing.returncode != 0 and "nope" in missing.stderr + missing.stdout


def test_sigterm_saves_last_checkpoint_and_marks_interrupted(tmp_path: Path, cli_env: dict[str, str]) -> None:
    outputs = tmp_path / "outputs"
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), "debug=fast", "logger=none",
                             f"paths.outputs={outputs}", "trainer.max_steps=100000", "trainer.val_every=100000"],
                            cwd=tmp_path, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = outputs / "output01" / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.exists() and metrics.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    info = json.loads((outputs / "output01" / "run.json").read_text())
    assert info["status"] == "interrupted" and info["step"] >= 1
    assert (outputs / "output01" / "checkpoints" / "last.pt").is_file()
    assert "resume=" in out
