"""Train a LoRA style adapter: `train()` reads top to bottom, in stages.

prepare_data; frozen_base.prepare_base: prepare_model (the encoders and VAE), prepare_inputs (the caches, after
which those are freed) and prepare_denoiser (read only now, so that it never shares memory with them); then
prepare_adapters and run_loop.
Per step: the loss of each micro-batch (step_loss.StepLoss: latents from the cache, noise at a uniform
timestep, the UNet's prediction, the MSE), then clip and step AdamW, and update the EMA. Between steps,
validation.Watch validates when due and decides when to stop. Everything else is bookkeeping: checkpoints and the
adapter (run_outputs.Outputs), samples, metrics.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler

from ..data.folder import Example, ImageFolder, describe_folder, load_rgb, scan_folder
from ..data.masks import check_masks
from ..data.split import split_examples
from ..errors import DatasetError, TrainingError, TrainingInterrupted
from ..methods import KINDS, method_of
from ..methods.attach import attach
from ..model.base import resolve_base
from ..model.cores import CoreShare
from ..model.precision import PRECISION_NAMES
from ..score.previews import MOST_REFERENCES, PreviewScorer
from .checkpoint import latest_checkpoint, resume
from .config import TrainConfig, validate
from .frozen_base import prepare_base
from .regularisation import read_regularisation
from .optimizers import OPTIMIZERS, block_rates, build_optimizer, parameter_groups
from .outputs import (Kept, MetricsLog, Outputs, phases_line, progress_bar as make_progress_bar, render_samples,
                      save_scored_previews, seconds_since_process_start, with_preview_prompts, write_phases)
from .stages import Model, Optimisation, Progress, TrainResult
from .step_loss import StepLoss
from .suggest import fill_unset
from .trackers import check_trackers, hyperparameters, trackers_for
from .validation import AdapterAverage, EarlyStopping, Watch, validate_every


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


def total_steps(config: TrainConfig, examples: int, world_size: int) -> int:
    if config.max_steps is not None:
        return config.max_steps
    if config.epochs is not None:
        per_step = config.batch_size * config.grad_accumulation * world_size
        return max(1, math.ceil(config.epochs * examples / per_step))
    return config.recipe.steps


def prepare_data(config: TrainConfig, say: Callable[[str], None]) -> tuple[ImageFolder, list[Example], list[Example]]:
    """Stage: the image folder, scanned and described, the images held out for validation (taken out of
    the folder with --validation-split, or from --validation-data), and the regularisation images (--reg-data)."""
    folder = scan_folder(config.data, config.caption, config.trigger)
    describe_folder(folder, say)
    if config.masks is not None:
        check_masks(config.masks, folder.examples)
        say(f"Loss masks: one for each of the {len(folder.examples)} images, from {config.masks}.")
    elif config.mask_from_alpha:
        say("Loss masks: each image's alpha channel (an image without one counts whole).")
    held_out: list[Example] = []
    if config.validation_split:
        folder.examples, held_out = split_examples(folder.examples, config.validation_split, config.seed)
        say(f"Validation: {len(held_out)} of the {len(folder.examples) + len(held_out)} images held out "
            f"({', '.join(e.path.name for e in held_out)}); training on the other {len(folder.examples)}.")
    elif config.validation_data is not None:
        try:
            held_out = scan_folder(config.validation_data, config.caption, config.trigger).examples
        except DatasetError as error:
            raise DatasetError(f"--validation-data: {error}") from None
        say(f"Validation: {len(held_out)} images from {config.validation_data}.")
    return folder, held_out, read_regularisation(config, say)


def prepare_adapters(config: TrainConfig, model: Model, examples: int, accelerator: Accelerator,
                     say: Callable[[str], None]) -> Optimisation:
    """Stage: attach the LoRA adapters, build the optimizer and schedule, and resume if asked."""
    parts = model.trained_parts(config)
    torch.manual_seed(config.seed)  # adapters start partly random: the same seed, the same start
    spec = config.adapter_spec()
    steps = total_steps(config, examples, accelerator.num_processes)
    groups = []
    for part, module in parts.items():
        targets, flag = ((config.denoiser_targets(model.family.target_presets), "--targets" if config.targets
                          else "--target-modules") if part == "unet"
                         else (config.text_encoder_targets, "--text-encoder-targets"))
        attach(module, spec, targets, flag=flag, total_steps=steps)
        rate = config.effective_learning_rate if part == "unet" else config.effective_text_encoder_lr
        blocks = block_rates(config.block_lr) if part == "unet" else None
        groups += parameter_groups(module, rate, config.loraplus_ratio, blocks)
    adapted = list(parts.values())
    for group in groups:
        for p in group["params"]:
            p.data = p.data.float()  # LoRA weights train in float32 even over a low-precision base
    if config.gradient_checkpointing:
        parts["unet"].enable_gradient_checkpointing()
    optimizer = build_optimizer(config.optimizer, groups, config)
    schedule_free = OPTIMIZERS[config.optimizer].schedule_free  # it warms up itself, and its rate stays constant
    lr_schedule = get_scheduler(config.lr_schedule, optimizer, num_warmup_steps=0 if schedule_free else config.warmup_steps,
                                num_training_steps=steps)
    optimisation = Optimisation(groups, optimizer, lr_schedule, steps, method_of(config.method).step_hooks(adapted, config.seed, config.rank))
    optimisation.average = AdapterAverage(optimisation.trainable, config.ema_decay, optimizer if schedule_free else None)
    if config.resume:
        optimisation.start_step = resume(config, parts, optimisation, model.resolution, say)
    return optimisation


def adapter_summary(config: TrainConfig) -> str:
    """'rank 4, alpha 4, rsLoRA, 3x3 convolutions at rank 2, alpha 1, LoRA+ ratio 16': what the run attaches."""
    spec = config.adapter_spec()
    parts = [f"rank {config.rank}, alpha {config.effective_alpha:g}"]
    parts += ["rsLoRA"] if config.rslora else []
    parts += [f"3x3 convolutions at rank {spec.conv_rank}, alpha {spec.conv_alpha:g}"] if spec.conv_rank else []
    parts += [f"LoRA+ ratio {config.loraplus_ratio:g}"] if config.loraplus_ratio else []
    return ", ".join(parts)


def train(config: TrainConfig, on_progress: Callable[[Progress], None] | None = None,
          should_stop: Callable[[], bool] | None = None, log: Callable[[str], None] = print,
          progress_bar: bool = True) -> TrainResult:
    """Train one adapter as `config` says; return where it was written. Raises StyleloraError, never exits.
    Stages: data, model, inputs (caches), denoiser, adapters (and resume), then the loop, which saves the result."""
    validate(config)
    resolve_base(config.base)  # a wrong --base fails now, not after the images are read
    check_trackers(config.log_with)
    started = time.time()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    say = log if accelerator.is_main_process else (lambda message: None)
    with CoreShare(config.threads) as cores:
        return _train(config, on_progress, should_stop, say, progress_bar, started, accelerator, cores)


def _train(config: TrainConfig, on_progress: Callable[[Progress], None] | None,
           should_stop: Callable[[], bool] | None, say: Callable[[str], None], progress_bar: bool, started: float,
           accelerator: Accelerator, cores: CoreShare) -> TrainResult:
    """train()'s stages, within this process's share of the cores."""
    if config.auto:
        config = validate(fill_unset(config, say))
    clock = time.perf_counter()
    folder, held_out, regularisation = prepare_data(config, say)
    config = with_preview_prompts(config, folder)
    model, inputs, phases = prepare_base(config, folder, held_out, regularisation, accelerator, should_stop, say,
                                         clock, seconds_since_process_start(started))
    clock = time.perf_counter()
    optimisation = prepare_adapters(config, model, len(folder.examples), accelerator, say)
    phases["load"] += time.perf_counter() - clock

    adapted = list(model.trained_parts(config).values())
    *trained, optimisation.optimizer, optimisation.lr_schedule = accelerator.prepare(
        *adapted, optimisation.optimizer, optimisation.lr_schedule)
    step_loss = StepLoss(config, folder, model, inputs, trained[0], accelerator, adapted)
    outputs = Outputs(config, folder, model, optimisation, trained, accelerator)
    watch = prepare_watch(config, model, optimisation, step_loss, outputs)
    unet_tensors = sum(1 for p in model.family.denoiser_of(model.pipe).parameters() if p.requires_grad)
    cores.announce(say)
    say(f"Training {unet_tensors} {KINDS[config.method]} tensors ({adapter_summary(config)}) for {optimisation.steps} "
        f"steps at {model.resolution}px, batch {config.batch_size} x {accelerator.num_processes} process(es), in "
        f"{PRECISION_NAMES[model.precision]}.")
    clock = time.perf_counter()
    loss, kept = run_loop(config, model, optimisation, step_loss, outputs, watch, accelerator, on_progress,
                          should_stop, progress_bar, cores)
    phases |= {"steps": time.perf_counter() - clock - outputs.final_seconds, "save": outputs.final_seconds}
    if accelerator.is_main_process:
        write_phases(config.out_dir, kept.trained_steps, phases)
        say(phases_line(phases, kept.trained_steps - optimisation.start_step))
    return TrainResult(config.adapter_path, kept.trained_steps, loss, time.time() - started, accelerator.is_main_process,
                       kept.step, kept.validation_loss, kept.reason, kept.base_validation_loss, kept.scores, config)


def prepare_watch(config: TrainConfig, model: Model, optimisation: Optimisation, step_loss: StepLoss,
                  outputs: Outputs) -> Watch:
    """Stage: validation, early stopping and the best step (by the loss, or by the previews' score: of the held-out
    captions with validation, else of the --sample-prompts at each preview step), as a resumed run left them."""
    validation = step_loss.inputs.validation
    scorer = None
    if config.selection == "score" and config.selecting:
        examples = outputs.folder.examples
        prompts = [*validation.captions, *config.sample_prompts] if validation is not None else config.sample_prompts
        scorer = PreviewScorer(model.pipe, model.family, [load_rgb(e.path) for e in examples[:MOST_REFERENCES]],
                               prompts, [e.caption for e in examples], step_loss.adapted,
                               model.resolution, config.seed, config.scorer)
    every = validate_every(config.validate_every, optimisation.steps) if validation is not None else config.sample_every
    watch = Watch(every, optimisation.steps, config.keep_step == "best",
                  EarlyStopping(config.early_stop, config.min_delta),
                  (lambda: step_loss.validation_loss(validation)) if validation is not None else None,
                  outputs.adapter_tensors, optimisation.average, scorer)
    watch.load_state_dict(*optimisation.resumed_watch)
    return watch


def optimizer_step(config: TrainConfig, optimisation: Optimisation, step_loss: StepLoss, accelerator: Accelerator,
                   step: int) -> tuple[float, float]:
    """One optimizer step over `grad_accumulation` micro-batches; return its loss and gradient norm."""
    # The step's randomness (including LoRA dropout) depends only on (seed, step): exact resume.
    torch.manual_seed(config.seed * 1_000_003 + step)
    optimisation.hooks.before_step(step)
    total = 0.0
    for micro in range(config.grad_accumulation):
        last = micro == config.grad_accumulation - 1
        with nullcontext() if last else accelerator.no_sync(step_loss.unet):
            terms = step_loss(step, micro)
            if not torch.isfinite(terms.objective):
                raise TrainingError(f"the loss became {terms.objective.item()} at step {step + 1}; lower "
                                    "--learning-rate or use --precision no")
            # The method's own penalty (AdaLoRA's orthogonality) trains but is not the reported loss.
            accelerator.backward((terms.objective + optimisation.hooks.extra_loss()) / config.grad_accumulation)
            total += terms.style.item() / config.grad_accumulation
    grad_norm = clip_gradients(accelerator, optimisation.trainable, config.max_grad_norm)
    if not math.isfinite(grad_norm):
        raise TrainingError(f"the gradients became {grad_norm} at step {step + 1}; lower --learning-rate")
    optimisation.optimizer.step()
    optimisation.hooks.after_optimizer_step(step)  # AdaLoRA reads the gradients: before zero_grad
    optimisation.lr_schedule.step()
    optimisation.optimizer.zero_grad(set_to_none=True)
    optimisation.average.update()
    return total, grad_norm


def run_loop(config: TrainConfig, model: Model, optimisation: Optimisation, step_loss: StepLoss, outputs: Outputs,
             watch: Watch, accelerator: Accelerator, on_progress: Callable[[Progress], None] | None,
             should_stop: Callable[[], bool] | None, progress_bar: bool,
             cores: CoreShare | None = None) -> tuple[float, Kept]:
    """Stage: the optimizer steps, with validation, metrics, checkpoints and previews between them; then the
    final save (the best or the last step's adapter). Returns the last step's loss and what was kept. A stop
    on request saves a checkpoint and raises TrainingInterrupted."""
    main, out_dir, lr_schedule = accelerator.is_main_process, config.out_dir, optimisation.lr_schedule
    steps, start_step = optimisation.steps, optimisation.start_step
    metrics: MetricsLog | None = None
    bar = make_progress_bar(steps, start_step, progress_bar and main)
    loss_value, completed, tick = float("nan"), start_step, time.time()
    scored_samples = config.selecting and not config.validating  # the scored previews are the samples: painted once
    try:
        metrics = MetricsLog(out_dir, start_step, trackers_for(config.log_with, out_dir, config.adapter_name, start_step > 0),
                             hyperparameters(config.to_json_dict())) if main else None
        if start_step == 0 and (base_loss := watch.baseline()) is not None and metrics is not None:
            metrics.write_validation(0, base_loss)
        for step in range(start_step, steps):
            if should_stop is not None and should_stop():
                raise TrainingInterrupted("stopped on request")
            if cores is not None:
                cores.refresh()  # another stylelora process started or ended: take this one's share
            loss_value, grad_norm = optimizer_step(config, optimisation, step_loss, accelerator, step)
            completed = step + 1
            rate = (completed - start_step) / max(time.time() - tick, 1e-9)
            measured = watch.after_step(completed)
            validation_loss = watch.last_loss if measured else None
            samples: list[Path] = []
            # Metrics before the checkpoint: a kill between the two leaves rows that a resume rewrites.
            if metrics is not None and (completed % config.log_every == 0 or completed == steps):
                metrics.write(completed, loss_value, lr_schedule.get_last_lr()[0], rate, grad_norm)
            if main and measured and watch.last_previews:
                scored = save_scored_previews(watch.last_previews, out_dir / "scored", completed)
                if scored_samples:
                    samples = scored
            if metrics is not None and measured:
                metrics.write_validation(completed, validation_loss, watch.last_scores)
            if main and config.save_every and completed % config.save_every == 0 and completed < steps:
                outputs.checkpoint(completed, watch)
            if main and config.sample_every and completed % config.sample_every == 0 and not scored_samples:
                with optimisation.average.applied():
                    samples = render_samples(model.pipe, config.sample_prompts, out_dir / "samples", completed, config.seed)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", **({"val": f"{watch.last_loss:.4f}"} if watch.last_loss is not None else {}))
            if on_progress is not None and main:
                on_progress(Progress(completed, steps, loss_value, lr_schedule.get_last_lr()[0], rate,
                                     (steps - completed) / max(rate, 1e-9), samples, validation_loss,
                                     watch.last_scores if measured else None))
            if watch.should_stop:
                break
        accelerator.wait_for_everyone()
        kept = outputs.final(watch, completed)
    except (KeyboardInterrupt, TrainingInterrupted):
        bar.close()
        # Saved as of the last finished optimizer step, so a resume replays nothing twice.
        saved = outputs.checkpoint(completed, watch) if completed > start_step else latest_checkpoint(out_dir)
        raise TrainingInterrupted(f"training stopped at step {completed} of {steps}; checkpoint {saved}; "
                                  "run the same command with --resume to continue") from None
    except OSError as error:  # a full disk or a vanished folder, in a checkpoint or the adapter: say what survived
        raise _write_failed(error, out_dir) from None
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    return loss_value, kept


def _write_failed(error: OSError, out_dir: Path) -> TrainingError:
    last = latest_checkpoint(out_dir)
    kept = (f"the last good checkpoint, {last}, is intact: free some space and run again with --resume" if last
            else "no checkpoint was written yet; use --save-every to keep resumable checkpoints")
    return TrainingError(f"{error.filename or out_dir}: cannot write ({error.strerror or error}); {kept}")
