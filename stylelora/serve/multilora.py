"""Many adapters in one UNet call: each row of a batch carries its own weighted adapter stack.

S-LoRA and Punica serve many LoRA adapters on one base by keeping the adapters apart from the base weights
and adding each request's low-rank change to its own rows. The same idea carries over to the UNet here: a
forward hook on every adapted layer adds, row by row, sum_k w[row, k] * up_k @ down_k @ x. The adapters of a
batch are concatenated along the rank once per switch (`bind`), so each layer costs two extra matmuls however
many adapters the batch holds. Hooks are attached once per layer; switching never rebuilds the module tree.

peft cannot do this: its LoRA layers apply one set of active adapters to the whole batch (its `adapter_names`
mixed batches work for Linear layers only and skip conv and fused paths), and diffusers' hotswap swaps one
adapter for the whole model. So the per-row part is written here, in about a hundred lines.

A batch whose rows all share one stack takes the fused path instead: the stack is added into the base weights
with peft's own arithmetic (so the result is bitwise what `Styler` paints), and the originals are copied back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..styler import StyleWeight, find_layer

ModuleKey = tuple[str, str]  # (part, module path), as in formats.LoraWeights
Stack = tuple[tuple[str, StyleWeight], ...]  # an ordered, weighted adapter stack; () is the bare base


@dataclass(frozen=True)
class ModuleLora:
    """One adapter at one layer, as plain LoRA in the base's dtype: alpha / rank is folded into `up`."""

    down: torch.Tensor  # rank x in (conv: rank x in x k x k)
    up: torch.Tensor  # out x rank (conv: out x rank x 1 x 1)
    bias: torch.Tensor | None  # the trained change to the layer's bias (`diff_b`), if any

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.down, self.up, self.bias) if t is not None)


class LayerBinding(NamedTuple):
    down: torch.Tensor  # the batch's adapters, concatenated along the rank: R x in
    up: torch.Tensor  # out x R
    mix: torch.Tensor  # rows x R: each row's weight for each rank column (0 where a row lacks that adapter)
    bias: torch.Tensor | None  # rows x out


def peft_scaling(weight: float, rank: int) -> float:
    """The scale peft sets for a weight (`set_scale`: weight x alpha / r, alpha = r here); computed the same way
    so the fused path is bitwise equal to Styler's."""
    return weight * rank / rank


