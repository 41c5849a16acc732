"""Hold a frozen base in fewer bytes: its Linear layers in NF4 or int8 (bitsandbytes), or its Linear and
convolution weights stored in fp8 and computed in the run's precision (diffusers' layerwise casting).

Which backend runs where (measured on torch 2.13 CPU, bitsandbytes 0.50.2, diffusers 0.42.1, peft 0.21.2):
- nf4 and int8: bitsandbytes, on CPU and CUDA alike. It is the reference QLoRA implementation, peft has LoRA
  layers for its Linear4bit/Linear8bitLt, and it trains on a CPU. diffusers' own bitsandbytes quantizer refuses
  to load without a GPU (diffusers issue #10395), so the layers are swapped here, one at a time as the weights
  stream in (loading.py): the same `Params4bit(...).to(device)` / `Int8Params(...).to(device)` calls that
  diffusers' quantizer makes, in one path for both devices. bitsandbytes quantizes Linear layers only: about a
  third of an SD1.5 UNet's parameters, most of SDXL's (quantized_share() reports it per base).
- nf4 and int8, convolutions: torchao's weight-only int8 (IntxWeightOnlyConfig with PerAxis(0): a scale for each
  output channel and kernel position), on CPU and CUDA, where torchao is installed (the [quant] extra), trained
  through by frozen_convolution.py. bitsandbytes has no convolution layer, and
  an SD1.5 UNet keeps 69% of its parameters in convolutions. In nf4 runs too they are int8: torchao's 4-bit
  convolution weight is held unpacked, a byte a value, so it would round more and save nothing.
- fp8: torch's float8_e4m3fn storage through diffusers' layerwise casting, with no extra dependency: every
  Linear and convolution weight holds one byte per parameter and is cast up, layer by layer, for its forward.
No quantization kernel is written here.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used: config.py reads this module, and `stylelora --help` is fast
    import torch

QUANTIZE_MODES = ("none", "nf4", "int8", "fp8")
# the --quantize-base help, the same on train, generate, grid and serve (their default, none, is added where used)
QUANTIZE_HELP = ("hold the frozen base in fewer bytes: nf4 or int8 (bitsandbytes, the [quant] extra) for its Linear "
                 "layers and int8 (torchao) for its convolutions, or fp8 storage for its Linear and conv layers; "
                 "the adapter stays float32")
BITSANDBYTES_MODES = ("nf4", "int8")
EXTRA = 'pip install -e ".[quant]"  (or: pip install bitsandbytes)'
# diffusers' own defaults for layerwise casting, plus the UNet's: normalisation layers keep their dtype.
FP8_SKIP = ("pos_embed", "patch_embed", "norm", "^proj_in$", "^proj_out$", "lora_", "hada_", "lokr_")
# A DiT's patch embedding is its one convolution: it stays as loaded, as diffusers' casting keeps it.
CONV_SKIP = ("pos_embed", "patch_embed")

# bitsandbytes' int8 matmul logs on every call that it casts its inputs to float16: that is its design.
logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)


def check_quantize(mode: str, flag: str = "--quantize-base") -> None:
    """Raise ConfigError for an unknown mode, or for a bitsandbytes mode without the extra installed."""
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"{flag} = {mode!r}: choose one of {', '.join(QUANTIZE_MODES)}")
    if mode in BITSANDBYTES_MODES and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{flag} {mode} needs bitsandbytes, which is an optional extra: {EXTRA}")


@dataclass(frozen=True)
class QuantizedShare:
    """How much of one model the quantization holds in fewer bytes."""

    part: str
    parameters: int
    quantized: int  # parameters held quantized
    bytes: int  # the model's weights as held, quantization constants included

    @property
    def share(self) -> float:
        return self.quantized / max(self.parameters, 1)

    def describe(self) -> str:
        return (f"{self.part}: {self.share:.0%} of {self.parameters / 1e6:.1f}M parameters quantized, "
                f"{self.bytes / 2**20:.0f} MiB ({8 * self.bytes / max(self.parameters, 1):.1f} bits a parameter)")


def quantize_layer(parent: torch.nn.Module, name: str, layer: torch.nn.Module, mode: str,
                   compute_dtype: torch.dtype) -> bool:
    """Replace or wrap one loaded layer (`parent.name`) with its quantized form; False if `mode` leaves this
    kind of layer as it is. The float weight is dropped at once, so a model quantized layer by layer never
    holds two copies of more than one layer."""
    import torch

    if mode == "fp8":
        if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) or hasattr(layer, "_diffusers_hook"):
            return False
        from diffusers.hooks.layerwise_casting import apply_layerwise_casting_hook

        apply_layerwise_casting_hook(layer, torch.float8_e4m3fn, compute_dtype, non_blocking=False)
        return True
    if mode in BITSANDBYTES_MODES and type(layer) is torch.nn.Conv2d:
        return _quantize_convolution(layer)
    if mode not in BITSANDBYTES_MODES or type(layer) is not torch.nn.Linear:
        return False
    import bitsandbytes as bnb

    weight, device = layer.weight.data, layer.weight.device
    if mode == "nf4":
        # Double quantization (the constants quantized too) and NF4, as the QLoRA paper and diffusers' docs use.
        new = bnb.nn.Linear4bit(layer.in_features, layer.out_features, layer.bias is not None, compute_dtype,
                                compress_statistics=True, quant_type="nf4", device="meta")
        new.weight = bnb.nn.Params4bit(weight.to(compute_dtype), requires_grad=False, compress_statistics=True,
                                       quant_type="nf4", module=new).to(device)
        # On a CPU with AVX512-BF16, an eval-mode forward repacks the weight for a faster kernel, and the next
        # training step then fails on the repacked layout: keep the plain layout.
        new.support_avx512bf16_for_cpu = False
    else:
        new = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, layer.bias is not None,
                                  has_fp16_weights=False, threshold=6.0, device="meta")
        new.weight = bnb.nn.Int8Params(weight.to(compute_dtype), requires_grad=False, has_fp16_weights=False).to(device)
    if layer.bias is not None:
        new.bias = torch.nn.Parameter(layer.bias.data, requires_grad=False)
    setattr(parent, name, new)
    return True


def _quantize_convolution(layer: torch.nn.Conv2d) -> bool:
    """Hold a convolution's weight in int8 (a scale for each output channel and kernel position) through torchao (see the module's
    docstring); False where torchao is not installed, and the layer stays as loaded."""
    if not convolutions_quantizable():
        return False
    import torch
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    quantize_(layer, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
              filter_fn=lambda module, name: isinstance(module, torch.nn.Conv2d))
    if layer.padding_mode == "zeros" and not isinstance(layer.padding, str):
        from .frozen_convolution import FrozenQuantizedConv2d

        layer.__class__ = FrozenQuantizedConv2d  # the same module, weights and path, with the forward below
    return True


def unquantize_layer(layer: torch.nn.Module) -> None:
    """Give a layer holding a torchao weight its weight back as plain floats (dequantized: the rounding stays)."""
    import torch

    if type(getattr(layer, "weight", None)).__module__.startswith("torchao"):
        layer.weight = torch.nn.Parameter(layer.weight.detach().dequantize(), requires_grad=False)
        if isinstance(layer, torch.nn.Conv2d):
            layer.__class__ = torch.nn.Conv2d  # a plain convolution again (frozen_convolution.py)


def convolutions_quantizable() -> bool:
    """Whether nf4 and int8 runs hold convolutions in int8: torchao is installed."""
    return importlib.util.find_spec("torchao") is not None


def quantize_model(model: torch.nn.Module, mode: str, compute_dtype: torch.dtype) -> None:
    """Quantize every layer of a loaded model that `mode` holds in fewer bytes, one layer at a time."""
    if mode == "none":
        return
    # By name: a list of the modules would keep each replaced float layer alive until the loop ends.
    for path in [name for name, module in model.named_modules() if name and not list(module.children())]:
        parent_name, _, name = path.rpartition(".")
        if not skipped_for(path, mode):
            quantize_layer(model.get_submodule(parent_name), name, model.get_submodule(path), mode, compute_dtype)
    mark_quantized(model, mode)


def skipped_for(path: str, mode: str) -> bool:
    """Layers `mode` leaves in the run's dtype by name: fp8 keeps normalisation layers (as diffusers does), and no
    mode quantizes a DiT's patch embedding."""
    import re

    patterns = FP8_SKIP if mode == "fp8" else CONV_SKIP
    return mode != "none" and any(re.search(pattern, path) for pattern in patterns)


