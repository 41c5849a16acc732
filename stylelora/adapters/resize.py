"""The resize job: an adapter at a lower rank, per module. By SVD of each module's change (to a fixed
rank, or the smallest rank that keeps a share of its norm, as kohya's resize_lora.py does), or, for a
DyLoRA file, by keeping its first components, which DyLoRA trained to stand alone."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..methods import REGISTRY
from ..methods.layouts import LoraModule
from .base_weights import base_weights
from .formats import LoraWeights, read_lora, write_lora
from .merge import RankRule, fixed_rank, frobenius_share, merge_svd, singular_ratio
from .stack import StyleWeight


@dataclass
class ResizeConfig:
    file: Path
    out: Path
    rank: int | None = None  # the rank, or with `dynamic` the largest rank a module may keep
    dynamic: str | None = None  # "fro=0.9" or "ratio=4"
    base: str = "mini"  # read for DoRA, LoHa and LoKr files


@dataclass
class ResizeResult:
    path: Path
    relative_error: float
    ranks: dict[int, int]  # rank -> how many modules have it
    method: str  # "svd" or "dylora truncation"


def rank_rule(config: ResizeConfig) -> RankRule:
    """The rule that picks each module's rank; raises ConfigError naming the flag that is wrong."""
    if config.rank is not None and config.rank < 1:
        raise ConfigError(f"--rank = {config.rank}: the rank must be a whole number of at least 1")
    if config.dynamic is None:
        if config.rank is None:
            raise ConfigError("give --rank R, or --dynamic fro=0.9 or --dynamic ratio=4 (with --rank as the largest)")
        return fixed_rank(config.rank)
    match = re.fullmatch(r"(fro|ratio)=([0-9.]+)", config.dynamic)
    value = float(match.group(2)) if match and re.fullmatch(r"[0-9]*\.?[0-9]+", match.group(2)) else None
    if match is None or value is None or (match.group(1) == "fro" and not 0 < value <= 1) or \
            (match.group(1) == "ratio" and value < 1):
        raise ConfigError(f"--dynamic = {config.dynamic!r}: give fro=S (the share of each module's norm to keep, "
                          "0 < S <= 1, e.g. fro=0.9) or ratio=R (keep singular values >= the largest / R, R >= 1)")
    return frobenius_share(value, config.rank) if match.group(1) == "fro" else singular_ratio(value, config.rank)


def resize(config: ResizeConfig) -> ResizeResult:
    rule = rank_rule(config)
    weights, metadata, _ = read_lora(config.file)
    trained_as = REGISTRY.get(metadata.get("stylelora.method", ""))
    if trained_as is not None and trained_as.truncates_on_resize() and config.dynamic is None:
        resized, how = _truncate_dylora(weights, config.rank), "dylora truncation"
        error = _relative_error(weights, resized)
    else:
        items = [(weights, StyleWeight(1.0, 1.0))]
        resized, error = merge_svd(items, rule, base_weights(config.base, items))
        how = "svd"
    ranks: dict[int, int] = {}
    for module in resized.values():
        ranks[module.rank] = ranks.get(module.rank, 0) + 1
    out_metadata = {k: v for k, v in metadata.items() if not k.startswith("ss_network_")} | {
        "stylelora.resized_from": str(config.file), "stylelora.resize": json.dumps(
            {"rank": config.rank, "dynamic": config.dynamic, "how": how, "relative_error": error}),
        "ss_network_module": "networks.lora", "ss_network_dim": str(max(ranks)),
        "ss_network_alpha": str(float(next(iter(resized.values())).alpha))}
    write_lora(resized, None, config.out, out_metadata)  # the family's own layout
    return ResizeResult(config.out, error, dict(sorted(ranks.items())), how)


def _truncate_dylora(weights: LoraWeights, rank: int) -> LoraWeights:
    """DyLoRA at rank k is its first k components at scale (alpha / r) sqrt(r / k): a file at rank r with
    alpha a holds rank k with alpha a * sqrt(k / r)."""
    out: LoraWeights = {}
    for key, module in weights.items():
        k = min(rank, module.rank)
        out[key] = LoraModule(module.down[:k].clone(), module.up[:, :k].clone(), module.alpha * math.sqrt(k / module.rank),
                              module.bias)
    return out


def _relative_error(full: LoraWeights, reduced: LoraWeights) -> float:
    error = sum(float((full[k].delta() - reduced[k].delta()).pow(2).sum()) for k in full)
    total = sum(float(full[k].delta().pow(2).sum()) for k in full)
    return math.sqrt(error / total) if total else 0.0
