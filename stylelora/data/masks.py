"""Loss masks (`--masks DIR`, `--mask-from-alpha`): which parts of each training image the loss counts.

A mask is a greyscale image with the training image's stem (white counts, black does not), or the image's own
alpha channel. It is placed in the image's bucket exactly as the image is (the same resize, centre crop and
flip, data.folder.placement), then averaged down to the latent grid, so a latent pixel's weight is the share
of its 8x8 pixels the mask keeps. The loss multiplies each latent pixel's error by it before the mean, as
kohya's masked loss does (train_util.apply_masked_loss), so a zero area contributes nothing. Masks are read
once per (image, flip) and kept in memory: they are a pure function of the files, so resume stays exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..errors import DatasetError
from .folder import IMAGE_EXTENSIONS, Example, Size, placement


def mask_checks(c: Any) -> list[tuple[bool, str, str]]:
    """What a TrainConfig's --masks, --mask-from-alpha and --mask-prior refuse: (holds, field, what to do instead),
    as config.validate lists them."""
    return [
        (c.masks is None or not c.mask_from_alpha, "masks", "give --masks DIR or --mask-from-alpha, not both"),
        (not (c.masked and c.random_crop), "masks", "masks follow the centre crop: drop --random-crop"),
        (c.mask_prior >= 0, "mask_prior", "the weight must be 0 or more; 1 is usual"),
        (c.mask_prior == 0 or c.masked, "mask_prior", "it acts outside loss masks: add --masks DIR or --mask-from-alpha"),
    ]


def mask_file(masks: Path, image: Path) -> Path | None:
    """The mask in `masks` with `image`'s stem, in any image format; None if there is none."""
    found = [masks / f"{image.stem}{suffix}" for suffix in sorted(IMAGE_EXTENSIONS)]
    return next((path for path in found if path.is_file()), None)


def check_masks(masks: Path, examples: list[Example]) -> None:
    """Every training image has a mask: raise DatasetError naming the first that has none."""
    if not masks.is_dir():
        raise DatasetError(f"--masks {masks}: no such folder")
    missing = [e.path.name for e in examples if mask_file(masks, e.path) is None]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(f"--masks {masks}: no mask for {missing[0]}{more}; give each training image a greyscale "
                           f"mask with the same name (e.g. {Path(missing[0]).stem}.png), white where the loss counts")


def _greyscale(image: Image.Image, from_alpha: bool) -> Image.Image:
    if not from_alpha:
        return image.convert("L")
    if "A" in image.getbands() or "transparency" in image.info:
        return image.convert("RGBA").getchannel("A")
    return Image.new("L", image.size, 255)  # no alpha: the whole image counts


class LossMasks:
    """Each example's mask on the latent grid, as a (1, height, width) tensor in [0, 1]."""

    def __init__(self, masks: Path | None, from_alpha: bool):
        self.masks, self.from_alpha = masks, from_alpha
        self.cache: dict[tuple[Path, bool, Size, tuple[int, int]], torch.Tensor] = {}

    def of(self, example: Example, target: Size, flip: bool, grid: tuple[int, int]) -> torch.Tensor:
        """The mask of `example` in its bucket `target` (width, height), maybe flipped, on the latent `grid`
        (height, width)."""
        key = (example.path, flip, target, grid)
        if key not in self.cache:
            self.cache[key] = self._load(example, target, flip, grid)
        return self.cache[key]

    def batch(self, examples: list[Example], targets: list[Size], flips: list[bool],
              grid: tuple[int, int]) -> torch.Tensor:
        return torch.stack([self.of(e, t, f, grid) for e, t, f in zip(examples, targets, flips)])

    def _load(self, example: Example, target: Size, flip: bool, grid: tuple[int, int]) -> torch.Tensor:
        source = example.path if self.from_alpha else mask_file(self.masks, example.path)
        try:
            with Image.open(source) as opened:
                mask = _greyscale(ImageOps.exif_transpose(opened), self.from_alpha)
        except (OSError, TypeError) as error:
            raise DatasetError(f"{source}: cannot be read as a mask ({error})") from None
        # Box (area) resampling: a pixel's weight is the share of its footprint the mask keeps, and a masked-out
        # area stays exactly zero (bilinear would blur a hard edge into it)
        mask = mask.resize(example.size, Image.Resampling.BOX)  # a mask of another size is stretched to fit
        resized, (left, top), _ = placement(example.size, target, flip=flip)
        mask = mask.resize(resized, Image.Resampling.BOX).crop((left, top, left + target[0], top + target[1]))
        if flip:
            mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]
        return F.interpolate(pixels, size=grid, mode="area")[0]
