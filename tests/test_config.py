"""Config composition, typed schemas and range checks, through Hydra's compose API and the real CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from audiolab.config import ConfigError, validate_config
from conftest import CONF, compose_config, run_cli

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes_and_validates(group: str, option: str, tmp_path) -> None:
    extra = [f"data.path={tmp_path}"] if option == "folder" else []
    if group == "discriminator" and option != "none":
        extra.append("loss=rave")  # a discriminator needs the adversarial terms
    if group == "model" and option.startswith("pqmf_vae"):
        # A model preset is the model alone; a VAE needs the two-phase recipe, which says so when it is missing.
        with pytest.raises(ConfigError, match="experiment=rave_v2"):
            validate_config(compose_config([f"{group}={option}"]))
        extra.append("recipe=vae_gan")
    cfg = compose_config([f"{group}={option}", *extra])
    validate_config(cfg)
    assert cfg.trainer.max_steps >= 1


def test_every_group_has_options() -> None:
    for group in ("task", "data", "model", "loss", "optim", "augment", "trainer", "logger", "debug"):
        assert _options(group), group


def test_loss_terms_have_weights_and_can_be_swept() -> None:
    cfg = compose_config(["loss=mrstft_l1", "loss.terms.mrstft.weight=2"])
    assert set(cfg.loss.terms) == {"mrstft", "l1"}
    assert cfg.loss.terms.mrstft.weight == 2 and cfg.loss.terms.l1.weight == 1.0


@pytest.mark.parametrize("override,key", [
    ("trainer.max_stepz=3", "max_stepz"),
    ("trainer.max_steps=abc", "max_steps"),
    ("data.segmnt=4096", "segmnt"),
    ("task.lowpass_impossible=maybe", "lowpass_impossible"),
])
def test_schema_rejects_unknown_keys_and_wrong_types(override: str, key: str) -> None:
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_config([override])
    assert key in str(err.value) or key in str(err.value.__cause__)


@pytest.mark.parametrize("override,key", [
    ("optim.lr=-1e-3", "optim.lr"),
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("data.segment=4100", "data.segment"),
    ("data.batch_size=0", "data.batch_size"),
    ("trainer.precision=fp8", "trainer.precision"),
    ("loss.terms.mrstft.weight=-1", "loss.terms.mrstft.weight"),
    ("task.semitones=[0]", "task.semitones"),
    ("recipe=vae_gan recipe.d_every=1", "recipe.d_every"),
    ("recipe=vae_gan recipe.beta_start=0", "recipe.beta_start"),
    ("recipe=vae_gan recipe.phase1_steps=-1", "recipe.phase1_steps"),
])
def test_range_errors_name_the_key(override: str, key: str) -> None:
    cfg = compose_config(override.split())
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        validate_config(cfg)
    assert "allowed" in str(err.value)


def test_segment_must_be_a_multiple_of_the_hop() -> None:
    cfg = compose_config(["model=convnext1d_big", "data.segment=16640"])  # 65 * 256, not * 512
    with pytest.raises(ConfigError, match=r"data\.segment.*hop \(512\)"):
        validate_config(cfg)


@pytest.mark.parametrize("override,key", [("optim.lr=abc", "optim.lr='abc' is not a number"),
                                          ("optim.weight_decay=lots", "optim.weight_decay='lots' is not a number"),
                                          ("optim.scheduler.warmup_steps=1.5x", "optim.scheduler.warmup_steps")])
def test_a_value_that_is_not_a_number_is_named_not_a_traceback(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate_config(compose_config(override.split()))


@pytest.mark.parametrize("override,key", [("optim.lr=-1", "optim.lr"), ("trainer.max_steps=abc", "max_steps"),
                                          ("optim.lr=abc", "optim.lr='abc' is not a number"),
                                          ("model.channels=[1,8]", "model.channels=[1, 8] has 2 entries"),
                                          ("model.factors=[2,2,2,2,2,2,2,2,2,2]",
                                           "len(model.factors)+1 = 11 (model.factors=[2, 2,"),
                                          ("data=folder data.path=/nonexistent/dir",
                                           "data.path='/nonexistent/dir': no such directory"),
                                          ("data=folder data.path=. data.val_path=/nonexistent/val",
                                           "data.val_path='/nonexistent/val': no such directory")])
def test_cli_bad_values_exit_nonzero_and_leave_no_run_dir(override: str, key: str, tmp_path: Path,
                                                          cli_env: dict[str, str]) -> None:
    outputs = tmp_path / "outputs"
    proc = run_cli(["debug=fast", "logger=none", f"paths.outputs={outputs}", *override.split()], cli_env, tmp_path)
    assert proc.returncode != 0
    assert key in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
    leftovers = [p.name for p in outputs.iterdir()] if outputs.exists() else []
    assert not [n for n in leftovers if n.startswith("output")], leftovers


def test_folder_data_without_a_path_names_the_key(run_tiny) -> None:
    with pytest.raises(ConfigError, match=r"data.path must be set"):
        run_tiny("data=folder")


def test_schemas_hold_types_and_the_yaml_holds_every_value() -> None:
    """Each trainer, recipe, data and task value is written once: in conf/, never again as a schema default."""
    import dataclasses

    from omegaconf import MISSING

    from audiolab.config import schema

    identity = {"_target_", "cache_dir"}  # which class a section builds; where caches go (not a tunable value)
    for cls in (schema.TrainerConfig, schema.SupervisedRecipeConfig, schema.VaeGanRecipeConfig,
                schema.SynthDataConfig, schema.FolderDataConfig, schema.RestoreTaskConfig,
                schema.AutoencodeTaskConfig):
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.name not in identity
                    and (f.default != MISSING or f.default_factory is not dataclasses.MISSING)}
        assert defaults == {}, (cls.__name__, defaults)
    for option in ("trainer=default", "recipe=vae_gan", "data=synth", "task=restore", "task=autoencode"):
        cfg = compose_config([option])
        group = option.split("=")[0]
        assert not OmegaConf.missing_keys(cfg[group]), option


def test_targets_are_imported_not_built_and_a_bad_one_names_its_key() -> None:
    """A loss term may name a function; a target that cannot be imported is a ConfigError naming the key."""
    cfg = compose_config(["loss=mrstft_l1", "loss.terms.l1._target_=torch.nn.functional.l1_loss"])
    validate_config(cfg)
    with pytest.raises(ConfigError, match=r"loss\.terms\.l1\._target_='torch\.nn\.NoSuchLoss' cannot be imported"):
        validate_config(compose_config(["loss=mrstft_l1", "loss.terms.l1._target_=torch.nn.NoSuchLoss"]))
    with pytest.raises(ConfigError, match=r"model\._target_='audiolab\.models\.nope\.Net' cannot be imported"):
        validate_config(compose_config(["model._target_=audiolab.models.nope.Net"]))


def test_a_saved_config_takes_a_standalone_group_option_for_a_whole_section() -> None:
    """`audiolab reproduce output27 logger=none` switches W&B off; a section without such an option is refused."""
    from audiolab.config.overrides import apply_overrides

    saved = compose_config(["logger=wandb"])
    saved = OmegaConf.create(OmegaConf.to_container(saved, resolve=False))
    assert saved.logger._target_.endswith("WandbLogger")
    quiet = apply_overrides(saved, ["logger=none"])
    assert OmegaConf.to_container(quiet.logger) == {"_target_": "audiolab.runs.loggers.NullLogger"}
    assert saved.logger._target_.endswith("WandbLogger")  # the saved config itself is left as it was
    with pytest.raises(ConfigError, match=r"logger is a whole config section.*\(logger=none, wandb\)"):
        apply_overrides(saved, ["logger=nonesuch"])
