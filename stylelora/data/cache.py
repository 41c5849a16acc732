"""Caches that make a LoRA step cost one UNet pass: VAE latents per image variant, and text embeddings.

Training uses the VAE posterior's mean. Stable Diffusion's VAE has a tiny posterior spread, so
the mean and a sample differ little there, and the miniature base was pretrained on the mean:
its small VAE's spread (about a fifth of the latents' scale) would only add noise to the style.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Callable

import safetensors.torch
import torch

from ..families import Conditioning
from ..files import write_atomically
from .folder import Example, Size, load_rgb, preprocess


class LatentCache:
    """Unscaled latents per (image, bucket, flip), in memory and, if `folder` is set, on disk. `targets` gives
    each image's bucket (width, height) by content hash; an image it does not name trains as a square of
    `resolution` (the validation images)."""

    def __init__(self, vae: torch.nn.Module, vae_id: str, resolution: int, folder: Path | None = None,
                 targets: dict[str, Size] | None = None):
        self.vae, self.vae_id, self.resolution, self.folder = vae, vae_id, resolution, folder
        self.targets = targets or {}
        self.memory: dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0

    def target(self, example: Example) -> Size:
        return self.targets.get(example.sha256, (self.resolution, self.resolution))

    def key(self, example: Example, flip: bool) -> str:
        width, height = self.target(example)
        recipe = f"{example.sha256}|{width}x{height}|center|flip={flip}|{self.vae_id}|mean"
        return hashlib.sha256(recipe.encode()).hexdigest()[:32]

    def latents(self, example: Example, flip: bool, write: bool = True) -> torch.Tensor:
        key = self.key(example, flip)
        if key in self.memory:
            return self.memory[key]
        path = self.folder / f"{key}.safetensors" if self.folder else None
        value = self._read(path) if path is not None and path.is_file() else None
        if value is not None:
            self.hits += 1
        else:
            self.misses += 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scan_folder has already reported what is odd about the image
                image = load_rgb(example.path)
            pixels = preprocess(image, self.target(example), random_crop=False, flip=flip)
            value = encode_latents(self.vae, pixels[None])[0]
            if path is not None and write:
                write_atomically(path, safetensors.torch.save({"latents": value.contiguous()}))
        self.memory[key] = value
        return value

    @staticmethod
    def _read(path: Path) -> torch.Tensor | None:
        """A cached latent, or None if the file is damaged (it is then encoded and written again)."""
        try:
            return safetensors.torch.load_file(str(path))["latents"]
        except Exception:  # safetensors has its own error types for every kind of damage
            return None


@torch.no_grad()
def encode_latents(vae: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Unscaled latents (the posterior mean) of a batch of [-1, 1] images, in float32 on the CPU."""
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    return vae.encode(pixels).latent_dist.mode().float().cpu()


class TextCache:
    """The text side's conditioning per caption (the context, and SDXL's pooled embedding with it); only valid
    while the text encoders are frozen."""

    def __init__(self) -> None:
        self.memory: dict[str, Conditioning] = {}

    def get(self, caption: str, encode: Callable[[list[str]], Conditioning]) -> Conditioning:
        if caption not in self.memory:
            self.memory[caption] = encode([caption]).row(0)
        return self.memory[caption]


