"""The training inputs stage: the latent and text caches, the validation set and the preservation prompts,
prepared once before the first step so that a step costs UNet passes only."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from accelerate import Accelerator

from ..data.buckets import BucketPlan, plan_for_run
from ..data.cache import LatentCache, TextCache
from ..data.folder import Example, ImageFolder, Size, placement, read_prompts
from ..errors import TrainingInterrupted
from ..families import Conditioning
from ..model.base import weights_fingerprint
from ..model.loading import release_freed_memory
from .config import TrainConfig
from .regularisation import Regularisation
from .validation import ValidationSet

if TYPE_CHECKING:
    from .stages import Model


@dataclass
class Inputs:
    """Stage output: where a step's latents and text embeddings come from."""

    latent_cache: LatentCache | None
    text_cache: TextCache | None
    encode_text: Callable[[list[str]], Conditioning]
    buckets: BucketPlan
    validation: ValidationSet | None = None
    preserve_prompts: list[str] = field(default_factory=list)
    regularisation: Regularisation | None = None


def prepare_inputs(config: TrainConfig, model: Model, folder: ImageFolder, held_out: list[Example],
                   accelerator: Accelerator, should_stop: Callable[[], bool] | None, say: Callable[[str], None],
                   reg_examples: Sequence[Example] = ()) -> Inputs:
    """Stage: the caches, the validation set, the preservation prompts and the regularisation images. Latents
    once per image variant (training and regularisation images);
    text embeddings while the text encoder is frozen and captions are fixed (dropout only ever swaps in the
    empty caption, which caches too). Once all is cached, the VAE and the frozen text encoder are freed
    unless previews need them."""
    pipe = model.pipe
    buckets = plan_for_run(config, folder.examples, model.resolution, model.family.bucket_step)
    buckets.describe(say)
    if accelerator.is_main_process:
        buckets.write_report(config.out_dir)
    regularisation = (Regularisation(list(reg_examples), plan_for_run(config, list(reg_examples), model.resolution,
                                                                model.family.bucket_step), config.reg_weight)
                      if reg_examples else None)
    latent_cache = cache_latents(config, model, folder.examples, buckets.by_content, accelerator, should_stop, say,
                                 regularisation)
    validation = validation_set(config, model, held_out, latent_cache) if held_out else None
    if latent_cache is not None and not config.paints_while_training:  # only previews need the VAE again
        latent_cache.vae = pipe.vae = None
    preserve_prompts = read_prompts(config.preserve_prompts, "--preserve-prompts") if config.preserve_prompts else []

    def encode_text(captions: list[str]) -> Conditioning:
        return model.family.encode(pipe, captions, accelerator.device)

    text_cache = TextCache() if not (config.train_text_encoder or config.shuffle_tags) else None
    if text_cache is not None:
        captions = ({e.caption for e in [*folder.examples, *held_out, *reg_examples]} | set(preserve_prompts)
                    | ({""} if config.caption_dropout else set()))
        with torch.no_grad():
            for caption in sorted(captions):
                text_cache.get(caption, encode_text)
        if not config.paints_while_training:  # every caption a step can draw is encoded: the encoders are done
            for part in [encoder.part for encoder in model.family.text_encoders] + list(model.family.frozen_encoders):
                setattr(pipe, part, None)  # T5 too, on the DiT bases: peak memory is then the denoiser's
    release_freed_memory()  # what the VAE and text encoder held, and their activations
    return Inputs(latent_cache, text_cache, encode_text, buckets, validation, preserve_prompts, regularisation)


def cache_latents(config: TrainConfig, model: Model, examples: list[Example], targets: dict[str, Size],
                  accelerator: Accelerator, should_stop: Callable[[], bool] | None, say: Callable[[str], None],
                  regularisation: Regularisation | None = None) -> LatentCache | None:
    """Every training (and regularisation) image's latents at its bucket (`targets`, by content), both flips with
    --flip, from disk or encoded; None with --random-crop or --no-cache-latents, where each step encodes its own."""
    if not config.cache_latents or config.random_crop:
        if config.random_crop:
            say("Random crops make every step's image different, so latents are encoded each step (no cache).")
        return None
    if regularisation is not None:
        examples, targets = examples + regularisation.examples, targets | regularisation.buckets.by_content
    latent_cache = latent_encoder(model, config.out_dir / "cache" / "latents" if accelerator.is_main_process else None,
                                  targets)
    for example in examples:
        if should_stop is not None and should_stop():  # encoding many images takes minutes: stop here too
            raise TrainingInterrupted("stopped on request while caching latents, before the first step; "
                                      "the latents cached so far are kept for the next run")
        for flip in ((False, True) if config.flip else (False,)):
            latent_cache.latents(example, flip)
    say(f"Latent cache: {latent_cache.hits} read from disk, {latent_cache.misses} encoded.")
    return latent_cache


def validation_set(config: TrainConfig, model: Model, held_out: list[Example],
                   latent_cache: LatentCache | None) -> ValidationSet:
    """The held-out images' centre squares at the training resolution (cached beside the training latents when
    they are), with fixed noise: one shape, so they validate in fixed batches whatever the buckets."""
    encoder = latent_encoder(model, latent_cache.folder if latent_cache is not None else None)
    latents = [(encoder.latents(example, False) - model.latent_shift) * model.latent_scale for example in held_out]
    square = (model.resolution, model.resolution)
    return ValidationSet.build(latents, [e.caption for e in held_out], [e.sha256 for e in held_out], config.seed,
                               model.pipe.scheduler.config.num_train_timesteps,
                               [placement(e.size, square)[2] for e in held_out])


def latent_encoder(model: Model, folder: Path | None = None, targets: dict[str, Size] | None = None) -> LatentCache:
    """The base's VAE at each image's bucket (`targets`, by content hash; else the square of the training
    resolution), as a latent cache (on disk in `folder`, if given)."""
    return LatentCache(model.pipe.vae, weights_fingerprint(model.pipe.vae), model.resolution, folder, targets)
