"""Weighted merges of LoRA adapters, done on the product B·A, never on A and B separately.

Averaging A's and B's separately (as some tools do) multiplies cross terms B_1·A_2 into the
result, which is not the blend. `cat` stacks the ranks so the merged delta equals the
weighted sum exactly; `svd` compresses that exact sum to rank R and reports the error.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..errors import ConfigError
from ..methods import KINDS
from .formats import LoraModule, LoraWeights
from .stack import StyleWeight

# The base weight of a module, (part, module path) -> tensor: what DoRA's change depends on, and the
# shape a LoHa or LoKr change has on a convolution.
BaseWeights = Callable[[tuple[str, str]], torch.Tensor]


def merge_cat(items: list[tuple[LoraWeights, StyleWeight]]) -> LoraWeights:
    """Concatenate ranks: up = [w_1 s_1 B_1 | w_2 s_2 B_2 ...], down = [A_1; A_2 ...], alpha = total rank."""
    other = sorted({a.kind for weights, _ in items for a in weights.values() if type(a) is not LoraModule})
    if other:
        raise ConfigError(f"--method cat is exact for plain LoRA only, and these adapters hold "
                          f"{'/'.join(KINDS[k] for k in other)} modules; use --method svd --rank R")
    merged: LoraWeights = {}
    for key in sorted({key for weights, _ in items for key in weights}):
        downs, ups = [], []
        for weights, weight in items:
            if key in weights:
                lora = weights[key]
                downs.append(lora.down.float())
                ups.append(lora.up.float() * (weight.for_module(*key) * lora.scale))
        down, up = torch.cat(downs, dim=0), torch.cat(ups, dim=1)
        merged[key] = LoraModule(down, up, float(down.shape[0]), blended_bias(items, key))
    return merged


def blended_bias(items: list[tuple[LoraWeights, StyleWeight]], key: tuple[str, str]) -> torch.Tensor | None:
    """The weighted sum of the trained bias changes (`diff_b`) of one module, or None if none trained one."""
    biases = [weight.for_module(*key) * weights[key].bias.double() for weights, weight in items
              if key in weights and getattr(weights[key], "bias", None) is not None]
    return sum(biases).float() if biases else None


def change_of(adapter, key: tuple[str, str], base: BaseWeights | None) -> torch.Tensor:
    """A module's change at weight 1, flattened to 2-D; DoRA, LoHa and LoKr read the base's weight through `base`."""
    if type(adapter) is LoraModule:
        return adapter.delta()
    if base is None:
        raise ConfigError(f"{KINDS[adapter.kind]} merges read the base model's weights; pass `base` "
                          "(merge_job.base_weights)")
    return adapter.delta(base(key))


def blended_deltas(items: list[tuple[LoraWeights, StyleWeight]], base: BaseWeights | None = None
                   ) -> dict[tuple[str, str], torch.Tensor]:
    """The exact weighted sum of each module's delta, in float64, flattened to 2-D."""
    deltas: dict[tuple[str, str], torch.Tensor] = {}
    for weights, weight in items:
        for key, adapter in weights.items():
            delta = weight.for_module(*key) * change_of(adapter, key, base)
            deltas[key] = deltas[key] + delta if key in deltas else delta
    return deltas


# How many singular values a module keeps, given all of them (largest first).
RankRule = Callable[[torch.Tensor], int]


def fixed_rank(rank: int) -> RankRule:
    return lambda singular_values: rank


def frobenius_share(share: float, max_rank: int | None = None) -> RankRule:
    """The smallest rank that keeps `share` of the module's Frobenius norm (kohya resize_lora's sv_fro)."""
    def rule(s: torch.Tensor) -> int:
        kept = torch.sqrt(torch.cumsum(s ** 2, 0) / (s ** 2).sum())
        return min(int((kept < share - 1e-12).sum()) + 1, max_rank or s.numel())
    return rule


def singular_ratio(ratio: float, max_rank: int | None = None) -> RankRule:
    """The singular values at least the largest one / `ratio` (kohya resize_lora's sv_ratio)."""
    return lambda s: min(max(1, int((s >= s[0] / ratio).sum())), max_rank or s.numel())


def merge_svd(items: list[tuple[LoraWeights, StyleWeight]], rank: int | RankRule,
              base: BaseWeights | None = None) -> tuple[LoraWeights, float]:
    """Best rank-`rank` approximation (per module, by truncated SVD) of the exact blend, and the relative
    Frobenius error over all modules: ||exact - approx|| / ||exact||. `rank` may be a rule that picks each
    module's rank from its singular values. DoRA, LoHa and LoKr modules are read through `base`, the base
    model's weights."""
    return low_rank(items, blended_deltas(items, base), fixed_rank(rank) if isinstance(rank, int) else rank, base)


