"""`audiolab reproduce --check [--rtol] [--steps]`, and the code snapshot (code.patch) of a dirty tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from audiolab.cli import main as audiolab_main
from audiolab.runs.compare import compare_metrics
from audiolab.runs.record import read_metrics
from audiolab.runs.session import load_resolved_config
from audiolab.runs.snapshot import PATCH_NAME, code_drift, code_state, snapshot_code
from conftest import REPO, run_cli

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1"}


def _lines() -> list[dict]:
    """Two steps of a run's metrics.jsonl: a train line per step, a val line at step 2."""
    return [{"step": 1, "train/loss": 0.71234, "train/lr": 1e-3, "perf/steps_per_s": 10.0},
            {"step": 2, "train/loss": 0.65, "train/lr": 9e-4, "perf/steps_per_s": 11.0},
            {"step": 2, "val/spec_loss": 1.25, "val/improvement": 0.1}]


# compare.py: pure logic


def test_identical_metrics_match_bitwise() -> None:
    result = compare_metrics(_lines(), _lines(), reference_name="output05", candidate_name="output07")
    assert result.matched and result.verdict == "MATCH" and result.differences == 0
    assert (result.steps, result.keys) == (2, 4)
    assert result.verdict_line() == \
        "MATCH: output07 reproduces output05 bitwise (2 steps, 4 keys; perf/* aside)"


def test_one_changed_value_differs_naming_step_key_and_relative_difference() -> None:
    changed = _lines()
    changed[1]["train/loss"] = 0.65 * 1.0001
    result = compare_metrics(_lines(), changed, reference_name="output05", candidate_name="output07")
    assert not result.matched and result.differences == 1
    assert (result.first.step, result.first.key, result.first.kind) == (2, "train/loss", "value")
    assert result.first.relative == pytest.approx(1e-4, rel=1e-3)
    assert list(result.largest) == ["train/loss"]
    line = result.verdict_line()
    assert line.startswith("DIFFERS: output07 vs output05: first at step 2, train/loss 0.650065 vs 0.65 ")
    assert "largest relative difference: train/loss 0.0001" in line


def test_missing_step_and_missing_key_differ_and_say_so() -> None:
    short = _lines()[:1]  # step 2 never logged
    result = compare_metrics(_lines(), short, reference_name="output05", candidate_name="output07")
    assert not result.matched and result.first.kind == "missing_step" and result.first.step == 2
    assert result.missing_steps == {"output07": [2]}
    assert "first at step 2, step 2 is missing from output07" in result.verdict_line()

    no_val_key = _lines()
    del no_val_key[2]["val/improvement"]
    result = compare_metrics(no_val_key, _lines(), reference_name="output05", candidate_name="output07")
    assert (result.first.kind, result.first.key) == ("missing_key", "val/improvement")
    assert "val/improvement is missing from output05 (output07 has 0.1)" in result.verdict_line()


def test_perf_keys_are_ignored() -> None:
    other = _lines()
    for line in other:
        if "perf/steps_per_s" in line:
            line["perf/steps_per_s"] *= 3
            line["perf/peak_mem_gib"] = 1.0  # a perf key only one run has: ignored too
    assert compare_metrics(_lines(), other).matched


def test_rtol_accepts_a_small_difference_and_rejects_a_large_one() -> None:
    small, large = _lines(), _lines()
    small[2]["val/spec_loss"] *= 1 + 1e-6
    large[2]["val/spec_loss"] *= 1 + 1e-3
    within = compare_metrics(_lines(), small, rtol=1e-5, reference_name="a", candidate_name="b")
    assert within.matched
    assert within.verdict_line().startswith("MATCH (rtol 1e-05): b reproduces a within rtol 1e-05")
    assert "largest relative difference: val/spec_loss 1e-06" in within.verdict_line()
    beyond = compare_metrics(_lines(), large, rtol=1e-5)
    assert not beyond.matched and beyond.first.key == "val/spec_loss"
    assert beyond.verdict_line().startswith("DIFFERS (rtol 1e-05)")
    assert not compare_metrics(_lines(), small).matched  # bitwise without rtol


def test_max_step_compares_only_the_first_steps() -> None:
    longer = [*_lines(), {"step": 3, "train/loss": 0.6}]
    assert not compare_metrics(_lines(), longer).matched
    assert compare_metrics(_lines(), longer, max_step=2).matched


