"""The training job's typed config, its options declared once, and `validate()`, the one place they are checked."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.buckets import BucketSettings, bucket_checks
from ..data.masks import mask_checks
from ..methods import METHODS, TARGET_PRESETS, AdapterSpec, method_checks, method_of, target_checks
from ..model.cores import THREADS_DEFAULT, THREADS_HELP
from ..model.quantize import QUANTIZE_HELP, QUANTIZE_MODES
from ..options import UiField, option, refuse_first
from .loss import HUBER_C, HUBER_SCHEDULES, LOSSES, loss_checks
from .optimizers import OPTIMIZERS, optimizer_checks
from .recipe import MINI_RECIPE, USUAL_RECIPE, Recipe, recipe_of
from .objective import TIMESTEP_SAMPLINGS, Sampling, sampling_checks
from .trackers import TRACKERS, TRACKERS_HELP
from .stopping import SELECT_BY, Selection, stopping_checks

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
LR_SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("auto", "no", "fp16", "bf16")


BASE_HELP = "'mini' (built in), a hub id, a diffusers folder or a .safetensors checkpoint"
STOP = "knowing when to stop"


def _method_names() -> list[str]:
    return list(METHODS)  # read when asked: a registered method is a choice too


@dataclass
class TrainConfig(Selection):
    """Everything one training run needs, each option declared once (options.option): the CLI flags, the TOML
    keys, the web UI's fields and the docs' option tables are built from these fields."""

    data: Path = option(help="folder of images (png, jpg, webp, bmp; subfolders too)", cli=False)
    out: Path | None = option(None, "output folder, or a .safetensors file path", default_text="adapters/NAME")
    name: str | None = option(None, "adapter name", default_text="the output file or image folder name",
                              ui=UiField("Adapter name", "textbox", "adapter-name", default="mystyle"))
    base: str = option("mini", BASE_HELP)
    # captions
    caption: str = option("", "caption for images that have none", "captions", default_text="none")
    trigger: str = option("", "trigger phrase put before every caption", "captions", default_text="none",
                          ui=UiField("Trigger word", "textbox"))
    caption_dropout: float = option(0.0, "rate of steps trained on an empty caption", "captions",
                                    ui=UiField("Caption dropout"))
    shuffle_tags: bool = option(False, "shuffle comma-separated tags", "captions")
    keep_tags: int = option(0, "leading tags kept in place when shuffling", "captions")
    # images
    resolution: int | None = option(None, "training size in pixels, a multiple of 8", "images",
                                    default_text="the base's native size",
                                    ui=UiField("Resolution in px (0 = the base's own)", "integer"))
    random_crop: bool = option(False, "random instead of centre crops", "images")
    masks: Path | None = option(None, "a folder of greyscale loss masks, one per training image with its name: the "
                                      "loss counts white, not black", "images", metavar="DIR",
                                ui=UiField("Loss masks: a folder of greyscale images named as the training images",
                                           "textbox"))
    mask_from_alpha: bool = option(False, "each training image's alpha channel as its loss mask", "images",
                                   ui=UiField("Loss mask from each image's transparency", "checkbox"))
    mask_prior: float = option(0.0, "outside the loss masks, train toward the base's own prediction with this "
                                     "weight (ai-toolkit's inverted_mask_prior), so what the masks leave out stays "
                                     "as the base paints it; 0 is off, 1 usual", "images",
                               ui=UiField("Base's own prediction outside the masks (weight; 0 = off)"))
    flip: bool = option(False, "random horizontal flips", "images", ui=UiField("Random flips", "checkbox"))
    buckets: bool = option(True, "aspect-ratio buckets, so no image is cropped to a square; --no-buckets trains "
                                 "centre squares", "images",
                           ui=UiField("Keep each image's shape (buckets); off: centre squares", "checkbox"))
    bucket_step: int | None = option(None, "bucket sides are multiples of this", "images",
                                     default_text="64; 8 on the built-in mini base",
                                     ui=UiField("Bucket step in px (0 = 64; 8 on mini)", "integer"))
    min_bucket: int | None = option(None, "shortest bucket side in pixels", "images", default_text="half the resolution",
                                    ui=UiField("Shortest side in px (0 = half the resolution)", "integer"))
    max_bucket: int | None = option(None, "longest bucket side in pixels", "images", default_text="twice the resolution",
                                    ui=UiField("Longest side in px (0 = twice the resolution)", "integer"))
    no_upscale: bool = option(False, "never enlarge an image to fill a bucket: each trains at its own size, rounded "
                                     "down to the step", "images", negatable=False,
                              ui=UiField("Never enlarge an image", "checkbox"))
    # adapter
    rank: int = option(4, "LoRA rank", "adapter", ui=UiField("Rank", "integer"))
    alpha: float | None = option(None, "LoRA alpha", "adapter", default_text="the rank, so the scale is 1",
                                 ui=UiField("Alpha (0 = rank)"))
    dropout: float = option(0.0, "LoRA's input dropout (lora, dora, dylora)", "adapter")
    target_modules: tuple[str, ...] = option(UNET_TARGETS, "UNet module-name suffixes, comma-separated", "adapter")
    train_text_encoder: bool = option(False, "also adapt the CLIP text encoder (q/k/v/out_proj)", "adapter",
                                      ui=UiField("Train the text encoder", "checkbox", "train-te"))
    text_encoder_targets: tuple[str, ...] = option(
        TEXT_ENCODER_TARGETS, "text-encoder module suffixes; on SD2, AUTOMATIC1111 applies the text-encoder part only "
        "when all four are adapted", "adapter")
    method: str = option("lora", "the adapter method; DoRA is written with the magnitude per input column, as "
                                 "AUTOMATIC1111 and ComfyUI apply it", "adapter", choices=_method_names,
                         ui=UiField("Method (every one writes a file AUTOMATIC1111 and ComfyUI load)", "dropdown"))
    targets: str | None = option(None, "UNet module preset instead of --target-modules: attn, attn-mlp "
                                       "(+ feed-forward), all-linear (+ proj_in/out, time embedding), all (+ ResNet "
                                       "convolutions: LoCon)", "adapter", choices=tuple(TARGET_PRESETS),
                                 default_text="attn, as --target-modules gives it",
                                 ui=UiField("Modules (attn; attn-mlp adds feed-forward; all-linear; all adds "
                                            "convolutions)", "dropdown", default="attn"))
    conv_rank: int | None = option(None, "rank of the 3x3 convolutions with --targets all", "adapter",
                                   default_text="--rank", ui=UiField("Conv rank (0 = rank)", "integer"))
    conv_alpha: float | None = option(None, "alpha of the 3x3 convolutions with --targets all", "adapter",
                                      default_text="the conv rank", ui=UiField("Conv alpha (0 = conv rank)"))
    target_rank: int | None = option(None, "AdaLoRA: the average rank it prunes down to, from --rank", "adapter",
                                     default_text="half of --rank",
                                     ui=UiField("AdaLoRA target rank (0 = half the rank)", "integer"))
    export_rank: int | None = option(None, "DyLoRA: the rank the adapter file holds, 1 to --rank", "adapter",
                                     default_text="--rank", ui=UiField("DyLoRA rank to write (0 = the rank)", "integer"))
    format: str | None = option(None, "the adapter file's layout: kohya (AUTOMATIC1111/Forge, ComfyUI, diffusers; "
                                      "Flux's with fused q/k/v) or diffusers (unet./transformer. keys)", "adapter",
                                choices=("kohya", "diffusers"), default_text="the base's: diffusers on SD3.x, else kohya",
                                ui=UiField("File layout", "dropdown"))
    train_bias: bool = option(False, "lora, dora: the adapted layers' biases train too; the file carries them as "
                                     "diff_b, which ComfyUI applies; AUTOMATIC1111 applies the weights only, and diffusers "
                                     "refuses such a file (`stylelora convert --drop-biases` writes one it loads)", "adapter",
                              ui=UiField("Train the biases too (ComfyUI applies them)", "checkbox"))
    rslora: bool = option(False, "rank-stabilised LoRA: scale alpha/sqrt(rank) instead of alpha/rank (the file "
                                 "stores alpha*sqrt(rank), so every loader applies the same delta)", "adapter",
                          ui=UiField("rsLoRA (scale alpha/sqrt(rank))", "checkbox"))
    loraplus_ratio: float = option(0.0, "LoRA+: the B (up) matrices learn R times faster than A; 16 is the paper's "
                                        "usual value; 0 = off", "optimisation",
                                   ui=UiField("LoRA+ ratio (0 = off; 16 is usual)"))
    # optimisation
    learning_rate: float | None = option(None, "UNet adapter learning rate", "optimisation", aliases=("--lr",),
                                         default_text=f"{USUAL_RECIPE.learning_rate:g}; "
                                                      f"{MINI_RECIPE.learning_rate:g} on the built-in mini base",
                                         ui=UiField("Learning rate (0 = the base's usual)", elem_id="lr"))
    text_encoder_lr: float | None = option(None, "text-encoder adapter learning rate", "optimisation",
                                           default_text="5e-5; with prodigy, half the UNet's (0.5)")
    optimizer: str = option("adamw", "adamw; adamw8bit (bitsandbytes' 8-bit states); prodigy (sets its own step "
                                     "size: leave --lr unset, it runs at 1.0); adamw-schedulefree and "
                                     "prodigy-schedulefree (no schedule; the file holds their average); lion (at a "
                                     "third of AdamW's rate)", "optimisation",
                            choices=tuple(OPTIMIZERS), ui=UiField("Optimizer", "dropdown"))
    block_lr: str = option("", "UNet blocks' learning rates as multiples of --lr: down=,mid=,up= or one block, "
                               "down.0= to up.3= (diffusers' block numbers), e.g. down=0.5,up.3=2; unnamed: 1",
                           "optimisation", ui=UiField("Block learning rates (down=,mid=,up=; blank = all 1)"))
    optimizer_args: str = option("", "the optimizer's own keyword arguments, key=value,..., e.g. d_coef=2 for "
                                     "prodigy; they win over stylelora's", "optimisation",
                                 ui=UiField("Optimizer arguments (key=value,...)"))
    lr_schedule: str = option("constant", "learning-rate schedule", "optimisation", choices=LR_SCHEDULES)
    warmup_steps: int = option(0, "linear warmup steps", "optimisation")
    max_steps: int | None = option(None, "optimizer steps to train", "optimisation",
                                   default_text=f"{USUAL_RECIPE.steps}; {MINI_RECIPE.steps} on the built-in mini base; "
                                                "unless --epochs",
                                   ui=UiField("Steps (0 = the base's usual)", "integer", "steps"))
    epochs: int | None = option(None, "passes over the images, instead of --max-steps", "optimisation")
    batch_size: int = option(4, "images per step per device", "optimisation", ui=UiField("Batch size", "integer"))
    grad_accumulation: int = option(1, "batches accumulated per optimizer step", "optimisation")
    max_grad_norm: float = option(1.0, "gradient clipping norm, 0 = off", "optimisation")
    weight_decay: float = option(1e-2, "the optimizer's weight decay", "optimisation")
    min_snr_gamma: float = option(0.0, "min-SNR loss weighting, 0 = off; 5 is usual", "optimisation")
    noise_offset: float = option(0.0, "noise offset, 0 = off; 0.05 is usual", "optimisation")
    timestep_sampling: str = option(
        "auto", "where on the noise schedule steps land: uniform, logit-normal or mode (the SD3 paper's densities), "
                "style (biased toward high noise, where style lives: ai-toolkit's) or content (toward low noise); "
                "auto = uniform here, logit-normal on flow-matching bases and the built-in mini", "objective",
        choices=TIMESTEP_SAMPLINGS,
        ui=UiField("Timestep sampling (style: more high-noise steps)", "dropdown"))
    logit_mean: float | None = option(None, "logit-normal sampling's mean", "objective",
                                      default_text=f"{Sampling.logit_mean:g}")
    logit_std: float | None = option(None, "logit-normal sampling's spread", "objective",
                                     default_text=f"{Sampling.logit_std:g}")
    mode_scale: float | None = option(None, "mode sampling's scale", "objective", default_text=f"{Sampling.mode_scale:g}")
    loss: str = option("l2", "the per-pixel loss: l2 (squared error), huber or smooth-l1 (kohya's scheduled "
                             "pseudo-Huber: robust to pixels far off)", "objective", choices=LOSSES,
                       ui=UiField("Loss", "dropdown"))
    huber_c: float | None = option(None, "the Huber threshold c, in (0, 1]", "objective", default_text=f"{HUBER_C:g}")
    huber_schedule: str | None = option(None, "how c follows the timestep: snr, exponential or constant (kohya's)",
                                        "objective", choices=HUBER_SCHEDULES, default_text=HUBER_SCHEDULES[0])
    seed: int = option(0, "random seed", "optimisation", ui=UiField("Seed", "integer", "train-seed"))
    # speed
    precision: str = option("auto", "auto (GPU: bf16, or fp16; CPU: bf16 for UNets of 50M parameters or more where a "
                                    "cached probe measured it to run and to be faster, else fp32), no (fp32), fp16 or "
                                    "bf16", "speed", choices=PRECISIONS,
                            ui=UiField("Precision (auto: bf16 only where this CPU was measured to run it faster)",
                                       "dropdown"))
    quantize_base: str = option("none", QUANTIZE_HELP, "speed", choices=QUANTIZE_MODES)
    threads: int | None = option(None, THREADS_HELP, "speed", default_text=THREADS_DEFAULT,
                                 ui=UiField("CPU threads (0 = share the cores with other stylelora processes)", "integer"))
    gradient_checkpointing: bool = option(False, "trade compute for memory", "speed")
    cache_latents: bool = option(True, "encode each image once with the VAE", "speed")
    # outputs
    save_every: int = option(0, "write a resumable checkpoint every N steps (0 = only the adapter, at the end)",
                             "checkpoints and samples",
                             ui=UiField("Checkpoint every N steps", "integer", default=50))
    resume: bool = option(False, "continue from the latest checkpoint in the output folder", "checkpoints and samples",
                          ui=UiField("Resume: continue from this adapter's last checkpoint", "checkbox"))
    sample_every: int = option(0, "render preview images every N steps (0 = off); without validation they are "
                                  "scored and the best step kept (--select-by, --keep)", "checkpoints and samples",
                               ui=UiField("Preview every N steps (0 = off)", "integer", default=100))
    sample_prompts: tuple[str, ...] = option((), "prompt for previews (repeatable)", "checkpoints and samples",
                                             flag="--sample-prompt", repeat=True,
                                             default_text="the folder's first two captions",
                                             ui=UiField("Preview prompt (empty: the first two captions)", "textbox",
                                                        "sample-prompt"))
    log_every: int = option(1, "write metrics every N steps", "checkpoints and samples")
    log_with: str = option("tensorboard", TRACKERS_HELP, "checkpoints and samples", choices=TRACKERS,
                           ui=UiField("Log metrics to", "dropdown"))
    # knowing when to stop (validation.py)
    validation_split: float = option(0.0, "fraction of the images held out to measure a validation loss, at least 1 "
                                          "image, chosen by --seed (0 = off)", STOP,
                                     ui=UiField("Hold out for validation (fraction, 0 = off)"))
    validation_data: Path | None = option(None, "a separate folder of held-out images instead of a split", STOP,
                                          ui=UiField("...or a validation folder on this machine", "textbox"))
    validate_every: int | None = option(None, "validate every N steps", STOP, default_text="a twentieth of the run",
                                        ui=UiField("Validate every N steps (0 = a twentieth of the run)", "integer"))
    early_stop: int = option(0, "stop after PATIENCE validations without improvement (0 = never)", STOP,
                             metavar="PATIENCE",
                             ui=UiField("Early stop after N validations without improvement (0 = never)", "integer"))
    min_delta: float = option(0.0, "the least drop of the validation loss that counts as improvement", STOP,
                              ui=UiField("Least improvement that counts"))
    keep: str | None = option(None, "which step's adapter becomes the file", STOP, choices=("best", "last"),
                              default_text="best with validation or scored previews, else last",
                              ui=UiField("Adapter kept", "dropdown"))
    select_by: str | None = option(None, "what picks the kept step and stops early: score (held-out captions, or "
                                         "without validation the --sample-prompts, painted and scored for style "
                                         "and prompt) or loss (held-out loss)", STOP,
                                   choices=SELECT_BY, default_text="score with validation or previews",
                                   ui=UiField("Choose the step by", "dropdown"))
    scorer: str = option("base", "what scores the previews: base (its own VAE and denoiser), paired (the same, the "
                                 "style read against the base's own previews at the same seeds), clip:PATH (a CLIP "
                                 "model in a folder here) or dinov2:PATH (an image model there, for the style; "
                                 "nothing is downloaded)", STOP,
                         ui=UiField("Scorer (base, paired, clip:PATH or dinov2:PATH)"))
    ema_decay: float = option(0.0, "exponential moving average of the adapter weights, validated and saved instead "
                                   "of them, e.g. 0.99 (0 = off)", STOP,
                               ui=UiField("EMA decay (0 = off; 0.99 is usual)"))
    preserve_prompts: Path | None = option(None, "prompts (one a line) on which the target is the base's own "
                                                 "prediction, adapter off: keeps the style out of them", STOP,
                                           metavar="FILE",  # the page takes the prompts themselves, and saves them
                                           ui=UiField("Preserve the base on these prompts (one a line)", "textbox"))
    preserve_weight: float = option(1.0, "weight of that preservation loss", STOP, ui=UiField("Preservation weight"))
    reg_data: Path | None = option(None, "a folder of regularisation (class) images with their captions, e.g. from "
                                         "`stylelora reg-images`: each step also trains on as many of them, without "
                                         "the trigger, so the style stays tied to it", STOP, metavar="DIR",
                                   ui=UiField("Regularisation images: a folder on this machine", "textbox"))
    reg_weight: float = option(1.0, "weight of the regularisation images' loss", STOP,
                               ui=UiField("Regularisation weight"))
    # `stylelora suggest` fills rank, alpha, learning rate and steps where they are left at their defaults
    auto: bool = option(False, "rank, alpha, learning rate and steps from `stylelora suggest`, for each of them you "
                               "leave at its default", negatable=False)

    @property
    def masked(self) -> bool:
        """Whether the loss is masked (--masks DIR or --mask-from-alpha)."""
        return self.masks is not None or self.mask_from_alpha

    @property
    def effective_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def unet_targets(self) -> tuple[str, ...]:
        return TARGET_PRESETS[self.targets] if self.targets else self.target_modules

    def denoiser_targets(self, presets: dict[str, tuple[str, ...]] | None) -> tuple[str, ...]:
        """The denoiser's target modules for a family with its own `presets` (a DiT's layer names; None: the
        UNet's): the --targets preset by those names, and the family's "attn" where nothing was chosen."""
        if not presets:
            return self.unet_targets
        if self.targets:
            return presets[self.targets]
        return presets["attn"] if self.target_modules == UNET_TARGETS else self.target_modules

    def bucket_settings(self, default_step: int) -> BucketSettings:
        """What bucketing does, with the step of the base's family where --bucket-step is left out."""
        return BucketSettings(self.buckets, self.bucket_step or default_step, self.min_bucket, self.max_bucket,
                              self.no_upscale)

    def adapter_spec(self) -> AdapterSpec:
        conv_rank = method_of(self.method).conv_rank(self)
        conv_alpha = (self.conv_alpha or float(conv_rank)) if conv_rank else None
        return AdapterSpec(self.method, self.rank, self.effective_alpha, self.dropout, self.rslora, conv_rank, conv_alpha,
                           self.target_rank, self.train_bias)

    @property
    def file_alpha(self) -> float:
        """The alpha the adapter file stores, as loaders divide it by the rank: the method says (an rsLoRA's is
        alpha*sqrt(rank), so every tool applies the same delta; methods/method.py)."""
        return method_of(self.method).file_alpha(self)

    @property
    def recipe(self) -> Recipe:
        return recipe_of(self.base)

    @property
    def effective_learning_rate(self) -> float:
        """The rate given, or the base's usual one as the optimizer takes it (Prodigy's 1.0, Lion's third)."""
        if self.learning_rate is not None:
            return self.learning_rate
        return OPTIMIZERS.get(self.optimizer, OPTIMIZERS["adamw"]).learning_rate(self.recipe.learning_rate)

    @property
    def effective_timestep_sampling(self) -> str:
        return self.recipe.timestep_sampling if self.timestep_sampling == "auto" else self.timestep_sampling

    @property
    def effective_text_encoder_lr(self) -> float:
        """5e-5, the usual text-encoder rate; with an optimizer that sets its own step size (Prodigy), half the
        UNet's multiplier, as the usual rates are half of each other."""
        if self.text_encoder_lr is not None:
            return self.text_encoder_lr
        return self.effective_learning_rate / 2 if OPTIMIZERS.get(self.optimizer, OPTIMIZERS["adamw"]).absolute else 5e-5

    @property
    def adapter_name(self) -> str:
        if self.name:
            return self.name
        if self.out is not None:
            return self.out.stem if self.out.suffix == ".safetensors" else self.out.name
        return Path(self.data).resolve().name or "style"

    @property
    def out_dir(self) -> Path:
        """The run folder: checkpoints, samples, metrics and caches live here."""
        if self.out is None:
            return Path("adapters") / self.adapter_name
        return self.out.parent if self.out.suffix == ".safetensors" else self.out

    @property
    def adapter_path(self) -> Path:
        if self.out is not None and self.out.suffix == ".safetensors":
            return self.out
        return self.out_dir / f"{self.adapter_name}.safetensors"

    def to_json_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}


