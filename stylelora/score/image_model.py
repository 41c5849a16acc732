"""A style scorer from an image model saved on this machine (`--scorer dinov2:PATH`): DINOv2, or another vision
backbone that transformers' AutoModel and AutoImageProcessor read, with local files only, so nothing is ever
downloaded. It reads the style only, as each preview's embedding against its nearest training image's (cosine
similarity); the prompt is still read by the base (prompt.py), since such a model has no text tower.
CSD (Somepalli et al. 2024) ships as a CLIP ViT-L with its own projection heads and loading code, which
transformers cannot read: its backbone alone loads as clip:PATH."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from ..errors import ConfigError


def read_local(spec: str, model_class, processor_class, what: str, holding: str) -> tuple:
    """A model and its processor from the folder of `spec` (KIND:PATH), local files only, so nothing is downloaded;
    a folder they cannot read is a one-line ConfigError naming the flag, `what` it is not and what it must hold."""
    path = spec.partition(":")[2]
    try:
        return (model_class.from_pretrained(path, local_files_only=True).eval(),
                processor_class.from_pretrained(path, local_files_only=True))
    except (OSError, ValueError) as error:
        raise ConfigError(f"--scorer {spec}: not {what} folder this machine can read "
                          f"({str(error).splitlines()[0][:120]}); give a folder with {holding}") from None


def nearest_similarity(embeddings: torch.Tensor, references: torch.Tensor) -> float:
    """The mean over pictures of the cosine similarity (unit embeddings) to the nearest reference, clipped to [0, 1]."""
    return float((embeddings @ references.T).max(dim=1).values.clamp(0, 1).mean())


class ImageModelScorer:
    """An image model and its processor, loaded once from `path` (a folder `save_pretrained` wrote for both)."""

    def __init__(self, path: Path):
        from transformers import AutoImageProcessor, AutoModel

        self.model, self.processor = read_local(
            f"dinov2:{path}", AutoModel, AutoImageProcessor, "an image model",
            "config.json, the weights and preprocessor_config.json (Dinov2Model and its image processor, save_pretrained)")

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Unit embeddings: the model's pooled output (DINOv2's normed class token), else its first token's."""
        output = self.model(pixel_values=self.processor(images=list(images), return_tensors="pt")["pixel_values"])
        pooled = getattr(output, "pooler_output", None)
        return torch.nn.functional.normalize(pooled if pooled is not None else output.last_hidden_state[:, 0], dim=-1)

    def style(self, images: Sequence[Image.Image], references: torch.Tensor) -> float:
        return nearest_similarity(self.image_embeddings(images), references)
