"""What a training run writes: the adapter and its checkpoints (Outputs), metadata, metrics, previews
and the progress bar."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator

from .. import __version__
from ..adapters.formats import file_tensors
from ..data.folder import ImageFolder
from ..errors import TrainingError
from ..families import FAMILIES, UNKNOWN, family_of_pipe
from ..files import metadata_json, save_safetensors, write_atomically
from ..images import save_png
from ..methods import file_metadata, method_of
from ..methods.attach import evaluation_mode, export
from ..score.previews import PreviewScores
from .checkpoint import save_checkpoint, trainable_tensors
from .config import TrainConfig
from .loss import HUBER_C, HUBER_SCHEDULES
from .optimizers import OPTIMIZERS

if TYPE_CHECKING:
    from PIL import Image

    from .stages import Model, Optimisation
    from .validation import Watch


PREVIEW_CAPTIONS = 2  # how many of the folder's captions are previewed when no --sample-prompt is given


def with_preview_prompts(config: TrainConfig, folder: ImageFolder) -> TrainConfig:
    """With --sample-every and no --sample-prompt, preview the folder's first distinct captions (trigger
    included), so that previews show the style as it is trained without anyone writing a prompt."""
    if not config.sample_every or config.sample_prompts:
        return config
    captions = list(dict.fromkeys(e.caption for e in folder.examples if e.caption))[:PREVIEW_CAPTIONS]
    return replace(config, sample_prompts=tuple(captions) or ("",))


TRACKED = {"validation_loss": "loss"}  # a metrics.jsonl key whose tracker name (validation/...) differs


def save_scored_previews(previews: list[tuple[Image.Image, str]], folder: Path, step: int) -> list[Path]:
    """The previews a candidate step was scored on (--select-by score), kept to be looked at: the UI shows the kept
    step's."""
    return [save_png(image, folder / f"step-{step:06d}-{index}.png", {"prompt": prompt, "step": step})
            for index, (image, prompt) in enumerate(previews)]


@torch.no_grad()
def render_samples(pipe, prompts: tuple[str, ...], folder: Path, step: int, seed: int) -> list[Path]:
    """Fixed-seed previews, so samples from different steps compare like for like: LoRA dropout is off in
    the UNet and the text encoder while they render, and every module goes back to the mode it was in."""
    paths = []
    with evaluation_mode(list(family_of_pipe(pipe).models(pipe).values())):
        for index, prompt in enumerate(prompts):
            generator = torch.Generator().manual_seed(seed)
            image = pipe(prompt, num_inference_steps=20, generator=generator).images[0]
            paths.append(save_png(image, folder / f"step-{step:06d}-{index}.png",
                                  {"prompt": prompt, "step": step, "seed": seed}))
    return paths


