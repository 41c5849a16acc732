"""The optimizers `--optimizer` names. Each is built by its maintained library: torch's fused AdamW, bitsandbytes'
8-bit AdamW, the Prodigy authors' prodigyopt, Meta's schedulefree, prodigy-plus-schedule-free and lucidrains'
lion-pytorch. Here is only which one, the arguments it is usually run with, and what the loop must know of it."""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class OptimizerKind:
    name: str
    class_path: str  # module.Class as kohya writes it in ss_optimizer; imported from `package`'s top module
    package: str = ""  # what `pip install` takes ("": torch's own)
    # Its usual keyword arguments beyond the rate and weight decay, from the TrainConfig
    arguments: Callable[[Any], dict] = field(default=lambda config: {})
    # The rate it is run at when --lr is not given, as a multiple of the base's usual AdamW rate; an optimizer that
    # estimates its own step size (Prodigy) is run at 1.0 whatever the base (absolute=True).
    usual_rate: float = 1.0
    absolute: bool = False
    # Schedule-free: the weights to validate and save (its average) differ from those it steps, and it replaces
    # the learning-rate schedule.
    schedule_free: bool = False
    takes_warmup: bool = True  # False: it warms up itself, and --warmup-steps would be a second warmup

    def learning_rate(self, adamw_rate: float) -> float:
        return self.usual_rate if self.absolute else adamw_rate * self.usual_rate


OPTIMIZERS = {kind.name: kind for kind in (
    # The fused kernel (CPU and CUDA) updates every LoRA tensor in one call: about a millisecond a step less.
    OptimizerKind("adamw", "torch.optim.adamw.AdamW", arguments=lambda c: {"fused": True}),
    OptimizerKind("adamw8bit", "bitsandbytes.optim.adamw.AdamW8bit", "bitsandbytes"),
    # safeguard warmup and bias correction, as the Prodigy authors advise for diffusion fine-tuning
    OptimizerKind("prodigy", "prodigyopt.prodigy.Prodigy", "prodigyopt", absolute=True,
                  arguments=lambda c: {"safeguard_warmup": c.warmup_steps > 0, "use_bias_correction": True}),
    OptimizerKind("adamw-schedulefree", "schedulefree.adamw_schedulefree.AdamWScheduleFree", "schedulefree",
                  arguments=lambda c: {"warmup_steps": c.warmup_steps}, schedule_free=True),
    OptimizerKind("prodigy-schedulefree", "prodigyplus.prodigy_plus_schedulefree.ProdigyPlusScheduleFree",
                  "prodigy-plus-schedule-free", absolute=True, schedule_free=True, takes_warmup=False),
    # The Lion paper runs it 3-10x below AdamW's rate (its sign update takes larger steps)
    OptimizerKind("lion", "lion_pytorch.lion_pytorch.Lion", "lion-pytorch", usual_rate=1 / 3),
)}


BLOCK_KEYS = ("down", "mid", "up", *(f"{side}.{n}" for side in ("down", "up") for n in range(4)))


def block_rates(text: str) -> dict[str, float]:
    """`--block-lr down=0.5,up.3=2` as {block: multiple of the UNet rate}; a ValueError when it does not read."""
    rates = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sign, value = item.partition("=")
        rate = float(value)
        if not sign or key.strip() not in BLOCK_KEYS or not rate >= 0 or rate == float("inf"):
            raise ValueError(item)
        rates[key.strip()] = rate
    return rates


def block_key(name: str) -> str:
    """The --block-lr keys a UNet parameter answers to, most specific first: ("down.1", "down") for
    down_blocks.1..., ("mid",) for mid_block..., () for the rest (conv_in, time embedding)."""
    if name.startswith("mid_block."):
        return "mid"
    for side in ("down", "up"):
        if name.startswith(f"{side}_blocks."):
            return f"{side}.{name.split('.')[1]}"
    return ""