def low_rank(items: list[tuple[LoraWeights, StyleWeight]], deltas: dict[tuple[str, str], torch.Tensor], rule: RankRule,
             base: BaseWeights | None = None,
             ranks: dict[tuple[str, str], int] | None = None) -> tuple[LoraWeights, float]:
    """Each module's change in `deltas` as a LoRA pair of the rank `rule` picks (or `ranks` gives, per module), by
    truncated SVD, with the blended biases of `items`, and the relative Frobenius error over all modules."""
    shapes = {key: _lora_shapes(adapter, key, base) for weights, _ in items for key, adapter in weights.items()}
    merged: LoraWeights = {}
    error_sq = total_sq = 0.0
    for key, delta in deltas.items():
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        k = max(1, min(ranks[key] if ranks else rule(s), int(s.shape[0])))
        root = s[:k].sqrt()
        up, down = u[:, :k] * root, root[:, None] * vh[:k]
        error_sq += float((s[k:] ** 2).sum())
        total_sq += float((s ** 2).sum())
        down_shape, up_shape = shapes[key]
        merged[key] = LoraModule(down.float().reshape(k, *down_shape[1:]), up.float().reshape(up_shape[0], k, *up_shape[2:]),
                                 float(k), blended_bias(items, key))
    return merged, math.sqrt(error_sq / total_sq) if total_sq > 0 else 0.0


# The merge rules of the model-merging literature, as peft implements them on task tensors. peft applies them to
# A and B apart when ranks match (add_weighted_adapter's "ties"), which mixes cross terms into the result, or
# to B·A in its "_svd" combinations; here they always act on each module's whole change B·A, for every method.
# K-LoRA's per-layer choice is not in peft: klora() below, written to the same signature.
MERGE_RULES = ("ties", "dare-linear", "dare-ties", "magnitude-prune", "klora")


def klora(tasks: list[torch.Tensor], weights: torch.Tensor, density: float) -> torch.Tensor:
    """K-LoRA's rule (Ouyang et al. 2025, training-free fusion), without its timestep schedule: a layer takes the
    weighted change of the one adapter whose K largest entries (K = `density` x the entries) sum larger."""
    weighted = [weight * task for weight, task in zip(weights, tasks)]
    k = max(1, int(density * weighted[0].numel()))
    scores = torch.stack([task.abs().flatten().topk(k).values.sum() for task in weighted])
    return weighted[int(scores.argmax())]


def merge_sparse(items: list[tuple[LoraWeights, StyleWeight]], method: str, density: float, rank: int | None,
                 base: BaseWeights | None = None, seed: int = 0) -> tuple[LoraWeights, float]:
    """TIES, DARE (linear or with TIES' sign election) or magnitude pruning of each module's changes, weighted,
    keeping the share `density` of each change's entries, or K-LoRA's choice of one change per module; then each
    merged change as a LoRA pair of rank `rank` (None: the sum of the adapters' ranks there), with the SVD's
    relative error. DARE's random drop is seeded."""
    from peft.utils import merge_utils

    rules = {"ties": merge_utils.ties, "dare-linear": merge_utils.dare_linear, "dare-ties": merge_utils.dare_ties,
             "magnitude-prune": merge_utils.magnitude_prune, "klora": klora}
    torch.manual_seed(seed)
    deltas, ranks = {}, {}
    for key in sorted({key for weights, _ in items for key in weights}):
        present = [(weights[key], weight.for_module(*key)) for weights, weight in items if key in weights]
        tasks = [change_of(adapter, key, base).double() for adapter, _ in present]
        deltas[key] = rules[method](tasks, torch.tensor([w for _, w in present], dtype=torch.float64), density)
        ranks[key] = sum(adapter.rank for adapter, _ in present)
    return low_rank(items, deltas, fixed_rank(rank or 1), base, None if rank is not None else ranks)


def _lora_shapes(adapter, key: tuple[str, str], base: BaseWeights | None) -> tuple[torch.Size, torch.Size]:
    """The shapes a LoRA pair for this module takes (down, up), read off the base weight for other methods."""
    if type(adapter) is LoraModule:
        return adapter.down.shape, adapter.up.shape
    weight_shape = base(key).shape  # change_of has refused a missing base already
    return torch.Size((0, *weight_shape[1:])), torch.Size((weight_shape[0], 0, *[1] * (len(weight_shape) - 2)))
