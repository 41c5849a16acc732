"""The training stages' typed outputs: the frozen base (`Model`) and the optimisation (`Optimisation`); and what
train() reports as it goes (`Progress`) and at its end (`TrainResult`).

They live apart from the loop so that the stages (inputs, step_loss, checkpoint, outputs) can name them without
importing the loop that calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from ..families import Family
from ..methods.method import StepHooks
from ..score.previews import PreviewScores
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


@dataclass
class Progress:
    step: int
    total_steps: int
    loss: float
    learning_rate: float
    steps_per_second: float
    seconds_left: float
    samples: list[Path] = field(default_factory=list)
    validation_loss: float | None = None  # set at the steps that validated
    scores: PreviewScores | None = None  # set at the steps that validated, with --select-by score


@dataclass
class TrainResult:
    adapter_path: Path
    steps: int  # the steps trained (fewer than planned after an early stop)
    loss: float
    seconds: float
    is_main: bool = True  # False in the other processes of a multi-process run, which write nothing
    kept_step: int = 0  # the step whose adapter is the file (--keep best: the best validation)
    validation_loss: float | None = None  # the kept step's
    stop_reason: str = ""
    base_validation_loss: float | None = None  # the base's own (no adapter), for reference
    scores: PreviewScores | None = None  # the kept step's previews' scores, with --select-by score
    trained: TrainConfig | None = None  # the settings the run trained with: --auto's suggestions filled in

    def kept_measures(self) -> str:
        """What the kept step measured, in words: its validation loss, and its previews' scores when scored."""
        said = [] if self.validation_loss is None else [f"validation loss {self.validation_loss:.5f}"]
        if self.base_validation_loss is not None and said:
            said[-1] += f" (the base alone: {self.base_validation_loss:.5f})"
        if self.scores is not None:
            said.append(f"preview score {self.scores.quality:.3f} (style {self.scores.style:.3f} x prompt "
                        f"{self.scores.prompt:.3f})")
        return ", ".join(said)

    @property
    def measured(self) -> bool:
        """Whether candidate steps were measured (validated, or their previews scored), so a step was chosen."""
        return self.validation_loss is not None or self.scores is not None
