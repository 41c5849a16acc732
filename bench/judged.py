"""What the strict judge reads in a set of pictures the mini paints: the shares bench/knobs.py and
bench/composition.py report."""

from __future__ import annotations

from collections import Counter

import numpy as np

from stylelora.mini.evaluate import Rates
from stylelora.mini.judge import judge

DARK = 80  # a picture's background is dark when the median of its border ring is below this (the world's: 24)


def judged(styler, among: list[tuple[str, str, str]], per_prompt: int, **paint) -> dict[str, float]:
    """Style, colour, shape, broken and dark-background shares over `per_prompt` images of each prompt of `among`
    (seeds as stylelora.mini.evaluate.measure draws them), and each texture-and-palette pair's share ("striped
    pastel", "dotted normal", ...). `paint`: more of Styler.generate's settings (blend, blend_density)."""
    rates, dark, pairs = Rates(), 0, Counter()
    for index, (prompt, colour, shape) in enumerate(among):
        for image in styler.generate(prompt, count=per_prompt, steps=20, cfg=4.0, seed=1000 * index, **paint):
            pixels = np.asarray(image.convert("RGB"))
            verdict = judge(pixels)
            rates.images += 1
            rates.colour_right += verdict.colour == colour
            rates.shape_right += verdict.shape == shape
            rates.broken += verdict.broken
            rates.textures[verdict.texture or "none"] += 1
            rates.palettes[verdict.palette or "none"] += 1
            pairs[f"{verdict.texture or 'none'} {verdict.palette or 'none'}"] += 1
            ring = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                                   pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
            dark += float(np.median(ring.mean(axis=1))) < DARK
    return {"striped": rates.share("striped"), "dotted": rates.share("dotted"), "pastel": rates.share("pastel"),
            "colour": rates.share("colour"), "shape": rates.share("shape"), "broken": rates.share("broken"),
            "dark": dark / rates.images, "images": rates.images,
            "pairs": {pair: count / rates.images for pair, count in sorted(pairs.items())}}
