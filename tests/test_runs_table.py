"""`audiolab runs`: a grid's runs ranked, filtered and exported, by a CLI that imports no torch."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from audiolab.runs.table import Condition, sort_rows
from conftest import REPO, run_cli


def audiolab(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audiolab", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's grid, tiny: two learning rates, one numbered run each."""
    work = tmp_path_factory.mktemp("grid")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"AUDIOLAB_CACHE": str(cache_dir)}
    proc = run_cli(["-m", "debug=fast", "logger=none", f"paths.outputs={work / 'outputs'}",
                    "data.val_max_crops=8", "optim.lr=1e-3,5e-3"], env, work, timeout=180)  # 8 crops: one per k
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc


def _records(outputs: Path) -> dict[str, dict]:
    return {p.name: json.loads((p / "run.json").read_text()) for p in sorted(outputs.glob("output*"))}


def test_a_grid_ends_with_its_runs_ranked_and_audiolab_runs_shows_them(grid, cli_env: dict[str, str]) -> None:
    work, proc = grid
    records = _records(work / "outputs")
    assert sorted(records) == ["output01", "output02"]
    ranked = sorted(records, key=lambda name: records[name]["best_val_spec_loss"])
    # the grid printed the table at its end, best first, with each run's best value as the record has it
    end = proc.stdout[proc.stdout.index("sweep01: 2 runs, best first"):]
    assert end.index(ranked[0]) < end.index(ranked[1])
    for name in ranked:
        assert f"{records[name]['best_val_spec_loss']:.5f}" in end
    shown = audiolab(["runs", "--outputs", str(work / "outputs"), "--sort", "best"], cli_env, work)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.index(ranked[0]) < shown.stdout.index(ranked[1])
    assert "optim.lr=0.001" in shown.stdout and "optim.lr=0.005" in shown.stdout
    assert "paths.outputs" not in shown.stdout  # where a run writes is not what it trains
    assert "sweep01" in shown.stdout and "completed" in shown.stdout


def test_filters_and_machine_readable_output(grid, cli_env: dict[str, str]) -> None:
    work, _ = grid
    outputs = str(work / "outputs")
    rows = json.loads(audiolab(["runs", "--outputs", outputs, "--json"], cli_env, work).stdout)
    records = _records(work / "outputs")
    assert [r["run"] for r in rows] == ["output01", "output02"]
    assert [r["best"] for r in rows] == [records[r["run"]]["best_val_spec_loss"] for r in rows]
    assert all(r["improvement"] == pytest.approx(1 - r["best"] / records[r["run"]]["final"]["val/spec_loss_input"])
               for r in rows)
    fast = json.loads(audiolab(["runs", "--outputs", outputs, "--json", "--where", "optim.lr>1e-3"],
                               cli_env, work).stdout)
    assert [r["run"] for r in fast] == ["output02"]
    both = json.loads(audiolab(["runs", "--outputs", outputs, "--json", "--where", "best<10", "--sweep", "sweep01"],
                               cli_env, work).stdout)
    assert len(both) == 2
    table = list(csv.DictReader(io.StringIO(audiolab(["runs", "--outputs", outputs, "--csv"], cli_env, work).stdout)))
    assert [row["run"] for row in table] == ["output01", "output02"] and table[0]["status"] == "completed"
    none = audiolab(["runs", "--outputs", outputs, "--status", "failed"], cli_env, work)
    assert none.returncode == 1 and "no run" in none.stderr
    bad = audiolab(["runs", "--outputs", outputs, "--where", "optim.lr"], cli_env, work)
    assert bad.returncode == 2 and "--where 'optim.lr'" in bad.stderr


