"""DoRA with the magnitude per input column, as the loaders apply it.

Written by hand because peft's `use_dora` normalises per *output row* (a magnitude of shape [out]),
while AUTOMATIC1111, ComfyUI and LyCORIS apply `dora_scale` per *input column* ([1, in]): a peft DoRA
cannot be written to a file those tools read back exactly. This is a peft LoRA variant, so the rest of
peft (adapter names, state dicts, dropout, the UNet's own forward) is unchanged.

With c = m / ||W + s B A||_column (one number per input column), the adapted layer is
    (W + s B A) diag(c) x + b  =  base(x) + W((c - 1) * x) + s B A (c * x),
so scaling the input by c does the normalisation without building the merged weight twice. As in the
DoRA paper (section 4.3) and peft, the norm is treated as a constant in the backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import LoraLayer, LoraVariant

from .layouts import column_norm


class ColumnMagnitude(torch.nn.Module):
    """Holds the trained magnitude, one number per input column (conv: per input channel)."""

    def __init__(self, magnitude: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(magnitude.flatten().float().clone())


def _lora_weight(layer: LoraLayer, adapter_name: str, shape: torch.Size) -> torch.Tensor:
    down, up = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
    return (up.flatten(1) @ down.flatten(1)).reshape(shape)


def _channels_last_dim(x: torch.Tensor, layer: torch.nn.Module) -> list[int]:
    """How to shape a per-input-column vector to multiply the layer's input."""
    return [-1] if isinstance(layer, torch.nn.Linear) else [1, -1] + [1] * (x.ndim - 2)


class ColumnDoraVariant(LoraVariant):
    @staticmethod
    def init(module: LoraLayer, adapter_name: str, **kwargs) -> None:
        if "lora_magnitude_vector" not in module.adapter_layer_names:
            module.adapter_layer_names = module.adapter_layer_names[:] + ("lora_magnitude_vector",)
        weight = module.get_base_layer().weight.float()
        merged = weight + module.scaling[adapter_name] * _lora_weight(module, adapter_name, weight.shape).float()
        module.lora_magnitude_vector[adapter_name] = ColumnMagnitude(column_norm(merged.detach()))

    @staticmethod
    def forward(module: LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        base = module.get_base_layer()
        scaling = module.scaling[active_adapter]
        magnitude = module.lora_magnitude_vector[active_adapter].weight
        weight = base.weight
        merged = weight.float() + scaling * _lora_weight(module, active_adapter, weight.shape).float()
        factor = (magnitude / column_norm(merged).detach().flatten()).view(_channels_last_dim(x, base))
        x = module.lora_dropout[active_adapter](x)
        scaled = x.float() * factor
        lora_A, lora_B = module.lora_A[active_adapter], module.lora_B[active_adapter]
        shifted = (scaled - x.float()).to(weight.dtype)
        if isinstance(base, torch.nn.Linear):
            correction = F.linear(shifted, weight)
        else:
            correction = base._conv_forward(shifted, weight, None)
        lora = lora_B(lora_A(scaled.to(lora_A.weight.dtype))) * scaling
        return result + correction.to(result.dtype) + lora.to(result.dtype)

    @staticmethod
    def merge_safe(module, active_adapter, orig_weight):
        raise RuntimeError("stylelora merges DoRA through methods.layouts.DoraModule, not peft's merge")

    merge_unsafe = unmerge = merge_safe


def make_column_dora(model: torch.nn.Module, adapter_name: str) -> None:
    """Turn every LoRA layer of `adapter_name` in `model` into a column-wise DoRA layer."""
    for module in model.modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            module.lora_variant[adapter_name] = ColumnDoraVariant
            ColumnDoraVariant.init(module, adapter_name)
            module.lora_magnitude_vector[adapter_name].weight.requires_grad_(True)
