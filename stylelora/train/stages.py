"""The training stages' typed outputs: the frozen base (`Model`) and the optimisation (`Optimisation`).

They live apart from the loop so that the stages (inputs, step_loss, checkpoint, outputs) can name them without
importing the loop that calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import DiffusionPipeline

from ..families import Family
from ..methods.method import StepHooks
from .config import TrainConfig
from .validation import AdapterAverage

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "no": torch.float32}


@dataclass
class Model:
    """Stage output: the base, frozen, in its training precision, with what the loop reads off it."""

    pipe: DiffusionPipeline
    precision: str  # "no", "fp16" or "bf16"
    resolution: int
    latent_scale: float
    family: Family
    prediction_type: str
    base_id: str = ""  # the base's fingerprint (model.base.base_fingerprint), taken before any adapter is attached
    latent_shift: float = 0.0  # the VAE's shift_factor (SD3, Flux): latents are (encoded - shift) x scale

    @property
    def weight_dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @property
    def architecture(self) -> str:
        return self.family.name

    def trained_parts(self, config: TrainConfig) -> dict[str, torch.nn.Module]:
        """The models that carry adapters, by part name: the UNet, and every text encoder of the family with
        --train-text-encoder (SDXL: both)."""
        models = self.family.models(self.pipe)
        return {part: model for part, model in models.items() if part == "unet" or config.train_text_encoder}


@dataclass
class Optimisation:
    """Stage output: the adapters' parameter groups, the optimizer and its schedule, and where to start."""

    groups: list[dict]
    optimizer: torch.optim.Optimizer
    lr_schedule: object
    steps: int
    hooks: StepHooks = field(default_factory=StepHooks)  # the method's per-step work
    average: AdapterAverage = field(default_factory=lambda: AdapterAverage([], 0.0))  # the EMA (decay 0: off)
    start_step: int = 0
    resumed_watch: tuple[dict, dict | None] = ({}, None)  # a checkpoint's Watch state and best tensors

    @property
    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for group in self.groups for p in group["params"]]