def test_breakdown_shows_each_shift_and_band_at_the_best_step(grid, cli_env: dict[str, str]) -> None:
    work, _ = grid
    outputs = str(work / "outputs")
    records = _records(work / "outputs")
    shown = audiolab(["runs", "--outputs", outputs, "--breakdown"], cli_env, work)
    assert shown.returncode == 0, shown.stderr
    header = next(line for line in shown.stdout.splitlines() if "overall" in line)
    for group in ("k-4", "k-1", "k+1", "k+4", "low", "mid", "high"):
        assert group in header, header
    assert header.index("k-4") < header.index("k+4") < header.index("low") < header.index("high")
    for name, record in records.items():
        best = record["best_val"]  # the validation line of the best step, kept in run.json
        assert best["val/spec_loss"] == record["best_val_spec_loss"]
        line = next(line for line in shown.stdout.splitlines() if name in line)
        assert f"{best['val/improvement_k+4']:+.4f}" in line and f"{best['val/improvement_low']:+.4f}" in line
    rows = list(csv.DictReader(io.StringIO(audiolab(["runs", "--outputs", outputs, "--csv"], cli_env, work).stdout)))
    assert float(rows[0]["breakdown.k-2"]) == pytest.approx(records["output01"]["best_val"]["val/improvement_k-2"])


def test_conditions_and_ordering() -> None:
    assert Condition.parse("optim.lr>=1e-3").holds(1e-3)
    assert not Condition.parse("optim.lr>1e-3").holds(1e-3)
    assert Condition.parse("status=completed").holds("completed")
    assert Condition.parse("steps!=3").holds(4) and not Condition.parse("steps<3").holds(None)
    rows = [{"number": 1, "best": None}, {"number": 2, "best": 0.5}, {"number": 3, "best": 0.4}]
    assert [r["number"] for r in sort_rows(rows, "best")] == [3, 2, 1]  # a run without a value goes last


@pytest.mark.parametrize("args", [["--help"], ["runs", "--outputs", "."], ["sweep", "show", "--help"]])
def test_the_review_commands_import_no_torch(args: list[str], tmp_path: Path, cli_env: dict[str, str]) -> None:
    """What makes `audiolab --help` and `audiolab runs` answer at once (timed in the README, not here)."""
    code = ("import sys\nfrom audiolab.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'optuna', 'matplotlib', 'torchaudio') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env, capture_output=True, text=True,
                          timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_run_py_help_lists_the_groups_users_pick(tmp_path: Path, cli_env: dict[str, str]) -> None:
    proc = run_cli(["--help"], cli_env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "python run.py [-m]" in proc.stdout and "model: convnext1d" in proc.stdout
    assert "experiment: " in proc.stdout and "hparams_search: " in proc.stdout
    assert "schema/" not in proc.stdout and "debug/model" not in proc.stdout and "powered by Hydra" not in proc.stdout
    assert not (tmp_path / "outputs").exists()  # asking for help claims no run
    assert (REPO / "conf" / "hydra" / "help" / "audiolab.yaml").is_file()


def test_a_killed_run_shows_as_dead_not_running(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """run.json cannot say it was killed -9; the table sees that its process on this host is gone."""
    import signal
    import time

    outputs = tmp_path / "outputs"
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), "debug=fast", "logger=none",
                             f"paths.outputs={outputs}", "trainer.max_steps=100000", "trainer.val_every=100000"],
                            cwd=tmp_path, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = outputs / "output01" / "run.json"
    try:
        deadline = time.monotonic() + 120
        while not (record.is_file() and "parameters" in record.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        live = json.loads(audiolab(["runs", "--outputs", str(outputs), "--json"], cli_env, tmp_path).stdout)
        assert [r["status"] for r in live] == ["running"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert json.loads(record.read_text())["status"] == "running"  # what the killed process left
    dead = json.loads(audiolab(["runs", "--outputs", str(outputs), "--json"], cli_env, tmp_path).stdout)
    assert [r["status"] for r in dead] == ["dead"]
    shown = audiolab(["runs", "--outputs", str(outputs), "--status", "dead"], cli_env, tmp_path)
    assert shown.returncode == 0 and "output01" in shown.stdout