def adapter_metadata(config: TrainConfig, folder: ImageFolder, resolution: int, steps: int, base_id: str,
                     architecture: str, prediction_type: str) -> dict[str, str]:
    """Our own keys plus the ss_* and modelspec.* keys that AUTOMATIC1111 and civitai-style tools read."""
    family = FAMILIES.get(architecture, UNKNOWN)
    method = method_of(config.method)
    targets = list(config.denoiser_targets(family.target_presets)) + (
        list(config.text_encoder_targets) if config.train_text_encoder else [])
    spec = config.adapter_spec()
    return metadata_json({
        "stylelora.version": __version__,
        "stylelora.rank": config.rank,
        "stylelora.alpha": config.effective_alpha,
        "stylelora.method": config.method,
        "stylelora.targets": config.targets or "custom",
        "stylelora.conv_rank": spec.conv_rank,
        "stylelora.conv_alpha": spec.conv_alpha,
        **file_metadata(config, spec),
        "stylelora.rslora": config.rslora,
        "stylelora.train_bias": config.train_bias,
        "stylelora.loraplus_ratio": config.loraplus_ratio,
        "stylelora.target_modules": targets,
        "stylelora.text_encoder": config.train_text_encoder,
        "stylelora.base": config.base,
        "stylelora.base_hash": base_id,
        "stylelora.architecture": architecture,
        "stylelora.prediction_type": prediction_type,
        "stylelora.resolution": resolution,
        "stylelora.steps": steps,
        "stylelora.image_count": len(folder.examples),
        "stylelora.dataset_hash": folder.content_hash,
        "stylelora.trigger_words": [config.trigger] if config.trigger else [],
        "stylelora.config": json.dumps(config.to_json_dict()),
        **kohya_metadata({
            "ss_network_module": method.network_module,
            "ss_network_dim": method.file_rank(config),
            "ss_network_alpha": float(config.file_alpha),  # what loaders divide by the rank
            "ss_network_dropout": config.dropout,
            "ss_base_model_version": family.base_model_version,
            "ss_v2": architecture == "sd2",
            "ss_v_parameterization": prediction_type == "v_prediction",
            "ss_output_name": config.adapter_name,
            "ss_resolution": (resolution, resolution),
            "ss_num_train_images": len(folder.examples),
            "ss_max_train_steps": steps,
            "ss_learning_rate": config.effective_learning_rate,
            "ss_unet_lr": config.effective_learning_rate,
            "ss_text_encoder_lr": config.effective_text_encoder_lr if config.train_text_encoder else None,
            "ss_lr_scheduler": config.lr_schedule,
            "ss_optimizer": f"{OPTIMIZERS[config.optimizer].class_path}(weight_decay={config.weight_decay})",
            "ss_lr_warmup_steps": config.warmup_steps,
            "ss_batch_size_per_device": config.batch_size,
            "ss_gradient_accumulation_steps": config.grad_accumulation,
            "ss_max_grad_norm": config.max_grad_norm,
            "ss_seed": config.seed,
            "ss_cache_latents": config.cache_latents,
            "ss_flip_aug": config.flip,
            "ss_random_crop": config.random_crop,
            "ss_shuffle_caption": config.shuffle_tags,
            "ss_keep_tokens": config.keep_tags,
            "ss_caption_dropout_rate": config.caption_dropout,
            "ss_noise_offset": config.noise_offset,
            "ss_min_snr_gamma": config.min_snr_gamma,
            "ss_loss_type": config.loss.replace("-", "_"),  # kohya's spellings: l2, huber, smooth_l1
            "ss_huber_schedule": config.huber_schedule or HUBER_SCHEDULES[0],
            "ss_huber_c": HUBER_C if config.huber_c is None else config.huber_c,
            "ss_timestep_sampling": config.effective_timestep_sampling,
            "ss_training_comment": f"trained with stylelora {__version__}",
        }),
        **({"ss_network_args": args} if (args := network_args(config)) else {}),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": family.modelspec_architecture(prediction_type),
        "modelspec.implementation": "diffusers",
        "modelspec.title": config.adapter_name,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
        "modelspec.trigger_phrase": config.trigger,
    })


def network_args(config: TrainConfig) -> str | None:
    """ss_network_args as kohya and LyCORIS write it: a JSON object of strings, or None for plain LoRA."""
    spec = config.adapter_spec()
    args = method_of(config.method).network_args(config)
    if spec.conv_rank:
        args |= {"conv_dim": str(spec.conv_rank), "conv_alpha": f"{spec.conv_alpha:g}"}
    return json.dumps(args) if args else None


def kohya_metadata(values: dict[str, object]) -> dict[str, str]:
    """ss_* values written as kohya's train_network.py writes them, `str()` of each: True is "True", 4.0 is
    "4.0", a resolution "(512, 512)", a missing value "None". AUTOMATIC1111 compares ss_v2 with the exact
    string "True" to file an adapter under SD2; JSON's "true" made it file ours as SD1."""
    return {key: str(value) for key, value in values.items()}


