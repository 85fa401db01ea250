"""TrainState: the checkpoint layout lives in one place, and checkpoints of the old layout (format 1) still resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from test_pqmf_vae import SMALL_RAVE_D, VAE

from audiolab.runs.record import read_metrics
from audiolab.runs.session import RESOLVED_CONFIG, load_resolved_config, run_training
from audiolab.train.checkpoint import load_checkpoint, save_checkpoint
from audiolab.train.state import FORMAT, checkpoint_step, inference_weights, upgrade

# The keys of the two-phase recipe, which lived in the trainer section before the recipe group.
RECIPE_KEYS = ("phase1_steps", "beta_warmup_steps", "beta_start", "beta_end", "d_every", "d_concat")


def as_format_1(payload: dict) -> dict:
    """The layout audiolab wrote before recipes: `phase` and `adversarial` at the top, no `extras`."""
    old = {k: v for k, v in payload.items() if k != "extras"}
    vae_gan = payload["extras"].get("vae_gan") or {"phase": 1, "discriminator": None}
    old.update(format=1, phase=vae_gan["phase"], adversarial=vae_gan["discriminator"])
    return old


def as_old_config(run_dir: Path) -> None:
    """Rewrite a run's saved config the way audiolab saved it before the recipe group."""
    path = run_dir / RESOLVED_CONFIG
    cfg = yaml.safe_load(path.read_text())
    recipe = cfg.pop("recipe")
    cfg["trainer"].update({k: recipe[k] for k in RECIPE_KEYS if k in recipe})
    if not any(k in recipe for k in RECIPE_KEYS):  # supervised runs: the old defaults were written anyway
        cfg["trainer"].update(phase1_steps=None, beta_warmup_steps=20000, beta_start=1e-6, beta_end=5e-2, d_every=4,
                              d_concat=False)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _figures(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.startswith("perf/")} for m in read_metrics(run_dir)]


@pytest.mark.parametrize("extra", [
    pytest.param(("trainer.max_steps=6", "trainer.val_every=3", "trainer.ema_decay=0.9"), id="restore-ema"),
    pytest.param((*VAE, *SMALL_RAVE_D, "recipe.phase1_steps=3", "trainer.max_steps=6", "trainer.val_every=3",
                  "recipe.d_every=2"), id="vae-phase2"),
])
def test_a_format_1_checkpoint_and_config_still_resume_bitwise(interrupted_and_full, extra: tuple[str, ...]) -> None:
    full_dir, cut_dir = interrupted_and_full(*extra)
    path = cut_dir / "checkpoints" / "last.pt"
    old = as_format_1(load_checkpoint(path))
    save_checkpoint(path, old)
    as_old_config(cut_dir)
    assert load_checkpoint(path)["format"] == 1 and "extras" not in load_checkpoint(path)
    assert "recipe" not in yaml.safe_load((cut_dir / RESOLVED_CONFIG).read_text())

    run_training(load_resolved_config(cut_dir), cut_dir, resume=True)
    assert _figures(cut_dir) == _figures(full_dir)
    full, cut = load_checkpoint(full_dir / "checkpoints" / "last.pt"), load_checkpoint(path)
    assert cut["format"] == FORMAT and cut["step"] == full["step"] == 6
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, cut["model"][name]), name
    if "vae_gan" in full["extras"]:
        assert old["phase"] == 2 and old["adversarial"] is not None  # the cut was inside phase 2
        discriminator = cut["extras"]["vae_gan"]["discriminator"]["model"]
        for name, tensor in full["extras"]["vae_gan"]["discriminator"]["model"].items():
            assert torch.equal(tensor, discriminator[name]), name


def test_readers_of_finished_runs_see_both_formats(run_tiny) -> None:
    run_dir, _ = run_tiny("trainer.ema_decay=0.5")
    new = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    old = as_format_1(new)
    assert checkpoint_step(new) == checkpoint_step(old) == 3
    weights = inference_weights(old)
    assert weights.keys() == new["model"].keys()
    ema = {k[len("module."):]: v for k, v in new["ema"].items() if k.startswith("module.")}
    assert all(torch.equal(weights[k], ema[k]) for k in weights)
    assert any(not torch.equal(weights[k], new["model"][k]) for k in weights)  # the EMA's, not the model's
    assert upgrade(old)["extras"] == {} and upgrade(new) is new


def test_an_unknown_format_or_extra_is_refused(run_tiny) -> None:
    from audiolab.train.trainer import build_training

    run_dir, _ = run_tiny()
    payload = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    with pytest.raises(ValueError, match="format 3 is newer"):
        upgrade({**payload, "format": 3})
    state = build_training(load_resolved_config(run_dir)).state
    with pytest.raises(ValueError, match=r"holds \['vae_gan'\], which this run's recipe does not use"):
        state.load_state_dict({**payload, "extras": {"vae_gan": {"phase": 2, "discriminator": {}}}})
