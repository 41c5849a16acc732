"""A stack of weighted adapters: how strongly each applies (`StyleWeight`, per part and UNet block), the
`FILE:WEIGHT` spec that names one, and the layer lookups both painters and the merges share."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import AdapterFileError, ConfigError
from ..methods.layouts import LoraModule
from ..model.quantize import float_weight
from .formats import LoraWeights

BLOCKS = ("down", "mid", "up")


def block_of(module: str) -> str:
    """The UNet block a module path is in, as block weights name them: down, mid or up."""
    return "mid" if module.startswith("mid_block") else module.split("_", 1)[0]


@dataclass(frozen=True)
class StyleWeight:
    """How strongly one adapter applies: to the UNet and to the text encoder (if it adapts one).
    `blocks` optionally overrides the UNet weight for its down, mid and up blocks, as in
    diffusers' set_adapters block dictionaries and AUTOMATIC1111's block-weight extension."""

    unet: float
    text_encoder: float
    blocks: tuple[tuple[str, float], ...] = ()

    def for_module(self, part: str, module: str) -> float:
        """The weight that applies to one module, e.g. ('unet', 'down_blocks.0.attentions.0...')."""
        if part != "unet":
            return self.text_encoder
        return dict(self.blocks).get(block_of(module), self.unet)

    def unet_setting(self) -> float | dict[str, float]:
        """The UNet weight in diffusers' set_adapters form: a number, or a per-block dictionary."""
        return {block: dict(self.blocks).get(block, self.unet) for block in BLOCKS} if self.blocks else self.unet

    @property
    def is_off(self) -> bool:
        return self.unet == 0 and self.text_encoder == 0 and all(w == 0 for _, w in self.blocks)

    @classmethod
    def parse(cls, text: str, flag: str = "--lora") -> "StyleWeight":
        """'0.7' for every part, or named parts: 'unet=0.8,te=0.5', 'down=0,mid=1,up=0.6' (unset parts: 1)."""
        try:
            if "=" not in text:
                value = float(text)
                if not math.isfinite(value):
                    raise ValueError
                return cls(value, value)
            parts = {k.strip(): float(v) for k, v in (part.split("=", 1) for part in text.split(","))}
            if set(parts) - {"unet", "te", *BLOCKS} or not all(map(math.isfinite, parts.values())):
                raise ValueError
            blocks = tuple((b, parts[b]) for b in BLOCKS if b in parts)
            return cls(parts.get("unet", 1.0), parts.get("te", 1.0), blocks)
        except ValueError:
            raise ConfigError(f"{flag} weight {text!r}: give a number like 0.7, or parts like unet=0.8,te=0.5 "
                              "or down=0,mid=1,up=0.6") from None


def parse_lora_spec(spec: str) -> tuple[Path, StyleWeight]:
    """'path.safetensors:0.7' or 'path.safetensors:unet=0.8,te=0.5' or just 'path.safetensors' (weight 1)."""
    match = re.fullmatch(r"(.+?\.safetensors)(?::(.+))?", spec) or re.fullmatch(r"(.+?):([-+0-9.=,a-z ]+)", spec)
    if match is None:
        return Path(spec), StyleWeight(1.0, 1.0)
    return Path(match.group(1)), StyleWeight.parse(match.group(2)) if match.group(2) else StyleWeight(1.0, 1.0)


def find_layer(model: torch.nn.Module, module: str) -> torch.nn.Module | None:
    """The layer a file's module path names (text-encoder paths keep `text_model.`, which transformers 5 dropped)."""
    for candidate in (module, module.removeprefix("text_model.")):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    return None


def plain_lora(weights: LoraWeights, models: dict[str, torch.nn.Module], path: Path, made_for: str) -> LoraWeights:
    """The adapter as plain LoRA at scale 1 (each module's alpha/rank folded into up), so no `.alpha` is needed.
    diffusers loads LoRA only, so DoRA, LoHa and LoKr modules become their exact LoRA equivalents
    (methods/layouts.py), computed against this base's own weights (a DoRA change depends on them); once loaded
    they blend, fuse, switch and reweight like any LoRA. The scale is folded because diffusers 0.42 keys a kohya
    file's per-module alphas on SD1 attention layers by their old `processor.to_q_lora` names, which match no
    layer: where alphas differ between modules (AdaLoRA, `resize --dynamic`, merges), those layers got the most
    common alpha instead of their own. The server (serve/) holds its adapters in this form too."""
    plain: LoraWeights = {}
    for (part, module), adapter in weights.items():
        if type(adapter) is not LoraModule:
            layer = find_layer(models[part], module)
            if layer is None:
                raise AdapterFileError(f"{path}: module {module} is not in this base; {made_for}")
            adapter = adapter.as_lora(float_weight(getattr(layer, "base_layer", layer)))
        plain[(part, module)] = LoraModule(adapter.down, adapter.up * adapter.scale, float(adapter.rank), adapter.bias)
    return plain