@dataclass
class Kept:
    """Which step's adapter became the file, its validation loss (None without validation), and why the
    run stopped."""

    step: int
    trained_steps: int
    validation_loss: float | None
    reason: str
    base_validation_loss: float | None = None  # the base's own, for reference
    scores: PreviewScores | None = None  # the kept step's, with --select-by score

    def metadata(self, keep: str) -> dict[str, str]:
        losses = {"stylelora.validation_loss": self.validation_loss, "stylelora.base_validation_loss": self.base_validation_loss}
        if self.scores is not None:
            losses |= {"stylelora.style_score": self.scores.style, "stylelora.prompt_score": self.scores.prompt}
        return {"stylelora.keep": keep, "stylelora.kept_step": str(self.step),
                "stylelora.trained_steps": str(self.trained_steps), "stylelora.stop_reason": self.reason,
                **{key: repr(value) for key, value in losses.items() if value is not None}}


class Outputs:
    """What a run writes: the adapter tensors in the family's file layout (the EMA weights when there are some),
    their metadata, checkpoints."""

    def __init__(self, config: TrainConfig, folder: ImageFolder, model: Model, optimisation: Optimisation,
                 trained: list[torch.nn.Module], accelerator: Accelerator):
        self.config, self.folder, self.model, self.optimisation = config, folder, model, optimisation
        self.trained, self.accelerator = trained, accelerator
        self.main = accelerator.is_main_process
        self.layout_metadata: dict[str, str] | None = None
        self.final_seconds = 0.0  # how long writing the adapter took

    def parts(self) -> dict[str, torch.nn.Module]:
        unwrapped = [self.accelerator.unwrap_model(model) for model in self.trained]
        return dict(zip(self.model.trained_parts(self.config), unwrapped))

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """A copy, in the file layout (--format, else the family's): on the CPU exported tensors can share storage with the parameters,
        which training (or restoring them after the EMA was swapped in) changes."""
        rank, family = self.config.export_rank, self.model.family
        with self.optimisation.average.applied():
            tensors, self.layout_metadata = file_tensors(
                {key: module for part, model in self.parts().items()
                 for key, module in export(model, part, export_rank=rank).items()},
                self.config.format or family.file_layout, family)
            return {key: tensor.clone() for key, tensor in tensors.items()}

    def metadata(self, step: int) -> dict[str, str]:
        if self.layout_metadata is None:
            self.adapter_tensors()  # the layout's own metadata (diffusers: each part's ranks and alphas)
        return adapter_metadata(self.config, self.folder, self.model.resolution, step, self.model.base_id,
                                self.model.architecture, self.model.prediction_type) | self.layout_metadata

    def checkpoint(self, step: int, watch: Watch) -> Path | None:
        if not self.main:
            return None
        optimisation = self.optimisation
        states = {"method": optimisation.hooks.state_dict(), "ema": optimisation.average.state_dict(),
                  "watch": watch.state_dict()}
        return save_checkpoint(self.config.out_dir, step, self.adapter_tensors(), self.metadata(step),
                               optimisation.optimizer.state_dict(), optimisation.lr_schedule.state_dict(),
                               self.config.to_json_dict() | {"resolution": self.model.resolution},
                               trainable_tensors(self.parts()), states, watch.best_tensors)

    def final(self, watch: Watch, trained_steps: int) -> Kept:
        """Write the adapter: the best step's with --keep best (once a validation ran), else the last one's."""
        reason = watch.stop_reason(trained_steps)
        if watch.keep_best and watch.best_tensors is not None:
            tensors = watch.best_tensors
            kept = Kept(watch.stopping.best_step, trained_steps, watch.best_loss, reason, watch.base_loss,
                        watch.best_scores)
        else:
            tensors = self.adapter_tensors()
            kept = Kept(trained_steps, trained_steps, watch.last_loss, reason, watch.base_loss, watch.last_scores)
        if self.main:
            started = time.perf_counter()
            save_safetensors(self.config.adapter_path, tensors, self.metadata(kept.step) | kept.metadata(self.config.keep_step))
            self.final_seconds = time.perf_counter() - started
        return kept


