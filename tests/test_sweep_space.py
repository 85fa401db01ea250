"""The sweep's building blocks in-process: search-space grammar, storage URLs, budget counting, journal heartbeats."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState, create_trial

from audiolab.sweep.space import parse_search_space
from audiolab.sweep.storage import display_url, open_storage, storage_url
from audiolab.sweep.study import Budget, build_pruner, build_sampler, check_study_settings, open_study


def test_override_grammar_maps_to_optuna_distributions() -> None:
    space = parse_search_space({
        "optim.lr": "tag(log, interval(1e-4, 1e-2))",
        "model.blocks_per_level": "range(1, 4)",
        "loss.terms.l1.weight": "interval(0, 2)",
        "model.kernel_size": "int(interval(3, 9))",
        "optim.momentum": "range(0.1, 0.5, 0.1)",
        "model.init": "choice(default, xavier)",
        "trainer.seed": "7",
    })
    d = {k: v.distribution for k, v in space.dimensions.items()}
    assert d["optim.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["model.blocks_per_level"] == IntDistribution(1, 3, step=1)
    assert d["loss.terms.l1.weight"] == FloatDistribution(0.0, 2.0)
    assert d["model.kernel_size"] == IntDistribution(3, 9)
    assert isinstance(d["optim.momentum"], FloatDistribution) and d["optim.momentum"].step == pytest.approx(0.1)
    assert d["model.init"] == CategoricalDistribution(["default", "xavier"])
    assert space.fixed == ["trainer.seed=7"]


def test_command_line_sweeps_join_the_space_and_fixed_values_pin_it() -> None:
    space = parse_search_space({"optim.lr": "interval(1e-4, 1e-2)", "model.init": "choice(default, xavier)"},
                               ["model.init=kaiming", "optim.weight_decay=choice(0.0, 0.01)"])
    assert set(space.dimensions) == {"optim.lr", "optim.weight_decay"}
    assert space.fixed == ["model.init=kaiming"]


def test_suggested_overrides_round_trip_through_a_trial() -> None:
    space = parse_search_space({"optim.lr": "tag(log, interval(1e-4, 1e-2))", "model.blocks_per_level": "range(1,4)",
                                "model.channels": "choice([1,4,8],[1,8,16])"})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    overrides = space.suggest(study.ask())
    keys = [o.split("=", 1)[0] for o in overrides]
    assert keys == ["optim.lr", "model.blocks_per_level", "model.channels"]
    lr = float(overrides[0].split("=", 1)[1])
    assert 1e-4 <= lr <= 1e-2
    assert overrides[2].split("=", 1)[1] in ("[1,4,8]", "[1,8,16]")  # a list choice goes back as override text


@pytest.mark.parametrize("params, message", [
    ({"optim.lr": "tag(log, interval(0, 1))"}, "positive start"),
    ({"optim.lr": "interval(1, 1)"}, "empty"),
])
def test_bad_search_spaces_name_the_key(params: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=f"optim.lr.*{message}"):
        parse_search_space(params)


def test_grid_needs_finite_dimensions() -> None:
    grid = parse_search_space({"optim.lr": "choice(1e-3, 5e-3)", "model.blocks_per_level": "range(1, 4)"}).grid()
    assert grid == {"optim.lr": [1e-3, 5e-3], "model.blocks_per_level": [1, 2, 3]}
    with pytest.raises(ValueError, match="optim.lr.*grid"):
        parse_search_space({"optim.lr": "interval(1e-4, 1e-2)"}).grid()


def test_enqueue_entries_are_checked_against_the_space() -> None:
    space = parse_search_space({"optim.lr": "tag(log, interval(1e-4, 1e-2))", "model.init": "choice(default,xavier)"})
    assert space.parse_enqueued("optim.lr=1e-3 model.init=xavier") == {"optim.lr": 1e-3, "model.init": "xavier"}
    with pytest.raises(ValueError, match="optim.momentum.*not in the search space"):
        space.parse_enqueued("optim.momentum=0.9")


def test_storage_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage_url(None, "outputs") == f"sqlite:///{tmp_path}/outputs/optuna.db"
    assert storage_url("journal:runs/j.log", "outputs") == f"journal:{tmp_path}/runs/j.log"
    assert storage_url("sqlite:///x.db", "outputs") == f"sqlite:///{tmp_path}/x.db"
    assert storage_url("postgresql://u:pw@h/db", "o") == "postgresql+psycopg://u:pw@h/db"
    assert display_url("postgresql+psycopg://u:pw@h/db") == "postgresql+psycopg://u:***@h/db"
    with pytest.raises(ValueError, match="hydra.sweeper.storage"):
        storage_url("redis://h", "o")


def test_study_settings_are_validated() -> None:
    check_study_settings("lr_depth_lossw", ["val/spec_loss", "parameters"], ["minimize", "minimize"])
    with pytest.raises(ValueError, match="study_name"):
        check_study_settings("my study", ["val/spec_loss"], ["minimize"])
    with pytest.raises(ValueError, match="unknown"):
        check_study_settings("s", ["val/loss"], ["minimize"])
    with pytest.raises(ValueError, match="same"):
        check_study_settings("s", ["val/spec_loss"], ["minimize", "minimize"])


def test_every_sampler_and_pruner_builds() -> None:
    space = parse_search_space({"optim.lr": "choice(1e-3, 5e-3)"})
    for kind in ("tpe", "random", "grid", "cmaes", "nsga2"):
        assert build_sampler({"kind": kind}, space, seed=0) is not None
    assert isinstance(build_pruner({"kind": "successive_halving"}), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(build_pruner({"kind": "hyperband"}), optuna.pruners.HyperbandPruner)
    assert isinstance(build_pruner({"kind": "none"}), optuna.pruners.NopPruner)
    with pytest.raises(ValueError, match="sampler.kind"):
        build_sampler({"kind": "bogus"}, space, seed=0)


def _trial(state: TrialState, system_attrs: dict | None = None, user_attrs: dict | None = None) -> FrozenTrial:
    return create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None,
                        system_attrs=system_attrs or {}, user_attrs=user_attrs or {})


def test_budget_ignores_retried_and_interrupted_failures() -> None:
    trials = [_trial(TrialState.COMPLETE), _trial(TrialState.FAIL), _trial(TrialState.PRUNED),
              _trial(TrialState.FAIL, user_attrs={"interrupted": True}), _trial(TrialState.FAIL),
              _trial(TrialState.WAITING, {"failed_trial": 4, "retry_history": [4]}), _trial(TrialState.RUNNING)]
    for number, trial in enumerate(trials):
        trial.number = number
    budget = Budget.of(trials)
    assert (budget.finished, budget.failed, budget.running, budget.waiting) == (3, 1, 1, 1)
    assert budget.may_start(4)  # the queued retry runs whatever the budget
    assert not Budget.of(trials[:6] + [trials[6]]).done(4)


def test_journal_heartbeats_fail_and_requeue_a_silent_trial(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'j.log'}"
    study = open_study(url, "hb", directions=["minimize"], create=True, heartbeat_interval=1, grace_period=1)
    alive, silent = study.ask({"x": FloatDistribution(0, 1)}), study.ask({"x": FloatDistribution(0, 1)})
    storage = open_storage(url, heartbeat_interval=1, grace_period=1)
    time.sleep(1.2)
    storage.record_heartbeat(alive._trial_id)
    fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[alive.number] == TrialState.RUNNING
    assert states[silent.number] == TrialState.FAIL
    retry = [t for t in study.get_trials(deepcopy=False) if t.system_attrs.get("failed_trial") == silent.number]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING and retry[0].params == silent.params
