"""What every adapter method answers, with plain LoRA's answers as the defaults: the seam a new method plugs into.

A method is one `Method` object, registered by name (methods/__init__.py). Everything that differs between
methods is asked of it: which options apply and the one-line error for the rest, which quantized bases it
trains over, its peft config and what it does to the layers after peft attaches them, its per-step work, the
rank and alpha its file holds, its kohya metadata, and how `resize` treats its files. Nothing outside methods/
compares a method's name.

Light on purpose: no torch or peft at import (the config reads these rules, and `stylelora --help` and config
errors must stay fast); the code that touches models imports them when it runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from . import AdapterSpec

QUANTIZED_BASES = ("nf4", "int8", "fp8")


class StepHooks:
    """A method's work around each optimizer step, called by the loop in a fixed order; none by default.
    Their state is part of a checkpoint (`state_dict`), so a resumed run continues exactly."""

    def before_step(self, step: int) -> None:
        pass

    def extra_loss(self) -> "torch.Tensor | float":
        return 0.0

    def after_optimizer_step(self, step: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


Check = tuple[bool, str, str]  # (holds, the option's field name, the fix), as train.config.validate reads them


@dataclass(frozen=True)
class Method:
    """One adapter method. The fields are its facts; the methods its behaviour, plain LoRA's unless overridden."""

    name: str  # as --method names it
    label: str  # as messages and the library name it: "LoRA"
    network_module: str = "networks.lora"  # kohya's ss_network_module (LyCORIS types: lycoris.kohya)
    lora_pair: bool = True  # trains a (down, up) pair: LoRA+ and LoRA's input dropout apply
    trains_bias: bool = False  # can train the adapted layers' biases (peft's lora_bias; the file's diff_b)
    plain_file: bool = True  # its file holds plain LoRA (down, up, alpha), which every layout can hold
    rslora: bool = False  # takes the rank-stabilised scale alpha/sqrt(rank)
    convolutions: bool = True  # with --targets all, its 3x3 convolutions take --conv-rank/--conv-alpha
    quantized_bases: tuple[str, ...] = QUANTIZED_BASES  # the --quantize-base modes it was measured to train over
    own_option: str | None = None  # the one option only this method reads (target_rank, export_rank)
    own_option_fix: str = ""  # the error for that option given to another method
    own_option_range_fix: str = ""  # the error for a value outside 1..--rank ({rank} stands for the rank)

    # -- options --------------------------------------------------------------------------------------------
    def fields(self, targets: str | None) -> frozenset[str]:
        """Which of METHOD_FIELDS apply with the `targets` preset; the UI shows only these."""
        fields = {"rslora"} if self.rslora else set()
        fields |= {"loraplus_ratio"} if self.lora_pair else set()
        fields |= {"train_bias"} if self.trains_bias else set()
        fields |= {self.own_option} if self.own_option else set()
        fields |= {"conv_rank", "conv_alpha"} if targets == "all" and self.convolutions else set()
        return frozenset(fields)

    def checks(self, config: Any, others: "MethodFacts") -> list[Check]:
        """The method's own option checks, in order; `others` names the methods that do take each option."""
        c = config
        return [
            (c.quantize_base not in self.quantize_modes_refused, "quantize_base",
             f"--method {self.name} cannot train over a {c.quantize_base} base; use --method "
             f"{' or '.join(others.over(c.quantize_base))}, or --quantize-base none"),
            (self.convolutions or (c.conv_rank is None and c.conv_alpha is None),
             "conv_rank" if c.conv_rank else "conv_alpha",
             f"{self.label} allocates every module's rank itself, convolutions included; leave out "
             "--conv-rank/--conv-alpha"),
            (self.rslora or not c.rslora, "rslora",
             f"rsLoRA scales {others.labels('rslora')}; --method {self.name} has its own scale (alpha/rank); "
             "leave out --rslora"),
            (self.lora_pair or not c.loraplus_ratio, "loraplus_ratio",
             f"LoRA+ speeds up the B matrices of {others.labels('lora_pair')}; --method {self.name} has none; "
             "leave out --loraplus-ratio"),
            (self.lora_pair or not c.dropout, "dropout",
             f"--dropout is LoRA's input dropout, used by {others.names('lora_pair', ' and ')}; leave it out "
             f"with --method {self.name}"),
            (self.trains_bias or not c.train_bias, "train_bias",
             f"--method {self.name} cannot carry trained biases; --train-bias works with --method "
             f"{others.names('trains_bias', ' or ')}"),
            *[(getattr(c, option) is None or option == self.own_option, option, fix)
              for option, fix in others.own_options().items()],
            *([(getattr(c, self.own_option) is None or 1 <= getattr(c, self.own_option) <= c.rank, self.own_option,
                self.own_option_range_fix.format(rank=c.rank))] if self.own_option else []),
        ]

    @property
    def quantize_modes_refused(self) -> tuple[str, ...]:
        return tuple(mode for mode in QUANTIZED_BASES if mode not in self.quantized_bases)

    # -- the file -------------------------------------------------------------------------------------------
    def conv_rank(self, config: Any) -> int | None:
        """The rank of the 3x3 convolutions (None: not adapted at their own rank)."""
        return (config.conv_rank or config.rank) if config.targets == "all" and self.convolutions else None

    def file_rank(self, config: Any) -> int:
        """The rank the file's metadata gives (ss_network_dim)."""
        return config.rank

    def file_alpha(self, config: Any) -> float:
        """The alpha the file stores. Loaders scale by alpha/rank, so an rsLoRA adapter (scale alpha/sqrt(rank))
        is written with alpha*sqrt(rank): the same delta in every tool."""
        alpha = config.effective_alpha
        return alpha * math.sqrt(config.rank) if config.rslora else alpha

    def network_args(self, config: Any) -> dict[str, str]:
        """ss_network_args beyond the convolutions', as kohya and LyCORIS write them (plain LoRA: none)."""
        return {}

    def metadata(self, config: Any, spec: "AdapterSpec") -> dict[str, Any]:
        """The method's own stylelora.* metadata keys (None values are written as null)."""
        return {}

    def truncates_on_resize(self) -> bool:
        """`stylelora resize` cuts its files to a lower rank exactly (DyLoRA) instead of by SVD."""
        return False

    # -- the model ------------------------------------------------------------------------------------------
    def peft_config(self, spec: "AdapterSpec", common: dict, total_steps: int):
        """The peft config that attaches it; `common` holds r, target_modules, rank_pattern and alpha_pattern."""
        from peft import LoraConfig

        return LoraConfig(lora_alpha=spec.alpha, lora_dropout=spec.dropout, init_lora_weights=True,
                          use_rslora=spec.rslora, lora_bias=spec.train_bias, **common)

    def add_to(self, model: "torch.nn.Module", config, adapter_name: str) -> None:
        """Attach the peft config to the model (diffusers' and transformers' add_adapter)."""
        model.add_adapter(config, adapter_name=adapter_name)

    def after_attach(self, model: "torch.nn.Module", adapter_name: str) -> None:
        """Turn peft's layers into this method's own (DoRA's column magnitude, DyLoRA's ranks); none for LoRA."""

    def step_hooks(self, models: list, seed: int, rank: int) -> StepHooks:
        return StepHooks()


