"""Atomic run numbering: concurrent launches never share a number."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from audiolab.common.numbering import allocate, existing_numbers, find_run_dir


def _claim(root: str, barrier, results) -> None:
    barrier.wait()  # all processes call allocate at the same moment
    results.put(allocate(root).name)


def test_eight_concurrent_launches_get_eight_distinct_numbers(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), barrier, results)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    names = sorted(results.get(timeout=5) for _ in procs)
    assert names == [f"output{i:02d}" for i in range(1, 9)]


def test_next_number_is_one_more_than_the_highest(tmp_path: Path) -> None:
    (tmp_path / "output03").mkdir()
    (tmp_path / "output41").mkdir()
    (tmp_path / "notes").mkdir()
    assert allocate(tmp_path).name == "output42"
    assert existing_numbers(tmp_path) == [3, 41, 42]
    for _ in range(60):
        allocate(tmp_path)
    assert allocate(tmp_path).name == "output103"


def test_find_run_dir_accepts_name_number_and_path(tmp_path: Path) -> None:
    run = allocate(tmp_path)
    assert find_run_dir("output01", tmp_path) == run
    assert find_run_dir("1", tmp_path) == run
    assert find_run_dir(str(run)) == run
    with pytest.raises(FileNotFoundError, match="output07"):
        find_run_dir("output07", tmp_path)