# reproduce --check through the real CLI


def _reproduce(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(["reproduce", *args], env, cwd, script="audiolab/__main__.py")


def _verdict(stdout: str) -> str:
    """The one verdict line of a `reproduce --check`."""
    lines = [line for line in stdout.splitlines() if line.startswith("reproduce --check: ")
             and not line.startswith("reproduce --check: note:")]
    assert len(lines) == 1, stdout
    return lines[0]


def test_check_matches_then_differs_after_one_value_changes(run_tiny, outputs: Path, cli_env, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    source, _ = run_tiny()
    proc = _reproduce(["output01", "--check", "--outputs", str(outputs)], cli_env, tmp_path)  # the real command
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _verdict(proc.stdout).startswith("reproduce --check: MATCH: output02 reproduces output01 bitwise (3 steps")
    check = json.loads((outputs / "output02" / "run.json").read_text())["check"]
    assert check["verdict"] == "MATCH" and check["against"] == 1 and check["rtol"] is None

    lines = read_metrics(source)
    changed = next(i for i, line in enumerate(lines) if line["step"] == 2 and "train/loss" in line)
    lines[changed]["train/loss"] *= 1.0001
    (source / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    info = json.loads((source / "run.json").read_text())
    (source / "run.json").write_text(json.dumps({**info, "device": "cuda"}))  # as if it had run on a GPU
    capsys.readouterr()
    # In-process from here on (the same `main`), to spare a second interpreter start.
    assert audiolab_main(["reproduce", "output01", "--check", "--outputs", str(outputs)]) == 1
    out = capsys.readouterr().out
    assert "reproduce --check: note: output01 ran on cuda: CUDA kernels are not bitwise deterministic" in out
    assert "--rtol 1e-4" in out
    verdict = _verdict(out)
    assert verdict.startswith("reproduce --check: DIFFERS: output03 vs output01: first at step 2, train/loss "), verdict
    assert "largest relative difference: train/loss 0.0001" in verdict
    info = json.loads((outputs / "output03" / "run.json").read_text())
    assert info["status"] == "completed" and info["check"]["verdict"] == "DIFFERS"
    assert info["check"]["first"]["step"] == 2 and info["check"]["first"]["key"] == "train/loss"


def test_check_steps_stops_the_rerun_with_its_config_unchanged(run_tiny, outputs: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run_tiny("trainer.max_steps=6", "trainer.val_every=3")
    capsys.readouterr()
    assert audiolab_main(["reproduce", "1", "--check", "--steps", "3", "--outputs", str(outputs)]) == 0
    verdict = _verdict(capsys.readouterr().out)
    assert verdict.startswith("reproduce --check: MATCH: output02 reproduces output01 bitwise (3 steps up to step 3")
    rerun = outputs / "output02"
    assert max(line["step"] for line in read_metrics(rerun)) == 3
    assert int(load_resolved_config(rerun).trainer.max_steps) == 6
    info = json.loads((rerun / "run.json").read_text())
    assert info["status"] == "interrupted" and info["step"] == 3
    assert info["stopped"]["after_step"] == 3 and info["stopped"]["max_steps"] == 6
    assert info["check"]["verdict"] == "MATCH" and info["check"]["steps"] == 3
    assert (rerun / "checkpoints" / "last.pt").is_file()  # resumable to its full length


def test_rtol_and_steps_need_check(outputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert audiolab_main(["reproduce", "output01", "--rtol", "1e-4", "--outputs", str(outputs)]) == 2
    assert "--check" in capsys.readouterr().err
    assert not outputs.exists()


# code.patch: the snapshot of a dirty tree


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True,
                          timeout=30).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with audiolab/ and conf/ committed."""
    root = tmp_path / "repo"
    (root / "audiolab").mkdir(parents=True)
    (root / "conf").mkdir()
    (root / "audiolab" / "model.py").write_text("WIDTH = 32\n")
    (root / "conf" / "config.yaml").write_text("lr: 1e-3\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "start")
    return root


def test_snapshot_of_a_dirty_tree_writes_code_patch(repo: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "output01"
    run_dir.mkdir()
    clean = snapshot_code(run_dir, repo)
    assert clean["commit"] == _git(repo, "rev-parse", "HEAD").strip() and clean["dirty"] is False
    assert clean["patch"] is None and clean["patch_sha256"] is None and clean["untracked"] == []
    assert not (run_dir / PATCH_NAME).exists()
    assert code_drift(clean, run_dir, repo) is None

    (repo / "audiolab" / "model.py").write_text("WIDTH = 64\n")
    (repo / "audiolab" / "extra.py").write_text("NEW = 1\n")
    (repo / "notes.txt").write_text("outside audiolab/, conf/, experiments/: not listed\n")
    dirty = snapshot_code(run_dir, repo)
    patch = (run_dir / PATCH_NAME).read_bytes()
    assert b"-WIDTH = 32" in patch and b"+WIDTH = 64" in patch
    assert dirty["dirty"] is True and dirty["patch"] == PATCH_NAME
    assert dirty["patch_sha256"] == code_state(repo).patch_sha256 and len(dirty["patch_sha256"]) == 64
    assert dirty["untracked"] == ["audiolab/extra.py"]
    assert code_drift(dirty, run_dir, repo) is None  # the same code: nothing to say

    (repo / "conf" / "config.yaml").write_text("lr: 1e-2\n")
    drift = code_drift(dirty, run_dir, repo)
    assert "uncommitted changes here are not output01's" in drift and "commit:" not in drift
    assert f"git checkout {dirty['commit']}; git apply {run_dir / PATCH_NAME}" in drift

    (repo / "conf" / "config.yaml").write_text("lr: 1e-3\n")  # back to output01's code, then a commit
    _git(repo, "commit", "-q", "-am", "next")
    drift = code_drift(clean, run_dir, repo)
    assert "commit: output01 was made at" in drift and "git apply" not in drift


def test_outside_git_nothing_is_written(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    run_dir = tmp_path / "output01"
    run_dir.mkdir()
    assert snapshot_code(run_dir, plain) == {"commit": None, "dirty": None}
    assert list(run_dir.iterdir()) == []


def _clone_of_the_code_under_test(tmp_path: Path) -> Path:
    """`git clone` of this repository, with today's uncommitted package and configs committed on top."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, capture_output=True, timeout=60)
    changed = _git(REPO, "diff", "HEAD", "--name-only", "--", "audiolab", "conf", "experiments", "run.py").split()
    changed += _git(REPO, "ls-files", "--others", "--exclude-standard", "--", "audiolab", "conf").split()
    for name in changed:
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).exists():
            shutil.copy2(REPO / name, clone / name)
        else:
            (clone / name).unlink(missing_ok=True)
    _git(clone, "add", "-A")
    _git(clone, "commit", "-q", "--allow-empty", "-m", "the code under test")
    return clone


def test_run_from_a_dirty_clone_saves_its_patch_and_reproduce_warns_of_drift(cli_env, tmp_path: Path) -> None:
    clone = _clone_of_the_code_under_test(tmp_path)
    outputs = tmp_path / "outputs"
    with (clone / "audiolab" / "__init__.py").open("a") as f:
        f.write("# a change of the clone's, before its run\n")
    env = {**cli_env, **GIT_ENV, "PYTHONPATH": str(clone)}
    first = subprocess.run([sys.executable, str(clone / "run.py"), "debug=fast", "logger=none",
                            f"paths.outputs={outputs}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = outputs / "output01"
    recorded = json.loads((run_dir / "run.json").read_text())["git"]
    assert recorded["commit"] == _git(clone, "rev-parse", "HEAD").strip()  # the clone's git, not this repo's
    assert "+# a change of the clone's, before its run" in (run_dir / PATCH_NAME).read_text()
    assert recorded["patch"] == PATCH_NAME and recorded["dirty"] is True

    with (clone / "audiolab" / "__init__.py").open("a") as f:
        f.write("# and one after it\n")
    proc = subprocess.run([sys.executable, "-m", "audiolab", "reproduce", "output01", "--outputs", str(outputs),
                           "trainer.max_steps=1"], cwd=clone, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "uncommitted changes here are not output01's (code.patch)" in proc.stdout, proc.stdout
    assert f"git stash; git checkout {recorded['commit']}; git apply {run_dir / PATCH_NAME}" in proc.stdout
