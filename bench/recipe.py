"""The built-in mini's default recipe against the one before it: style and colour on the three sample styles, at
two seeds (bench/quickstart.py times the default).

    python bench/recipe.py                # 8 images per prompt (96 per judged point)
    python bench/recipe.py --quick        # 2 images per prompt

The earlier recipe is 800 steps at 2e-3 with uniform timesteps; the current one is train/recipe.py's MINI_RECIPE.
Each trains on the stripes, dots and pastel folders at seeds 0 and 1 and is judged by the strict judge on the 12
colour x shape prompts. Writes docs/results/recipe.md and recipe.json, and the table into the mini's guide between
its markers.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stylelora.mini.evaluate import measure  # noqa: E402
from stylelora.paint.styler import Styler  # noqa: E402
from stylelora.train.config import TrainConfig  # noqa: E402
from stylelora.train.recipe import MINI_RECIPE  # noqa: E402
from stylelora.train.loop import train  # noqa: E402

from timesteps import EARLIER_MINI, RESULTS, STYLES, base_rates, images_per_prompt, write_report  # noqa: E402

RECIPES = {"earlier": EARLIER_MINI,
           "current": {"learning_rate": MINI_RECIPE.learning_rate, "max_steps": MINI_RECIPE.steps,
                       "timestep_sampling": MINI_RECIPE.timestep_sampling}}
SEEDS = (0, 1)


def trained(work: Path, recipe: str, style: str, seed: int) -> Path:
    """The adapter of `recipe` on `style` at `seed` (one an earlier run of this script trained is judged again)."""
    out = work / recipe / f"seed{seed}" / style
    if not (out / f"{style}.safetensors").is_file():
        train(TrainConfig(data=ROOT / "datasets" / style, out=out, seed=seed, **RECIPES[recipe]), progress_bar=False,
              log=lambda m: None)
    return out / f"{style}.safetensors"


def judged(styler: Styler, path: Path, style: str, per_prompt: int) -> dict[str, float]:
    name = styler.load(path, "recipe")
    styler.set_weights({name: 1.0})
    rates = measure(styler, per_prompt=per_prompt)
    styler.unload(name)
    return {"style": rates.share(STYLES[style]), "colour": rates.share("colour"), "broken": rates.broken / rates.images}


def table(results: dict, base: dict, per_prompt: int) -> str:
    images = 12 * per_prompt
    lines = [f"Measured on the miniature base by `python bench/recipe.py`: {images} images per row and seed, strict "
             f"judge, 20 DPM++ steps, guidance 4. With {images} images a rate's standard error is at most "
             f"{0.5 / images ** 0.5:.0%} (binomial); the two seeds show how far one training run's luck moves it.", "",
             "| recipe | style | style, seed 0 / 1 | colour right, seed 0 / 1 | broken, the worse seed |",
             "| --- | --- | --- | --- | --- |"]
    for recipe, settings in RECIPES.items():
        said = (f"{settings['max_steps']} steps, {settings['learning_rate']:g}, {settings['timestep_sampling']} "
                "timesteps")
        for style in STYLES:
            runs = [results[recipe][style][str(seed)] for seed in SEEDS]
            pair = lambda key: " / ".join(f"{run[key]:.0%}" for run in runs)  # noqa: E731
            broken = max(run["broken"] for run in runs)
            lines.append(f"| {recipe} ({said}) | {style} | {pair('style')} | {pair('colour')} | {broken:.0%} |")
    lines.append(f"| base, no adapter | | {base['striped']:.0%} striped, {base['dotted']:.0%} dotted, "
                 f"{base['pastel']:.0%} pastel | {base['colour']:.0%} | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    per_prompt = images_per_prompt(__doc__)
    work = RESULTS / "recipe-adapters"
    runs = {recipe: {style: {seed: trained(work, recipe, style, seed) for seed in SEEDS} for style in STYLES}
            for recipe in RECIPES}
    styler = Styler("mini")
    base = base_rates(styler, per_prompt)
    results = {recipe: {style: {str(seed): judged(styler, path, style, per_prompt) for seed, path in by_seed.items()}
                        for style, by_seed in by_style.items()}
               for recipe, by_style in runs.items()}
    write_report("recipe", {"per_prompt": per_prompt, "base": base, "recipes": RECIPES,
                            "current": asdict(MINI_RECIPE), "results": results}, table(results, base, per_prompt))


if __name__ == "__main__":
    main()
