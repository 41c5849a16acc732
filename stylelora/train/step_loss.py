"""One micro-batch's loss, the heart of a training step: which examples it draws, the noise and
timesteps it adds, the UNet's prediction and the denoising objective, plus the base-output preservation
term when asked. Its randomness depends only on (seed, step, micro-batch, process), which is what makes
resume exact. The validation loss is the same objective on fixed inputs (validation.ValidationSet)."""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import torch
from accelerate import Accelerator

from ..data.cache import encode_latents
from ..data.folder import Example, ImageFolder, Size, load_rgb, placement, preprocess_placed, training_caption
from ..data.masks import LossMasks
from ..families import Conditioning, Placement
from ..methods.attach import adapters_disabled, evaluation_mode
from .config import TrainConfig
from .loss import HUBER_C, HUBER_SCHEDULES, ddpm_loss, huber_thresholds, offset_noise
from .objective import Noised, Sampling, objective_for
from .validation import ValidationSet

if TYPE_CHECKING:
    from .inputs import Inputs
    from .stages import Model

VALIDATION_BATCH = 8


def step_generator(seed: int, step: int, micro: int, process: int) -> torch.Generator:
    key = hashlib.sha256(f"{seed}/{step}/{micro}/{process}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little"))


def predict(unet: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning,
            placements: Sequence[Placement], model: Model) -> torch.Tensor:
    """The UNet's prediction, with what the family conditions it on (SDXL: pooled text and time ids).
    bf16 autocast also runs the float32 LoRA matmuls in bf16; fp16 keeps its float32 LoRA path."""
    inputs = model.family.denoiser_inputs(conditioning, placements, model.weight_dtype)
    with torch.autocast(noisy.device.type, dtype=torch.bfloat16, enabled=model.precision == "bf16"):
        return model.family.predict(unet, noisy, timesteps, inputs)


class Terms(NamedTuple):
    """A micro-batch's loss terms: the style (denoising) loss that is reported, and what trains (the style
    loss plus the weighted preservation loss, when on)."""

    style: torch.Tensor
    objective: torch.Tensor


