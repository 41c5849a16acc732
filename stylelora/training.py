"""Train a LoRA style adapter: the loop reads top to bottom.

Per step: draw latents from the cache, add noise at a uniform timestep, let the UNet
(with LoRA) predict the noise (or velocity), take the MSE, step AdamW. Everything else
here is bookkeeping: data order, checkpoints, samples, metrics.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from diffusers import StableDiffusionPipeline
from diffusers.optimization import get_scheduler

from .adapter import attach_lora, load_into, lora_weights
from .base import architecture_of, load_base, resolve_base, unet_parameter_count, weights_fingerprint
from .cache import LatentCache, TextCache, encode_latents
from .checkpoint import check_compatible, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, validate
from .data import ImageFolder, load_rgb, preprocess, scan_folder, training_caption
from .errors import TrainingError
from .files import save_safetensors
from .formats import to_kohya
from .loss import ddpm_loss, min_snr_weights, noise_target, offset_noise
from .precision import PRECISION_NAMES, choose_precision
from .run_outputs import MetricsLog, adapter_metadata, progress_bar as make_progress_bar, render_samples

DEFAULT_STEPS = 800


@dataclass
class Progress:
    step: int
    total_steps: int
    loss: float
    learning_rate: float
    steps_per_second: float
    seconds_left: float
    samples: list[Path] = field(default_factory=list)


@dataclass
class TrainResult:
    adapter_path: Path
    steps: int
    loss: float
    seconds: float
    is_main: bool = True  # False in the other processes of a multi-process run, which write nothing


class TrainingInterrupted(TrainingError):
    """Training stopped on request (Ctrl-C or the UI's Stop); a checkpoint was saved."""


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "no": torch.float32}


def prepare_model(config: TrainConfig, device: torch.device,
                  say: Callable[[str], None]) -> tuple[StableDiffusionPipeline, str]:
    """Stage: choose the precision (probing the CPU if need be) and load the base straight into it.
    Where the UNet's size cannot be read before loading (a single-file checkpoint), load in float32,
    count, and cast: the one case that holds a float32 copy for a moment."""
    parameters = unet_parameter_count(config.base)
    choice = choose_precision(config.precision, device.type, parameters)
    pipe = load_base(config.base, dtype=DTYPES[choice.name], device=device)
    if parameters is None and config.precision == "auto":
        choice = choose_precision("auto", device.type, sum(p.numel() for p in pipe.unet.parameters()))
        if choice.name != "no":
            pipe.to(dtype=DTYPES[choice.name])
    say(choice.describe())
    return pipe, choice.name


def clip_gradients(accelerator: Accelerator, parameters: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm to `max_norm` and return the norm before clipping.
    Takes a list: the diffusers example once passed a spent generator, so nothing was clipped.
    torch's own foreach clip, after accelerate unscales fp16 gradients: accelerate's clip_grad_norm_
    walks every parameter in Python first, a millisecond a step that weighs on small models."""
    if accelerator.scaler is not None:
        accelerator.unscale_gradients()
    grads = [p for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    # An infinite max_norm only measures: the clip coefficient is clamped to 1.
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm > 0 else math.inf, foreach=True))


def release_freed_memory() -> None:
    """Hand memory that was freed back to the system. glibc keeps freed heap pages for reuse, so after
    encoding a folder the process stays that much bigger while it trains; malloc_trim returns them."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to do
        pass


def sample_order(count: int, seed: int, start: int, length: int) -> list[int]:
    """Indices `start` .. `start+length` of the endless sequence of per-epoch shuffles of `count` examples."""
    order = []
    for k in range(start, start + length):
        epoch, position = divmod(k, count)
        permutation = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        order.append(int(permutation[position]))
    return order


def step_generator(seed: int, step: int, micro: int, process: int) -> torch.Generator:
    key = hashlib.sha256(f"{seed}/{step}/{micro}/{process}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little"))


def total_steps(config: TrainConfig, examples: int, world_size: int) -> int:
    if config.max_steps is not None:
        return config.max_steps
    if config.epochs is not None:
        per_step = config.batch_size * config.grad_accumulation * world_size
        return max(1, math.ceil(config.epochs * examples / per_step))
    return DEFAULT_STEPS


def describe_folder(folder: ImageFolder, log: Callable[[str], None]) -> None:
    log(f"Found {len(folder.examples)} images in {folder.root}, {folder.captions_found} with captions.")
    for path, reason in folder.skipped:
        log(f"  skipped {path}: {reason}")
    for warning in folder.warnings:
        log(f"  warning: {warning}")
    if folder.captions_found == 0:
        log("WARNING: no caption found (.txt / .caption sidecars or metadata.jsonl). Every image trains on "
            f"{folder.examples[0].caption!r}; add captions or pass --caption / --trigger.")