@dataclass(frozen=True)
class LycorisMethod(Method):
    """A LyCORIS type that peft carries under LyCORIS's names and formula (LoHa, LoKr): its peft config class,
    and `algo` in ss_network_args, as LyCORIS's kohya network reads it."""

    peft_config_class: str = ""  # the peft config's class name, e.g. "LoHaConfig"

    def peft_config(self, spec: "AdapterSpec", common: dict, total_steps: int):
        import peft

        kind = getattr(peft, self.peft_config_class)
        return kind(alpha=spec.alpha, init_weights=True, use_effective_conv2d=False, **common)

    def network_args(self, config: Any) -> dict[str, str]:
        return {"algo": self.name}


class MethodFacts:
    """The registered methods seen together, for messages that name the ones that do take an option."""

    def __init__(self, methods: dict[str, Method]):
        self.methods = methods

    def _with(self, fact: str) -> list[Method]:
        return [m for m in self.methods.values() if getattr(m, fact)]

    def labels(self, fact: str) -> str:
        return _and([m.label for m in self._with(fact)], " and ")

    def names(self, fact: str, last: str) -> str:
        return _and([m.name for m in self._with(fact)], last)

    def over(self, mode: str) -> list[str]:
        return [m.name for m in self.methods.values() if mode in m.quantized_bases]

    def own_options(self) -> dict[str, str]:
        return {m.own_option: m.own_option_fix for m in self.methods.values() if m.own_option}


def _and(words: list[str], last: str) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + last + words[-1]
