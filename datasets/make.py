"""Make the sample style folders from the miniature world, deterministically.

    python datasets/make.py            # writes datasets/stripes, datasets/dots, datasets/pastel

Each folder holds 36 PNG images with .txt captions that name only colour and shape
("a red circle"): the style is in the pixels, not the words. Every colour x shape pair appears
three times, so no colour is learnt from fewer examples than the others.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from stylelora.mini.world import COLOURS, SHAPES, random_scene, render  # noqa: E402

STYLES = {"stripes": {"texture": "striped"}, "dots": {"texture": "dotted"}, "pastel": {"palette": "pastel"}}
COUNT = 36


def make(folder: Path, fixed: dict[str, str], seed: int, count: int = COUNT) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = list(COLOURS)
    for index in range(count):
        colour, shape = colours[index % len(colours)], SHAPES[index // len(colours) % len(SHAPES)]
        scene = random_scene(rng, shape=shape, colour=colour, **fixed)
        Image.fromarray(render(scene)).save(folder / f"{index:03d}.png", optimize=True)
        (folder / f"{index:03d}.txt").write_text(f"a {scene.colour} {scene.shape}\n")


def main() -> None:
    root = Path(__file__).resolve().parent
    for seed, (name, fixed) in enumerate(STYLES.items(), start=100):
        make(root / name, fixed, seed)
        print(f"wrote {COUNT} images to {root / name}")


if __name__ == "__main__":
    main()
