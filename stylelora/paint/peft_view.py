"""The engine's adapters shown through peft's own LoRA layers, between paintings.

A paint call adds each stack by the engine's hooks or fuses it (multilora.py). Outside a paint call, a `Styler`'s
model must still apply its weighted stack when it is called directly (probed, judged, compared against other
loaders), at exact, reversible peft scales. diffusers' `load_lora_weights` and `set_adapters` do that well, so they
are used as they are: each adapter is handed to them once, from the engine's own resident tensors, and peft's
weights are then pointed at those tensors, so an adapter is held once in memory, not twice.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from ..adapters.formats import to_diffusers, to_kohya
from ..adapters.stack import find_layer
from ..errors import AdapterFileError
from ..families import Family
from ..methods.layouts import LoraModule
from .multilora import ModuleLora, Stack

AdapterTensors = dict[tuple[str, str], ModuleLora]


def peft_name(name: str) -> str:
    """The name peft holds an adapter under: peft's adapters are torch modules, whose names cannot hold a ".", so
    `ink.v2` is held as `ink\u2024v2` (a one-dot leader, which no file name types by accident)."""
    return name.replace(".", "\u2024")


class PeftView:
    """Which adapters peft holds in `pipe`, and whether its layers add them (`show`) or not (`off`)."""

    def __init__(self, pipe, family: Family):
        self.pipe, self.family = pipe, family
        self.held: dict[str, AdapterTensors] = {}  # adapter name: the resident tensors peft's weights point at
        self.on = False

    def show(self, stack: Stack, adapters: dict[str, AdapterTensors]) -> None:
        """Make the models' own forward add `stack` (adapters at weight 0 left out: they cost nothing)."""
        for name, modules in adapters.items():
            if self.held.get(name) is not modules:  # new, or its file changed since
                self._hand_to_peft(name, modules)
        active = [(name, weight) for name, weight in stack if not weight.is_off]
        if not active:
            self.off()
            return
        self.pipe.enable_lora()
        parts = self.pipe.get_list_adapters()
        encoders = [encoder.part for encoder in self.family.text_encoders]
        denoiser = self.family.denoiser  # the pipeline's own name for it: "unet", or "transformer"
        weights = [{denoiser: w.unet_setting()} | {part: w.text_encoder for part in encoders
                                                   if peft_name(n) in parts.get(part, [])}
                   for n, w in active]
        self.pipe.set_adapters([peft_name(name) for name, _ in active], weights)
        self.on = True

    def off(self) -> None:
        """peft's layers pass the base's output through unchanged (the engine then adds or fuses the stacks)."""
        if not self.on:
            return
        for model in self.family.models(self.pipe).values():
            for module in model.modules():
                if isinstance(module, BaseTunerLayer):
                    module.enable_adapters(False)
        self.on = False

    def forget(self, name: str) -> None:
        if self.held.pop(name, None) is not None:
            self.pipe.delete_adapters([peft_name(name)])

    @torch.no_grad()
    def _hand_to_peft(self, name: str, modules: AdapterTensors) -> None:
        self.forget(name)
        # Plain LoRA at scale 1 (alpha = rank, so no alpha keys), in the layout the family's loader reads; the
        # biases are put in below.
        models = self.family.models(self.pipe)
        # transformers 5's CLIPTextModel holds its layers directly, not under `text_model.` (the files' spelling)
        weights = {(part, module if hasattr(models[part], "text_model") else module.removeprefix("text_model.")):
                   LoraModule(m.down, m.up, float(m.down.shape[0])) for (part, module), m in modules.items()}
        # peft's layers are diffusers' own, one per Linear: a fused kohya layout (Flux's) would be split into copies
        if self.family.file_layout == "kohya" and not self.family.kohya_fused:
            tensors = {k: t for k, t in to_kohya(weights, self.family).items() if not k.endswith(".alpha")}
        else:
            tensors = to_diffusers(weights, self.family.denoiser)[0]
        try:
            with warnings.catch_warnings(), _quiet_logger("diffusers.loaders.lora_base"):
                # peft warns on every adapter after the first; several adapters at once is what we are for. diffusers
                # warns when an adapter has no text-encoder part, which is most of them.
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                self.pipe.load_lora_weights(tensors, adapter_name=peft_name(name))
        except (ValueError, KeyError, RuntimeError, TypeError) as error:
            raise AdapterFileError(f"adapter {name!r} does not load into this base: {str(error).splitlines()[0][:160]}") from None
        for (part, module), held in modules.items():
            layer = find_layer(models[part], module)
            _point_at(layer.lora_A[peft_name(name)], held.down)
            _point_at(layer.lora_B[peft_name(name)], held.up)
            if held.bias is not None:  # peft adds lora_B's bias inside the scaled path: weights and blends apply it
                lora_b = layer.lora_B[peft_name(name)]
                lora_b.bias = torch.nn.Parameter(held.bias.to(lora_b.weight), requires_grad=False)
        self.held[name] = modules
        self.on = True  # loading switches peft's layers on


def _point_at(layer: torch.nn.Module, tensor: torch.Tensor) -> None:
    """Let peft's weight be the engine's tensor itself where they agree in shape and dtype (one copy in memory)."""
    weight = layer.weight
    if weight.shape == tensor.shape and weight.dtype == tensor.dtype and weight.device == tensor.device:
        weight.data = tensor


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """`name`'s warnings held back while inside: diffusers logs them rather than warning."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
