"""Tiny end-to-end trainings on CPU: files, resume equivalence, reproduce, failure handling."""

from __future__ import annotations

import json
import math
import signal
import weakref
from pathlib import Path

import pytest
import soundfile as sf
import torch
from hydra.utils import instantiate

import audiolab.runs.session as session
from audiolab.cli import main as audiolab_main
from audiolab.runs.record import read_metrics
from audiolab.runs.session import RunFailed, RunInterrupted, load_resolved_config, run_training
from audiolab.train.checkpoint import load_checkpoint
from audiolab.train.validate import Validator
from conftest import compose_config


def _reproducible(metrics: list[dict]) -> list[dict]:
    """Metrics minus wall-clock throughput, which no two runs share."""
    return [{k: v for k, v in m.items() if not k.startswith("perf/")} for m in metrics]


def test_tiny_run_writes_everything(run_tiny) -> None:
    run_dir, result = run_tiny()
    assert run_dir.name == "output01"
    for name in (".hydra", "run.json", "metrics.jsonl", "train.log", "config_resolved.yaml",
                 "checkpoints/last.pt", "checkpoints/best.pt", "samples"):
        assert (run_dir / name).exists(), name
    info = json.loads((run_dir / "run.json").read_text())
    assert info["number"] == 1 and info["status"] == "completed"
    assert info["parameters"] > 0 and info["device"] == "cpu"
    assert {"commit", "dirty"} <= set(info["git"]) and info["versions"]["torch"]
    assert info["started"] and info["ended"] and info["host"]
    assert math.isfinite(info["best_val_spec_loss"]) and info["best_step"] == 3
    assert result.best_value == info["best_val_spec_loss"]

    metrics = read_metrics(run_dir)
    val = [m for m in metrics if "val/spec_loss" in m]
    assert len(val) == 1 and val[0]["step"] == 3
    assert math.isfinite(val[0]["val/spec_loss"]) and val[0]["val/spec_loss_input"] > 0
    assert val[0]["val/improvement"] == pytest.approx(1 - val[0]["val/spec_loss"] / val[0]["val/spec_loss_input"])
    assert [m["step"] for m in metrics if "train/loss" in m] == [1, 2, 3]

    wavs = sorted((run_dir / "samples").glob("*.wav"))
    assert [w.name.split("_", 2)[-1] for w in wavs] == ["input.wav", "output.wav", "target.wav"]
    audio, sr = sf.read(wavs[0])
    assert sr == 44100 and len(audio) == 4096
    assert list((run_dir / "samples").glob("*.png"))

    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "scheduler", "step", "rng", "config", "best"} <= set(ckpt)
    assert ckpt["step"] == 3 and ckpt["config"]["trainer"]["max_steps"] == 3
    assert {"python", "numpy", "torch"} <= set(ckpt["rng"])
    assert "step 3: val/spec_loss" in (run_dir / "train.log").read_text()


