"""Many adapters in one UNet call: each row of a batch carries its own weighted adapter stack.

S-LoRA and Punica serve many LoRA adapters on one base by keeping the adapters apart from the base weights
and adding each request's low-rank change to its own rows (Punica's gather-matmul, "BGMV"). The same idea
carries over to the UNet here: a forward hook on every adapted layer adds, row by row,
sum_k w[row, k] * up_k @ down_k @ x. At each switch (`bind`), every row's stack is gathered into one
low-rank pair per layer, its weights folded in, so a Linear layer costs two batched matmuls whose rank is
that row's own stack, whatever the batch holds. (Conv LoRA concatenates the batch's adapters instead.)
Hooks are attached once per layer; switching never rebuilds the module tree.

peft cannot do this: its LoRA layers apply one set of active adapters to the whole batch. Its `adapter_names`
mixed batches give each row one adapter, not a weighted stack; they must be passed through the model's
forward, which diffusers' UNet does not pass on; and they loop over the adapters in Python, one slice each.
diffusers' hotswap swaps one adapter for the whole model. So the per-row part is written here.

A batch whose rows all share one stack takes the fused path instead: the stack is added into the base weights
with peft's own arithmetic (as peft's fuse would add it), and the originals are copied back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..adapters.stack import StyleWeight, block_of, find_layer

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


class RowsLinear(NamedTuple):
    """A Linear layer's binding: each row's own stack, gathered into its own low-rank pair (weights folded into
    the down half), so a row costs its own rank only: h = x @ down_t[row], delta = h @ up[row] (two bmm)."""

    down_t: torch.Tensor  # rows x in x r (r: the largest stack's total rank; shorter stacks padded with zeros)
    up: torch.Tensor  # rows x r x out
    bias: torch.Tensor | None  # rows x out


class ConcatConv(NamedTuple):
    """A conv layer's binding: the batch's adapters concatenated along the rank, each row weighting its own."""

    down: torch.Tensor  # R x in x k x k
    up: torch.Tensor  # out x R x 1 x 1
    mix: torch.Tensor  # rows x R: each row's weight for each rank column (0 where a row lacks that adapter)
    bias: torch.Tensor | None  # rows x out


class RowPlan(NamedTuple):
    """Which rank columns each row takes, at what weight, for one set of adapters at one block."""

    columns: torch.Tensor  # rows x r, long: indices into the concatenated ranks (the last index: a zero pad)
    column_weights: torch.Tensor  # rows x r
    adapter_weights: torch.Tensor  # rows x adapters


def peft_scaling(weight: float, rank: int) -> float:
    """The scale peft sets for a weight (`set_scale`: weight x alpha / r, alpha = r here); computed the same way
    so the fused path adds what peft's layers add between paintings (peft_view.py)."""
    return weight * rank / rank