class MultiLora:
    """Per-row adapter stacks over a pipeline's models (`{part: module}`), by forward hooks."""

    def __init__(self, models: dict[str, torch.nn.Module]):
        self.models = models
        self.layers: dict[ModuleKey, torch.nn.Module] = {}
        self.bindings: dict[torch.nn.Module, LayerBinding] = {}
        self.fused_stack: Stack | None = None
        self._bound: tuple | None = None  # what `bindings` were built for
        self._originals: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def layer(self, key: ModuleKey) -> torch.nn.Module | None:
        if key not in self.layers:
            layer = find_layer(self.models[key[0]], key[1])
            if layer is None:
                return None
            layer.register_forward_hook(self._add_rows)
            self.layers[key] = layer
        return self.layers[key]

    def bind(self, rows: list[Stack], adapters: dict[str, dict[ModuleKey, ModuleLora]],
             parts: set[str] | None = None) -> None:
        """Give row i of the next calls the stack rows[i] (one row: every row), in the models named in `parts`
        (all of them if None). Binding what is already bound costs nothing."""
        key = (tuple(rows), frozenset(parts or ()), tuple(id(adapters[n]) for n in sorted({n for s in rows for n, _ in s})))
        if key == self._bound:
            return
        self.bindings = {}
        names = list(dict.fromkeys(name for stack in rows for name, _ in stack))
        by_layer: dict[ModuleKey, list[str]] = {}
        for name in names:
            for module_key in adapters[name]:
                if parts is None or module_key[0] in parts:
                    by_layer.setdefault(module_key, []).append(name)
        for module_key, held in by_layer.items():
            self.bindings[self.layers[module_key]] = self._binding(module_key, held, rows, adapters)
        self._bound = key

    def _binding(self, key: ModuleKey, held: list[str], rows: list[Stack],
                 adapters: dict[str, dict[ModuleKey, ModuleLora]]) -> LayerBinding:
        modules = [adapters[name][key] for name in held]
        weights = torch.zeros(len(rows), len(held))
        for row, stack in enumerate(rows):
            for name, weight in stack:
                if name in held:
                    weights[row, held.index(name)] += weight.for_module(*key)
        ranks = torch.tensor([m.down.shape[0] for m in modules])
        dtype = modules[0].down.dtype
        mix = weights.repeat_interleave(ranks, dim=1).to(dtype)
        biases = [(i, m.bias) for i, m in enumerate(modules) if m.bias is not None]
        bias = sum(weights[:, i:i + 1].to(dtype) * b for i, b in biases) if biases else None
        return LayerBinding(torch.cat([m.down for m in modules]), torch.cat([m.up for m in modules], dim=1), mix, bias)

    def unbind(self) -> None:
        self.bindings, self._bound = {}, None

    def _add_rows(self, layer: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        binding = self.bindings.get(layer)
        if binding is None:
            return None
        x = args[0]
        if binding.down.dim() == 4:  # a conv LoRA: down has the layer's kernel, up is 1x1 (as peft builds it)
            hidden = F.conv2d(x, binding.down, None, layer.stride, layer.padding, layer.dilation)
            delta = F.conv2d(hidden * binding.mix[:, :, None, None], binding.up)
            return output + (delta if binding.bias is None else delta + binding.bias[:, :, None, None])
        shape = (binding.mix.shape[0],) + (1,) * (x.dim() - 2) + (-1,)
        delta = F.linear(F.linear(x, binding.down) * binding.mix.view(shape), binding.up)
        return output + (delta if binding.bias is None else delta + binding.bias.view(shape))

    @torch.no_grad()
    def fuse(self, stack: Stack, adapters: dict[str, dict[ModuleKey, ModuleLora]]) -> None:
        """Add `stack` into the base weights, as Styler.fuse does through peft (same arithmetic, same order)."""
        if stack == self.fused_stack:
            return
        self.unfuse()
        self.unbind()
        changes: dict[ModuleKey, list[tuple[ModuleLora, float]]] = {}
        for name, weight in stack:
            for key, module in adapters[name].items():
                scaling = peft_scaling(weight.for_module(*key), module.down.shape[0])
                changes.setdefault(key, []).append((module, scaling))
        for key, terms in changes.items():
            layer = self.layers[key]
            weight, bias = layer.weight, layer.bias
            self._originals[layer] = (weight.data.clone(), bias.data.clone() if bias is not None else None)
            delta = sum(_delta_weight(layer, module, scaling).float() for module, scaling in terms)
            weight.data = (weight.data.float() + delta).to(weight.dtype)
            biases = [module.bias * scaling for module, scaling in terms if module.bias is not None]
            if biases and bias is not None:
                bias.data = (bias.data.float() + sum(b.float() for b in biases)).to(bias.dtype)
        self.fused_stack = stack

    @torch.no_grad()
    def unfuse(self) -> None:
        """Put the base weights back exactly (copied, not subtracted)."""
        for layer, (weight, bias) in self._originals.items():
            layer.weight.data = weight
            if bias is not None:
                layer.bias.data = bias
        self._originals.clear()
        self.fused_stack = None


def _delta_weight(layer: torch.nn.Module, module: ModuleLora, scaling: float) -> torch.Tensor:
    """peft's LoraLayer.get_delta_weight, for Linear and Conv2d, on our tensors (peft 0.21 lora/layer.py)."""
    down, up, dtype = module.down, module.up, module.down.dtype
    if down.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        down, up = down.float(), up.float()  # as peft: some CPUs have slow half-precision matmuls
    if down.dim() == 2:
        delta = (up @ down) * scaling
    elif layer.weight.shape[2:4] == (1, 1):
        delta = (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3) * scaling
    else:
        delta = F.conv2d(down.transpose(0, 1), up).transpose(0, 1) * scaling
    return delta.to(dtype)
