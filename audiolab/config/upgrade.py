"""Configs saved by older audiolab versions, brought to today's layout (for resume, reproduce and evaluate)."""

from __future__ import annotations

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from audiolab.config.schema import SupervisedRecipeConfig, VaeGanRecipeConfig
from audiolab.models.base import AudioModel

# Before the `recipe` group, two-phase training's keys lived in the trainer section.
_TWO_PHASE_KEYS = ("phase1_steps", "beta_warmup_steps", "beta_start", "beta_end", "d_every", "d_concat")


def upgrade_config(cfg: DictConfig) -> DictConfig:
    """A copy of a saved, resolved config in today's layout (unchanged when it already is)."""
    if "trainer" in cfg and "trust_checkpoint" not in cfg.trainer:  # added later; the old behaviour is false
        cfg = OmegaConf.create(OmegaConf.to_container(cfg))
        cfg.trainer.trust_checkpoint = False
    if "data" in cfg and "val_segment" not in cfg.data:  # added later: validation followed training's shape
        cfg = OmegaConf.create(OmegaConf.to_container(cfg))
        cfg.data.val_segment, cfg.data.val_batch_size = None, None
    if "recipe" in cfg or "trainer" not in cfg:
        return cfg
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    moved = {k: cfg.trainer.pop(k) for k in _TWO_PHASE_KEYS if k in cfg.trainer}
    # The old loop weighted a KL whenever the model returned one, and had phase 2 whenever a discriminator was set.
    model = get_object(str(cfg.model._target_))
    variational = isinstance(model, type) and issubclass(model, AudioModel) and model.variational
    if cfg.get("discriminator") or variational:
        cfg.recipe = {"_target_": VaeGanRecipeConfig._target_, **moved}
    else:
        cfg.recipe = {"_target_": SupervisedRecipeConfig._target_}
    return cfg