def parse_optimizer_args(text: str) -> dict[str, Any]:
    """`key=value,...` as keyword arguments: numbers, true/false and None as such, anything else a string."""
    arguments = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sign, value = item.partition("=")
        if not sign or not key.strip().isidentifier():
            raise ValueError(f"{item!r} is not key=value")
        words = {"true": True, "false": False, "none": None}
        try:
            arguments[key.strip()] = words[value.strip().lower()] if value.strip().lower() in words else ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            arguments[key.strip()] = value.strip()
    return arguments


def optimizer_checks(c: Any) -> list[tuple[bool, str, str]]:
    """What a TrainConfig's --optimizer, --optimizer-args and --block-lr refuse, alone and with the options they
    meet: (holds, field, what to do instead), as config.validate lists them."""
    kind = OPTIMIZERS.get(c.optimizer)
    schedule_free = kind is not None and kind.schedule_free
    return [
        (kind is not None, "optimizer", f"choose one of {', '.join(OPTIMIZERS)}"),
        (not schedule_free or c.lr_schedule == "constant", "lr_schedule",
         f"{c.optimizer} replaces the schedule; leave --lr-schedule at constant"),
        (not schedule_free or not c.ema_decay, "ema_decay",
         f"{c.optimizer} saves its own average of the weights; leave out --ema-decay"),
        (kind is None or kind.takes_warmup or not c.warmup_steps, "warmup_steps",
         f"{c.optimizer} warms up itself (its step size starts small); leave out --warmup-steps"),
        (_reads(parse_optimizer_args, c.optimizer_args), "optimizer_args",
         "write key=value pairs split by commas, e.g. d_coef=2"),
        (_reads(block_rates, c.block_lr), "block_lr",
         "name down, mid, up or down.0 to up.3 with a multiple of --lr of 0 or more, e.g. down=0.5,up.3=2"),
    ]


def _reads(parse: Callable[[str], Any], text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True


def build_optimizer(name: str, groups: list[dict], config: Any) -> torch.optim.Optimizer:
    """The optimizer `name` over `groups`, its library imported now; a missing library, or an argument it does not
    take, is a one-line error."""
    kind = OPTIMIZERS[name]
    module, _, class_name = kind.class_path.rpartition(".")
    try:
        optimizer_class = getattr(importlib.import_module(module), class_name)
    except ImportError:
        raise ConfigError(f"--optimizer {name} needs the {kind.package} package: pip install {kind.package}") from None
    arguments = {"weight_decay": config.weight_decay} | kind.arguments(config) | parse_optimizer_args(config.optimizer_args)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # prodigyopt prints its weight-decay mode to stdout
            optimizer = optimizer_class(groups, **arguments)
    except TypeError as error:  # an argument its constructor does not take
        raise ConfigError(f"--optimizer-args = {config.optimizer_args!r}: {name} refuses it ({error})") from None
    if kind.schedule_free:
        optimizer.train()  # it steps only in train mode
    return optimizer


def parameter_groups(model: torch.nn.Module, lr: float, loraplus_ratio: float,
                     block_lr: dict[str, float] | None = None) -> list[dict]:
    """The model's trainable LoRA tensors as optimizer groups, one per rate. With LoRA+ (Hayou et al. 2024) the B
    (up) matrices get `loraplus_ratio` times the rate of A; with `block_lr` each UNet block its own multiple of it
    (kohya's down/mid/up_lr_weight), the most specific key named winning ("down.1" over "down"). peft's
    create_loraplus_optimizer does the LoRA+ split but builds the optimizer for one model at one rate; the UNet and
    text encoder have two."""
    rates: dict[float, list[torch.nn.Parameter]] = {}
    named = set()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        key = block_key(name)
        named |= {key, key.split(".")[0]}
        rate = lr * next((block_lr[k] for k in (key, key.split(".")[0]) if block_lr and k in block_lr), 1.0)
        if loraplus_ratio and ".lora_B." in name:
            rate *= loraplus_ratio
        rates.setdefault(rate, []).append(parameter)
    missing = sorted(set(block_lr or {}) - named)
    if missing:
        raise ConfigError(f"--block-lr {missing[0]}: no adapted layer of this base lies in that block (adapted: "
                          f"{', '.join(sorted(k for k in named if k not in ('', 'down', 'up')))}); name one of those")
    return [{"params": params, "lr": rate} for rate, params in rates.items()]