class MultiLora:
    """Per-row adapter stacks over a pipeline's models (`{part: module}`), by forward hooks."""

    def __init__(self, models: dict[str, torch.nn.Module]):
        self.models = models
        self.layers: dict[ModuleKey, torch.nn.Module] = {}
        self.bindings: dict[torch.nn.Module, RowsLinear | ConcatConv] = {}
        self.fused_stack: Stack | None = None
        self._bound: tuple | None = None  # what `bindings` were built for
        self._originals: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._buffers: dict[torch.nn.Module, torch.Tensor] = {}  # each fused layer's weight while fused
        self._hooked: set[torch.nn.Module] = set()
        self._scratch: dict[tuple[int, ...], torch.Tensor] = {}  # one float32 delta per weight shape, reused

    def layer(self, key: ModuleKey) -> torch.nn.Module | None:
        """The layer a module key names (None if the base has none); no hook yet (see `attach`)."""
        if key not in self.layers:
            layer = find_layer(self.models[key[0]], key[1])
            if layer is None:
                return None
            self.layers[key] = getattr(layer, "base_layer", layer)  # under peft's LoRA layer (peft_view.py), if any
        return self.layers[key]

    def attach(self, keys) -> None:
        """Hook the named layers, once each. Called by the thread that paints, between batches: a hook added
        while another thread runs the model would change the hook table under its forward."""
        for key in keys:
            layer = self.layers[key]
            if layer not in self._hooked:
                layer.register_forward_hook(self._add_rows)
                self._hooked.add(layer)
                if isinstance(getattr(layer, "weight", None), torch.Tensor) and layer.weight.dtype.is_floating_point:
                    # the layer's fused weight, allocated and written now (a copy touches every page): the first
                    # switch then pays no page faults either (on SD1.5, 0.9 s once, against 70 ms a switch)
                    self._buffers[layer] = layer.weight.data.clone()

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
        plans: dict[tuple, RowPlan] = {}  # layers of one block with the same adapters share a plan
        for module_key, held in by_layer.items():
            modules = [adapters[name][module_key] for name in held]
            ranks = tuple(m.down.shape[0] for m in modules)
            plan_key = (module_key[0], block_of(module_key[1]), tuple(held), ranks)
            if plan_key not in plans:
                plans[plan_key] = _row_plan(module_key, held, ranks, rows, modules[0].down.dtype)
            self.bindings[self.layers[module_key]] = _binding(modules, plans[plan_key])
        self._bound = key

    def unbind(self) -> None:
        self.bindings, self._bound = {}, None

    def _add_rows(self, layer: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        binding = self.bindings.get(layer)
        if binding is None:
            return None
        x = args[0]
        if isinstance(binding, ConcatConv):  # down has the layer's kernel, up is 1x1 (as peft builds a conv LoRA)
            hidden = F.conv2d(x, binding.down, None, layer.stride, layer.padding, layer.dilation)
            delta = F.conv2d(hidden * binding.mix[:, :, None, None], binding.up)
            return output + (delta if binding.bias is None else delta + binding.bias[:, :, None, None])
        rows = x.shape[0]
        down_t, up = binding.down_t, binding.up
        if down_t.shape[0] != rows:  # one stack for the whole batch (a text encoder's prompt and negative)
            down_t, up = down_t.expand(rows, -1, -1), up.expand(rows, -1, -1)
        delta = torch.bmm(torch.bmm(x.reshape(rows, -1, x.shape[-1]), down_t), up).view(output.shape)
        if binding.bias is not None:
            delta = delta + binding.bias.view((binding.bias.shape[0],) + (1,) * (x.dim() - 2) + (-1,))
        return output + delta

    @torch.no_grad()
    def fuse(self, stack: Stack, adapters: dict[str, dict[ModuleKey, ModuleLora]]) -> None:
        """Add `stack` into the base weights, as peft's fuse would (same arithmetic, same order)."""
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
            # The originals stay as they are; the sum goes into a buffer kept per layer, so a switch writes
            # each adapted weight once and allocates nothing (on an SD1.5 UNet, 376 MB of attention weights).
            self._originals[layer] = (weight.data, bias.data if bias is not None else None)
            scratch = self._scratch.setdefault(tuple(weight.shape), torch.empty(weight.shape)) if weight.dim() == 2 else None
            deltas = [_delta_weight(layer, module, scaling, scratch if i == 0 else None).float()
                      for i, (module, scaling) in enumerate(terms)]
            delta = deltas[0]
            for more in deltas[1:]:
                delta = delta + more
            buffer = self._buffers.get(layer)
            if buffer is None or buffer.shape != weight.shape or buffer.dtype != weight.dtype:
                buffer = self._buffers[layer] = torch.empty_like(weight.data)
            if weight.dtype == torch.float32:
                torch.add(weight.data, delta, out=buffer)
            else:
                buffer.copy_(weight.data.float() + delta)
            weight.data = buffer
            biases = [module.bias * scaling for module, scaling in terms if module.bias is not None]
            if biases and bias is not None:
                bias.data = (bias.data.float() + sum(b.float() for b in biases)).to(bias.dtype)
        self.fused_stack = stack

    @torch.no_grad()
    def unfuse(self) -> None:
        """Put the base weights back exactly (the originals themselves, never a subtraction)."""
        for layer, (weight, bias) in self._originals.items():
            layer.weight.data = weight
            if bias is not None:
                layer.bias.data = bias
        self._originals.clear()
        self.fused_stack = None


def _row_plan(key: ModuleKey, held: list[str], ranks: tuple[int, ...], rows: list[Stack], dtype: torch.dtype) -> RowPlan:
    offsets = [sum(ranks[:i]) for i in range(len(ranks))]
    pad = sum(ranks)  # the index of the zero column every shorter row is padded with
    adapter_weights = torch.zeros(len(rows), len(held))
    columns, weights = [], []
    for row, stack in enumerate(rows):
        row_columns, row_weights = [], []
        for name, weight in stack:
            if name in held:
                i, value = held.index(name), weight.for_module(*key)
                adapter_weights[row, i] += value
                row_columns += range(offsets[i], offsets[i] + ranks[i])
                row_weights += [value] * ranks[i]
        columns.append(row_columns)
        weights.append(row_weights)
    width = max(1, max(len(c) for c in columns))
    columns = [c + [pad] * (width - len(c)) for c in columns]
    weights = [w + [0.0] * (width - len(w)) for w in weights]
    return RowPlan(torch.tensor(columns), torch.tensor(weights, dtype=dtype), adapter_weights.to(dtype))


def _binding(modules: list[ModuleLora], plan: RowPlan) -> RowsLinear | ConcatConv:
    biases = [m.bias for m in modules]
    bias = None
    if any(b is not None for b in biases):
        out = next(b for b in biases if b is not None)
        stacked = torch.stack([b if b is not None else torch.zeros_like(out) for b in biases])
        bias = plan.adapter_weights @ stacked  # rows x out
    if modules[0].down.dim() == 4:
        ranks = torch.tensor([m.down.shape[0] for m in modules])
        mix = plan.adapter_weights.repeat_interleave(ranks, dim=1)
        return ConcatConv(torch.cat([m.down for m in modules]), torch.cat([m.up for m in modules], dim=1), mix, bias)
    down = torch.cat([m.down for m in modules] + [modules[0].down.new_zeros(1, modules[0].down.shape[1])])
    up_t = torch.cat([m.up.t() for m in modules] + [modules[0].up.new_zeros(1, modules[0].up.shape[0])])
    down_rows = down[plan.columns].mul_(plan.column_weights[..., None])  # rows x r x in
    # bmm reads the transposed view as it is (no copy); up_t's rows gather straight into rows x r x out
    return RowsLinear(down_rows.transpose(1, 2), up_t[plan.columns], bias)


def _delta_weight(layer: torch.nn.Module, module: ModuleLora, scaling: float,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """peft's LoraLayer.get_delta_weight, for Linear and Conv2d, on our tensors (peft 0.21 lora/layer.py); a
    float32 Linear's delta goes into `out` if given (the same matmul, written in place)."""
    down, up, dtype = module.down, module.up, module.down.dtype
    if down.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        down, up = down.float(), up.float()  # as peft: some CPUs have slow half-precision matmuls
    if down.dim() == 2:
        fits = out is not None and dtype == torch.float32 and out.shape == (up.shape[0], down.shape[1])
        delta = (torch.matmul(up, down, out=out) if fits else up @ down).mul_(scaling)
    elif layer.weight.shape[2:4] == (1, 1):
        delta = (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3) * scaling
    else:
        delta = F.conv2d(down.transpose(0, 1), up).transpose(0, 1) * scaling
    return delta.to(dtype)
