"""What an adapter file holds: layout, targets, ranks and alphas, the base it fits, its metadata."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .formats import read_lora

# Cross-attention key/value input width -> architecture.
_CONTEXT_WIDTH = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}


def architecture_of_weights(weights, metadata: dict[str, str]) -> str:
    """SD1.x / SD2.x / SDXL from the width of the cross-attention key/value inputs."""
    if metadata.get("stylelora.architecture") == "mini":
        return "stylelora mini"
    widths = {lora.down.shape[1] for (part, module), lora in weights.items()
              if part == "unet" and "attn2" in module and module.endswith(("to_k", "to_v"))}
    if not widths:
        return "unknown"
    width = next(iter(widths))
    return _CONTEXT_WIDTH.get(width, f"unknown (context width {width})")


def describe(path: Path) -> dict:
    weights, metadata, kind = read_lora(path)
    groups = Counter((part, lora.rank, lora.alpha) for (part, _), lora in weights.items())
    targets = sorted({module.rsplit(".", 1)[-1] if not module.endswith(".0") else module.rsplit(".", 2)[-2] + ".0"
                      for _, module in weights})
    architecture = architecture_of_weights(weights, metadata)
    return {
        "file": str(path),
        "format": kind,
        "modules": len(weights),
        "targets": targets,
        "text_encoder": any(part == "text_encoder" for part, _ in weights),
        "groups": [{"part": part, "rank": rank, "alpha": alpha, "scale": alpha / rank, "modules": count}
                   for (part, rank, alpha), count in sorted(groups.items())],
        "architecture": architecture,
        "metadata": {k: v for k, v in metadata.items() if k != "stylelora.config"},
    }


def as_text(info: dict) -> str:
    lines = [f"{info['file']}", f"  format:        {info['format']}",
             f"  fits:          {info['architecture']}",
             f"  modules:       {info['modules']} ({', '.join(info['targets'])})",
             f"  text encoder:  {'adapted' if info['text_encoder'] else 'not adapted'}"]
    for group in info["groups"]:
        lines.append(f"  {group['part']:<13}  rank {group['rank']}, alpha {group['alpha']:g}, "
                     f"scale {group['scale']:g} ({group['modules']} modules)")
    if info["metadata"]:
        lines.append("  metadata:")
        lines += [f"    {key}: {value[:120]}" for key, value in sorted(info["metadata"].items())]
    return "\n".join(lines)


def as_json(info: dict) -> str:
    return json.dumps(info, indent=2)
