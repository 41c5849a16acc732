"""Training cost: our step against its physical floor and a naive loop, memory, the cache, scaling, options.

Every time is a median over repeats, and every result is a ratio of two things measured side by
side in the same run.
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from stylelora.adapters.in_model import attach_lora
from stylelora.data.cache import LatentCache
from stylelora.data.folder import load_rgb, preprocess, scan_folder
from stylelora.families import Placement, family_of_pipe
from stylelora.model.base import load_base
from stylelora.train.config import UNET_TARGETS, TrainConfig
from stylelora.train.loop import train
from stylelora.train.loss import ddpm_loss
from stylelora.train.objective import Sampling, objective_for

from models import Base

STRIPES = Path(__file__).resolve().parent.parent / "datasets" / "stripes"


def timed(step: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median seconds of `step()` over `repeats` runs, after `warmup` unmeasured runs."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs(pipe, batch: int, resolution: int, requires_grad: bool = False):
    """Random latents with the VAE's channels, timesteps the base's objective draws, and the denoiser's
    conditioning for a caption, as the base's family builds it (SDXL: both encoders' context, the pooled
    embedding and square-image time ids; SD3 and Flux: CLIP and T5)."""
    side = resolution // pipe.vae_scale_factor
    latents = torch.randn(batch, pipe.vae.config.latent_channels, side, side, requires_grad=requires_grad)
    return latents, _conditioning(pipe, batch, resolution), _objective(pipe).draw(batch, None, (side, side))


def _objective(pipe):
    """The objective stylelora trains this base with: DDPM (epsilon or v) or flow matching."""
    return objective_for(pipe.scheduler, pipe.scheduler.config.get("prediction_type", "epsilon"), Sampling("auto"))


def _targets(pipe) -> tuple[str, ...]:
    """The default --targets of the base's family: the attention projections."""
    presets = family_of_pipe(pipe).target_presets
    return presets["attn"] if presets else UNET_TARGETS


def _conditioning(pipe, batch: int, resolution: int) -> dict:
    family = family_of_pipe(pipe)
    with torch.no_grad():
        text = family.encode(pipe, ["a red circle"] * batch, "cpu")
    square = Placement((resolution, resolution), (0, 0), (resolution, resolution))
    return family.denoiser_inputs(text, [square] * batch, family.denoiser_of(pipe).dtype)


def floor_step(pipe, base: Base) -> Callable[[], None]:
    """One forward and one backward (input gradients only) through the frozen denoiser: a LoRA step's floor."""
    family = family_of_pipe(pipe)
    denoiser = family.denoiser_of(pipe).requires_grad_(False)
    latents, text, t = _inputs(pipe, base.batch, base.resolution, requires_grad=True)

    def step():
        latents.grad = None
        family.predict(denoiser, latents, t, text).float().pow(2).mean().backward()

    return step