class StepLoss:
    """The loss of one micro-batch: draw examples, noise them at timesteps the objective draws (objective.py),
    predict, take the loss (squared error, or --loss huber or smooth-l1).
    Its randomness depends only on (seed, step, micro, process), so a resumed run draws what it would have.
    `adapted` are the (unwrapped) models that carry adapters: switched off for the preservation target,
    and put in eval mode to validate."""

    def __init__(self, config: TrainConfig, folder: ImageFolder, model: Model, inputs: Inputs,
                 unet: torch.nn.Module, accelerator: Accelerator, adapted: list[torch.nn.Module]):
        self.config, self.folder, self.model, self.inputs = config, folder, model, inputs
        self.unet, self.accelerator, self.adapted = unet, accelerator, adapted
        sampling = Sampling.given(config.effective_timestep_sampling, logit_mean=config.logit_mean,
                                  logit_std=config.logit_std, mode_scale=config.mode_scale)
        self.objective = objective_for(model.pipe.scheduler, model.prediction_type, sampling, config.min_snr_gamma)
        self.masks = LossMasks(config.masks, config.mask_from_alpha) if config.masked else None

    def __call__(self, step: int, micro: int) -> Terms:
        config, accelerator = self.config, self.accelerator
        generator = step_generator(config.seed, step, micro, accelerator.process_index)
        rng = random.Random(generator.initial_seed())
        batch = (step * config.grad_accumulation + micro) * accelerator.num_processes + accelerator.process_index
        order = self.inputs.buckets.batch(batch, config.batch_size, config.seed)
        examples = [self.folder.examples[i] for i in order]
        flips = [config.flip and rng.random() < 0.5 for _ in examples]
        latents, placements = self.latents(examples, flips, rng)
        captions = [training_caption(e.caption, config.trigger, config.caption_dropout, config.shuffle_tags,
                                     config.keep_tags, rng) for e in examples]
        masks = None if self.masks is None else self.masks.batch(
            examples, [self.inputs.buckets.target(e) for e in examples], flips, tuple(latents.shape[-2:]))
        style, noised, prediction = self.denoising_loss(latents, captions, placements, generator, masks)
        objective = style
        if masks is not None and config.mask_prior > 0:
            objective = objective + config.mask_prior * self.mask_prior_loss(prediction, noised, captions, placements,
                                                                             masks)
        if (regularisation := self.inputs.regularisation) is not None:  # drawn after the style batch's randomness
            reg_examples = regularisation.batch(batch, config.batch_size, config.seed)
            reg_flips = [config.flip and rng.random() < 0.5 for _ in reg_examples]
            reg_latents, reg_placements = self.latents(reg_examples, reg_flips, rng, regularisation.buckets.target)
            reg_loss, _, _ = self.denoising_loss(reg_latents, [e.caption for e in reg_examples], reg_placements, generator)
            objective = objective + regularisation.weight * reg_loss
        if not self.inputs.preserve_prompts:
            return Terms(style, objective)
        preservation = self.preservation_loss(noised.noisy, noised.timesteps,
                                              [rng.choice(self.inputs.preserve_prompts) for _ in examples], placements)
        return Terms(style, objective + config.preserve_weight * preservation)

    def denoising_loss(self, latents: torch.Tensor, captions: list[str], placements: Sequence[Placement],
                       generator: torch.Generator, masks: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, Noised, torch.Tensor]:
        """The objective's loss on a batch of latents (noise drawn from `generator`, at timesteps it draws), the
        noised batch and the denoiser's prediction."""
        config, model = self.config, self.model
        noise = offset_noise(torch.randn(latents.shape, generator=generator), config.noise_offset, generator)
        noise = noise.to(self.accelerator.device, model.weight_dtype)
        noised = self.objective.noised(latents, noise, self.objective.draw(len(captions), generator, latents.shape[-2:]))
        prediction = predict(self.unet, noised.noisy, noised.timesteps, self.text(captions), placements, model)
        masks = None if masks is None else masks.to(latents.device)
        loss = ddpm_loss(prediction, noised.target, noised.weights, config.loss, self.thresholds(noised), masks)
        return loss, noised, prediction

    def mask_prior_loss(self, prediction: torch.Tensor, noised: Noised, captions: list[str],
                        placements: Sequence[Placement], masks: torch.Tensor) -> torch.Tensor:
        """--mask-prior (ai-toolkit's inverted_mask_prior): outside the loss masks, the target is the frozen base's
        own prediction for the same noisy latents and captions, so the adapter is held to what the base paints
        there instead of drifting unconstrained. The inverted masks are scaled to a mean of 1, as ai-toolkit
        scales them, so the weight means the same whatever share of the images the masks leave out."""
        outside = 1 - masks.to(prediction.device).float()
        outside = outside / outside.mean().clamp(min=1e-6)
        return ddpm_loss(prediction, self.base_prediction(noised.noisy, noised.timesteps, captions, placements),
                         masks=outside)

    def thresholds(self, noised: Noised) -> torch.Tensor | None:
        """Each sample's Huber threshold under --loss huber or smooth-l1 (None for l2)."""
        if self.config.loss == "l2":
            return None
        c = HUBER_C if self.config.huber_c is None else self.config.huber_c
        return huber_thresholds(self.config.huber_schedule or HUBER_SCHEDULES[0], c, noised.timesteps,
                                self.objective.steps, self.objective.noise_to_signal(noised.timesteps))

    def preservation_loss(self, noisy: torch.Tensor, timesteps: torch.Tensor, prompts: list[str],
                          placements: Sequence[Placement] = ()) -> torch.Tensor:
        """Base-output preservation (ai-toolkit's differential output preservation, OneTrainer's prior
        prediction): on prompts outside the style, the target is the frozen base's own prediction for the
        same noisy latents, computed with every adapter switched off."""
        return ddpm_loss(predict(self.unet, noisy, timesteps, self.text(prompts), placements, self.model),
                         self.base_prediction(noisy, timesteps, prompts, placements))

    @torch.no_grad()
    def base_prediction(self, noisy: torch.Tensor, timesteps: torch.Tensor, prompts: list[str],
                        placements: Sequence[Placement] = ()) -> torch.Tensor:
        with adapters_disabled(self.adapted):
            return predict(self.unet, noisy, timesteps, self.text(prompts), placements, self.model)

    @torch.no_grad()
    def validation_loss(self, validation: ValidationSet) -> float:
        """The plain denoising MSE over the fixed validation pairs, in fixed batches, dropout off."""
        device, model, total = self.accelerator.device, self.model, 0.0
        with evaluation_mode(self.adapted):
            for start in range(0, len(validation), VALIDATION_BATCH):
                rows = slice(start, start + VALIDATION_BATCH)
                latents = validation.latents[rows].to(device, model.weight_dtype)
                noise = validation.noise[rows].to(device, model.weight_dtype)
                noised = self.objective.noised(latents, noise, validation.timesteps[rows])
                prediction = predict(self.unet, noised.noisy, noised.timesteps, self.text(validation.captions[rows]),
                                     validation.placements[rows], model)
                total += ddpm_loss(prediction, noised.target).item() * len(noised.timesteps)
        return total / len(validation)

    def latents(self, examples: list[Example], flips: list[bool], rng: random.Random,
                target: Callable[[Example], Size] | None = None) -> tuple[torch.Tensor, list[Placement]]:
        """The batch's scaled latents (one bucket's shape) and where each image sits in that bucket (`target`:
        the plan the examples are bucketed by, the training images' unless given)."""
        cache, target = self.inputs.latent_cache, target or self.inputs.buckets.target
        if cache is not None:
            latents = torch.stack([cache.latents(e, f) for e, f in zip(examples, flips)])
            placements = [placement(e.size, target(e), flip=f)[2] for e, f in zip(examples, flips)]
        else:
            placed = [preprocess_placed(load_rgb(e.path), target(e), self.config.random_crop, f, rng)
                      for e, f in zip(examples, flips)]
            latents = encode_latents(self.model.pipe.vae, torch.stack([pixels for pixels, _ in placed]))
            placements = [where for _, where in placed]
        latents = (latents - self.model.latent_shift) * self.model.latent_scale
        return latents.to(self.accelerator.device, self.model.weight_dtype), placements

    def text(self, captions: list[str]) -> Conditioning:
        if self.inputs.text_cache is None:
            return self.inputs.encode_text(captions)
        with torch.no_grad():
            return Conditioning.stack([self.inputs.text_cache.get(c, self.inputs.encode_text) for c in captions])

