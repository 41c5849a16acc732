"""Typed job configs. Both the CLI and the UI build these; `validate()` is the one place they are checked."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.buckets import BucketSettings
from ..errors import ConfigError
from ..methods import METHODS, TARGET_PRESETS, AdapterSpec, method_checks, method_of
from ..model.quantize import QUANTIZE_MODES
from ..options import field_values, read_toml

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
LR_SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("auto", "no", "fp16", "bf16")


@dataclass
class TrainConfig:
    """Everything one training run needs. Field names are the CLI flags with '-' for '_'."""

    data: Path
    out: Path | None = None
    name: str | None = None
    base: str = "mini"
    # captions
    caption: str = ""
    trigger: str = ""
    caption_dropout: float = 0.0
    shuffle_tags: bool = False
    keep_tags: int = 0
    # images
    resolution: int | None = None  # None: the base model's native size
    random_crop: bool = False
    flip: bool = False
    buckets: bool = True  # aspect-ratio buckets (buckets.py); off: every image is a centre square
    bucket_step: int | None = None  # bucket sides are multiples of this (None: 64; 8 for the miniature base)
    min_bucket: int | None = None  # the shortest bucket side (None: half the resolution)
    max_bucket: int | None = None  # the longest bucket side (None: twice the resolution)
    no_upscale: bool = False  # never enlarge an image to fill a bucket: each keeps its own size, on the step
    # adapter
    rank: int = 4
    alpha: float | None = None  # None: equal to rank, so the scale is 1
    dropout: float = 0.0
    target_modules: tuple[str, ...] = UNET_TARGETS
    train_text_encoder: bool = False
    text_encoder_targets: tuple[str, ...] = TEXT_ENCODER_TARGETS
    method: str = "lora"  # lora, dora, loha, lokr, adalora or dylora
    targets: str | None = None  # a module preset (attn, attn-mlp, all-linear, all) instead of target_modules
    conv_rank: int | None = None  # rank of the 3x3 convolutions that --targets all adapts (None: --rank)
    conv_alpha: float | None = None  # their alpha (None: the conv rank)
    target_rank: int | None = None  # AdaLoRA: the average rank it prunes down to (None: half of --rank)
    export_rank: int | None = None  # DyLoRA: the rank the adapter file holds (None: --rank)
    train_bias: bool = False  # LoRA, DoRA: the adapted layers' biases train too
    rslora: bool = False  # rank-stabilised scale alpha/sqrt(rank) instead of alpha/rank
    loraplus_ratio: float = 0.0  # LoRA+: B (up) matrices learn this many times faster than A; 0 = off
    # optimisation
    learning_rate: float | None = None  # None: 1e-4 for real Stable Diffusion, 2e-3 for the tiny 'mini'
    text_encoder_lr: float = 5e-5
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    max_steps: int | None = None
    epochs: int | None = None
    batch_size: int = 4
    grad_accumulation: int = 1
    max_grad_norm: float = 1.0
    weight_decay: float = 1e-2
    min_snr_gamma: float = 0.0
    noise_offset: float = 0.0
    seed: int = 0
    # speed
    precision: str = "auto"
    quantize_base: str = "none"  # hold the frozen base in nf4, int8 or fp8 (quantize.py); the adapter stays float32
    gradient_checkpointing: bool = False
    cache_latents: bool = True
    # outputs
    save_every: int = 0
    resume: bool = False
    sample_every: int = 0
    sample_prompts: tuple[str, ...] = ()
    log_every: int = 1
    # knowing when to stop (validation.py)
    validation_split: float = 0.0  # fraction of the images held out to measure a validation loss
    validation_data: Path | None = None  # a separate folder of held-out images instead
    validate_every: int | None = None  # in steps (None: a twentieth of the run)
    early_stop: int = 0  # stop after this many validations without improvement; 0 = never
    min_delta: float = 0.0  # what counts as an improvement of the validation loss
    keep: str | None = None  # best or last step's adapter as the file (None: best with validation, else last)
    ema_decay: float = 0.0  # exponential moving average of the adapter weights; 0 = off
    preserve_prompts: Path | None = None  # file of prompts on which the base's own prediction is the target
    preserve_weight: float = 1.0  # weight of that preservation loss
    # `stylelora suggest` fills rank, alpha, learning rate and steps where they are left at their defaults
    auto: bool = False

    @property
    def validating(self) -> bool:
        return bool(self.validation_split) or self.validation_data is not None

    @property
    def keep_step(self) -> str:
        return self.keep or ("best" if self.validating else "last")

    @property
    def effective_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def unet_targets(self) -> tuple[str, ...]:
        return TARGET_PRESETS[self.targets] if self.targets else self.target_modules

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
    def effective_learning_rate(self) -> float:
        """The usual LoRA rate for Stable Diffusion, 1e-4; the miniature base's small attention layers
        learn a style in minutes at 2e-3 (on the sample styles, 3e-3, rank 8 or the text encoder did no
        better)."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-3 if self.base == "mini" else 1e-4

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


