"""The optimizers `--optimizer` names. Each is built by its maintained library: torch's fused AdamW, bitsandbytes'
8-bit AdamW, the Prodigy authors' prodigyopt, Meta's schedulefree and lucidrains' lion-pytorch. Here is only which
one, the learning rate it is usually run at, and what the loop must know of it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class OptimizerKind:
    name: str
    module: str  # the library's import name ("" for torch's own)
    package: str  # what `pip install` takes
    class_path: str  # module.Class, as kohya writes it in ss_optimizer
    build: Callable[[Any, list[dict], Any], torch.optim.Optimizer]  # (library, groups, TrainConfig)
    # The rate it is run at when --lr is not given, as a multiple of the base's usual AdamW rate; Prodigy
    # estimates its own step size and is run at 1.0 whatever the base (absolute=True).
    usual_rate: float = 1.0
    absolute: bool = False
    # Schedule-free: the weights to validate and save (its average) differ from those it steps; it warms up
    # itself and replaces the learning-rate schedule.
    schedule_free: bool = False

    def learning_rate(self, adamw_rate: float) -> float:
        return self.usual_rate if self.absolute else adamw_rate * self.usual_rate


def _adamw(_, groups, config):
    # The fused kernel (CPU and CUDA) updates every LoRA tensor in one call: about a millisecond a step less.
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay, fused=True)


def _adamw8bit(bnb, groups, config):
    return bnb.optim.AdamW8bit(groups, weight_decay=config.weight_decay)


def _prodigy(prodigyopt, groups, config):
    # safeguard_warmup and bias correction as the Prodigy authors advise for diffusion fine-tuning
    return prodigyopt.Prodigy(groups, weight_decay=config.weight_decay, safeguard_warmup=config.warmup_steps > 0,
                              use_bias_correction=True)


def _schedule_free(schedulefree, groups, config):
    return schedulefree.AdamWScheduleFree(groups, weight_decay=config.weight_decay, warmup_steps=config.warmup_steps)


def _lion(lion_pytorch, groups, config):
    return lion_pytorch.Lion(groups, weight_decay=config.weight_decay)


OPTIMIZERS = {kind.name: kind for kind in (
    OptimizerKind("adamw", "", "", "torch.optim.adamw.AdamW", _adamw),
    OptimizerKind("adamw8bit", "bitsandbytes", "bitsandbytes", "bitsandbytes.optim.adamw.AdamW8bit", _adamw8bit),
    OptimizerKind("prodigy", "prodigyopt", "prodigyopt", "prodigyopt.prodigy.Prodigy", _prodigy, usual_rate=1.0,
                  absolute=True),
    OptimizerKind("schedule-free", "schedulefree", "schedulefree", "schedulefree.adamw_schedulefree.AdamWScheduleFree",
                  _schedule_free, schedule_free=True),
    # The Lion paper runs it 3-10x below AdamW's rate (its sign update takes larger steps)
    OptimizerKind("lion", "lion_pytorch", "lion-pytorch", "lion_pytorch.lion_pytorch.Lion", _lion, usual_rate=1 / 3),
)}


def build_optimizer(name: str, groups: list[dict], config: Any) -> torch.optim.Optimizer:
    """The optimizer `name` over `groups`, its library imported now; a missing library is a one-line error."""
    kind = OPTIMIZERS[name]
    try:
        library = importlib.import_module(kind.module) if kind.module else None
    except ImportError:
        raise ConfigError(f"--optimizer {name} needs the {kind.package} package: pip install {kind.package}") from None
    optimizer = kind.build(library, groups, config)
    if kind.schedule_free:
        optimizer.train()  # it steps only in train mode
    return optimizer
