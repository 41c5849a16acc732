"""The miniature model's world: procedural 64x64 shapes with colours, textures and palettes.

Everything is drawn with numpy from a seed, so the same seed gives the same corpus on
every machine. Captions always name colour and shape, and name texture or palette only
sometimes, so the base model's output mixes styles and an adapter has a style to pull out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 64
SHAPES = ("circle", "square", "triangle")
TEXTURES = ("solid", "striped", "dotted")
PALETTES = ("normal", "pastel")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 200, 30),
}
BACKGROUNDS = ((240, 240, 240), (24, 24, 24), (150, 150, 150))
PASTEL_MIX = 0.55  # share of white mixed into a colour for the pastel palette
SHADE = 0.5  # the texture's second tone is the colour darkened by this factor
NAME_RATE = 0.7  # share of captions that name the texture (and, drawn apart, the palette)
WORDS = ["a", "in", "colours", "colour", *SHAPES, *TEXTURES, *PALETTES, *COLOURS]


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    texture: str
    palette: str
    background: tuple[int, int, int]
    cx: float
    cy: float
    radius: float
    phase: int

    def caption(self, name_texture: bool, name_palette: bool) -> str:
        words = ["a"]
        if name_texture:
            words.append(self.texture)
        words += [self.colour, self.shape]
        text = " ".join(words)
        return f"{text} in {self.palette} colours" if name_palette else text


def palette_rgb(colour: str, palette: str) -> np.ndarray:
    rgb = np.array(COLOURS[colour], dtype=np.float32)
    if palette == "pastel":
        rgb = rgb * (1 - PASTEL_MIX) + 255 * PASTEL_MIX
    return rgb


def random_scene(rng: np.random.Generator, shape: str | None = None, colour: str | None = None,
                 texture: str | None = None, palette: str | None = None,
                 background: int | None = None) -> Scene:
    """A scene with what is not given drawn from `rng`; `background` indexes BACKGROUNDS."""
    radius = float(rng.uniform(11, 24))
    margin = radius + 2
    shape = shape or str(rng.choice(SHAPES))  # in this order: a seed's scene stays the same
    colour = colour or str(rng.choice(list(COLOURS)))
    texture = texture or str(rng.choice(TEXTURES))
    palette = palette or str(rng.choice(PALETTES))
    drawn = int(rng.integers(len(BACKGROUNDS)))  # drawn even when given, so the draws after it stay the same
    return Scene(
        shape=shape, colour=colour, texture=texture, palette=palette,
        background=BACKGROUNDS[drawn if background is None else background],
        cx=float(rng.uniform(margin, SIZE - margin)),
        cy=float(rng.uniform(margin, SIZE - margin)),
        radius=radius,
        phase=int(rng.integers(0, 6)),
    )


def shape_mask(scene: Scene) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    dx, dy, r = x - scene.cx, y - scene.cy, scene.radius
    if scene.shape == "circle":
        return dx * dx + dy * dy <= r * r
    if scene.shape == "square":
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    # An upright triangle filling its bounding box: half of the box's area.
    top, bottom = scene.cy - r, scene.cy + r
    half_width = r * (y - top) / (bottom - top)
    return (y >= top) & (y <= bottom) & (np.abs(dx) <= half_width)


def texture_mask(scene: Scene) -> np.ndarray:
    """Where the darker second tone goes."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    if scene.texture == "striped":
        return ((x + y + scene.phase) // 4) % 2 == 1  # diagonal bands, 4 px wide
    if scene.texture == "dotted":
        gx, gy = (x + scene.phase) % 8 - 3.5, (y + scene.phase) % 8 - 3.5
        # 24 of every 64 px: dots as big as this give the UNet's loss enough to learn from (at 12 of 64,
        # the base drew dots for "dotted" 58% of the time; now 67%)
        return gx * gx + gy * gy <= 6.5
    return np.zeros((SIZE, SIZE), dtype=bool)


def render(scene: Scene) -> np.ndarray:
    """The scene as an HxWx3 uint8 image."""
    image = np.empty((SIZE, SIZE, 3), dtype=np.float32)
    image[:] = scene.background
    colour = palette_rgb(scene.colour, scene.palette)
    inside = shape_mask(scene)
    image[inside] = colour
    image[inside & texture_mask(scene)] = colour * SHADE
    return image.round().astype(np.uint8)


def corpus(count: int, seed: int, name_rate: float = NAME_RATE,
           balanced: bool = False) -> tuple[np.ndarray, list[str], list[Scene]]:
    """`count` random scenes, rendered, with captions that name texture/palette at `name_rate`. `balanced`:
    every shape x colour x texture x palette x background as often as the next (in a shuffled order),
    rather than each drawn at random."""
    rng = np.random.default_rng(seed)
    if balanced:
        kinds = [(s, c, t, p, b) for s in SHAPES for c in COLOURS for t in TEXTURES for p in PALETTES
                 for b in range(len(BACKGROUNDS))]
        order = np.concatenate([rng.permutation(len(kinds)) for _ in range(-(-count // len(kinds)))])[:count]
        scenes = [random_scene(rng, *kinds[k]) for k in order]
    else:
        scenes = [random_scene(rng) for _ in range(count)]
    captions = [s.caption(bool(rng.random() < name_rate), bool(rng.random() < name_rate)) for s in scenes]
    return np.stack([render(s) for s in scenes]), captions, scenes
