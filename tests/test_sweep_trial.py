"""A run as an Optuna trial, in-process: pruning ends it cleanly and ties trial, run and tracker together."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import TrialState

from audiolab.common.numbering import allocate
from audiolab.runs.session import run_training
from audiolab.sweep.study import open_study
from audiolab.sweep.trial import TrialLink
from conftest import compose_config


def _study(tmp_path: Path, pruner: optuna.pruners.BasePruner) -> tuple[optuna.Study, int]:
    study = open_study(f"sqlite:///{tmp_path / 'optuna.db'}", "unit", directions=["minimize"], pruner=pruner,
                       create=True, heartbeat_interval=1)
    return study, study.ask().number


def test_a_pruned_run_is_recorded_as_pruned_everywhere(tiny_overrides: list[str], outputs: Path,
                                                       tmp_path: Path) -> None:
    study, number = _study(tmp_path, optuna.pruners.ThresholdPruner(upper=1e-9))  # prunes at the first report
    cfg = compose_config([*tiny_overrides, "logger._target_=helpers.RecordingLogger", "trainer.max_steps=6",
                          "trainer.val_every=2"])
    run_dir = allocate(outputs)
    result = run_training(cfg, run_dir, trial=TrialLink(study, number, ["val/spec_loss"]))

    assert (result.status, result.step) == ("pruned", 2)
    record = json.loads((run_dir / "run.json").read_text())
    assert (record["status"], record["study"], record["trial"]) == ("pruned", "unit", number)
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    tracker = json.loads((run_dir / "tracker.json").read_text())
    assert tracker["tags"] == ["pruned"] and tracker["group"] == "unit" and tracker["status"] == "pruned"
    assert tracker["job_type"] == "sweep-trial" and "study:unit" in tracker["start_tags"]
    trial = study.get_trials(deepcopy=False)[number]
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [2]
    assert trial.user_attrs == {"run_number": 1, "run_dir": str(run_dir), "wandb_id": tracker["run_id"],
                                "pruned_step": 2}


def test_a_completed_trial_gets_the_best_value_and_step(tiny_overrides: list[str], outputs: Path,
                                                        tmp_path: Path) -> None:
    study, number = _study(tmp_path, optuna.pruners.NopPruner())
    cfg = compose_config([*tiny_overrides, "trainer.max_steps=4", "trainer.val_every=2"])
    run_dir = allocate(outputs)
    result = run_training(cfg, run_dir, trial=TrialLink(study, number, ["val/spec_loss"]))
    trial = study.get_trials(deepcopy=False)[number]
    assert trial.state == TrialState.COMPLETE
    assert trial.value == result.best_value and trial.user_attrs["best_step"] == result.best_step
    assert sorted(trial.intermediate_values) == [2, 4]
    timing = json.loads((run_dir / "run.json").read_text())["timing"]
    assert timing["steps"] == 4 and timing["train_s"] > 0 and timing["validate_s"] > 0


def test_a_trial_is_never_pruned_at_its_last_step() -> None:
    """The pruner hears the last validation too, but a run that reached max_steps completes."""
    from types import SimpleNamespace

    from audiolab.runs.hooks import TrialHook

    reported: list[int] = []

    class AlwaysPrune:
        def report(self, step: int, value: float) -> bool:
            reported.append(step)
            return True

    hook = TrialHook(AlwaysPrune())
    training = SimpleNamespace(max_steps=10)
    assert hook.on_validation(training, SimpleNamespace(step=5, metrics={"val/spec_loss": 0.5})) is True
    assert hook.on_validation(training, SimpleNamespace(step=10, metrics={"val/spec_loss": 0.5})) is False
    assert reported == [5, 10]