def _fail(field_name: str, value: Any, fix: str) -> ConfigError:
    flag = "--" + field_name.replace("_", "-")
    return ConfigError(f"{flag} = {value!r}: {fix}")


def validate(config: TrainConfig) -> TrainConfig:
    """Check every field and return the config unchanged; raise ConfigError naming the first bad one."""
    c = config
    checks: list[tuple[bool, str, str]] = [
        (c.rank >= 1, "rank", "the rank must be a whole number of at least 1 (4 to 32 is usual)"),
        (c.alpha is None or c.alpha > 0, "alpha", "alpha must be above 0 (leave it out to use the rank)"),
        (0 <= c.dropout < 1, "dropout", "LoRA dropout must be in [0, 1)"),
        (0 <= c.caption_dropout < 1, "caption_dropout", "caption dropout is a rate in [0, 1)"),
        (c.keep_tags >= 0, "keep_tags", "the number of leading tags to keep must be 0 or more"),
        (c.resolution is None or (c.resolution >= 8 and c.resolution % 8 == 0), "resolution",
         "the resolution must be a positive multiple of 8, e.g. 512"),
        (c.bucket_step is None or (c.bucket_step >= 8 and c.bucket_step % 8 == 0), "bucket_step",
         "bucket sides step by a positive multiple of 8: 64 is usual (8 for the miniature base)"),
        (c.min_bucket is None or (c.min_bucket >= 8 and c.min_bucket % 8 == 0), "min_bucket",
         "the shortest bucket side must be a positive multiple of 8, e.g. 256"),
        (c.max_bucket is None or (c.max_bucket >= 8 and c.max_bucket % 8 == 0), "max_bucket",
         "the longest bucket side must be a positive multiple of 8, e.g. 1024"),
        (c.min_bucket is None or c.max_bucket is None or c.min_bucket <= c.max_bucket, "min_bucket",
         f"the shortest bucket side must not exceed --max-bucket {c.max_bucket}"),
        (c.buckets or not (c.no_upscale or c.bucket_step or c.min_bucket or c.max_bucket),
         "no_upscale" if c.no_upscale else "bucket_step" if c.bucket_step else "min_bucket" if c.min_bucket else "max_bucket",
         "bucket settings need bucketing: leave out --no-buckets"),
        (c.learning_rate is None or c.learning_rate > 0, "learning_rate", "the learning rate must be above 0, e.g. 1e-4"),
        (c.text_encoder_lr > 0, "text_encoder_lr", "the learning rate must be above 0, e.g. 5e-5"),
        (c.lr_schedule in LR_SCHEDULES, "lr_schedule", f"choose one of {', '.join(LR_SCHEDULES)}"),
        (c.warmup_steps >= 0, "warmup_steps", "warmup steps must be 0 or more"),
        (c.max_steps is None or c.max_steps >= 1, "max_steps", "train for at least 1 step"),
        (c.epochs is None or c.epochs >= 1, "epochs", "train for at least 1 epoch"),
        (c.batch_size >= 1, "batch_size", "the batch size must be at least 1"),
        (c.grad_accumulation >= 1, "grad_accumulation", "accumulate over at least 1 batch"),
        (c.max_grad_norm >= 0, "max_grad_norm", "the clipping norm must be 0 (off) or more"),
        (c.weight_decay >= 0, "weight_decay", "weight decay must be 0 or more"),
        (c.min_snr_gamma >= 0, "min_snr_gamma", "gamma must be 0 (off) or more; 5 is usual"),
        (c.noise_offset >= 0, "noise_offset", "the noise offset must be 0 or more; 0.05 is usual"),
        (c.loraplus_ratio >= 0, "loraplus_ratio", "the LoRA+ ratio must be 0 (off) or more; 16 is the paper's usual value"),
        (c.precision in PRECISIONS, "precision", f"choose one of {', '.join(PRECISIONS)}"),
        (c.quantize_base in QUANTIZE_MODES, "quantize_base", f"choose one of {', '.join(QUANTIZE_MODES)}"),
        (c.method in METHODS, "method", f"choose one of {', '.join(METHODS)}"),
        (c.targets is None or c.targets in TARGET_PRESETS, "targets", f"choose one of {', '.join(TARGET_PRESETS)}"),
        (c.targets is None or c.target_modules == UNET_TARGETS, "targets",
         "give --targets (a preset) or --target-modules (your own list), not both"),
        (c.conv_rank is None or c.conv_rank >= 1, "conv_rank", "the conv rank must be a whole number of at least 1"),
        (c.conv_alpha is None or c.conv_alpha > 0, "conv_alpha", "the conv alpha must be above 0"),
        (c.targets == "all" or (c.conv_rank is None and c.conv_alpha is None), "conv_rank" if c.conv_rank else "conv_alpha",
         "only --targets all adapts the 3x3 convolutions; add --targets all, or leave out --conv-rank/--conv-alpha"),
        *method_checks(c),  # the method's own options (methods/method.py)
        (c.save_every >= 0, "save_every", "save every N steps, N >= 0 (0 = only at the end)"),
        (c.sample_every >= 0, "sample_every", "sample every N steps, N >= 0 (0 = never)"),
        (c.log_every >= 1, "log_every", "log every N steps, N >= 1"),
        (0 <= c.validation_split < 1, "validation_split", "hold out a fraction in [0, 1), e.g. 0.2"),
        (not (c.validation_split and c.validation_data is not None), "validation_data",
         "give --validation-split (held out of the folder) or --validation-data (another folder), not both"),
        (c.validate_every is None or c.validate_every >= 1, "validate_every", "validate every N steps, N >= 1"),
        (c.validate_every is None or c.validating, "validate_every",
         "there is nothing to validate on: add --validation-split 0.2 or --validation-data DIR"),
        (c.early_stop >= 0, "early_stop", "the patience is a number of validations, 0 (never stop early) or more"),
        (not c.early_stop or c.validating, "early_stop",
         "early stopping watches the validation loss: add --validation-split 0.2 or --validation-data DIR"),
        (c.min_delta >= 0, "min_delta", "the least improvement that counts must be 0 or more, e.g. 0.0005"),
        (c.keep in (None, "best", "last"), "keep", "choose best or last"),
        (c.keep != "best" or c.validating, "keep",
         "the best step is the one with the lowest validation loss: add --validation-split 0.2 or --validation-data DIR"),
        (0 <= c.ema_decay < 1, "ema_decay", "the EMA decay is in [0, 1), e.g. 0.99; 0 = off"),
        (c.preserve_weight >= 0, "preserve_weight", "the preservation weight must be 0 or more; 1 is usual"),
        (bool(c.target_modules), "target_modules", "name at least one module, e.g. to_q,to_k,to_v,to_out.0"),
        (c.max_steps is None or c.epochs is None, "epochs", "give --max-steps or --epochs, not both"),
    ]
    for ok, name, fix in checks:
        if not ok:
            raise _fail(name, getattr(c, name), fix)
    return config


_TUPLE_FIELDS = {f.name for f in dataclasses.fields(TrainConfig) if "tuple" in str(f.type)}
_PATH_FIELDS = {"data", "out", "validation_data", "preserve_prompts"}


def _as_tuple(value: Any) -> tuple:
    return tuple(value.split(",")) if isinstance(value, str) else tuple(value)


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from plain values (a TOML table, UI fields), converting types; unknown keys are errors."""
    convert = {name: Path for name in _PATH_FIELDS} | {name: _as_tuple for name in _TUPLE_FIELDS}
    converted = field_values(TrainConfig, values, "train", convert)
    if "data" not in converted:
        raise ConfigError("no image folder given: pass it as the first argument, e.g. `stylelora train ./images`")
    return TrainConfig(**converted)


def load_toml(path: Path) -> dict[str, Any]:
    """Read a --config file. Its keys are the flag names, e.g. `max-steps = 500`."""
    table = read_toml(path)
    return dict(table.get("train", table))
