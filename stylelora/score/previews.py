"""Scoring an adapter as it trains: a fixed preview set painted with it, then scored for style against the training
images and for its prompts by the base alone (adapter off). The same checkpoint always paints the same previews
(fixed seeds, dropout off), so it always gets the same score, and a resumed run keeps the same step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

from ..methods.attach import adapters_disabled, evaluation_mode
from .clip import ClipScorer
from .image_model import ImageModelScorer
from .plugins import scorer_model
from .prompt import PromptJudge
from .style import StyleReference

PREVIEWS_PER_PROMPT = 2
MOST_REFERENCES = 64  # the training images a preview's style is compared with
MOST_PREVIEW_PROMPTS = 6  # the preview set's distinct prompts: 12 previews a candidate step
MOST_CONTRASTS = 24  # the prompts a preview's own prompt is told apart from (the folder's captions)
PREVIEW_STEPS = 20
# The paired style score's statistic and depth: of the statistics and depths bench/scores.py measured, the one whose
# shift agreed best with the judge (Spearman +0.57 pooled over 24 checkpoints, against -0.17 for the plain score).
PAIRED_STATISTIC = ("high-pass", (0,))


@dataclass(frozen=True)
class PreviewScores:
    """A candidate step's scores, each in [0, 1]: `style`, how close its previews are to the training images'
    style; `prompt`, the mean probability, by the base, that each preview shows its own prompt."""

    style: float
    prompt: float

    @property
    def quality(self) -> float:
        """Style that keeps the prompt: what a person looking at the previews wants, and what selection ranks."""
        return self.style * self.prompt


class PreviewScorer:
    """Paints `prompts` (`per_prompt` each, at fixed seeds) with `pipe` as its adapters stand, and scores the
    pictures. `adapted`: the models carrying the adapter, switched to evaluation (dropout off) for painting and
    switched off for the base's prompt score. `contrasts`: the captions a preview's prompt competes with.
    `scorer`: "base" (the base's own VAE and denoiser), "paired" (the same, with the style read as each preview's
    shift from the base's own picture at its prompt and seed), "clip:PATH" (clip.py: style and prompt) or
    "dinov2:PATH" (image_model.py: the style; the base reads the prompt)."""

    def __init__(self, pipe, family, training_images: Sequence[Image.Image], prompts: Sequence[str],
                 contrasts: Sequence[str], adapted: list[torch.nn.Module], size: int, seed: int, scorer: str = "base",
                 per_prompt: int = PREVIEWS_PER_PROMPT):
        self.pipe, self.adapted, self.size, self.seed, self.per_prompt = pipe, adapted, size, seed, per_prompt
        # Paired previews may be painted from the training captions too: the base's picture at the same prompt
        # and seed takes out what the prompt puts in, so they add pictures, not the folder's content.
        painted = [*prompts, *contrasts] if scorer == "paired" else prompts
        self.prompts = list(dict.fromkeys(painted))[:MOST_PREVIEW_PROMPTS]
        self.candidates = [*self.prompts, *[c for c in dict.fromkeys(contrasts) if c not in self.prompts][:MOST_CONTRASTS]]
        kind, path = scorer_model(scorer) or (scorer, None)
        self.clip = ClipScorer(path) if kind == "clip" else None
        self.embedder = self.clip or (ImageModelScorer(path) if kind == "dinov2" else None)
        if self.embedder is not None:
            self.references = self.embedder.image_embeddings(training_images)
            if self.clip is not None:
                return  # CLIP reads the prompts too
        else:
            self.style = StyleReference(pipe.vae, training_images, size, *PAIRED_STATISTIC) if scorer == "paired" \
                else StyleReference(pipe.vae, training_images, size)
        with adapters_disabled(adapted):  # the prompts' embeddings by the base's own text encoders
            self.judge = PromptJudge(pipe, family, self.candidates)
            # the base's own previews, whose statistics a paired style score is read against (once a run)
            self.base = self.style.statistics(self.paint()[0]) if scorer == "paired" else None

    @torch.no_grad()
    def paint(self) -> tuple[list[Image.Image], list[str]]:
        images, asked = [], []
        with evaluation_mode(self.adapted):
            for index, prompt in enumerate(self.prompts):
                generator = torch.Generator().manual_seed(self.seed * 1000 + index)
                images += self.pipe(prompt, num_inference_steps=PREVIEW_STEPS, num_images_per_prompt=self.per_prompt,
                                    height=self.size, width=self.size, generator=generator).images
                asked += [prompt] * self.per_prompt
        return images, asked

    def score(self, images: list[Image.Image], asked: list[str]) -> PreviewScores:
        """Pictures' scores, each painted for its prompt in `asked`; the prompt is read by the base, adapters off."""
        if self.clip is not None:
            return PreviewScores(self.clip.style(images, self.references),
                                 self.clip.prompt(images, asked, self.candidates))
        with adapters_disabled(self.adapted), evaluation_mode(self.adapted):
            prompt = self.judge.score(images, asked, self.size).probability
        return PreviewScores(self.style_score(images), prompt)

    def style_score(self, images: list[Image.Image]) -> float:
        """The previews' style score in [0, 1], as the scorer reads it (the base's prompt score beside it)."""
        if self.embedder is not None:
            return self.embedder.style(images, self.references)
        if self.base is not None:  # paired: the share of the way from the base's previews to the training images
            return min(max(self.style.shift(images, self.base), 0.0), 1.0)
        return self.style.score(images)

    def __call__(self) -> tuple[PreviewScores, list[tuple[Image.Image, str]]]:
        """The adapter's scores as it stands, and the previews they were read from, each with its prompt."""
        images, asked = self.paint()
        return self.score(images, asked), list(zip(images, asked))
