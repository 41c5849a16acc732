"""A strict, deterministic checker that reads shape, colour, texture and palette from a 64x64 image.

It lets tests and benchmarks measure what the miniature model and an adapter really draw, the way a
person sorting the pictures would: it says "neither" when a picture is between two answers.
- Colour is read by hue band, with reject zones between bands: an orange halfway between red and
  yellow is no colour of the world. Pastel tints and the texture's dark tone keep their hue.
- A picture is `broken` when its background is strongly coloured or its shape is a grey blob (the
  colour bled into the background). A broken picture has no shape, colour, texture or palette.
- Two shapes, an empty canvas or a heavily blurred shape have no shape and no colour.
- Texture is read only inside the one shape.
It is checked both ways: right on the world's own renders, and silent on a confusion set
(tests/test_mini_world.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPE_CONTRAST = 40  # a pixel belongs to the shape when a channel differs from the background by more
MIN_AREA = 40  # fewer shape pixels than this: an empty canvas
SECOND_SHAPE = 0.15  # a second blob at least this share of the first: two shapes
GREY_CHROMA = 40  # max - min channel; the world's backgrounds have 0, its palest colour 55
PASTEL_SATURATION = 0.55  # (max - min) / max: the world's pastels are 0.25-0.37, its normal colours 0.76-0.87
MIN_EDGE_SLOPE = 0.15  # share of the local contrast per pixel across the outline (sharp: about 0.5)
# Hue bands in degrees (HSV). The world's hues: red 0, yellow 51, green 129, blue 230. Between the
# bands, and for purple (270-330) and orange (20-40), the colour is no colour of the world.
HUE_BANDS = {"red": (-15.0, 15.0), "yellow": (42.0, 66.0), "green": (100.0, 160.0), "blue": (205.0, 250.0)}
# Fill of the bounding box: square 1.0, circle pi/4 = 0.785, triangle 0.5. Between these: no shape.
# Bands measured on the VAE's own reconstructions of 300 renders (the best any UNet can paint): squares
# 5th percentile 0.87, circles 0.71-0.84, triangles up to 0.65 at the 95th (a lost tip shortens the box).
FILL_BANDS = {"square": (0.87, 1.01), "circle": (0.70, 0.85), "triangle": (0.40, 0.66)}
BLEED = 0.08  # share of the border drawn on, or of the picture coloured away from the shape: colour bled out


@dataclass(frozen=True)
class Verdict:
    shape: str | None
    colour: str | None
    texture: str | None
    palette: str | None
    broken: bool = False


NOTHING = Verdict(None, None, None, None)
BROKEN = Verdict(None, None, None, None, broken=True)


def judge(image: np.ndarray) -> Verdict:
    """Read an HxWx3 uint8 image. Fields are None where a person would not name one answer."""
    pixels = image.astype(np.float32)
    background = _background(pixels)
    if _chroma(background) > GREY_CHROMA:
        return BROKEN
    drawn = np.abs(pixels - background).max(axis=-1) > SHAPE_CONTRAST
    if _border(drawn).mean() > BLEED:
        return BROKEN  # the world's shapes keep clear of the edge: this is colour run into the background
    mask = _one_shape(drawn)
    if mask is None:
        return NOTHING
    if _bled(pixels, mask):
        return BROKEN
    inside = pixels[mask]
    luminance = inside.mean(axis=-1)
    # The base tone is the brighter mode; the texture's second tone is SHADE times it.
    bright = inside[luminance >= np.percentile(luminance, 70)].mean(axis=0)
    if _chroma(bright) <= GREY_CHROMA * (bright.max() / 255):
        return BROKEN  # a grey blob where the shape should be
    if _edge_slope(pixels, background, bright, mask) < MIN_EDGE_SLOPE:
        return NOTHING
    palette = "pastel" if _chroma(bright) / bright.max() < PASTEL_SATURATION else "normal"
    return Verdict(_shape(mask), _hue_name(bright), _texture(pixels.mean(axis=-1), mask), palette)


def _border(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


def _background(image: np.ndarray) -> np.ndarray:
    return np.median(_border(image), axis=0)


def _chroma(rgb: np.ndarray) -> float:
    return float(rgb.max() - rgb.min())


def _hue(rgb: np.ndarray) -> float:
    r, g, b = (float(v) for v in rgb)
    top, delta = max(r, g, b), max(r, g, b) - min(r, g, b)
    if top == r:
        return 60.0 * ((g - b) / delta)
    if top == g:
        return 60.0 * (2 + (b - r) / delta)
    return 60.0 * (4 + (r - g) / delta)


def _hue_name(rgb: np.ndarray) -> str | None:
    hue = _hue(rgb)
    hue = hue - 360 if hue > 270 else hue  # red straddles 0; purple (270-330) falls in no band
    return next((name for name, (low, high) in HUE_BANDS.items() if low <= hue <= high), None)


def _bled(pixels: np.ndarray, mask: np.ndarray) -> bool:
    """Strongly coloured pixels away from the shape (2 pixels out, past its anti-aliasing)."""
    coloured = pixels.max(axis=-1) - pixels.min(axis=-1) > GREY_CHROMA
    near = ~_erode(~mask, 2)
    return float((coloured & ~near).mean()) > BLEED


def _shape(mask: np.ndarray) -> str | None:
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return next((name for name, (low, high) in FILL_BANDS.items() if low <= fill <= high), None)


def _one_shape(mask: np.ndarray) -> np.ndarray | None:
    """The largest blob of `mask`, or None for an empty canvas or two shapes."""
    if mask.sum() < MIN_AREA:
        return None
    labels = _components(mask)
    sizes = np.bincount(labels[mask])
    order = np.argsort(sizes)[::-1]
    if sizes[order[0]] < MIN_AREA or (len(order) > 1 and sizes[order[1]] >= SECOND_SHAPE * sizes[order[0]]):
        return None
    return _fill_holes(labels == order[0])


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """The shape with what it encloses: a blurred dot's mid tone can fall under the contrast threshold."""
    outside = _components(~mask)
    return mask | ~np.isin(outside, np.unique(_border(outside)))


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected labels of `mask` (0 outside), by propagating the smallest index: numpy has no labeller
    and a 64x64 mask converges in a few dozen passes, so scipy would be a dependency for one call."""
    big = mask.size + 1
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        smallest = np.minimum.reduce([labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2],
                                      padded[1:-1, 2:]])
        smallest = np.where(mask, smallest, big)
        if (smallest == labels).all():
            break
        labels = smallest
    _, dense = np.unique(np.where(mask, labels, 0), return_inverse=True)
    return dense.reshape(mask.shape)


def _edge_slope(pixels: np.ndarray, background: np.ndarray, tone: np.ndarray, mask: np.ndarray) -> float:
    """The median slope across the shape's outline, as a share of the contrast within 6 pixels of it: about
    0.5 for a sharp edge, under 0.15 for one blurred by a Gaussian of sigma 3 or more."""
    channel = pixels[..., int(np.abs(tone - background).argmax())]
    dy, dx = np.gradient(channel)
    window = np.lib.stride_tricks.sliding_window_view(np.pad(channel, 6, mode="edge"), (13, 13))
    spread = window.max(axis=(-1, -2)) - window.min(axis=(-1, -2))
    outline = mask & ~_erode(mask, 1)
    return float(np.median(np.hypot(dy, dx)[outline] / np.maximum(spread[outline], 1.0)))


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
