"""Every preset in experiments/ composes, validates and trains under debug=fast, so none can rot.

As lightning-hydra-template tests its experiments: the presets are found by glob, so a new one is tested
without touching this file.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from audiolab.config.schema import validate_config
from audiolab.runs.record import read_metrics
from audiolab.train.checkpoint import load_checkpoint
from conftest import REPO, compose_config

EXPERIMENTS = REPO / "experiments"
PRESETS = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
LOGGED = [f"output{n}" for n in range(17, 44)]


@pytest.fixture(scope="module")
def dac_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised DAC in the released weights.pth format, for the DAC-feature presets."""
    from test_dac_features import _tiny_dac

    path = tmp_path_factory.mktemp("dac") / "weights.pth"
    _tiny_dac().save(str(path), package=False)
    return path


def test_every_logged_run_and_rave_version_has_a_preset() -> None:
    missing = sorted(set(LOGGED + ["rave_v2", "rave_v2_small", "rave_v3"]) - set(PRESETS))
    assert not missing, f"no preset for {missing}"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_is_global_and_quotes_the_log(name: str) -> None:
    text = (EXPERIMENTS / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n"), "an experiment sets keys across groups"
    if name in LOGGED:
        header = text.split("defaults:")[0]
        assert f"# {name}:" in header and "The log" in header and "Verdict:" in header and "Parent" in header


@pytest.mark.parametrize("name", PRESETS)
def test_preset_trains_under_debug_fast(name: str, run_tiny, dac_weights: Path) -> None:
    validate_config(compose_config([f"experiment={name}"]))  # the full-size recipe is valid as it stands
    extra = [f"loss.terms.dac.weights={dac_weights}"] if "dac" in compose_config(
        [f"experiment={name}"]).loss.terms else []
    run_dir, result = run_tiny(f"experiment={name}", *extra)
    assert result.status == "completed"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    vals = [m["val/spec_loss"] for m in read_metrics(run_dir) if "val/spec_loss" in m]
    assert vals and all(math.isfinite(v) for v in vals)
    if name.startswith("rave"):  # both phases: phase 2 from step max_steps // 2 = 1 of debug=fast's 3
        vae_gan = load_checkpoint(run_dir / "checkpoints" / "last.pt")["extras"]["vae_gan"]
        assert vae_gan["phase"] == 2 and vae_gan["discriminator"] is not None


def _recipe(name: str) -> dict:
    cfg = compose_config([f"experiment={name}"])
    model = cfg.model
    return {"model": model._target_.rsplit(".", 1)[-1], "lr": cfg.optim.lr, "adamw_lr": cfg.optim.get("adamw_lr"),
            "segment": cfg.data.segment, "batch": cfg.data.batch_size, "bank": cfg.task.lowpass_bank,
            "loss": sorted(cfg.loss.terms), "optimizer": cfg.optim.optimizer._target_.rsplit(".", 1)[-1],
            "channels": list(model.channels) if "channels" in model and not isinstance(model.channels, int) else None,
            "blocks": list(model.get("blocks") or []), "factors": list(model.get("factors") or []),
            "kernel": model.get("kernel_size"), "clip": cfg.optim.grad_clip, "steps": cfg.trainer.max_steps,
            "momentum": cfg.optim.get("momentum")}


# What the research log gives for each run (shared/research-notes/003), checked against the composed presets.
@pytest.mark.parametrize("name, expected", [
    ("output17", {"model": "ConvNeXtUNet2dSpec", "lr": 2e-3, "adamw_lr": 3e-4, "segment": 65024, "batch": 32,
                  "bank": 6, "loss": ["mrstft"], "optimizer": "SplitOpt", "clip": None}),
    ("output18", {"loss": ["l1"], "segment": 65024}),
    ("output19", {"loss": ["cdpam"], "segment": 32256, "batch": 16, "bank": 6}),
    ("output20", {"loss": ["cdpam"], "segment": 32256, "batch": 16}),
    ("output22", {"model": "ConvNeXtUNet2dSpec", "segment": 48640, "batch": 32, "bank": 10, "loss": ["mrstft"]}),
    ("output23", {"model": "ConvNeXtUNet1d", "channels": [1, 8, 64, 256, 512], "blocks": [2, 2, 3, 4],
                  "factors": [8, 8, 4, 2], "kernel": 7, "lr": 2e-3, "adamw_lr": 3e-4, "segment": 48640}),
    ("output24", {"kernel": 41, "blocks": [2, 2, 3, 4]}),
    ("output25", {"kernel": 41, "blocks": [4, 4, 4, 4]}),
    ("output26", {"lr": 1e-3, "adamw_lr": 1e-4, "blocks": [4, 4, 4, 4]}),
    ("output27", {"lr": 5e-3, "adamw_lr": 5e-4, "blocks": [4, 4, 4, 4], "kernel": 41, "steps": 10000}),
    ("output28", {"lr": 1e-2, "adamw_lr": 1e-3}),
    ("output29", {"channels": [1, 8, 32, 128, 256, 512], "blocks": [4] * 5, "factors": [8, 4, 4, 2, 2]}),
    ("output30", {"channels": [1, 8, 64, 128, 256], "blocks": [4] * 4, "factors": [8, 8, 2, 2]}),
    ("output31", {"clip": 1000.0, "lr": 5e-3}),
    ("output32", {"loss": ["dac"], "segment": 16384, "clip": 1000.0}),
    ("output35", {"loss": ["dac", "mrstft"], "segment": 16384}),
    ("output36", {"loss": ["mel", "mrstft"], "segment": 16384}),
    ("output37", {"loss": ["mel", "mrstft"], "segment": 49152}),
    ("output38", {"optimizer": "PSGDKron", "lr": 1e-3, "momentum": 0.9, "segment": 49152}),
    ("output39", {"lr": 3e-4, "momentum": 0.9}),
    ("output40", {"lr": 5e-4}),
    ("output41", {"lr": 1e-4}),
    ("output42", {"lr": 3e-4, "momentum": 0.8}),
    ("output43", {"lr": 3e-4, "momentum": 0.95}),
])
def test_preset_states_the_logged_recipe(name: str, expected: dict) -> None:
    got = _recipe(name)
    assert {k: got[k] for k in expected} == expected


def test_estimating_the_difference_is_output21_alone() -> None:
    residual = {name: bool(compose_config([f"experiment={name}"]).model.predict_residual)
                for name in LOGGED if name != "output19"}
    assert [name for name, on in residual.items() if on] == ["output21"]


def test_rave_presets_bring_the_recipe_and_v3_adds_snake_adain_and_dac() -> None:
    v2, v3 = compose_config(["experiment=rave_v2"]), compose_config(["experiment=rave_v3"])
    for cfg in (v2, v3):
        assert cfg.task._target_.endswith("Autoencode") or "autoencode" in str(cfg.task).lower()
        assert cfg.recipe.beta_start == 1e-6 and cfg.recipe.beta_end == 5e-2 and cfg.recipe.beta_warmup_steps == 20000
        assert "adversarial" in cfg.loss.terms
    assert v2.model.activation == "leaky_relu" and not v2.model.adain
    assert "RaveV2Discriminator" in v2.discriminator.model._target_
    assert v3.model.activation == "snake" and v3.model.adain
    assert "dac_discriminator" in v3.discriminator.model._target_


def test_model_presets_no_longer_choose_other_groups() -> None:
    for path in (REPO / "conf" / "model").glob("*.yaml"):
        assert not re.search(r"^defaults:", path.read_text(), re.M), f"{path.name} switches other groups"
    plain = compose_config(["model=pqmf_vae_small"])
    assert "mrstft" in plain.loss.terms and plain.get("discriminator") is None and plain.recipe.get("d_every") is None


def recipe_line(name: str) -> str:
    """The one-line summary of a logged preset's composed recipe, as its header states it."""
    cfg = compose_config([f"experiment={name}"])
    m, o = cfg.model, cfg.optim
    model = {"ConvNeXtUNet2dSpec": "spectrogram ConvNeXt", "ConvNeXtUNet1d": "waveform ConvNeXt"}[
        m._target_.rsplit(".", 1)[-1]]
    layout = f"channels {list(m.channels)}, blocks {list(m.blocks)}, factors {list(m.factors)}, kernel {m.kernel_size}"
    optim = o.optimizer._target_.rsplit(".", 1)[-1]
    opt = (f"Muon {o.lr:g} + AdamW {o.adamw_lr:g}" if optim == "SplitOpt"
           else f"PSGD {o.lr:g} momentum {o.momentum:g}")
    loss = " + ".join(sorted(cfg.loss.terms))
    return (f"{model} ({layout}, {'residual' if m.predict_residual else 'direct'}) | loss {loss} | {opt}, clip "
            f"{o.grad_clip if o.grad_clip is not None else 'none'} | {cfg.task.lowpass_bank} low-pass cutoffs | "
            f"{cfg.data.segment} x {cfg.data.batch_size} | {cfg.trainer.max_steps} steps")


@pytest.mark.parametrize("name", LOGGED)
def test_header_states_the_full_recipe_as_composed(name: str) -> None:
    header = (EXPERIMENTS / f"{name}.yaml").read_text().split("defaults:")[0]
    assert f"# Recipe: {recipe_line(name)}\n" in header.replace("\n#   ", " ")
