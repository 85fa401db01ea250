"""W&B tracking: offline fallback with an unreachable server, resume continuity, no leaked secrets."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2
from wandb.sdk.internal import datastore

from audiolab.common.secrets import redact
from audiolab.runs.loggers import STEP_METRIC
from audiolab.runs.session import job_type, load_resolved_config, run_training, tracker_tags
from conftest import run_cli

FAKE_KEY = uuid.uuid4().hex + uuid.uuid4().hex[:8]  # made here, so no source file (code.patch) holds it


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again once we leave: nothing listens there


def test_unreachable_server_falls_back_to_offline_quickly(tmp_path: Path, cli_env: dict[str, str]) -> None:
    outputs = tmp_path / "outputs"
    base = ["debug=fast", f"paths.outputs={outputs}"]
    started = time.monotonic()
    plain = run_cli([*base, "logger=none"], cli_env, tmp_path)
    plain_seconds = time.monotonic() - started
    assert plain.returncode == 0, plain.stderr[-2000:]

    env = {**cli_env, "WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": f"http://127.0.0.1:{_closed_port()}",
           "HOME": str(tmp_path)}
    started = time.monotonic()
    proc = run_cli([*base, "logger=wandb"], env, tmp_path, timeout=120)
    overhead = time.monotonic() - started - plain_seconds
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert overhead < 20, f"W&B fallback added {overhead:.1f} s"
    assert "W&B unreachable" in proc.stdout

    run = outputs / "output02"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["wandb_id"]
    assert list((run / "wandb").glob(f"offline-run-*-{info['wandb_id']}"))
    for path in run.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path


def test_resumed_run_continues_the_same_wandb_run(run_tiny, outputs: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir, _ = run_tiny("logger=wandb", "logger.mode=offline")
    first_id = json.loads((run_dir / "run.json").read_text())["wandb_id"]
    assert first_id

    cfg = load_resolved_config(run_dir)
    cfg.trainer.max_steps = 5
    # W&B names offline directories by the second they start in: a resume within the same second would
    # share the first session's directory, and the count below could not tell the two sessions apart.
    time.sleep(1.05 - time.time() % 1)
    run_training(cfg, run_dir, resume=True)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["wandb_id"] == first_id and info["step"] == 5
    sessions = sorted((run_dir / "wandb").glob(f"offline-run-*-{first_id}"))
    assert len(sessions) == 2
    first, second = (read_offline_run(d) for d in sessions)
    assert (first.run.job_type, second.run.job_type) == ("train", "resume")


def test_secrets_are_redacted() -> None:
    cfg = {"logger": {"api_key": "abc", "project": "p"}, "sweep": {"storage": "postgresql://u:hunter2@db/x"},
           "token": None}
    clean = redact(cfg)
    assert clean["logger"] == {"api_key": "***", "project": "p"}
    assert clean["sweep"]["storage"] == "postgresql://u:***@db/x"
    assert clean["token"] is None


@dataclass
class OfflineRun:
    """What one offline W&B run directory holds, read back from its .wandb transaction log."""

    directory: Path
    run: wandb_internal_pb2.RunRecord | None = None
    metrics: dict[str, wandb_internal_pb2.MetricRecord] = field(default_factory=dict)
    summary: dict[str, object] = field(default_factory=dict)  # the final summary: every update applied in order
    kinds: Counter = field(default_factory=Counter)

    def media(self, prefix: str) -> list[Path]:
        """Media files of one logged key, e.g. `samples/clip0_input` (one per upload)."""
        return sorted((self.directory / "files" / "media").rglob(f"{Path(prefix).name}_*"))


def read_offline_run(directory: Path) -> OfflineRun:
    """Scan `run-<id>.wandb` with W&B's own reader: the run record, metric definitions and summary updates."""
    out = OfflineRun(directory)
    store = datastore.DataStore()
    (log_file,) = directory.glob("run-*.wandb")
    store.open_for_scan(str(log_file))
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        out.kinds[kind] += 1
        if kind == "run":
            out.run = record.run
        elif kind == "metric":
            out.metrics[record.metric.name or record.metric.glob_name] = record.metric
        elif kind == "summary":
            for item in record.summary.update:
                out.summary["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
    return out


@pytest.fixture(scope="module")
def grid_with_wandb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A one-job grid of an experiment preset, logged to W&B offline with system stats; (its run, its stdout)."""
    tmp = tmp_path_factory.mktemp("wandb_grid")
    cache = tmp_path_factory.getbasetemp() / "cache"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("WANDB_")}
    env.update(AUDIOLAB_CACHE=str(cache), PYTHONUNBUFFERED="1", WANDB_SILENT="true", HOME=str(tmp))
    proc = run_cli(["-m", "experiment=output17", "debug=fast", "model=convnext1d", "trainer.max_steps=4",
                    "trainer.val_every=2", "logger=wandb", "logger.mode=offline", "logger.system_stats=true",
                    "logger.system_stats_interval_s=0.2", f"paths.outputs={tmp / 'outputs'}",
                    f"paths.cache={cache}"], env, tmp, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "outputs" / "output01", proc.stdout + proc.stderr


def test_an_offline_run_records_job_type_tags_and_best_values(grid_with_wandb: tuple[Path, str]) -> None:
    """job_type and tags from the preset and the sweep; val/* summarised by their best value over the step metric."""
    run_dir, _ = grid_with_wandb
    record = json.loads((run_dir / "run.json").read_text())
    (directory,) = (run_dir / "wandb").glob(f"offline-run-*-{record['wandb_id']}")
    offline = read_offline_run(directory)
    assert offline.run.job_type == "train"
    assert {"experiment:output17", "sweep:sweep01"} <= set(offline.run.tags)
    loss = offline.metrics["val/spec_loss"]
    assert loss.summary.min and loss.step_metric == STEP_METRIC
    assert offline.metrics["val/improvement"].summary.max
    assert offline.summary["val/spec_loss"] == {"min": pytest.approx(record["best_val_spec_loss"], rel=1e-12)}
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    improvements = [row["val/improvement"] for row in lines if "val/improvement" in row]
    assert len(improvements) == 2 and offline.summary["val/improvement"] == {"max": max(improvements)}
    assert offline.summary[STEP_METRIC] == 4
    assert offline.kinds["stats"] >= 1  # logger.system_stats=true


def test_the_fixed_clips_are_uploaded_once_and_the_outputs_at_every_validation(
        grid_with_wandb: tuple[Path, str]) -> None:
    run_dir, _ = grid_with_wandb
    (directory,) = (run_dir / "wandb").glob("offline-run-*")
    offline = read_offline_run(directory)
    assert len(offline.media("samples/clip0_output")) == 2
    assert len(offline.media("samples/clip0_input")) == 1 and len(offline.media("samples/clip0_target")) == 1


def test_an_offline_run_says_how_to_sync_it(grid_with_wandb: tuple[Path, str]) -> None:
    run_dir, output = grid_with_wandb
    (directory,) = (run_dir / "wandb").glob("offline-run-*")
    assert f"wandb sync {directory}" in output


def test_job_types_and_tags_follow_how_the_run_was_started() -> None:
    assert job_type({}, resume=False) == "train"
    assert job_type({"study": "s", "trial": 3}, resume=False) == "sweep-trial"
    assert job_type({"reproduces": 27}, resume=False) == "reproduce"
    assert job_type({"reproduces": 27}, resume=True) == "resume"
    tags = tracker_tags({"experiment": "output27", "sweep_dir": "/x/multirun/sweep04", "study": "lr", "reproduces": 7})
    assert tags == ("experiment:output27", "sweep:sweep04", "study:lr", "reproduces:output07")
    assert tracker_tags({}) == ()
