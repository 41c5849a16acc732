"""A style score from the base alone: how close pictures are, in style, to the training images, read off the base's
own VAE encoder. At the output of each of the encoder's down blocks, a set of pictures is summed up by texture
statistics that forget where things are (as neural style transfer does, Gatys et al. 2016): the channels' mean
Gram matrix ("gram"), or their means and standard deviations ("moments", AdaIN's). The score is exp(-d), d the
mean over pictures of the relative distance to the nearest training picture's statistics: 1 for the same style,
toward 0 apart.
Deterministic: no noise, no sampling."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image

STATISTICS = ("gram", "moments", "correlation", "high-pass")


def pixels_of(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """Pictures as one [-1, 1] batch at `size` x `size` (resized whole: texture statistics do not need a crop)."""
    arrays = [np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


@torch.no_grad()
def encoder_features(vae: torch.nn.Module, pixels: torch.Tensor, batch: int = 16) -> list[torch.Tensor]:
    """The outputs of the VAE encoder's down blocks (float32, on the CPU), one tensor per depth for all pixels."""
    encoder = vae.encoder
    depths: list[list[torch.Tensor]] = [[] for _ in encoder.down_blocks]
    for start in range(0, len(pixels), batch):
        hidden = encoder.conv_in(pixels[start:start + batch].to(vae.device, vae.dtype))
        for index, block in enumerate(encoder.down_blocks):
            hidden = block(hidden)
            depths[index].append(hidden.float().cpu())
    return [torch.cat(parts) for parts in depths]


def per_picture(features: torch.Tensor, statistic: str) -> torch.Tensor:
    """Each picture's statistic at one depth, flattened: pictures x values."""
    flat = features.flatten(2)  # pictures x channels x positions
    if statistic == "gram":
        return (flat @ flat.transpose(1, 2) / flat.shape[-1]).flatten(1)
    if statistic == "correlation":  # the channels' correlations: texture without the colours' magnitudes
        centred = flat - flat.mean(-1, keepdim=True)
        centred = centred / centred.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        return (centred @ centred.transpose(1, 2)).flatten(1)
    if statistic == "high-pass":  # what is left after a 5x5 blur: fine texture, not layout or flat colour
        detail = (features - torch.nn.functional.avg_pool2d(features, 5, 1, 2, count_include_pad=False)).flatten(2)
        return torch.cat([detail.abs().mean(-1), detail.std(-1)], dim=1)
    return torch.cat([flat.mean(-1), flat.std(-1)], dim=1)


def texture_statistics(features: torch.Tensor, statistic: str) -> torch.Tensor:
    """One depth's statistic of a set of pictures, averaged over them."""
    return per_picture(features, statistic).mean(0)


def nearest_distance(candidates: torch.Tensor, references: torch.Tensor) -> float:
    """The mean over candidates of the distance to the nearest reference picture, relative to the references'
    size: a style set may hold several looks, and a candidate need only match one."""
    return float(torch.cdist(candidates, references).min(1).values.mean() / references.norm(dim=1).mean().clamp(min=1e-12))


class StyleReference:
    """The training images' per-picture texture statistics, computed once; `score` compares pictures with them,
    each with its nearest training image (a style set may hold several looks, and a picture need only match one).
    Measured on the mini (bench/score_probe.py): as sets, no statistic tells stripes, dots and pastel apart;
    picture by picture, at the encoder's last block, gram and moments do."""

    def __init__(self, vae: torch.nn.Module, references: Sequence[Image.Image], size: int, statistic: str = "gram",
                 depths: Sequence[int] | None = None):
        if statistic not in STATISTICS:
            raise ValueError(f"statistic {statistic!r}: choose one of {', '.join(STATISTICS)}")
        self.vae, self.size, self.statistic = vae, size, statistic
        self.depths = tuple(depths) if depths is not None else (len(vae.encoder.down_blocks) - 1,)
        self.reference = self.statistics(references)

    def statistics(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Each picture's statistic at each of the reference's depths (pictures x values per depth): what `shift`
        and `gain` take for the base's own pictures, computed once a run."""
        features = encoder_features(self.vae, pixels_of(images, self.size))
        return [per_picture(features[depth], self.statistic) for depth in self.depths]

    def distance(self, images: Sequence[Image.Image]) -> float:
        """The mean over depths of each picture's distance to its nearest training image, relative to the training
        images' size."""
        ours = self.statistics(images)
        return sum(nearest_distance(a, b) for a, b in zip(ours, self.reference)) / len(ours)

    def shift(self, images: Sequence[Image.Image], base: Sequence[torch.Tensor]) -> float:
        """How far pictures painted with an adapter moved from the base's own pictures (the same prompts and seeds,
        adapter off; `base` is their `statistics`, in the same order) toward the training images, as a share of the
        way: each picture's change, projected on the line from the base pictures' mean statistics to the training
        images', averaged over pictures and depths. 0 for no change, 1 for the whole way. Pairing each picture with
        the base's removes what the prompt and the seed put in it, which a plain distance keeps."""
        shares = []
        for adapted, bare, reference in zip(self.statistics(images), base, self.reference):
            direction = reference.mean(0) - bare.mean(0)
            shares.append(float(((adapted - bare) @ direction).mean() / direction.dot(direction).clamp(min=1e-12)))
        return sum(shares) / len(shares)

    def gain(self, images: Sequence[Image.Image], base: Sequence[torch.Tensor]) -> float:
        """The share by which each picture's distance to its nearest training image shrank against the base's own
        picture for the same prompt and seed (`base`: their `statistics`), averaged over pictures and depths: 0 for
        no change, 1 for a match."""
        gains = []
        for adapted, bare, reference in zip(self.statistics(images), base, self.reference):
            near, far = torch.cdist(adapted, reference).min(1).values, torch.cdist(bare, reference).min(1).values
            gains.append(float(((far - near) / far.clamp(min=1e-12)).mean()))
        return sum(gains) / len(gains)

    def score(self, images: Sequence[Image.Image]) -> float:
        """exp(-distance): 1 for the training images' own style, toward 0 away from it."""
        return math.exp(-self.distance(images))
