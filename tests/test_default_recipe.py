"""The default recipe's search preset: every point it can draw composes and builds, and its budget prunes."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.trial import TrialState

from audiolab.common.numbering import allocate
from audiolab.config import validate_config
from audiolab.runs.session import run_training
from audiolab.sweep.space import parse_search_space
from audiolab.sweep.trial import TrialLink
from conftest import compose_config

PRESET = ["hparams_search=default_recipe"]


def _sweeper(overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir

    from conftest import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.sweeper, resolve=False)


@pytest.mark.parametrize("batch, segment", [(4, 32768), (8, 16384), (16, 8192)])
def test_samples_per_step_stay_fixed_and_validation_crops_do_not_move(batch: int, segment: int) -> None:
    cfg = compose_config([*PRESET, f"data.batch_size={batch}"])
    assert (cfg.data.segment, cfg.data.val_segment, cfg.data.val_batch_size) == (segment, 16384, 8)
    validate_config(cfg)


def test_every_enqueued_and_sampled_point_composes_validates_and_builds() -> None:
    """The enqueued points and 12 random draws: each is a config that validates and a model that builds."""
    import torch

    sweeper = _sweeper(PRESET)
    space = parse_search_space(sweeper["params"])
    points = [space.overrides_for(space.parse_enqueued(entry)) for entry in sweeper["enqueue"]]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    points += [space.suggest(study.ask()) for _ in range(12)]
    seen_optimizers = set()
    for overrides in points:
        cfg = compose_config([*PRESET, *overrides])
        validate_config(cfg)
        with torch.device("meta"):
            instantiate(cfg.model)
        seen_optimizers.add(cfg.optim.groups)
        assert cfg.data.batch_size * cfg.data.segment == 131072
    assert seen_optimizers == {"decay", "muon"}  # the group choice reaches the optimizer


def _study(tmp_path: Path) -> tuple[optuna.Study, int]:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="budget",
                                pruner=optuna.pruners.NopPruner())
    return study, study.ask().number


@pytest.mark.parametrize("limit, state", [(1e-9, TrialState.PRUNED), (1e3, TrialState.COMPLETE)])
def test_a_trial_over_the_step_time_budget_is_pruned_with_the_reason(limit: float, state: TrialState,
                                                                    tiny_overrides: list[str], outputs: Path,
                                                                    tmp_path: Path) -> None:
    study, number = _study(tmp_path)
    cfg = compose_config([*tiny_overrides, "trainer.max_steps=6", "trainer.val_every=2", "trainer.log_every=1"])
    run_dir = allocate(outputs)
    result = run_training(cfg, run_dir, trial=TrialLink(study, number, ["val/spec_loss"], max_step_time=limit))
    trial = study.get_trials(deepcopy=False)[number]
    assert trial.state == state
    if state == TrialState.PRUNED:
        assert (result.status, result.step) == ("pruned", 2)
        reason = trial.user_attrs["pruned_reason"]
        assert reason.startswith("over the step-time budget: ") and "hydra.sweeper.max_step_time=1e-09" in reason
    else:
        assert result.step == 6 and "pruned_reason" not in trial.user_attrs
