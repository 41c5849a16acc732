"""The sample style folders (stripes, dots, pastel), drawn from the miniature world, deterministically.

Each folder holds 36 PNG images with .txt captions that name only colour and shape ("a red circle"): the style is
in the pixels, not the words. Every colour x shape pair appears three times, so no colour is learnt from fewer
examples than the others. `stylelora sample-data DIR` writes them wherever the package is installed; the
repository's datasets/ holds the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..files import write_atomically
from .world import COLOURS, SHAPES, random_scene, render

STYLES = {"stripes": {"texture": "striped"}, "dots": {"texture": "dotted"}, "pastel": {"palette": "pastel"}}
COUNT = 36
FIRST_SEED = 100  # stripes draws from seed 100, dots 101, pastel 102
# A style the base seldom draws unasked: 9 of its 96 pictures of the 12 prompts are solid shapes in normal colours
# (docs/results/tune-score.md), where it draws each of the three above 29-61% of the time. Not written by
# `sample-data`: the benches teach it, to measure what tune, suggest and selection add where the base leaves room.
HELD_OUT = {"flat": {"texture": "solid", "palette": "normal"}}
HELD_OUT_SEED = FIRST_SEED + len(STYLES)


def make(folder: Path, fixed: dict[str, str], seed: int, count: int = COUNT) -> None:
    """Write `count` images of one style, with their captions, into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = list(COLOURS)
    for index in range(count):
        colour, shape = colours[index % len(colours)], SHAPES[index // len(colours) % len(SHAPES)]
        scene = random_scene(rng, shape=shape, colour=colour, **fixed)
        Image.fromarray(render(scene)).save(folder / f"{index:03d}.png", optimize=True)
        write_atomically(folder / f"{index:03d}.txt", f"a {scene.colour} {scene.shape}\n".encode())


def write_samples(root: Path) -> list[Path]:
    """Write every sample style folder under `root`; return the folders. An existing file there is a ConfigError
    (nothing is overwritten)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: not a folder; give a folder to write the sample styles into")
    taken = [root / name for name in STYLES if (root / name).exists() and any((root / name).iterdir())]
    if taken:
        raise ConfigError(f"{taken[0]}: already holds files; give an empty or new folder")
    folders = []
    for seed, (name, fixed) in enumerate(STYLES.items(), start=FIRST_SEED):
        make(root / name, fixed, seed)
        folders.append(root / name)
    return folders
