"""What a base trains with where the options are left unset: its learning rate, steps and timestep sampling."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """One base's defaults for the three options a recipe sets."""

    learning_rate: float
    steps: int
    timestep_sampling: str  # what --timestep-sampling auto means: 'auto' leaves it to the objective (objective.py)


# The usual LoRA recipe for Stable Diffusion, and the built-in mini's own. The mini's was measured with the strict
# judge on its three sample styles at two seeds (bench/recipe.py, docs/guides/mini.md): its small attention layers
# learn a style in 400 steps at 3e-3 with logit-normal timesteps about as well as in 800 at 2e-3 with uniform ones.
USUAL_RECIPE = Recipe(learning_rate=1e-4, steps=800, timestep_sampling="auto")
MINI_RECIPE = Recipe(learning_rate=3e-3, steps=400, timestep_sampling="logit-normal")


def recipe_of(base: str) -> Recipe:
    """The recipe of `base` (what --base takes): the mini's own, or the usual one."""
    return MINI_RECIPE if base == "mini" else USUAL_RECIPE
