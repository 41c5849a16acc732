"""DyLoRA (Valipour et al. 2023): one run trains every rank up to --rank, so the rank is chosen after training.

Each step draws a rank b in 1..r from the step's own seed (so a resumed run draws the same ranks). The
layer then computes with the first b components at scale (alpha / r) * sqrt(r / b), kohya's
networks/dylora.py scale, and only component b learns: the ones below it are held (detached), the ones
above it are cut off. kohya's module keeps the components above b in the forward pass too; the paper
truncates at b, which is what makes every truncation a trained model, so this follows the paper.
Outside training the layer uses its export rank (default: all r components).

Written as a peft LoRA variant: peft has no DyLoRA, and LyCORIS's would bring a second adapter system
into the loop. A truncation to rank k is plain LoRA with alpha * sqrt(k / r), so every loader reads it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import LoraLayer, LoraVariant

from .method import StepHooks


class DyLoraVariant(LoraVariant):
    @staticmethod
    def init(module: LoraLayer, adapter_name: str, **kwargs) -> None:
        module.dylora_rank = None  # the rank this training step draws
        module.dylora_eval_rank = None  # the rank outside training (None: every component)

    @staticmethod
    def forward(module: LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        lora_A, lora_B = module.lora_A[active_adapter], module.lora_B[active_adapter]
        down, up = lora_A.weight, lora_B.weight
        rank = down.shape[0]
        b = min((module.dylora_rank if module.training else module.dylora_eval_rank) or rank, rank)
        if module.training and b > 1:  # only component b learns this step
            down = torch.cat([down[: b - 1].detach(), down[b - 1: b]])
            up = torch.cat([up[:, : b - 1].detach(), up[:, b - 1: b]], dim=1)
        else:
            down, up = down[:b], up[:, :b]
        x = module.lora_dropout[active_adapter](x).to(down.dtype)
        if isinstance(lora_A, torch.nn.Conv2d):
            hidden = F.conv2d(x, down, None, lora_A.stride, lora_A.padding, lora_A.dilation, lora_A.groups)
            out = F.conv2d(hidden, up)
        else:
            out = F.linear(F.linear(x, down), up)
        return result + (out * dylora_scale(module.scaling[active_adapter], rank, b)).to(result.dtype)

    @staticmethod
    def merge_safe(module, active_adapter, orig_weight):
        raise RuntimeError("stylelora merges DyLoRA through its exported plain LoRA, not peft's merge")

    merge_unsafe = unmerge = merge_safe


def dylora_scale(full_scale: float, rank: int, b: int) -> float:
    """(alpha / r) * sqrt(r / b): the scale at rank b, given the full-rank scale alpha / r."""
    return full_scale * math.sqrt(rank / b)


def make_dylora(model: torch.nn.Module, adapter_name: str) -> list[LoraLayer]:
    layers = []
    for module in model.modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            module.lora_variant[adapter_name] = DyLoraVariant
            DyLoraVariant.init(module, adapter_name)
            layers.append(module)
    return layers


def set_dylora_rank(model: torch.nn.Module, rank: int | None, training: bool = False) -> None:
    """Compute with the first `rank` components (None: all of them): in training steps, or outside them."""
    for module in model.modules():
        if hasattr(module, "dylora_rank"):
            setattr(module, "dylora_rank" if training else "dylora_eval_rank", rank)


def draw_rank(seed: int, step: int, rank: int) -> int:
    """The rank step `step` trains: uniform in 1..rank, from (seed, step) alone."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step + 17)
    return int(torch.randint(1, rank + 1, (1,), generator=generator))


class DyLoraSteps(StepHooks):
    """Before each step, every adapted layer computes with the rank this step draws."""

    def __init__(self, models: list[torch.nn.Module], seed: int, rank: int):
        self.models, self.seed, self.rank = models, seed, rank

    def before_step(self, step: int) -> None:
        rank = draw_rank(self.seed, step, self.rank)
        for model in self.models:
            set_dylora_rank(model, rank, training=True)
