"""A stronger scorer for a user who has one: a CLIP model saved on this machine (`--scorer clip:PATH`), read by
transformers with local files only, so nothing is ever downloaded. It scores the same two things as the base's own
scorer: the style, each preview's image embedding against its nearest training image's (cosine similarity), and the
prompt, CLIP's own zero-shot probability that the preview shows its prompt rather than another caption."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from .image_model import nearest_similarity, read_local


class ClipScorer:
    """CLIP's image and text towers, loaded once from `path` (a folder `CLIPModel.save_pretrained` wrote, with its
    tokenizer and image processor)."""

    def __init__(self, path: Path):
        from transformers import CLIPModel, CLIPProcessor

        self.model, self.processor = read_local(f"clip:{path}", CLIPModel, CLIPProcessor, "a CLIP model",
                                                "config.json, the weights, the tokenizer and preprocessor_config.json")

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        features = self.model.get_image_features(pixel_values=pixels)
        features = getattr(features, "pooler_output", features)  # transformers 5 may hand back an output object
        return torch.nn.functional.normalize(features, dim=-1)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
        features = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        features = getattr(features, "pooler_output", features)
        return torch.nn.functional.normalize(features, dim=-1)

    def style(self, images: Sequence[Image.Image], references: torch.Tensor) -> float:
        """The mean over previews of the cosine similarity to the nearest reference embedding, clipped to [0, 1]."""
        return nearest_similarity(self.image_embeddings(images), references)

    @torch.no_grad()
    def prompt(self, images: Sequence[Image.Image], prompts: Sequence[str], candidates: Sequence[str]) -> float:
        """The mean probability CLIP gives each preview's own prompt among `candidates` (its logit scale)."""
        logits = self.model.logit_scale.exp() * self.image_embeddings(images) @ self.text_embeddings(candidates).T
        own = torch.tensor([list(candidates).index(p) for p in prompts])
        return float(torch.softmax(logits, dim=1)[torch.arange(len(own)), own].mean())
