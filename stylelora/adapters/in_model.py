"""The LoRA inside a model: attach it with peft, take its weights out, put saved weights back in.

Files use the kohya layout through formats.py (`lora_unet_<module path with _>.lora_down.weight`,
`.lora_up.weight`, `.alpha`), which diffusers, AUTOMATIC1111 and ComfyUI all read.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft.utils import set_peft_model_state_dict

from ..errors import AdapterFileError
from ..methods import AdapterSpec
from ..methods.attach import attach, export, file_path
from .formats import LoraWeights, from_kohya


def attach_lora(model: torch.nn.Module, targets: tuple[str, ...], rank: int, alpha: float, dropout: float,
                flag: str = "--target-modules", adapter_name: str = "default", rslora: bool = False) -> list[str]:
    """Add a trainable plain LoRA to every module whose path ends in one of `targets`; return their paths.
    (methods.attach does every method; this is its LoRA shorthand.)"""
    return attach(model, AdapterSpec("lora", rank, alpha, dropout, rslora), targets, flag, adapter_name)


def lora_weights(model: torch.nn.Module, part: str, adapter_name: str = "default") -> LoraWeights:
    """The attached adapter's weights, detached, in float32 on the CPU, keyed as files key them."""
    return export(model, part, adapter_name)


def load_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], part: str, source: Path,
              adapter_name: str = "default") -> None:
    """Copy kohya-layout LoRA weights into the LoRA already attached to `model` (resume from checkpoints
    written before they kept trainable.safetensors)."""
    names = {file_path(part, name): name for name, _ in model.named_modules()}
    peft_tensors = {}
    for (file_part, module), lora in from_kohya(tensors, source).items():
        if file_part != part:
            continue
        if module not in names:
            raise AdapterFileError(f"{source}: module {module} is not in this base model; "
                                   "the adapter was trained for another architecture")
        peft_tensors[f"{names[module]}.lora_A.weight"] = lora.down
        peft_tensors[f"{names[module]}.lora_B.weight"] = lora.up
    result = set_peft_model_state_dict(model, peft_tensors, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise AdapterFileError(f"{source}: {len(unexpected)} weights do not fit the attached LoRA (first: {unexpected[0]})")