def warn_long_captions(folder: ImageFolder, tokenizer, say: Callable[[str], None]) -> None:
    """CLIP reads a fixed number of tokens and cuts the rest: say so, by file, rather than cut silently."""
    limit = tokenizer.model_max_length
    for example in folder.examples:
        # Counting a prefix is enough to know it is too long, and stays fast on a megabyte of text.
        if len(tokenizer(example.caption[: 40 * limit]).input_ids) > limit:
            say(f"  warning: {example.caption_file}: the caption is longer than {limit} tokens, the text encoder's limit; "
                "the rest is cut")


A1111_SD2_TEXT_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


def warn_partial_sd2_text_encoder(config: TrainConfig, architecture: str, say: Callable[[str], None]) -> None:
    """AUTOMATIC1111 folds an SD2 (OpenCLIP) text-encoder LoRA into a layer only when all four attention
    projections are adapted, and silently skips the layer otherwise; ComfyUI and diffusers apply any subset."""
    missing = [name for name in A1111_SD2_TEXT_ATTENTION if name not in config.text_encoder_targets]
    if architecture == "sd2" and config.train_text_encoder and missing:
        say(f"  warning: --text-encoder-targets lacks {','.join(missing)}: AUTOMATIC1111 ignores an SD2 text-encoder "
            f"LoRA unless {','.join(A1111_SD2_TEXT_ATTENTION)} are all adapted (ComfyUI and diffusers apply it); "
            "add them to load everywhere")


