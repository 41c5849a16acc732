"""A deterministic checker that reads shape, colour, texture and palette from a 64x64 image.

It lets tests and benchmarks measure what the miniature model and an adapter really
draw, instead of assuming it. It is checked against the world's own renders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import COLOURS, PALETTES, palette_rgb


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
    return Verdict(shape, colour, _texture(pixels.mean(axis=-1), mask), palette)


# The world's stripes run diagonally: (x + y) // 4 alternates tone, so a step of (+2, -2) stays in a
# band and a step of (+2, +2) crosses into the next. Dots change tone along both diagonals alike.
# Contrast is measured relative to the base tone, so faint stripes a person sees still count.
MIN_CONTRAST = 0.08
MAX_STRIPE_RATIO = 0.5


def _texture(luminance: np.ndarray, mask: np.ndarray) -> str:
    inner = _erode(mask, 2)  # the outline's anti-aliasing is not texture
    if inner.sum() < 20:
        inner = mask
    tone = max(float(np.percentile(luminance[inner], 70)), 1.0)
    across = _shifted_difference(luminance, inner, 2, 2) / tone
    along = _shifted_difference(luminance, inner, -2, 2) / tone
    if max(across, along) < MIN_CONTRAST:
        return "solid"
    return "striped" if along < MAX_STRIPE_RATIO * across else "dotted"


def _erode(mask: np.ndarray, times: int) -> np.ndarray:
    for _ in range(times):
        inner = mask.copy()
        inner[1:] &= mask[:-1]
        inner[:-1] &= mask[1:]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        mask = inner
    return mask


def _shifted_difference(luminance: np.ndarray, mask: np.ndarray, dy: int, dx: int) -> float:
    """The 75th percentile of |L(y, x) - L(y + dy, x + dx)| over pixel pairs both inside `mask`: a
    percentile, not the mean, so that sparse dots count as much as stripes that cover half the shape."""
    moved = np.roll(luminance, (-dy, -dx), axis=(0, 1))
    both = mask & np.roll(mask, (-dy, -dx), axis=(0, 1))
    return float(np.percentile(np.abs(luminance - moved)[both], 75)) if both.any() else 0.0
