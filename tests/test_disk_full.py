"""A disk that fills up mid-run: a clear message, run.json says failed, no temp files, and resume works.

The run writes to a 1 MiB tmpfs mounted in a private mount namespace (`unshare -rm`: no root needed where
user namespaces are allowed, and nothing outside the test sees the mount). The first checkpoint does not fit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SCRIPT = """
set -u
mount -t tmpfs -o size=1M tmpfs "$DISK"
cd "$WORK"
"$PY" "$REPO/run.py" debug=fast logger=none 'model.channels=[1,64,128]' "paths.outputs=$DISK/out" \\
    "paths.cache=$WORK/cache" > first.txt 2>&1
echo $? > first.rc
cp "$DISK/out/output01/run.json" first.json
ls "$DISK/out/output01/checkpoints" > first.ls
mount -o remount,size=64M "$DISK"
"$PY" "$REPO/run.py" "resume=$DISK/out/output01" > second.txt 2>&1
echo $? > second.rc
cp "$DISK/out/output01/run.json" second.json
ls "$DISK/out/output01/checkpoints" > second.ls
"""


def test_a_full_disk_fails_the_run_cleanly_and_resume_completes_it(tmp_path: Path) -> None:
    assert shutil.which("unshare"), "util-linux's unshare is needed to mount a small private tmpfs"
    disk = tmp_path / "disk"
    disk.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "DISK": str(disk),
           "WORK": str(tmp_path), "PY": sys.executable, "REPO": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and (tmp_path / "first.rc").is_file(), f"unshare/mount failed: {proc.stderr}"
    first = (tmp_path / "first.txt").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "1", first[-3000:]
    assert "the disk is full" in first and "checkpoints/best.pt" in first and "resume=" in first
    assert "Traceback" not in first
    record = json.loads((tmp_path / "first.json").read_text())
    assert record["status"] == "failed" and "No space left on device" in record["error"]
    assert not [n for n in (tmp_path / "first.ls").read_text().split() if n.endswith(".tmp")]

    second = (tmp_path / "second.txt").read_text()
    assert (tmp_path / "second.rc").read_text().strip() == "0", second[-3000:]
    record = json.loads((tmp_path / "second.json").read_text())
    assert record["status"] == "completed" and record["step"] == 3
    assert sorted((tmp_path / "second.ls").read_text().split()) == ["best.pt", "last.pt"]
