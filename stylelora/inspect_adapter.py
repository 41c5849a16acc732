"""What an adapter file holds: layout, targets, ranks and alphas, the base it fits, its metadata."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .formats import read_lora
from .methods import KINDS, TARGET_PRESETS
from .methods.layouts import method_name

# Cross-attention key/value input width -> architecture.
_CONTEXT_WIDTH = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}


def architecture_of_weights(weights, metadata: dict[str, str]) -> str:
    """SD1.x / SD2.x / SDXL from the width of the cross-attention key/value inputs."""
    if metadata.get("stylelora.architecture") == "mini":
        return "stylelora mini"
    widths = {adapter.in_features for (part, module), adapter in weights.items()
              if part == "unet" and "attn2" in module and module.endswith(("to_k", "to_v"))}
    if not widths:
        return "unknown"
    width = next(iter(widths))
    return _CONTEXT_WIDTH.get(width, f"unknown (context width {width})")


# Module-name suffixes as --targets and --target-modules name them, longest first.
_KNOWN_SUFFIXES = sorted(set(TARGET_PRESETS["all"]) | {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"},
                         key=len, reverse=True)


def _target_of(module: str) -> str:
    """'ff.net.0.proj' for '...transformer_blocks.0.ff.net.0.proj': the suffix a user would name it by."""
    for suffix in _KNOWN_SUFFIXES:
        if module == suffix or module.endswith("." + suffix):
            return suffix
    return module.rsplit(".", 1)[-1]


def _method(weights, metadata: dict[str, str]) -> str:
    """What the file holds, and how it was trained when that differs (AdaLoRA and DyLoRA write plain LoRA)."""
    held, trained = method_name(weights), KINDS.get(metadata.get("stylelora.method", ""))
    return f"{held} (trained as {trained})" if trained and trained != held else held


def describe(path: Path) -> dict:
    weights, metadata, kind = read_lora(path)
    groups = Counter((part, adapter.kind, adapter.rank, adapter.alpha) for (part, _), adapter in weights.items())
    targets = sorted({_target_of(module) for _, module in weights})
    architecture = architecture_of_weights(weights, metadata)
    return {
        "file": str(path),
        "format": kind,
        "method": _method(weights, metadata),
        "modules": len(weights),
        "parameters": sum(adapter.parameter_count for adapter in weights.values()),
        "trained_biases": sum(getattr(adapter, "bias", None) is not None for adapter in weights.values()),
        "targets": targets,
        "text_encoder": any(part == "text_encoder" for part, _ in weights),
        "groups": [{"part": part, "method": KINDS[kind], "rank": rank, "alpha": alpha,
                    "scale": alpha / rank if rank else 1.0, "modules": count}
                   for (part, kind, rank, alpha), count in sorted(groups.items())],
        "architecture": architecture,
        "metadata": {k: v for k, v in metadata.items() if k != "stylelora.config"},
    }


def as_text(info: dict) -> str:
    lines = [f"{info['file']}", f"  format:        {info['format']}",
             f"  method:        {info['method']}",
             f"  fits:          {info['architecture']}",
             f"  modules:       {info['modules']} ({', '.join(info['targets'])})",
             f"  parameters:    {info['parameters']:,}"
             + (f" (and {info['trained_biases']} trained biases)" if info["trained_biases"] else ""),
             f"  text encoder:  {'adapted' if info['text_encoder'] else 'not adapted'}"]
    for group in info["groups"]:
        lines.append(f"  {group['part']:<13}  {group['method']} rank {group['rank']}, alpha {group['alpha']:g}, "
                     f"scale {group['scale']:g} ({group['modules']} modules)")
    if info["metadata"]:
        lines.append("  metadata:")
        lines += [f"    {key}: {value[:120]}" for key, value in sorted(info["metadata"].items())]
    return "\n".join(lines)


def as_json(info: dict) -> str:
    return json.dumps(info, indent=2)
