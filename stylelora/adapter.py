"""The LoRA inside a model: attach it with peft, take its weights out, put saved weights back in.

Files use the kohya layout through formats.py (`lora_unet_<module path with _>.lora_down.weight`,
`.lora_up.weight`, `.alpha`), which diffusers, AUTOMATIC1111 and ComfyUI all read.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from .errors import AdapterFileError, ConfigError
from .formats import LoraModule, LoraWeights, from_kohya


def attach_lora(model: torch.nn.Module, targets: tuple[str, ...], rank: int, alpha: float, dropout: float,
                flag: str = "--target-modules", adapter_name: str = "default", rslora: bool = False) -> list[str]:
    """Add a trainable LoRA to every module whose path ends in one of `targets`; return their paths.
    B starts at zero (peft's default init), so the model's output is unchanged until training moves it.
    `rslora`: peft's rank-stabilised scale, alpha/sqrt(rank)."""
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                        init_lora_weights=True, use_rslora=rslora)
    try:
        model.add_adapter(config, adapter_name=adapter_name)
    except ValueError as error:
        if "not found" in str(error) or "Target modules" in str(error):
            raise ConfigError(f"{flag} = {','.join(targets)}: no module of the {type(model).__name__} matches; "
                              "give module-name suffixes such as to_q,to_k,to_v,to_out.0") from None
        raise
    return sorted({key.rsplit(".lora_A", 1)[0] for key in get_peft_model_state_dict(model, adapter_name=adapter_name)
                   if ".lora_A" in key})


def _file_path(part: str, module: str) -> str:
    """A module's path as files name it. transformers 5 dropped CLIPTextModel's `text_model.`
    level, but every file in the wild (and AUTOMATIC1111, ComfyUI) still spells it out."""
    if part == "text_encoder" and not module.startswith("text_model."):
        return "text_model." + module
    return module


def lora_weights(model: torch.nn.Module, part: str, alpha: float, adapter_name: str = "default") -> LoraWeights:
    """The attached LoRA's weights, detached, in float32 on the CPU, keyed as files key them."""
    tensors = get_peft_model_state_dict(model, adapter_name=adapter_name)
    weights: LoraWeights = {}
    for key, down in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            up = tensors[f"{module}.lora_B.weight"]
            weights[(part, _file_path(part, module))] = LoraModule(down.detach().float().cpu(),
                                                                  up.detach().float().cpu(), float(alpha))
    return weights


def load_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], part: str, source: Path,
              adapter_name: str = "default") -> None:
    """Copy kohya-layout weights into the LoRA already attached to `model` (for resume)."""
    names = {_file_path(part, name): name for name, _ in model.named_modules()}
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
