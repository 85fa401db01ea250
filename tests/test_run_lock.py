"""One run directory, one training process: a second resume while the first trains is refused (issue 18, item 7)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from conftest import REPO, run_cli


def _steps_logged(run_dir: Path) -> list[int]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row["step"] for row in lines if "train/loss" in row]


def test_a_second_resume_of_a_training_run_is_refused(run_tiny, cli_env: dict[str, str], tmp_path: Path) -> None:
    run_dir, _ = run_tiny()
    resume = [sys.executable, str(REPO / "run.py"), f"resume={run_dir}", "trainer.max_steps=400",
              "trainer.val_every=200"]
    first = subprocess.Popen(resume, cwd=tmp_path, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        deadline = time.monotonic() + 120
        while max(_steps_logged(run_dir)) <= 5:  # the first resume is training
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
            time.sleep(0.1)
        second = run_cli([f"resume={run_dir}", "trainer.max_steps=400"], cli_env, tmp_path)
        assert first.poll() is None, "the first resume ended before the second was tried: the test proves nothing"
    finally:
        out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out[-3000:]
    assert second.returncode == 2
    assert f"{run_dir.name} is being trained by another process (pid {first.pid} on " in second.stderr
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["step"] == 400 and len(record["resumes"]) == 1
    counts = Counter(_steps_logged(run_dir))
    assert sorted(counts) == list(range(1, 401)) and set(counts.values()) == {1}
