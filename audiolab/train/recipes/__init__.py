"""Recipes: what one training step does. The loop calls `step`; it knows nothing of phases or discriminators.

- `supervised` (recipe=supervised): the model's output against the target under the weighted loss.
- `vae_gan` (recipe=vae_gan): RAVE's two phases, a beta-weighted KL, then a frozen encoder and a GAN.

A recipe is picked by the `recipe` config group and built by `build_recipe`. To add one, subclass
`Recipe`, register whatever it must checkpoint with `state.register`, and add conf/recipe/NAME.yaml
(with a schema in audiolab/config/schema.py for typed values).
"""

from __future__ import annotations

from audiolab.train.recipes.base import Recipe, RecipeParts, build_recipe

__all__ = ["Recipe", "RecipeParts", "build_recipe"]
