"""The layers contract (pyproject.toml [tool.importlinter]) holds, and breaks on an upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter as `make lint` does, on the audiolab package under `root`."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_layers_contract_holds() -> None:
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "audiolab's layers KEPT" in proc.stdout


def test_an_upward_import_in_a_function_body_breaks_it(tmp_path: Path) -> None:
    shutil.copytree(REPO / "audiolab", tmp_path / "audiolab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with (tmp_path / "audiolab" / "models" / "base.py").open("a") as f:
        f.write("\n\ndef _sneaky() -> None:\n    from audiolab.train.trainer import train  # noqa: F401\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode != 0
    assert "audiolab's layers BROKEN" in proc.stdout
    assert "audiolab.models.base -> audiolab.train.trainer" in proc.stdout
