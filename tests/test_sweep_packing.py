"""Packing trials onto one device (`hydra.sweeper.trials_per_device`), through the real CLI on the CPU."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest
from optuna.trial import TrialState

from audiolab.models.convnext1d import ConvNeXtUNet1d
from audiolab.sweep.storage import storage_url
from audiolab.sweep.study import open_study
from conftest import REPO, run_cli

STUDY = "lr_depth_lossw"


class ThreadProbe(ConvNeXtUNet1d):
    """The debug model, which also writes the CPU threads its trial trains with to `probe_dir/trialN.json`.

    Jobs import it by name (`model._target_=test_sweep_packing.ThreadProbe`, tests/ on PYTHONPATH).
    """

    def __init__(self, probe_dir: str, **kwargs) -> None:
        super().__init__(**kwargs)
        import torch

        seen = {"pid": os.getpid(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "torch_threads": torch.get_num_threads()}
        trial = os.environ.get("AUDIOLAB_OPTUNA_TRIAL", "none")
        (Path(probe_dir) / f"trial{trial}.json").write_text(json.dumps(seen))


@pytest.fixture
def env(cli_env: dict[str, str]) -> dict[str, str]:
    """CLI environment with tests/ importable and no OMP_NUM_THREADS: the sweeper, not the caller, sets it."""
    return {k: v for k, v in cli_env.items() if k != "OMP_NUM_THREADS"} | {"PYTHONPATH": str(REPO / "tests")}


def test_two_trials_packed_on_the_cpu_run_at_once_with_a_thread_each(outputs: Path, env: dict[str, str],
                                                                     tmp_path: Path) -> None:
    probes = tmp_path / "probes"
    probes.mkdir()
    journal = f"journal:{outputs}/optuna.journal"
    proc = run_cli([f"hparams_search={STUDY}", "debug=fast", "logger=none", f"paths.outputs={outputs}",
                    "hydra.sweeper.n_trials=2", "hydra.sweeper.trials_per_device=2", f"hydra.sweeper.storage={journal}",
                    "model._target_=test_sweep_packing.ThreadProbe", f"+model.probe_dir={probes}"],
                   env, tmp_path, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    # n_workers was left at null: one worker per slot, max(1, 1 CPU "device" // 1) * 2 = 2.
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert f"2 workers on the CPU, {threads} thread{'' if threads == 1 else 's'} each" in log
    assert "(worker 0)" in log and "(worker 1)" in log

    study = open_study(storage_url(journal, outputs), STUDY)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]

    # Each trial ran in its own worker process, with the threads the sweeper gave it.
    seen = {n: json.loads((probes / f"trial{n}.json").read_text()) for n in (0, 1)}
    assert seen[0]["pid"] != seen[1]["pid"]
    assert all(s["omp_num_threads"] == str(threads) and s["torch_threads"] == threads for s in seen.values()), seen

    # The two runs really ran at once: their wall-clock intervals overlap (strictly, in whole seconds).
    records = [json.loads((Path(t.user_attrs["run_dir"]) / "run.json").read_text()) for t in trials]
    (s0, e0), (s1, e1) = ((datetime.fromisoformat(r["started"]), datetime.fromisoformat(r["ended"]))
                          for r in records)
    assert s0 < e1 and s1 < e0, [(r["started"], r["ended"]) for r in records]

    # The summary gives each trial's throughput and the total of the two running at once, and keeps the figures.
    per_trial = study.user_attrs["audio_s_per_s"]
    assert set(per_trial) == {"0", "1"} and all(v > 0 for v in per_trial.values())
    line = next(x for x in log.splitlines() if "training throughput, audio s per s" in x)
    for t in trials:
        assert f"trial {t.number} (output{t.user_attrs['run_number']:02d}) {per_trial[str(t.number)]:.3g}" in line
    total = per_trial["0"] + per_trial["1"]
    assert f"together: {total:.3g} audio s per s from 2 trials running at once (trials 0, 1)" in log


def test_trials_per_device_zero_is_a_config_error_naming_the_key(outputs: Path, env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    proc = run_cli([f"hparams_search={STUDY}", "debug=fast", "logger=none", f"paths.outputs={outputs}",
                    "hydra.sweeper.trials_per_device=0"], env, tmp_path)
    assert proc.returncode == 1
    assert "audiolab: sweep config error: hydra.sweeper.trials_per_device=0: expected an integer >= 1" in proc.stderr
    assert not (outputs / "optuna.db").exists() and not list(outputs.glob("output*"))  # checked before anything ran


def test_cuda_workers_get_their_gpu_group_and_a_memory_share() -> None:
    """No GPU here: the assignment itself, for 4 visible GPUs, 2 per trial, 2 trials per device."""
    from audiolab.sweep.sweeper import MEMORY_FRACTION_ENV, Packing, plan_workers
    from audiolab.train.device import MEMORY_FRACTION_ENV as READ_BY_TRAINING

    assert MEMORY_FRACTION_ENV == READ_BY_TRAINING
    plan = plan_workers(Packing(None, 2, 2), 4, 16, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"})
    assert (plan.n_workers, plan.slots, plan.warnings) == (4, 4, [])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in plan.envs] == ["4,5", "4,5", "6,7", "6,7"]
    assert all(e[MEMORY_FRACTION_ENV] == "0.5" and "OMP_NUM_THREADS" not in e for e in plan.envs)
    assert plan.summary == "4 workers: 2 trials per device on 4 GPUs, 2 GPUs per trial, 0.5 of a GPU's memory each"
    # An explicit n_workers is kept, with a warning beyond the slots; K = 1 sets no memory share.
    over = plan_workers(Packing(3, 1, 1), 2, 16, {})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in over.envs] == ["0", "1", "0"] and "n_workers=3" in over.warnings[0]
    assert all(MEMORY_FRACTION_ENV not in e for e in over.envs)
    # A plain sweep (nothing set) stays one worker, in this process.
    assert plan_workers(Packing(), 4, 16, {}).n_workers == 1


def test_a_trial_on_two_devices_trains_under_torchrun(outputs: Path, env: dict[str, str], tmp_path: Path) -> None:
    """devices_per_trial=2 on the CPU: the trial is one numbered run on two gloo processes, reported by rank 0."""
    journal = f"journal:{outputs}/optuna.journal"
    proc = run_cli([f"hparams_search={STUDY}", "debug=fast", "logger=none", f"paths.outputs={outputs}",
                    "hydra.sweeper.n_trials=1", "hydra.sweeper.devices_per_trial=2", "hydra.sweeper.n_workers=1",
                    f"hydra.sweeper.storage={journal}", "data.batch_size=2"], env | {"OMP_NUM_THREADS": "1"},
                   tmp_path, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    (trial,) = open_study(storage_url(journal, outputs), STUDY).get_trials(deepcopy=False)
    assert trial.state == TrialState.COMPLETE, trial.user_attrs
    run_dir = Path(trial.user_attrs["run_dir"])
    record = json.loads((run_dir / "run.json").read_text())
    assert record["world_size"] == 2 and record["trial"] == 0 and record["status"] == "completed"
    assert (run_dir / "train.rank1.log").is_file()
    assert trial.values[0] == record["best_val_spec_loss"]
    assert sorted(p.name for p in outputs.iterdir() if p.name.startswith("output")) == [run_dir.name]