def lora_step(pipe, base: Base, rank: int = 4, autocast: bool = False, channels_last: bool = False,
              compiled: bool = False, checkpointing: bool = False) -> Callable[[], None]:
    """A LoRA step on cached inputs (what our loop does per step) with one CPU option switched on."""
    family, objective = family_of_pipe(pipe), _objective(pipe)
    denoiser = family.denoiser_of(pipe)
    attach_lora(denoiser, _targets(pipe), rank, rank, 0.0)
    params = [p for p in denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    if channels_last:
        denoiser.to(memory_format=torch.channels_last)
    if checkpointing:
        denoiser.enable_gradient_checkpointing()
    compiled_denoiser = torch.compile(denoiser) if compiled else denoiser
    latents, text, t = _inputs(pipe, base.batch, base.resolution)
    noise = torch.randn_like(latents)

    def step():
        noised = objective.noised(latents, noise, t)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            prediction = family.predict(compiled_denoiser, noised.noisy, t, text)
        ddpm_loss(prediction.float(), noised.target).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return step


def naive_step(pipe, base: Base, rank: int = 4, autocast: bool = False) -> Callable[[], None]:
    """A loop like the diffusers example scripts' (train_text_to_image_lora.py; _sdxl.py with both text encoders,
    pooled embeddings and time ids; train_dreambooth_lora_sd3.py and _flux.py with CLIP and T5 and per-image
    captions): VAE encode and text encoders every step, nothing cached, every model held."""
    family, objective = family_of_pipe(pipe), _objective(pipe)
    denoiser = family.denoiser_of(pipe)
    attach_lora(denoiser, _targets(pipe), rank, rank, 0.0, adapter_name="naive")
    params = [p for p in denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    images = [e.path for e in scan_folder(STRIPES).examples][: base.batch]
    pixels = torch.stack([preprocess(load_rgb(p), base.resolution, False, False) for p in images])
    vae = pipe.vae.config
    generator = torch.Generator().manual_seed(0)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            with torch.no_grad():
                sample = pipe.vae.encode(pixels).latent_dist.sample()
                latents = (sample - (vae.shift_factor or 0.0)) * vae.scaling_factor
                text = _conditioning(pipe, base.batch, base.resolution)
            t = objective.draw(base.batch, generator, tuple(latents.shape[-2:]))
            noised = objective.noised(latents, torch.randn_like(latents), t)
            prediction = family.predict(denoiser, noised.noisy, t, text)
        ddpm_loss(prediction.float(), noised.target.float()).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return step


def train_on_stripes(base: Base, steps: int, on_progress=None, **options) -> None:
    """stylelora's own train() on the stripes folder at the base's size, into a throw-away folder."""
    with tempfile.TemporaryDirectory() as out:
        train(TrainConfig(data=STRIPES, out=Path(out), base=base.spec, batch_size=base.batch,
                          resolution=base.resolution, max_steps=steps, **options),
              on_progress=on_progress, progress_bar=False, log=lambda m: None)


def our_step_seconds(base: Base, steps: int, **options) -> float:
    """Median time between steps of stylelora's own train(), leaving out the first two."""
    stamps: list[float] = []
    train_on_stripes(base, steps, on_progress=lambda p: stamps.append(time.perf_counter()), **options)
    return statistics.median(b - a for a, b in zip(stamps[2:], stamps[3:]))


def _peak_rss_child(kind: str, base: Base, steps: int, queue) -> None:
    try:
        if kind == "ours":
            train_on_stripes(base, steps)
        else:
            step = naive_step(load_base(base.spec), base)
            for _ in range(steps):
                step()
    finally:  # the parent waits for an answer: give one even if the run failed (its traceback shows)
        queue.put(_high_water_mark())


def _high_water_mark() -> int:
    """This process's peak resident memory in bytes. VmHWM starts afresh at exec; ru_maxrss would carry
    the parent's peak over into a spawned child."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def in_fresh_process(target: Callable, *args):
    """Run `target(*args, queue)` in a spawned process (its memory counted from nothing) and return what it
    put on the queue; the target must put an answer even when it fails."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    value = queue.get()
    process.join()
    return value


def peak_rss(kind: str, base: Base, steps: int) -> int:
    """Peak resident memory, in bytes, of a fresh process that trains `steps` steps our way or the naive way."""
    return in_fresh_process(_peak_rss_child, kind, base, steps)


def cache_cost(base: Base, sample: int) -> tuple[float, int]:
    """Seconds to encode the whole stripes folder into the latent cache (timed on `sample` images and
    scaled up), and bytes per cached image."""
    pipe = load_base(base.spec)
    examples = scan_folder(STRIPES).examples
    with tempfile.TemporaryDirectory() as folder:
        cache = LatentCache(pipe.vae, "bench", base.resolution, Path(folder))
        start = time.perf_counter()
        for example in examples[:sample]:
            cache.latents(example, False)
        seconds = (time.perf_counter() - start) * len(examples) / min(sample, len(examples))
        sizes = [p.stat().st_size for p in Path(folder).glob("*.safetensors")]
    return seconds, int(statistics.mean(sizes))