def validate(config: TrainConfig) -> TrainConfig:
    """Check every field and return the config unchanged; raise ConfigError naming the first bad one."""
    c = config
    checks: list[tuple[bool, str, str]] = [
        (c.rank >= 1, "rank", "the rank must be a whole number of at least 1 (4 to 32 is usual)"),
        (c.threads is None or c.threads >= 1, "threads", "use at least 1 thread, or leave it out to share the cores"),
        *mask_checks(c),  # the loss masks and their prior (data/masks.py)
        (c.alpha is None or c.alpha > 0, "alpha", "alpha must be above 0 (leave it out to use the rank)"),
        (0 <= c.dropout < 1, "dropout", "LoRA dropout must be in [0, 1)"),
        (0 <= c.caption_dropout < 1, "caption_dropout", "caption dropout is a rate in [0, 1)"),
        (c.keep_tags >= 0, "keep_tags", "the number of leading tags to keep must be 0 or more"),
        *bucket_checks(c),  # the resolution and the bucket settings (data/buckets.py)
        (c.learning_rate is None or c.learning_rate > 0, "learning_rate", "the learning rate must be above 0, e.g. 1e-4"),
        (c.text_encoder_lr is None or c.text_encoder_lr > 0, "text_encoder_lr",
         "the learning rate must be above 0, e.g. 5e-5"),
        (c.lr_schedule in LR_SCHEDULES, "lr_schedule", f"choose one of {', '.join(LR_SCHEDULES)}"),
        *optimizer_checks(c),  # the optimizer's own options (train/optimizers.py)
        (c.warmup_steps >= 0, "warmup_steps", "warmup steps must be 0 or more"),
        (c.max_steps is None or c.max_steps >= 1, "max_steps", "train for at least 1 step"),
        (c.epochs is None or c.epochs >= 1, "epochs", "train for at least 1 epoch"),
        (c.batch_size >= 1, "batch_size", "the batch size must be at least 1"),
        (c.grad_accumulation >= 1, "grad_accumulation", "accumulate over at least 1 batch"),
        (c.max_grad_norm >= 0, "max_grad_norm", "the clipping norm must be 0 (off) or more"),
        (c.weight_decay >= 0, "weight_decay", "weight decay must be 0 or more"),
        (c.min_snr_gamma >= 0, "min_snr_gamma", "gamma must be 0 (off) or more; 5 is usual"),
        (c.noise_offset >= 0, "noise_offset", "the noise offset must be 0 or more; 0.05 is usual"),
        *sampling_checks(c),  # the timestep sampling's options (train/objective.py)
        *loss_checks(c),  # the loss's options (train/loss.py)
        (c.loraplus_ratio >= 0, "loraplus_ratio", "the LoRA+ ratio must be 0 (off) or more; 16 is the paper's usual value"),
        (c.precision in PRECISIONS, "precision", f"choose one of {', '.join(PRECISIONS)}"),
        (c.quantize_base in QUANTIZE_MODES, "quantize_base", f"choose one of {', '.join(QUANTIZE_MODES)}"),
        (c.method in METHODS, "method", f"choose one of {', '.join(METHODS)}"),
        *target_checks(c, UNET_TARGETS),  # the modules adapted: a preset or a list (methods/__init__.py)
        *method_checks(c),  # the method's own options (methods/method.py)
        (c.save_every >= 0, "save_every", "save every N steps, N >= 0 (0 = only at the end)"),
        (c.sample_every >= 0, "sample_every", "sample every N steps, N >= 0 (0 = never)"),
        (c.log_every >= 1, "log_every", "log every N steps, N >= 1"),
        (c.log_with in TRACKERS, "log_with", f"choose one of {', '.join(TRACKERS)}"),
        *stopping_checks(c),  # validation, early stopping, selection and the EMA (train/stopping.py)
        (c.preserve_weight >= 0, "preserve_weight", "the preservation weight must be 0 or more; 1 is usual"),
        (c.reg_weight >= 0, "reg_weight", "the regularisation weight must be 0 or more; 1 is usual"),
        (c.reg_data is not None or c.reg_weight == 1.0, "reg_weight",
         "the weight is for regularisation images: add --reg-data DIR, or leave out --reg-weight"),
        (c.max_steps is None or c.epochs is None, "epochs", "give --max-steps or --epochs, not both"),
    ]
    refuse_first(c, checks)
    return config
