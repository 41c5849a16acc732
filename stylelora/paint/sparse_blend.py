"""Paint-time blends by the merge rules (--blend ties, dare-linear, dare-ties, magnitude-prune, klora): a stack of two
or more adapters is merged once (adapters/merge.merge_sparse, at --blend-density), kept as a file in the user's cache
keyed by the adapter files, their weights, the rule and the density, and painted fused like one adapter. A second
painting of the same stack reads that file, so painting costs what a fused stack costs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from ..adapters.formats import LoraWeights, write_lora
from ..adapters.merge import MERGE_RULES, merge_sparse
from ..adapters.stack import StyleWeight
from ..paths import user_cache
from .multilora import Stack


def blend_key(stack: Stack, method: str, density: float, path_of: Callable[[str], Path]) -> str:
    """What the merged file depends on: each adapter file (path, size, modification time), its weight, the rule."""
    parts = []
    for name, weight in stack:
        path = path_of(name)
        stat = path.stat()
        parts.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns, weight.unet, weight.text_encoder,
                      list(weight.blocks)])
    return hashlib.sha256(json.dumps([parts, method, density]).encode()).hexdigest()[:20]


def blended_stack(stack: Stack, method: str, density: float, path_of: Callable[[str], Path],
                  read_plain: Callable[[Path], LoraWeights], pin: Callable[[str, Path], None]) -> Stack:
    """The one-adapter stack that paints `stack` merged by `method`: the cached file, pinned under its own name
    (`pin`), at weight 1. The merge reads each adapter as plain LoRA for this base (`read_plain`)."""
    if method not in MERGE_RULES or len(stack) < 2:
        return stack
    key = blend_key(stack, method, density, path_of)
    path = user_cache("blends") / f"{method}-{key}.safetensors"
    if not path.is_file():
        items = [(read_plain(path_of(name)), weight) for name, weight in stack]
        merged, _ = merge_sparse(items, method, density, None)
        sources = [{"file": str(path_of(name)), "unet": w.unet, "te": w.text_encoder} for name, w in stack]
        write_lora(merged, None, path, {"stylelora.merge_method": method, "stylelora.merge_density": str(density),
                                         "stylelora.merged_from": json.dumps(sources)})
    name = f"{method}-blend-{key}"
    pin(name, path)
    return ((name, StyleWeight(1.0, 1.0)),)
