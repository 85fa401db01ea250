"""A `+key=value` that nothing reads is refused before any run directory exists (issue 18, items 16 and 19)."""

from __future__ import annotations

from pathlib import Path

import pytest

from audiolab.config.added_keys import check_added_keys, known_config_keys
from audiolab.config.schema import ConfigError
from conftest import compose_config, run_cli


@pytest.mark.parametrize(("added", "message"), [
    ("+unknown_key=1", "+unknown_key=1: the config root has no key 'unknown_key' and nothing would read it"),
    ("+optim.lr_typo=5", "optim has no key 'lr_typo' and nothing would read it; did you mean optim.lr?"),
    ("+trainer.max_stpes=5", "did you mean trainer.max_steps?"),
    ("++model.chanels=3", "model._target_ audiolab.models.convnext1d.ConvNeXtUNet1d takes no argument 'chanels'; "
                          "did you mean model.channels?"),
    ("+optim.scheduler.warmup=5", "did you mean optim.scheduler.warmup_steps?"),
])
def test_an_added_key_nothing_reads_is_refused_by_name(added: str, message: str) -> None:
    cfg = compose_config(["debug=fast", added])
    with pytest.raises(ConfigError) as err:
        check_added_keys(cfg, ["debug=fast", added])
    assert message in str(err.value)


@pytest.mark.parametrize("added", [
    "+loss.terms.mrstft.w_phs=0.1",       # an argument of the term's _target_ that the preset leaves at its default
    "+optim.optimizer.amsgrad=true",       # the same for torch.optim.AdamW
    "+optim.momentum=0.9",                 # a key another option of the group sets (optim=muon)
    "+loss.terms.l1b._target_=torch.nn.L1Loss",  # a new loss term, and its weight (known as loss.terms.*.weight)
    "+loss.terms.l1b.weight=0.5",
    "+experiment=output17",                # a config group, Hydra's to check
    "+hydra.job.env_set.X=1",
])
def test_keys_that_something_reads_are_accepted(added: str) -> None:
    overrides = ["debug=fast", added]
    if added.startswith("+loss.terms.l1b.weight"):
        overrides.insert(1, "+loss.terms.l1b._target_=torch.nn.L1Loss")
    cfg = compose_config([o for o in overrides if not o.startswith(("+experiment", "+hydra"))])
    check_added_keys(cfg, overrides)


def test_known_keys_come_from_the_config_files() -> None:
    keys = known_config_keys()
    assert {"optim.lr", "optim.momentum", "trainer.max_steps", "loss.terms.*.weight", "model.channels"} <= keys
    assert "optim.lr_typo" not in keys


@pytest.mark.parametrize("bad", [["+optim.lr_typo=5"], ["logger=wandb", "logger.mode=sideways"]])
def test_a_refused_setting_leaves_no_run_directory(bad: list[str], tmp_path: Path, cli_env: dict[str, str]) -> None:
    outputs = tmp_path / "outputs"
    proc = run_cli(["debug=fast", "logger=none", f"paths.outputs={outputs}", *bad], cli_env, tmp_path)
    assert proc.returncode != 0
    assert "config error" in proc.stderr + proc.stdout and bad[-1].split("=")[0].lstrip("+") in proc.stderr
    assert not outputs.exists() or not any(outputs.iterdir()), list(outputs.iterdir())


@pytest.mark.parametrize("bad", [["model.channels=[1,8]"], ["model.factors=[2,2,2,2,2,2,2,2,2,2]"]])
def test_a_model_that_cannot_be_built_leaves_no_run_directory(bad: list[str], tmp_path: Path,
                                                              cli_env: dict[str, str]) -> None:
    outputs = tmp_path / "outputs"
    proc = run_cli(["debug=fast", "logger=none", f"paths.outputs={outputs}", *bad], cli_env, tmp_path)
    assert proc.returncode == 2 and "config error" in proc.stderr and "Traceback" not in proc.stderr
    assert not outputs.exists() or not any(outputs.iterdir()), list(outputs.iterdir())