def test_resume_after_sigterm_is_bitwise_identical(interrupted_and_full) -> None:
    full_dir, cut_dir = interrupted_and_full("trainer.max_steps=6", "trainer.val_every=3", "model.dropout=0.1")
    info = json.loads((cut_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["step"] == 4
    assert load_checkpoint(cut_dir / "checkpoints" / "last.pt")["step"] == 4

    run_training(load_resolved_config(cut_dir), cut_dir, resume=True)
    assert json.loads((cut_dir / "run.json").read_text())["status"] == "completed"
    assert _reproducible(read_metrics(cut_dir)) == _reproducible(read_metrics(full_dir))
    full = load_checkpoint(full_dir / "checkpoints" / "last.pt")
    cut = load_checkpoint(cut_dir / "checkpoints" / "last.pt")
    assert full["step"] == cut["step"] == 6
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, cut["model"][name]), name


def test_reproduce_gives_identical_metrics(run_tiny, outputs: Path, monkeypatch) -> None:
    source, _ = run_tiny("trainer.max_steps=4", "trainer.val_every=2")
    monkeypatch.chdir(outputs.parent)
    assert audiolab_main(["reproduce", "output01", "--outputs", str(outputs)]) == 0
    copy = outputs / "output02"
    info = json.loads((copy / "run.json").read_text())
    assert info["reproduces"] == 1 and info["status"] == "completed"
    assert _reproducible(read_metrics(copy)) == _reproducible(read_metrics(source))
    assert (copy / ".hydra" / "config.yaml").is_file()

    assert audiolab_main(["reproduce", "1", "--outputs", str(outputs), "trainer.max_steps=2"]) == 0
    info = json.loads((outputs / "output03" / "run.json").read_text())
    assert info["overrides"] == ["trainer.max_steps=2"] and info["step"] == 2
    assert audiolab_main(["reproduce", "1", "--outputs", str(outputs), "trainer.no_such_key=2"]) == 2


def test_validation_runs_in_eval_mode(tiny_overrides: list[str]) -> None:
    """With heavy dropout, validating twice gives the same numbers, and training mode comes back."""
    cfg = compose_config([*tiny_overrides, "model.dropout=0.5", "model.predict_residual=false"])
    model = instantiate(cfg.model)
    for module in model.modules():  # full-strength blocks, so dropout visibly changes the output
        if hasattr(module, "gamma"):
            module.gamma.data.fill_(1.0)
    data = instantiate(cfg.data)
    validator = Validator(data, instantiate(cfg.task, sample_rate=data.sample_rate), torch.device("cpu"), 1)
    model.train()
    first, out1 = validator.run(model, None)
    second, out2 = validator.run(model, None)
    assert model.training
    assert first == second and torch.equal(out1, out2)
    with torch.no_grad():
        noisy = [model(validator.inputs[:2]) for _ in range(2)]
    assert not torch.equal(noisy[0], noisy[1])  # dropout is live in train mode, so eval mode mattered


def test_injected_nan_fails_clearly_without_checkpoint(run_tiny, outputs: Path) -> None:
    with pytest.raises(RunFailed, match="non-finite loss at step 2"):
        run_tiny("model._target_=helpers.NaNAfter", "+model.nan_at=2")
    run_dir = outputs / "output01"
    info = strict_json((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and "non-finite loss" in info["error"]
    assert info.get("best_val_spec_loss") is None  # no validation ran: null or absent, never `Infinity`
    assert not (run_dir / "checkpoints" / "last.pt").exists()
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        strict_json(line)


def strict_json(text: str) -> dict:
    """Parse as a strict JSON reader does: NaN, Infinity and -Infinity are errors."""
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_metrics_lines_are_strict_json_when_a_value_is_not_finite(tmp_path: Path) -> None:
    from audiolab.runs.record import RunRecord, read_metrics_by_step

    record = RunRecord.create(tmp_path, config={"lr": float("inf")})
    record.log_metrics(3, {"train/loss": float("nan"), "train/grad_norm": float("inf"), "perf/s": 0.5})
    record.log_metrics(3, {"val/spec_loss": 0.25})
    lines = [strict_json(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0] == {"step": 3, "train/loss": None, "train/grad_norm": None, "perf/s": 0.5}
    assert strict_json((tmp_path / "run.json").read_text())["config"] == {"lr": None}
    assert read_metrics_by_step(tmp_path) == {3: {"train/loss": None, "train/grad_norm": None, "perf/s": 0.5,
                                                  "val/spec_loss": 0.25}}


def test_augmentations_follow_the_run_seed_and_change_what_is_trained(run_tiny) -> None:
    threaded, _ = run_tiny("augment=full", "data.num_workers=2")
    inline, _ = run_tiny("augment=full")
    plain, _ = run_tiny()
    other_seed, _ = run_tiny("augment=full", "trainer.seed=1")
    losses = lambda d: [m["train/loss"] for m in read_metrics(d) if "train/loss" in m]  # noqa: E731
    assert _reproducible(read_metrics(threaded)) == _reproducible(read_metrics(inline))
    assert losses(threaded) != losses(plain) and losses(threaded) != losses(other_seed)
    assert "augmentations: pitch(p=0.3" in (threaded / "train.log").read_text()


def test_log_lines_go_around_the_progress_bar_while_it_is_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the bar is drawn and console log records are written through tqdm, never into the bar."""
    import io
    import logging
    import sys
    from types import SimpleNamespace

    from audiolab.train.hooks import ConsoleHook

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)
    root.addHandler(console)
    try:
        hook = ConsoleHook("output01", enabled=True)
        hook.on_start(SimpleNamespace(max_steps=10, state=SimpleNamespace(step=0)))
        during = list(root.handlers)
        logging.getLogger("audiolab.train").warning("step 5: val/spec_loss 0.5")
        hook.on_end(SimpleNamespace())
        after = list(root.handlers)
    finally:
        root.removeHandler(console)
    assert console not in during and any(type(h).__name__ == "_TqdmLoggingHandler" for h in during)
    assert console in after
    # the line starts on a line of its own: the bar was cleared (\r) before it was written
    assert "\nstep 5: val/spec_loss 0.5\n" in terminal.getvalue().replace("\r", "\n")


def test_last_pt_is_written_after_the_validation_is_recorded(run_tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """last.pt is the commit point: a kill before it replays the validation on resume, so none is lost."""
    import audiolab.train.hooks as train_hooks

    events: list[tuple[str, int, bool]] = []
    real_save = train_hooks.save_checkpoint

    def save(path: Path, payload: dict) -> None:
        metrics = path.parent.parent / "metrics.jsonl"
        rows = read_metrics(path.parent.parent) if metrics.exists() else []
        recorded = any("val/spec_loss" in row and row["step"] == payload["step"] for row in rows)
        events.append((path.name, payload["step"], recorded))
        real_save(path, payload)

    monkeypatch.setattr(train_hooks, "save_checkpoint", save)
    run_dir, _ = run_tiny("trainer.max_steps=4", "trainer.val_every=2")
    assert [(name, step) for name, step, _ in events if name == "last.pt"] == [("last.pt", 2), ("last.pt", 4)]
    assert all(recorded for name, _, recorded in events if name == "last.pt")
    order = [(name, step) for name, step, _ in events]
    assert ("best.pt", 2) in order  # the first validation is always an improvement
    for name, step in order:
        if name == "best.pt":  # best.pt of a step is written before that step's last.pt
            assert order.index((name, step)) < order.index(("last.pt", step))
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(run_tiny, outputs: Path) -> None:
    class Killed(BaseException):
        """What kill -9 leaves: no clean end, no last.pt."""

    full_dir, _ = run_tiny("trainer.max_steps=4", "trainer.val_every=2")

    def kill_at_1(step: int) -> None:
        if step == 1:
            raise Killed

    with pytest.raises(Killed):
        run_tiny("trainer.max_steps=4", "trainer.val_every=2", after_step=kill_at_1)
    cut_dir = outputs / "output02"
    assert not (cut_dir / "checkpoints" / "last.pt").exists() and read_metrics(cut_dir)
    run_training(load_resolved_config(cut_dir), cut_dir, resume=True)
    info = json.loads((cut_dir / "run.json").read_text())
    assert info["status"] == "completed" and len(info["resumes"]) == 1
    assert _reproducible(read_metrics(cut_dir)) == _reproducible(read_metrics(full_dir))


def test_a_refused_checkpoint_leaves_a_completed_run_completed(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """Resume onto a malicious last.pt: a clear error naming the file, no traceback, the record untouched."""
    import subprocess
    import sys

    from conftest import run_cli

    outputs = tmp_path / "outputs"
    first = run_cli(["debug=fast", "logger=none", f"paths.outputs={outputs}"], cli_env, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    run_dir = outputs / "output01"
    before = json.loads((run_dir / "run.json").read_text())

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    last = run_dir / "checkpoints" / "last.pt"
    torch.save(Payload(), last)  # a real torch file whose pickle calls print when loaded in full
    resumed = run_cli([f"resume={run_dir}"], cli_env, tmp_path)
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert f"checkpoint error: {last}: refused to load" in resumed.stderr and "code ran" not in resumed.stdout
    after = json.loads((run_dir / "run.json").read_text())
    assert after["status"] == "completed" and after.get("resumes") == before.get("resumes")
    scored = subprocess.run([sys.executable, "-m", "audiolab", "evaluate", str(run_dir), "--checkpoint", "last",
                             "metrics.embedder=logmel"], cwd=tmp_path, env=cli_env, capture_output=True, text=True,
                            timeout=120)
    assert scored.returncode == 2 and "Traceback" not in scored.stderr and "refused to load" in scored.stderr
    for refusal in (resumed.stderr, scored.stderr):  # each names the flag that would load it
        assert "trainer.trust_checkpoint=true" in refusal and "audiolab evaluate --trust-checkpoint" in refusal
    # the flags do what they say: the file is unpickled in full (its code runs), then refused as no checkpoint
    trusted = run_cli([f"resume={run_dir}", "trainer.trust_checkpoint=true"], cli_env, tmp_path)
    assert trusted.returncode == 2 and "code ran" in trusted.stdout
    assert "holds a NoneType, not a checkpoint" in trusted.stderr
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    scored = subprocess.run([sys.executable, "-m", "audiolab", "evaluate", str(run_dir), "--checkpoint", "last",
                             "--trust-checkpoint", "metrics.embedder=logmel"], cwd=tmp_path, env=cli_env,
                            capture_output=True, text=True, timeout=120)
    assert scored.returncode == 2 and "code ran" in scored.stdout and "holds a NoneType" in scored.stderr


def test_a_ctrl_c_while_the_run_starts_stops_it_even_where_python_drops_the_interrupt(
        run_tiny, outputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The sweep test's hang: a SIGINT that lands in a weakref callback (SQLAlchemy's, during the trial's
    # start) raises KeyboardInterrupt there, and Python ignores it. The run must still stop.
    class Doomed:
        pass

    opened = session._open_record

    def open_then_interrupt_in_a_callback(*args, **kwargs):
        record = opened(*args, **kwargs)
        thing = Doomed()
        weakref.finalize(thing, signal.raise_signal, signal.SIGINT)
        del thing  # the finalizer runs now, and the handler with it, inside the callback
        return record

    monkeypatch.setattr(session, "_open_record", open_then_interrupt_in_a_callback)
    with pytest.raises(RunInterrupted):
        run_tiny("trainer.max_steps=40")
    record = json.loads((outputs / "output01" / "run.json").read_text())
    assert record["status"] == "interrupted"
