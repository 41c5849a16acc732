"""A prompt score from the base alone: whether a picture still shows what its prompt asks, with the base model
(adapter off) as a zero-shot classifier (Li et al. 2023, "Your Diffusion Model is Secretly a Zero-Shot
Classifier"). The picture is noised at a few fixed timesteps with fixed noise; the base predicts under its own
prompt and under each contrasting prompt; the prompt whose prediction errs least is the class. A picture scores
1 when its own prompt wins, and the set's score is the share that do ("accuracy"), or the mean probability of the
own prompt under a softmax of the negative errors ("probability"), which ranks finer. Deterministic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

from ..data.cache import encode_latents
from ..data.folder import placement
from ..families.family import Conditioning
from ..train.objective import Sampling, objective_for
from .style import pixels_of

TIMESTEP_SHARES = (0.25, 0.5, 0.75)  # where on the schedule the pictures are noised: middle noise tells classes apart
TEMPERATURE = 0.02  # the softmax's scale, in units of the mean squared error


@dataclass
class PromptScores:
    accuracy: float  # the share of pictures whose own prompt errs least
    probability: float  # the mean softmax probability of the own prompt
    pictures: int


class PromptJudge:
    """The base pipeline `pipe` of `family` as a classifier over `candidates` (all the prompts a picture may show)."""

    def __init__(self, pipe, family, candidates: Sequence[str], seed: int = 0):
        self.pipe, self.family, self.candidates = pipe, family, list(dict.fromkeys(candidates))
        self.objective = objective_for(pipe.scheduler, pipe.scheduler.config.get("prediction_type", "flow"),
                                       Sampling("uniform"))
        self.seed = seed
        self.denoiser = family.denoiser_of(pipe)
        with torch.no_grad():
            self.texts = family.encode(pipe, self.candidates, self.denoiser.device)

    @torch.no_grad()
    def errors(self, image: Image.Image, size: int, among: Sequence[str] | None = None) -> torch.Tensor:
        """The mean squared error of the denoiser's prediction under each candidate prompt (candidates' order), or
        under each of `among` (candidates too) in its order."""
        chosen = list(range(len(self.candidates))) if among is None else [self.candidates.index(p) for p in among]
        vae, dtype = self.pipe.vae, self.denoiser.dtype
        latents = encode_latents(vae, pixels_of([image], size))  # as training encodes them, then shifted and scaled
        shift = vae.config.get("shift_factor") or 0.0
        latents = ((latents - shift) * vae.config.scaling_factor).to(vae.device, dtype)
        generator = torch.Generator().manual_seed(self.seed)
        count = len(chosen)
        where = [placement((size, size), (size, size))[2]] * count
        inputs = self.family.denoiser_inputs(Conditioning.stack([self.texts.row(i) for i in chosen]), where, dtype)
        total = torch.zeros(count)
        for share in TIMESTEP_SHARES:
            noise = torch.randn(latents.shape, generator=generator).to(latents.device, dtype)
            steps = torch.full((count,), int(share * self.objective.steps), dtype=torch.long)
            noised = self.objective.noised(latents.expand(count, -1, -1, -1), noise.expand(count, -1, -1, -1), steps)
            prediction = self.family.predict(self.denoiser, noised.noisy, noised.timesteps, inputs)
            total += (prediction.float() - noised.target.float()).pow(2).flatten(1).mean(1).cpu()
        return total / len(TIMESTEP_SHARES)

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str], size: int) -> PromptScores:
        """How often each picture's own prompt (`prompts`, one per picture, each among the candidates) wins."""
        right, probability = 0, 0.0
        for image, prompt in zip(images, prompts):
            errors = self.errors(image, size)
            own = self.candidates.index(prompt)
            right += int(errors.argmin()) == own
            probability += float(torch.softmax(-errors / (TEMPERATURE * errors.mean()), 0)[own])
        return PromptScores(right / len(images), probability / len(images), len(images))
