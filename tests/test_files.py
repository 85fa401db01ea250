"""Record and checkpoint writes: readable by colleagues, durable before the rename, no leftovers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from audiolab.common import files
from audiolab.common.files import atomic_write_text
from audiolab.train.checkpoint import save_checkpoint


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_tiny_run_writes_files_with_the_umask_mode_not_mkstemps_0600(run_tiny) -> None:
    old = os.umask(0o022)
    try:
        run_dir, _ = run_tiny()
    finally:
        os.umask(old)
    for name in ("run.json", "config_resolved.yaml", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert _mode(run_dir / name) == 0o644, name


def test_the_data_is_fsynced_before_the_rename_and_the_directory_after(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    atomic_write_text(tmp_path / "run.json", "{}\n")
    assert events == ["fsync file", "rename", "fsync dir"]
    assert (tmp_path / "run.json").read_text() == "{}\n"


def test_a_killed_checkpoint_write_leaves_nothing_behind_at_the_next_save(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints" / "last.pt"
    ckpt.parent.mkdir()
    orphan = ckpt.parent / "last.pt.abc123.tmp"  # as a kill between torch.save and the rename leaves it
    orphan.write_bytes(b"x" * 1000)
    other = ckpt.parent / "best.pt.def456.tmp"  # another target's leftover is that target's to clear
    other.write_bytes(b"y")
    save_checkpoint(ckpt, {"w": torch.zeros(2)})
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best.pt.def456.tmp", "last.pt"]
    save_checkpoint(ckpt.parent / "best.pt", {"w": torch.ones(2)})
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best.pt", "last.pt"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n" and list(tmp_path.iterdir()) == [target]
