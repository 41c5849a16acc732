"""One adapted module in memory, per method, and its keys in the kohya/LyCORIS file layout.

Each kind knows its file keys (under a `lora_unet_...` / `lora_te_...` name), its weight change
(`delta`), and an exact plain-LoRA equivalent (`as_lora`), which is how the painter loads every
method through diffusers' LoRA machinery. The formulas are the ones the loaders apply:

- LoRA   `lora_down`, `lora_up`, `alpha`: scale * up @ down, scale = alpha / rank (diffusers, A1111, ComfyUI).
- DoRA   LoRA keys plus `dora_scale` of shape [1, in] (conv: [1, in, 1, 1]): the magnitude per *input
         column* of W + dW, as LyCORIS trains it and as ComfyUI's `weight_decompose` and A1111's
         `apply_weight_decompose` apply it. A1111 multiplies by alpha/rank *after* normalising and
         ComfyUI before, so DoRA files are written with alpha = rank (the scale folded into up):
         both loaders then agree.
- LoHa   `hada_w1_a/b`, `hada_w2_a/b`, `alpha`: scale * (w1a @ w1b) * (w2a @ w2b), scale = alpha / rank.
- LoKr   `lokr_w1` or `lokr_w1_a/b`, `lokr_w2` or `lokr_w2_a/b`, `alpha`: scale * kron(w1, w2), where
         scale = alpha / rank of the last factor stored as a pair, and 1 when both are stored whole
         (ComfyUI's and A1111's rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import KINDS


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.double().flatten(1)


def _finite_floats(*tensors: torch.Tensor) -> str | None:
    if not all(t.is_floating_point() for t in tensors):
        return "holds integer weights where floats belong"
    if not all(torch.isfinite(t).all() for t in tensors):
        return "holds NaN or infinite weights"
    return None


@dataclass
class LoraModule:
    down: torch.Tensor  # rank x in_features (peft's lora_A); conv: rank x in x k x k
    up: torch.Tensor  # out_features x rank (peft's lora_B); conv: out x rank x 1 x 1
    alpha: float
    bias: torch.Tensor | None = None  # the change to the layer's bias at weight 1 (`diff_b`), if it trained
    kind = "lora"

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def in_features(self) -> int:
        return int(self.down.shape[1])

    @property
    def parameter_count(self) -> int:
        return self.down.numel() + self.up.numel() + (self.bias.numel() if self.bias is not None else 0)

    def delta(self, base: torch.Tensor | None = None) -> torch.Tensor:
        """The weight change this module adds at weight 1, flattened to 2-D: (alpha / rank) * up @ down."""
        return self.scale * (_flat(self.up) @ _flat(self.down))

    def as_lora(self, base: torch.Tensor | None = None) -> "LoraModule":
        return self

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The file keys. A trained bias is `diff_b`, the key ComfyUI adds to the layer's bias. AUTOMATIC1111 reads
        it only in full-weight modules (it applies the weights alone); diffusers 0.42's load_lora_weights refuses a
        file with any diff_b whole ("keys have not been correctly renamed"), so `convert --drop-biases` writes the
        weights alone for it (formats.without_biases)."""
        bias = {f"{name}.diff_b": self.bias.contiguous()} if self.bias is not None else {}
        return {f"{name}.lora_down.weight": self.down.contiguous(), f"{name}.lora_up.weight": self.up.contiguous(),
                f"{name}.alpha": torch.tensor(float(self.alpha))} | bias

    def problem(self) -> str | None:
        """Why these tensors cannot be a LoRA pair (what the model's own shapes allow is checked on loading)."""
        if not (self.down.is_floating_point() and self.up.is_floating_point()):
            return f"holds {self.down.dtype}/{self.up.dtype} (integer) weights where floats belong"
        if self.down.ndim not in (2, 4) or self.up.ndim != self.down.ndim:
            return f"has weights of shapes {list(self.down.shape)} and {list(self.up.shape)}, not a LoRA pair"
        if self.rank == 0 or self.up.shape[1] != self.rank:
            return f"has mismatched ranks: down {list(self.down.shape)}, up {list(self.up.shape)}"
        if not math.isfinite(self.alpha):
            return f"has alpha {self.alpha}"
        if self.bias is not None and (self.bias.ndim != 1 or self.bias.numel() != self.up.shape[0]):
            return f"has a diff_b of shape {list(self.bias.shape)} for {self.up.shape[0]} outputs"
        return _finite_floats(self.down, self.up, *([self.bias] if self.bias is not None else []))


def dense_as_lora(delta: torch.Tensor, weight_shape: torch.Size, bias: torch.Tensor | None = None) -> LoraModule:
    """An exact LoRA for any 2-D weight change: identity on the narrower side, rank min(out, in)."""
    out, width = delta.shape
    if out <= width:
        up, down = torch.eye(out, dtype=torch.float64), delta
    else:
        up, down = delta, torch.eye(width, dtype=torch.float64)
    rank = up.shape[1]
    if len(weight_shape) == 4:
        return LoraModule(down.float().reshape(rank, *weight_shape[1:]), up.float().reshape(out, rank, 1, 1), float(rank), bias)
    return LoraModule(down.float(), up.float(), float(rank), bias)


