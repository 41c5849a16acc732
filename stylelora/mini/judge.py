"""A deterministic checker that reads shape, colour, texture and palette from a 64x64 image.

It lets tests and benchmarks measure what the miniature model and an adapter really
draw, instead of assuming it. It is checked against the world's own renders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import COLOURS, PALETTES, SHADE, palette_rgb


@dataclass(frozen=True)
class Verdict:
    shape: str | None
    colour: str | None
    texture: str | None
    palette: str | None


def _background(image: np.ndarray) -> np.ndarray:
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return np.median(border, axis=0)


def _nearest_colour(rgb: np.ndarray) -> tuple[str, str]:
    best = min(
        ((float(np.abs(rgb - palette_rgb(c, p)).sum()), c, p) for c in COLOURS for p in PALETTES),
    )
    return best[1], best[2]


def judge(image: np.ndarray) -> Verdict:
    """Read an HxWx3 uint8 image. Fields are None where nothing clear is drawn."""
    pixels = image.astype(np.float32)
    background = _background(pixels)
    mask = np.abs(pixels - background).max(axis=-1) > 40
    area = int(mask.sum())
    if area < 40:
        return Verdict(None, None, None, None)
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = area / box
    shape = "square" if fill > 0.88 else "circle" if fill > 0.64 else "triangle"

    inside = pixels[mask]
    luminance = inside.mean(axis=-1)
    # The base tone is the brighter mode; the texture's second tone is SHADE times it.
    bright = inside[luminance >= np.percentile(luminance, 70)].mean(axis=0)
    colour, palette = _nearest_colour(bright)
    threshold = bright.mean() * (1 + SHADE) / 2
    dark_share = float((luminance < threshold).mean())
    texture = "solid" if dark_share < 0.1 else "dotted" if dark_share < 0.33 else "striped"
    return Verdict(shape, colour, texture, palette)
