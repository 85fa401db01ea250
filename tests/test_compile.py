"""trainer.compile: the training forward under torch.compile, at a tiny size on the CPU, resumed bitwise."""

from __future__ import annotations

import json

import pytest
import torch

from audiolab.runs.record import read_metrics
from audiolab.runs.session import load_resolved_config, run_training
from audiolab.train.checkpoint import load_checkpoint
from audiolab.train.wrap import compile_wanted

# aot_eager runs TorchDynamo's capture and AOTAutograd's joint graph without generating C++ (inductor took 67 s
# to compile this tiny model here); the wrapping, the checkpoint layout and resume are the same for any backend.
COMPILED = ["trainer.compile=true", "trainer.compile_backend=aot_eager", "trainer.max_steps=6", "trainer.val_every=3",
            "trainer.ema_decay=0.9"]


def _curve(run_dir) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in read_metrics(run_dir)]


def test_compiled_run_resumes_bitwise_and_follows_eager(interrupted_and_full, run_tiny, caplog) -> None:
    full_dir, cut_dir = interrupted_and_full(*COMPILED)
    assert "compiled (aot_eager)" in (full_dir / "train.log").read_text()
    assert json.loads((cut_dir / "run.json").read_text())["step"] == 4
    run_training(load_resolved_config(cut_dir), cut_dir, resume=True)
    assert _curve(cut_dir) == _curve(full_dir)
    full, cut = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (full_dir, cut_dir))
    # the checkpoint holds the plain model's keys (no _orig_mod. prefix), so any run can load it
    assert not any("_orig_mod" in k for k in full["model"])
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, cut["model"][name]), name
    eager_dir, _ = run_tiny(*COMPILED[2:])
    for a, b in zip(_curve(eager_dir), _curve(full_dir), strict=True):
        assert a.keys() == b.keys()
        assert all(b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7) for k in a)


@pytest.mark.parametrize(("choice", "device", "n", "expected"), [
    ("true", "cpu", 10, True), ("false", "cuda", 10**8, False), ("False", "cpu", 10, False),
    ("auto", "cpu", 10**8, False), ("auto", "cuda", 10**8, True), ("auto", "cuda", 10**5, False),
])
def test_compile_choice(choice: str, device: str, n: int, expected: bool) -> None:
    assert compile_wanted(choice, torch.device(device), n) is expected