def train(config: TrainConfig, on_progress: Callable[[Progress], None] | None = None,
          should_stop: Callable[[], bool] | None = None, log: Callable[[str], None] = print,
          progress_bar: bool = True) -> TrainResult:
    """Train one adapter as `config` says; return where it was written. Raises StyleloraError, never exits."""
    validate(config)
    resolve_base(config.base)  # a wrong --base fails now, not after the images are read
    started = time.time()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    say = log if main else (lambda message: None)

    folder = scan_folder(config.data, config.caption, config.trigger)
    describe_folder(folder, say)
    pipe, precision = prepare_model(config, accelerator.device, say)
    weight_dtype = DTYPES[precision]
    warn_long_captions(folder, pipe.tokenizer, say)
    unet, vae, text_encoder, scheduler = pipe.unet, pipe.vae, pipe.text_encoder, pipe.scheduler
    for model in (unet, vae, text_encoder):
        model.requires_grad_(False)
    native = unet.config.sample_size * pipe.vae_scale_factor
    latent_scale = vae.config.scaling_factor
    resolution = config.resolution or native
    warn_partial_sd2_text_encoder(config, architecture_of(unet), say)
    for example in folder.examples:
        if min(example.size) < resolution:
            say(f"  warning: {example.path} is {example.size[0]}x{example.size[1]}, smaller than {resolution}; upscaling it")

    torch.manual_seed(config.seed)  # LoRA's A matrices start random: the same seed, the same start
    attach_lora(unet, config.target_modules, config.rank, config.effective_alpha, config.dropout)
    lora_params = [p for p in unet.parameters() if p.requires_grad]
    groups = [{"params": lora_params, "lr": config.effective_learning_rate}]
    if config.train_text_encoder:
        attach_lora(text_encoder, config.text_encoder_targets, config.rank, config.effective_alpha,
                    config.dropout, flag="--text-encoder-targets")
        groups.append({"params": [p for p in text_encoder.parameters() if p.requires_grad], "lr": config.text_encoder_lr})
    for group in groups:
        for p in group["params"]:
            p.data = p.data.float()  # LoRA weights train in float32 even over a low-precision base
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    # The fused kernel (CPU and CUDA) updates every LoRA tensor in one call: about a millisecond a step less.
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay, fused=True)
    steps = total_steps(config, len(folder.examples), accelerator.num_processes)
    lr_schedule = get_scheduler(config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps,
                                num_training_steps=steps)

    out_dir = config.out_dir
    start_step = 0
    if config.resume:
        start_step = _resume(config, out_dir, unet, text_encoder, optimizer, lr_schedule, resolution, say)
    elif (earlier := latest_checkpoint(out_dir)) is not None:
        raise TrainingError(f"{earlier}: this output folder holds a checkpoint of an earlier run; add --resume to "
                            "continue it, or choose another --out (or delete that checkpoints folder) to start afresh")

    # Caches: latents once per image variant; text embeddings while the text encoder is frozen
    # and captions are fixed (dropout only ever swaps in the empty caption, which caches too).
    latent_cache = None
    if config.cache_latents and not config.random_crop:
        cache_dir = out_dir / "cache" / "latents" if main else None
        latent_cache = LatentCache(vae, weights_fingerprint(vae), resolution, cache_dir)
        for example in folder.examples:
            if should_stop is not None and should_stop():  # encoding many images takes minutes: stop here too
                raise TrainingInterrupted("stopped on request while caching latents, before the first step; "
                                          "the latents cached so far are kept for the next run")
            for flip in ((False, True) if config.flip else (False,)):
                latent_cache.latents(example, flip)
        say(f"Latent cache: {latent_cache.hits} read from disk, {latent_cache.misses} encoded.")
        if not config.sample_every:  # every latent is in memory now; only previews would need the VAE again
            latent_cache.vae = pipe.vae = vae = None
    elif config.random_crop:
        say("Random crops make every step's image different, so latents are encoded each step (no cache).")
    text_cache = TextCache() if not (config.train_text_encoder or config.shuffle_tags) else None

    def encode_text(captions: list[str]) -> torch.Tensor:
        ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(accelerator.device)
        return text_encoder(ids)[0]

    if text_cache is not None:
        with torch.no_grad():
            for caption in sorted({e.caption for e in folder.examples} | ({""} if config.caption_dropout else set())):
                text_cache.get(caption, encode_text)
        if not config.sample_every:  # every caption a step can draw is encoded: the frozen encoder is done
            pipe.text_encoder = text_encoder = None
    release_freed_memory()  # what the VAE and text encoder held, and their activations

    trained = [unet, text_encoder] if config.train_text_encoder else [unet]
    prepared = accelerator.prepare(*trained, optimizer, lr_schedule)
    unet_run = prepared[0]
    text_run = prepared[1] if config.train_text_encoder else text_encoder
    optimizer, lr_schedule = prepared[-2], prepared[-1]
    trainable = [p for group in groups for p in group["params"]]
    prediction_type = scheduler.config.prediction_type
    alphas_cumprod = scheduler.alphas_cumprod
    base_id = weights_fingerprint(unet)

    def batch_loss(step: int, micro: int) -> torch.Tensor:
        generator = step_generator(config.seed, step, micro, accelerator.process_index)
        caption_rng = random.Random(generator.initial_seed())
        first = ((step * config.grad_accumulation + micro) * accelerator.num_processes + accelerator.process_index) * config.batch_size
        examples = [folder.examples[i] for i in sample_order(len(folder.examples), config.seed, first, config.batch_size)]
        flips = [config.flip and caption_rng.random() < 0.5 for _ in examples]
        if latent_cache is not None:
            latents = torch.stack([latent_cache.latents(e, f) for e, f in zip(examples, flips)])
        else:
            pixels = torch.stack([preprocess(load_rgb(e.path), resolution, config.random_crop, f, caption_rng)
                                  for e, f in zip(examples, flips)])
            latents = encode_latents(vae, pixels)
        latents = (latents * latent_scale).to(accelerator.device, weight_dtype)
        captions = [training_caption(e.caption, config.trigger, config.caption_dropout, config.shuffle_tags,
                                     config.keep_tags, caption_rng) for e in examples]
        if text_cache is not None:
            with torch.no_grad():
                embeddings = torch.stack([text_cache.get(c, encode_text) for c in captions])
        else:
            embeddings = encode_text(captions)

        noise = offset_noise(torch.randn(latents.shape, generator=generator), config.noise_offset, generator)
        noise = noise.to(accelerator.device, weight_dtype)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(examples),), generator=generator)
        timesteps = timesteps.to(accelerator.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        # bf16 autocast also runs the float32 LoRA matmuls in bf16; fp16 keeps its float32 LoRA path.
        with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            prediction = unet_run(noisy, timesteps, embeddings.to(weight_dtype)).sample
        target = noise_target(prediction_type, latents, noise, timesteps, alphas_cumprod)
        weights = (min_snr_weights(timesteps, alphas_cumprod, config.min_snr_gamma, prediction_type)
                   if config.min_snr_gamma > 0 else None)
        return ddpm_loss(prediction, target, weights)

    def adapter_tensors() -> dict[str, torch.Tensor]:
        weights = lora_weights(accelerator.unwrap_model(unet_run), "unet", config.effective_alpha)
        if config.train_text_encoder:
            weights |= lora_weights(accelerator.unwrap_model(text_run), "text_encoder", config.effective_alpha)
        return to_kohya(weights)

    def metadata(step: int) -> dict[str, str]:
        return adapter_metadata(config, folder, resolution, step, base_id, architecture_of(unet), prediction_type)

    def checkpoint(step: int) -> Path | None:
        if not main:
            return None
        return save_checkpoint(out_dir, step, adapter_tensors(), metadata(step), optimizer.state_dict(),
                               lr_schedule.state_dict(), config.to_json_dict() | {"resolution": resolution})

    metrics: MetricsLog | None = None
    bar = make_progress_bar(steps, start_step, progress_bar and main)
    loss_value, completed, tick = float("nan"), start_step, time.time()
    say(f"Training {len(lora_params)} LoRA tensors (rank {config.rank}, alpha {config.effective_alpha:g}) "
        f"for {steps} steps at {resolution}px, batch {config.batch_size} x {accelerator.num_processes} "
        f"process(es), in {PRECISION_NAMES[precision]}.")
    try:
        metrics = MetricsLog(out_dir, start_step) if main else None
        for step in range(start_step, steps):
            if should_stop is not None and should_stop():
                raise TrainingInterrupted("stopped on request")
            # The step's randomness (including LoRA dropout) depends only on (seed, step): exact resume.
            torch.manual_seed(config.seed * 1_000_003 + step)
            total = 0.0
            for micro in range(config.grad_accumulation):
                last = micro == config.grad_accumulation - 1
                with nullcontext() if last else accelerator.no_sync(unet_run):
                    loss = batch_loss(step, micro)
                    if not torch.isfinite(loss):
                        raise TrainingError(f"the loss became {loss.item()} at step {step + 1}; lower "
                                            "--learning-rate or use --precision no")
                    accelerator.backward(loss / config.grad_accumulation)
                    total += loss.item() / config.grad_accumulation
            grad_norm = clip_gradients(accelerator, trainable, config.max_grad_norm)
            if not math.isfinite(grad_norm):
                raise TrainingError(f"the gradients became {grad_norm} at step {step + 1}; lower --learning-rate")
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value, completed = total, step + 1
            rate = (completed - start_step) / max(time.time() - tick, 1e-9)
            samples: list[Path] = []
            # Metrics before the checkpoint: a kill between the two leaves rows that a resume rewrites.
            if metrics is not None and (completed % config.log_every == 0 or completed == steps):
                metrics.write(completed, loss_value, lr_schedule.get_last_lr()[0], rate, grad_norm)
            if main and config.save_every and completed % config.save_every == 0 and completed < steps:
                checkpoint(completed)
            if main and config.sample_every and completed % config.sample_every == 0:
                samples = render_samples(pipe, config.sample_prompts, out_dir / "samples", completed, config.seed)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if on_progress is not None and main:
                on_progress(Progress(completed, steps, loss_value, lr_schedule.get_last_lr()[0], rate,
                                     (steps - completed) / max(rate, 1e-9), samples))
        accelerator.wait_for_everyone()
        if main:
            save_safetensors(config.adapter_path, adapter_tensors(), metadata(steps))
    except (KeyboardInterrupt, TrainingInterrupted):
        bar.close()
        # Saved as of the last finished optimizer step, so a resume replays nothing twice.
        saved = checkpoint(completed) if completed > start_step else latest_checkpoint(out_dir)
        raise TrainingInterrupted(f"training stopped at step {completed} of {steps}; checkpoint {saved}; "
                                  "run the same command with --resume to continue") from None
    except OSError as error:  # a full disk or a vanished folder, in a checkpoint or the adapter: say what survived
        raise _write_failed(error, out_dir) from None
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    return TrainResult(config.adapter_path, steps, loss_value, time.time() - started, is_main=main)


def _write_failed(error: OSError, out_dir: Path) -> TrainingError:
    last = latest_checkpoint(out_dir)
    kept = (f"the last good checkpoint, {last}, is intact: free some space and run again with --resume" if last
            else "no checkpoint was written yet; use --save-every to keep resumable checkpoints")
    return TrainingError(f"{error.filename or out_dir}: cannot write ({error.strerror or error}); {kept}")


def _resume(config: TrainConfig, out_dir: Path, unet, text_encoder, optimizer, lr_schedule, resolution: int,
            say: Callable[[str], None]) -> int:
    path = latest_checkpoint(out_dir)
    if path is None:
        say(f"No checkpoint in {out_dir / 'checkpoints'}; starting from step 0.")
        return 0
    adapter, state = load_checkpoint(path)
    check_compatible(state["config"], config.to_json_dict() | {"resolution": resolution}, path)
    load_into(unet, adapter.tensors, "unet", path)
    if config.train_text_encoder:
        load_into(text_encoder, adapter.tensors, "text_encoder", path)
    optimizer.load_state_dict(state["optimizer"])
    lr_schedule.load_state_dict(state["scheduler"])
    say(f"Resuming from {path} (step {state['step']}).")
    return int(state["step"])
