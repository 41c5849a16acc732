"""What the strict judge reads in a set of pictures the mini paints: the shares bench/knobs.py and
bench/composition.py report."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from stylelora.files import write_atomically
from stylelora.mini.evaluate import Rates
from stylelora.mini.judge import judge
from stylelora.mini.samples import HELD_OUT, HELD_OUT_SEED, make

ROOT = Path(__file__).resolve().parent.parent

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
            rates.count(verdict, colour, shape)
            pairs[f"{verdict.texture or 'none'} {verdict.palette or 'none'}"] += 1
            ring = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                                   pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
            dark += float(np.median(ring.mean(axis=1))) < DARK
    return {"striped": rates.share("striped"), "dotted": rates.share("dotted"), "pastel": rates.share("pastel"),
            "colour": rates.share("colour"), "shape": rates.share("shape"), "broken": rates.share("broken"),
            "dark": dark / rates.images, "images": rates.images,
            "pairs": {pair: count / rates.images for pair, count in sorted(pairs.items())}}


def sample_folder(style: str, work: Path) -> Path:
    """A sample style's 36 images: datasets/<style>, or, for the held-out style (flat), the same kind of folder drawn
    into `work` (gitignored) by stylelora.mini.samples."""
    if style not in HELD_OUT:
        return ROOT / "datasets" / style
    folder = work / "held-out" / style
    if not folder.is_dir():
        make(folder, HELD_OUT[style], HELD_OUT_SEED)
    return folder


class Store:
    """Judged numbers in a JSON file, written as each comes, so an interrupted bench continues where it stopped."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def put(self, key: str, value) -> None:
        write_atomically(self.path, json.dumps(self.read() | {key: value}, indent=1).encode())

    def begin(self, per_prompt: int) -> None:
        """Refuse to mix numbers judged at another number of images per prompt into this file; note this one."""
        if self.read().get("per_prompt", per_prompt) != per_prompt:
            raise SystemExit(f"{self.path} was judged at another number of images per prompt: move it away first")
        self.put("per_prompt", per_prompt)
