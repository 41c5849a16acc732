"""The training stages that load the frozen base: the encoders and VAE first (prepare_model), then, once the
caches are made and those freed, the denoiser (prepare_denoiser); prepare_base runs them with the caches between."""

from __future__ import annotations

import time
from typing import Callable

import torch
from accelerate import Accelerator

from ..data.folder import Example, ImageFolder, warn_long_captions
from ..families import Family, family_of_pipe
from ..methods import layout_checks
from ..model.allocator import mapped_allocations
from ..model.base import (base_fingerprint, denoiser_parameter_count, is_unread, load_base, load_denoiser,
                          quantize_pipe)
from ..model.loading import fix_mmap_threshold
from ..model.precision import choose_precision
from ..model.quantize import check_quantize, quantization_of, quantized_share
from ..options import refuse_first
from .checkpoint import refuse_unresumable
from .config import TrainConfig
from .inputs import Inputs, prepare_inputs
from .stages import DTYPES, Model


A1111_SD2_TEXT_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


def warn_partial_openclip_text_encoder(config: TrainConfig, family: Family, say: Callable[[str], None]) -> None:
    """AUTOMATIC1111 folds an OpenCLIP (SD2, SDXL's second) text-encoder LoRA into a layer only when all four
    attention projections are adapted, and silently skips the layer otherwise; ComfyUI and diffusers apply any subset."""
    missing = [name for name in A1111_SD2_TEXT_ATTENTION if name not in config.text_encoder_targets]
    if family.openclip_in_a1111 and config.train_text_encoder and missing:
        say(f"  warning: --text-encoder-targets lacks {','.join(missing)}: AUTOMATIC1111 ignores an "
            f"{family.openclip_in_a1111} text-encoder "
            f"LoRA unless {','.join(A1111_SD2_TEXT_ATTENTION)} are all adapted (ComfyUI and diffusers apply it); "
            "add them to load everywhere")


def prepare_model(config: TrainConfig, device: torch.device, folder: ImageFolder, say: Callable[[str], None]) -> Model:
    """Stage: choose the precision (probing the CPU if need be), load the base straight into it, freeze it.
    Where the UNet's size cannot be read before loading (a single-file checkpoint), load in float32,
    count, cast, and only then quantize (--quantize-base): the one case that holds a float32 copy for a moment."""
    if config.quantize_base != "none":
        fix_mmap_threshold()
    parameters = denoiser_parameter_count(config.base)
    choice = choose_precision(config.precision, device.type, parameters)
    check_quantize(config.quantize_base)  # a missing extra fails before minutes of loading
    count_first = parameters is None and config.precision == "auto"
    pipe = load_base(config.base, dtype=DTYPES[choice.name], device=device, denoiser_later=True,
                     quantize="none" if count_first else config.quantize_base, quantize_text=not config.train_text_encoder)
    if count_first:
        denoiser = family_of_pipe(pipe).denoiser_of(pipe)
        choice = choose_precision("auto", device.type, sum(p.numel() for p in denoiser.parameters()))
        if choice.name != "no":
            pipe.to(dtype=DTYPES[choice.name])
        quantize_pipe(pipe, family_of_pipe(pipe), config.quantize_base, DTYPES[choice.name], not config.train_text_encoder)
    say(choice.describe())
    family = family_of_pipe(pipe)
    refuse_first(config, [(config.format != "kohya" or family.file_layout == "kohya", "format",
                           f"{family.label} files have no kohya layout that diffusers reads; leave out --format"),
                          *layout_checks(config, family.plain_layout(config.format), family.label),
                          (family.target_presets is None or (config.conv_rank is None and config.conv_alpha is None),
                           "conv_rank" if config.conv_rank is not None else "conv_alpha",
                           f"{family.label} has no convolutions to adapt; leave out --conv-rank/--conv-alpha"),
                          (not config.block_lr or family.unet_blocks, "block_lr",
                           f"{family.label} has no down/mid/up blocks; leave out --block-lr")])
    tokenizer, limit, reader = family.longest_reader(pipe)
    warn_long_captions(folder, tokenizer, say, limit, reader)
    for module in [pipe.vae, *family.models(pipe).values()]:
        module.requires_grad_(False)
    if choice.name == "fp16" and family.vae_float32_in_fp16 and getattr(pipe.vae.config, "force_upcast", True):
        pipe.vae.to(torch.float32)  # SDXL's VAE overflows to NaN in float16; the fp16-fix VAE says so in its config
    resolution = config.resolution or family.native_size(pipe)
    model = Model(pipe, choice.name, resolution, pipe.vae.config.scaling_factor, family,
                  pipe.scheduler.config.get("prediction_type", "flow"),
                  latent_shift=pipe.vae.config.get("shift_factor") or 0.0)
    warn_partial_openclip_text_encoder(config, family, say)
    return model


def prepare_denoiser(config: TrainConfig, model: Model, device: torch.device, say: Callable[[str], None]) -> None:
    """Stage: read the denoiser, which prepare_model left unread until the caches were made and the encoders and
    VAE freed (SDXL-shaped, NF4, 256 px: the peak fell from 4.81 to 3.65 GiB), and take the base's fingerprint."""
    family, pipe = model.family, model.pipe
    if is_unread(family.denoiser_of(pipe)):
        setattr(pipe, family.denoiser, load_denoiser(config.base, model.weight_dtype, config.quantize_base).to(device))
    family.denoiser_of(pipe).requires_grad_(False)
    model.base_id = base_fingerprint(config.base, family.denoiser_of(pipe))
    if config.quantize_base != "none":
        shares = [quantized_share(module, part).describe() for part, module in family.models(pipe).items()
                  if quantization_of(module) != "none"]
        say(f"Base held in {config.quantize_base}: {'; '.join(shares)}.")


def prepare_base(config: TrainConfig, folder: ImageFolder, held_out: list[Example], regularisation: list[Example],
                 accelerator: Accelerator, should_stop: Callable[[], bool] | None, say: Callable[[str], None],
                 clock: float, startup: float | None) -> tuple[Model, Inputs, dict[str, float]]:
    """The stages model, inputs and denoiser, with the seconds they took. Their weights and caches take mappings of
    their own rather than the heap (allocator.py): read after the caches, the denoiser's weights had filled the holes
    the VAE's activations left, scattered, and a step's activations no longer fit what was left (SDXL-shaped at
    1024 px: 5.3 GiB in use, 8.3 GiB free in the heap and 12.3 GiB resident, against 10.0 GiB read first)."""
    with mapped_allocations():
        model = prepare_model(config, accelerator.device, folder, say)
        refuse_unresumable(config, model.resolution)  # before minutes of caching
        phases = ({"startup": startup} if startup else {}) | {"load": time.perf_counter() - clock}
        clock = time.perf_counter()
        inputs = prepare_inputs(config, model, folder, held_out, accelerator, should_stop, say, regularisation)
        phases["cache"] = time.perf_counter() - clock
        clock = time.perf_counter()
        prepare_denoiser(config, model, accelerator.device, say)
    phases["load"] += time.perf_counter() - clock
    return model, inputs, phases