def _magnitude_shape(weight_shape: torch.Size) -> tuple[int, ...]:
    return (1, weight_shape[1], *[1] * (len(weight_shape) - 2))


def column_norm(weight: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each input column (conv: each input channel over out x k x k), shaped [1, in, 1...]:
    ComfyUI's weight_decompose and LyCORIS's dora_scale."""
    return weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1).reshape(_magnitude_shape(weight.shape))


@dataclass
class DoraModule(LoraModule):
    magnitude: torch.Tensor = None  # [1, in] (conv [1, in, 1, 1]): the trained norm of each input column
    kind = "dora"

    def delta(self, base: torch.Tensor | None = None) -> torch.Tensor:
        """m * (W + dW) / ||W + dW||_column - W: depends on the base weight W."""
        if base is None:
            raise ValueError("a DoRA module's weight change depends on the base weights; pass them")
        weight = base.double()
        merged = weight + super().delta().reshape(weight.shape)
        return (merged * (self.magnitude.double() / column_norm(merged)) - weight).flatten(1)

    def as_lora(self, base: torch.Tensor | None = None) -> LoraModule:
        return dense_as_lora(self.delta(base), base.shape, self.bias)

    @property
    def parameter_count(self) -> int:
        return super().parameter_count + self.magnitude.numel()

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return super().tensors(name) | {f"{name}.dora_scale": self.magnitude.contiguous()}

    def problem(self) -> str | None:
        if self.magnitude.ndim != self.down.ndim or self.magnitude.shape[1] != self.down.shape[1] \
                or self.magnitude.numel() != self.down.shape[1]:
            return (f"has dora_scale of shape {list(self.magnitude.shape)}; this reader applies DoRA per input column "
                    f"([1, {self.down.shape[1]}], as ComfyUI and AUTOMATIC1111 do)")
        return super().problem() or _finite_floats(self.magnitude)


@dataclass
class LohaModule:
    w1a: torch.Tensor  # out x rank
    w1b: torch.Tensor  # rank x in (conv: in * k * k)
    w2a: torch.Tensor
    w2b: torch.Tensor
    alpha: float
    kind = "loha"

    @property
    def rank(self) -> int:
        return int(self.w1b.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def in_features(self) -> int:
        return int(self.w1b.shape[1])

    @property
    def parameter_count(self) -> int:
        return sum(t.numel() for t in (self.w1a, self.w1b, self.w2a, self.w2b))

    def delta(self, base: torch.Tensor | None = None) -> torch.Tensor:
        return self.scale * (_flat(self.w1a) @ _flat(self.w1b)) * (_flat(self.w2a) @ _flat(self.w2b))

    def as_lora(self, base: torch.Tensor | None = None) -> LoraModule:
        """Exact: a Hadamard product of rank-r1 and rank-r2 matrices is the rank-(r1 r2) product of the
        row-wise Kronecker product of the ups and the column-wise one of the downs."""
        out, width = self.w1a.shape[0], self.w1b.shape[1]
        if self.rank * self.w2b.shape[0] >= min(out, width):
            return dense_as_lora(self.delta(), base.shape if base is not None else torch.Size((out, width)))
        up = (_flat(self.w1a)[:, :, None] * _flat(self.w2a)[:, None, :]).reshape(out, -1) * self.scale
        down = (_flat(self.w1b)[:, None, :] * _flat(self.w2b)[None, :, :]).reshape(-1, width)
        rank = up.shape[1]
        if base is not None and base.ndim == 4:
            return LoraModule(down.float().reshape(rank, *base.shape[1:]), up.float().reshape(out, rank, 1, 1), float(rank))
        return LoraModule(down.float(), up.float(), float(rank))

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.hada_w1_a": self.w1a.contiguous(), f"{name}.hada_w1_b": self.w1b.contiguous(),
                f"{name}.hada_w2_a": self.w2a.contiguous(), f"{name}.hada_w2_b": self.w2b.contiguous(),
                f"{name}.alpha": torch.tensor(float(self.alpha))}

    def problem(self) -> str | None:
        shapes_fit = (self.w1a.ndim == self.w1b.ndim == self.w2a.ndim == self.w2b.ndim == 2
                      and self.w1a.shape[1] == self.w1b.shape[0] and self.w2a.shape[1] == self.w2b.shape[0]
                      and self.w1a.shape[0] == self.w2a.shape[0] and self.w1b.shape[1] == self.w2b.shape[1])
        if not shapes_fit:
            return "has LoHa factors whose shapes do not fit together"
        return _finite_floats(self.w1a, self.w1b, self.w2a, self.w2b)


@dataclass
class LokrModule:
    w1: torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # whole (a x b) or a pair (w1_a, w1_b)
    w2: torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # whole (c x d, conv c x d x k x k) or a pair
    alpha: float
    kind = "lokr"

    @staticmethod
    def _whole(factor) -> torch.Tensor:
        return factor[0].double() @ factor[1].double() if isinstance(factor, tuple) else factor.double()

    @property
    def rank(self) -> int:
        """The rank of the last factor stored as a pair, as the loaders read it; 0 when both are whole."""
        for factor in (self.w2, self.w1):
            if isinstance(factor, tuple):
                return int(factor[1].shape[0])
        return 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.rank else 1.0

    @property
    def in_features(self) -> int:
        return int(self._whole(self.w1).shape[1] * self._whole(self.w2).shape[1])

    @property
    def parameter_count(self) -> int:
        return sum(t.numel() for f in (self.w1, self.w2) for t in (f if isinstance(f, tuple) else (f,)))

    def delta(self, base: torch.Tensor | None = None) -> torch.Tensor:
        w1, w2 = self._whole(self.w1), self._whole(self.w2)
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        return (self.scale * torch.kron(w1, w2)).flatten(1)

    def as_lora(self, base: torch.Tensor | None = None) -> LoraModule:
        delta = self.delta()
        return dense_as_lora(delta, base.shape if base is not None else delta.shape)

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        out = {f"{name}.alpha": torch.tensor(float(self.alpha))}
        for label, factor in (("w1", self.w1), ("w2", self.w2)):
            if isinstance(factor, tuple):
                out[f"{name}.lokr_{label}_a"], out[f"{name}.lokr_{label}_b"] = (t.contiguous() for t in factor)
            else:
                out[f"{name}.lokr_{label}"] = factor.contiguous()
        return out

    def problem(self) -> str | None:
        factors = [t for f in (self.w1, self.w2) for t in (f if isinstance(f, tuple) else (f,))]
        pairs_fit = all(f[0].ndim == 2 and f[1].ndim == 2 and f[0].shape[1] == f[1].shape[0]
                        for f in (self.w1, self.w2) if isinstance(f, tuple))
        if not pairs_fit:
            return "has LoKr factor pairs whose shapes do not fit together"
        return _finite_floats(*factors)


ModuleAdapter = LoraModule | DoraModule | LohaModule | LokrModule
# The key suffixes that name a module in a file, per kind; a file holding none of them holds no adapter.
MODULE_SUFFIXES = ("lora_down.weight", "hada_w1_a", "lokr_w1", "lokr_w1_a")


def read_module(name: str, tensors: dict[str, torch.Tensor], alpha_default: float | None = None) -> ModuleAdapter | str:
    """The module stored under `name` in a kohya/LyCORIS file, or a one-line reason it cannot be read."""
    get = tensors.get
    alpha_tensor = get(f"{name}.alpha")
    if alpha_tensor is not None and alpha_tensor.numel() != 1:
        return f"{name}.alpha holds {alpha_tensor.numel()} numbers; alpha is one number"
    alpha = float(alpha_tensor.item()) if alpha_tensor is not None else None
    if get(f"{name}.lora_down.weight") is not None:
        down, up = tensors[f"{name}.lora_down.weight"], get(f"{name}.lora_up.weight")
        if up is None:
            return f"{name} has lora_down but no lora_up weight"
        alpha = float(down.shape[0]) if alpha is None else alpha
        magnitude, bias = get(f"{name}.dora_scale"), get(f"{name}.diff_b")
        return LoraModule(down, up, alpha, bias) if magnitude is None else DoraModule(down, up, alpha, bias, magnitude)
    if get(f"{name}.hada_w1_a") is not None:
        parts = [get(f"{name}.hada_{p}") for p in ("w1_a", "w1_b", "w2_a", "w2_b")]
        if any(p is None for p in parts):
            return f"{name} is a LoHa module missing one of hada_w1_a/w1_b/w2_a/w2_b"
        return LohaModule(*parts, float(parts[1].shape[0]) if alpha is None else alpha)
    factors = []
    for label in ("w1", "w2"):
        whole, a, b = get(f"{name}.lokr_{label}"), get(f"{name}.lokr_{label}_a"), get(f"{name}.lokr_{label}_b")
        if whole is None and (a is None or b is None):
            return f"{name} is a LoKr module without lokr_{label} (or lokr_{label}_a and lokr_{label}_b)"
        factors.append(whole if whole is not None else (a, b))
    module = LokrModule(factors[0], factors[1], 0.0)
    module.alpha = (module.rank or 1.0) if alpha is None else alpha
    return module


def method_name(weights: dict) -> str:
    """LoRA, DoRA, LoHa, LoKr, or a mix such as 'LoRA + LoHa', from the modules a file holds."""
    return " + ".join(KINDS[k] for k in KINDS if any(m.kind == k for m in weights.values())) or "none"
