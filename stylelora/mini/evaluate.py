"""Measure what the miniature model draws: generate for every colour x shape prompt and judge each image.

Used by the test suite (few images, loose bounds) and by bench/style_report.py (many images).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .judge import judge
from .world import COLOURS, SHAPES


# A look named by its texture and palette together: "flat" is a solid shape in a normal (not pastel) colour, the
# held-out style (stylelora.mini.samples.HELD_OUT), which the base seldom draws unasked.
LOOKS = {"flat": ("solid", "normal")}


def looks_of(verdict) -> list[str]:
    """The LOOKS a judge.Verdict reads as."""
    return [name for name, pair in LOOKS.items() if pair == (verdict.texture, verdict.palette)]


@dataclass
class Rates:
    images: int = 0
    colour_right: int = 0
    shape_right: int = 0
    prompt_right: int = 0  # colour and shape both right
    broken: int = 0
    textures: Counter = field(default_factory=Counter)
    palettes: Counter = field(default_factory=Counter)
    looks: Counter = field(default_factory=Counter)

    def count(self, verdict, colour: str, shape: str) -> None:
        """Count one picture's verdict (a judge.Verdict) for a prompt that asked for `colour` and `shape`."""
        self.images += 1
        self.colour_right += verdict.colour == colour
        self.shape_right += verdict.shape == shape
        self.prompt_right += verdict.colour == colour and verdict.shape == shape
        self.broken += verdict.broken
        self.textures[verdict.texture or "none"] += 1
        self.palettes[verdict.palette or "none"] += 1
        self.looks.update(looks_of(verdict))

    def share(self, what: str) -> float:
        """Share of images judged as `what`: a texture, a palette, a look of LOOKS, 'colour', 'shape' or 'prompt'
        (both) right, or 'broken'."""
        if self.images == 0:
            return 0.0
        count = {"colour": self.colour_right, "shape": self.shape_right, "prompt": self.prompt_right,
                 "broken": self.broken}.get(what)
        if count is None and what in LOOKS:
            count = self.looks[what]
        if count is None:
            count = self.textures[what] + self.palettes[what]
        return count / self.images


def prompts() -> list[tuple[str, str, str]]:
    return [(f"a {colour} {shape}", colour, shape) for colour in COLOURS for shape in SHAPES]


def measure(styler, per_prompt: int = 4, steps: int = 20, cfg: float = 4.0, seed: int = 0,
            scheduler: str = "dpm++", among: list[tuple[str, str, str]] | None = None) -> Rates:
    """Judge `per_prompt` images for each (prompt, colour, shape) of `among` (default: the 12 colour x shape
    prompts), with the styler's current weights."""
    rates = Rates()
    for index, (prompt, colour, shape) in enumerate(prompts() if among is None else among):
        images = styler.generate(prompt, count=per_prompt, steps=steps, cfg=cfg, seed=seed + 1000 * index,
                                 scheduler=scheduler)
        for image in images:
            rates.count(judge(np.asarray(image.convert("RGB"))), colour, shape)
    return rates


STYLES = ("striped", "dotted", "pastel", "flat")


def folder_style(images: list[np.ndarray]) -> str:
    """The style a folder teaches, as the judge sees it: the most common of striped, dotted, pastel and flat (a
    solid shape in a normal colour) among its images (ties go to the first)."""
    counts = Counter()
    for image in images:
        verdict = judge(image)
        counts.update(s for s in (verdict.texture, verdict.palette, *looks_of(verdict)) if s in STYLES)
    if not counts:
        raise ValueError("the judge sees no striped, dotted, pastel or flat image in the folder")
    return max(STYLES, key=lambda s: counts[s])
