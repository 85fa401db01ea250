"""The installed environment: console script, and the repo root on sys.path for hydra_plugins/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_console_script_and_module_entry_point(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "audiolab"
    for cmd in ([str(script), "reproduce", "--help"], [sys.executable, "-m", "audiolab", "reproduce", "--help"]):
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "outputNN" in proc.stdout


def test_repo_root_is_importable_from_anywhere(tmp_path: Path) -> None:
    """Hydra finds plugins as `hydra_plugins.*` namespace packages; setuptools' strict editable mode
    hides a top-level `hydra_plugins/` of this repo, compat mode puts the repo root on sys.path."""
    code = "import sys, audiolab; print(audiolab.__file__); print('\\n'.join(sys.path))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    first, *path = proc.stdout.splitlines()
    assert Path(first).resolve().is_relative_to(REPO)
    assert str(REPO) in path