def write_phases(out_dir: Path, step: int, phases: dict[str, float]) -> None:
    """Append where a run's time went to its metrics.jsonl, as a row of its own (as validation rows are):
    {"step": last step, "phases": {"load": seconds, "cache": ..., "steps": ..., "save": ...}}."""
    with open(Path(out_dir) / "metrics.jsonl", "a", encoding="utf-8") as jsonl:
        row = {"step": step, "phases": {name: round(seconds, 3) for name, seconds in phases.items()}}
        jsonl.write(json.dumps(row) + "\n")


def phases_line(phases: dict[str, float], steps: int) -> str:
    """"Took 52.3 s: start-up 4.1 s, loading 6.1 s, ..." for the end of a run."""
    names = {"startup": "start-up", "load": "loading", "cache": "caching", "steps": f"{steps} steps", "save": "saving"}
    parts = ", ".join(f"{names[name]} {seconds:.1f} s" for name, seconds in phases.items())
    return f"Took {sum(phases.values()):.1f} s: {parts}."


def seconds_since_process_start(train_started: float) -> float:
    """From this process's start to train()'s (Python's start-up and imports); 0 where the system does not say,
    or where the process ran other work first (a UI, a tune study: then it is not this run's)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0
    seconds = train_started - (boot + ticks / os.sysconf("SC_CLK_TCK"))
    return seconds if 0 <= seconds < 120 else 0.0


class MetricsLog:
    """metrics.jsonl (one JSON object per logged step) and the run's trackers (trackers.py: TensorBoard, W&B),
    side by side."""

    def __init__(self, out_dir: Path, start_step: int = 0, trackers: list | None = None,
                 settings: dict[str, Any] | None = None):
        """Keep the rows of steps up to `start_step` (a resume replays the rest), drop any half-written
        last line a killed run left, then append. Start the trackers with the run's `settings`."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "metrics.jsonl"
        kept = _rows_up_to(path, start_step)
        write_atomically(path, "".join(line + "\n" for line in kept).encode())
        self.jsonl = open(path, "a", encoding="utf-8")
        self.trackers = trackers or []
        for tracker in self.trackers:
            try:
                tracker.start()
                if settings:
                    tracker.store_init_configuration(settings)
            except Exception as error:  # W&B's own errors (a refused key, no network) come in many types
                self.jsonl.close()
                raise TrainingError(f"--log-with: {tracker.name} could not start ({str(error).splitlines()[0]}); "
                                    "choose --log-with tensorboard, or set WANDB_MODE=offline") from None

    def _log(self, values: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def write(self, step: int, loss: float, lr: float, steps_per_second: float, grad_norm: float) -> None:
        row = {"step": step, "loss": loss, "lr": lr, "steps_per_second": steps_per_second, "grad_norm": grad_norm}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        self._log({f"train/{key}": value for key, value in row.items() if key != "step"}, step)

    def write_validation(self, step: int, loss: float | None, scores: PreviewScores | None = None) -> None:
        """A validation's row: its loss as `validation/loss` in the trackers (none for previews scored without
        validation data), its scores under their own names."""
        row = {"step": step} | ({} if loss is None else {"validation_loss": loss}) | ({} if scores is None else {
            "style_score": scores.style, "prompt_score": scores.prompt, "score": scores.quality})
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        self._log({f"validation/{TRACKED.get(key, key)}": value for key, value in row.items() if key != "step"}, step)

    def close(self) -> None:
        self.jsonl.close()
        for tracker in self.trackers:
            tracker.finish()


def _rows_up_to(path: Path, last_step: int) -> list[str]:
    """The well-formed lines of `path` whose step is at most `last_step`, each parsed once."""
    lines = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []:
        try:
            step = json.loads(line).get("step")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(step, int) and step <= last_step:
            lines.append(line)
    return lines


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)