def mark_quantized(model: torch.nn.Module, mode: str) -> None:
    """Tell peft (and ourselves) what the model holds: peft wraps bitsandbytes layers in its own LoRA layers
    only where the model says it is loaded in 4 or 8 bits, as transformers and diffusers models do."""
    model.is_loaded_in_4bit = mode == "nf4"
    model.is_loaded_in_8bit = mode == "int8"
    model.stylelora_quantized = mode


def quantization_of(model: torch.nn.Module | None) -> str:
    return getattr(model, "stylelora_quantized", "none") if model is not None else "none"


def is_quantized_layer(layer: torch.nn.Module) -> bool:
    """A layer whose weight is not held as plain floats: a bitsandbytes layer, a torchao weight, or fp8 storage."""
    import torch

    weight = getattr(layer, "weight", None)
    return weight is not None and (weight.dtype in (torch.uint8, torch.int8, torch.float8_e4m3fn)
                                   or type(weight).__module__.startswith(("bitsandbytes", "torchao")))


def float_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The layer's weight as float32, dequantized where it is held quantized (peft's own dequantization for
    bitsandbytes layers)."""
    weight = layer.weight
    if type(weight).__module__.startswith("bitsandbytes"):
        from peft.utils.integrations import dequantize_bnb_weight

        return dequantize_bnb_weight(weight, state=getattr(layer, "state", None)).float()
    if type(weight).__module__.startswith("torchao"):
        return weight.detach().dequantize().float()
    return weight.detach().float()


def quantized_share(model: torch.nn.Module, part: str) -> QuantizedShare:
    """Parameters and bytes of a model as held (bitsandbytes packs two NF4 values a byte)."""
    import torch

    parameters = quantized = size = 0
    for module in model.modules():
        for tensor_name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            state = getattr(tensor, "quant_state", None)
            count = _logical_numel(tensor, state)
            parameters += count
            size += _held_bytes(tensor) + _state_bytes(state)
            quantized += count if is_quantized_layer(module) and tensor_name == "weight" else 0
        scb = getattr(getattr(module, "weight", None), "SCB", None)  # int8's per-row scales
        size += scb.numel() * scb.element_size() if isinstance(scb, torch.Tensor) else 0
    return QuantizedShare(part, parameters, quantized, size)


def _logical_numel(tensor: torch.Tensor, state) -> int:
    import math

    return math.prod(state.shape) if state is not None else tensor.numel()


def _held_bytes(tensor: torch.Tensor) -> int:
    """A tensor's bytes as stored: a torchao weight is a wrapper around the tensors that hold it (data, scales)."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None or not type(tensor).__module__.startswith("torchao"):
        return tensor.numel() * tensor.element_size()
    names, _ = flatten()
    return sum(_held_bytes(getattr(tensor, name)) for name in names)


def _state_bytes(state) -> int:
    if state is None:
        return 0
    total = state.absmax.numel() * state.absmax.element_size() + state.code.numel() * state.code.element_size()
    nested = getattr(state, "state2", None)
    return total + (_state_bytes(nested) if nested is not None else 0)
