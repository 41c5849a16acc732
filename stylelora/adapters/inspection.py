"""What an adapter file holds: layout, targets, ranks and alphas, the base it fits, its metadata."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..families import architecture_of_weights, check_fits, family_of_weights
from ..methods import KINDS, TARGET_PRESETS
from ..methods.layouts import method_name
from .formats import read_lora


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
        "text_encoder": any(part != "unet" for part, _ in weights),
        "groups": [{"part": part, "method": KINDS[kind], "rank": rank, "alpha": alpha,
                    "scale": alpha / rank if rank else 1.0, "modules": count}
                   for (part, kind, rank, alpha), count in sorted(groups.items())],
        "architecture": architecture,
        "metadata": {k: v for k, v in metadata.items() if k != "stylelora.config"},
        "settings": _settings(metadata),  # the run's own settings, as the config names them ({} if not ours)
    }


def _settings(metadata: dict[str, str]) -> dict:
    try:
        settings = json.loads(metadata.get("stylelora.config", "{}"))
    except json.JSONDecodeError:
        return {}
    return settings if isinstance(settings, dict) else {}


def as_text(info: dict) -> str:
    lines = [f"{info['file']}", f"  format:        {info['format']}",
             f"  method:        {info['method']}",
             f"  fits:          {info['architecture']}",
             f"  modules:       {info['modules']} ({', '.join(info['targets'])})",
             f"  parameters:    {info['parameters']:,}"
             + (f" (and {info['trained_biases']} trained biases)" if info["trained_biases"] else ""),
             f"  text encoder:  {'adapted' if info['text_encoder'] else 'not adapted'}"]
    for group in info["groups"]:
        lines.append(f"  {group['part']:<14} {group['method']} rank {group['rank']}, alpha {group['alpha']:g}, "
                     f"scale {group['scale']:g} ({group['modules']} modules)")
    if info["metadata"]:
        lines.append("  metadata:")
        lines += [f"    {key}: {value[:120]}" for key, value in sorted(info["metadata"].items())]
    return "\n".join(lines)


def as_json(info: dict) -> str:
    return json.dumps(info, indent=2)


ENERGY_SHARES = (0.90, 0.95, 0.99)


def check_fits_base(path: Path, base: str) -> None:
    """Refuse, naming both, when the adapter was made for another family than `base` (read from its config)."""
    from ..model.base import base_family

    weights, metadata, _ = read_lora(path)
    check_fits(path, family_of_weights(weights, metadata), base, base_family(base))


def effective_ranks(path: Path, base: str = "mini") -> dict:
    """Each module's effective rank: how many singular values of its change hold 90%, 95% and 99% of its
    energy (the sum of squared singular values, i.e. the squared Frobenius norm). DoRA, LoHa and LoKr
    changes are read through the base's weights, as merge and resize read them."""
    import torch

    from .merge import blended_deltas
    from .base_weights import base_weights
    from .stack import StyleWeight

    weights, _, _ = read_lora(path)
    items = [(weights, StyleWeight(1.0, 1.0))]
    modules = []
    for (part, module), delta in sorted(blended_deltas(items, base_weights(base, items)).items()):
        s = torch.linalg.svdvals(delta.double())
        energy = torch.cumsum(s ** 2, 0) / (s ** 2).sum() if s.numel() and float(s.sum()) > 0 else None
        held = weights[(part, module)].rank
        ranks = {f"{share:.0%}": (int((energy < share - 1e-12).sum()) + 1 if energy is not None else 0)
                 for share in ENERGY_SHARES}
        modules.append({"part": part, "module": module, "rank": held, **ranks})
    return {"file": str(path), "modules": modules, "verdict": rank_verdict(modules)}


def rank_verdict(modules: list[dict]) -> str:
    """Whether a smaller --rank would have done: 95% of every module's change fits in the largest rank@95%."""
    held = max(m["rank"] for m in modules)
    needed = max(m["95%"] for m in modules)
    if needed < held:
        return (f"every module's change keeps 95% of its energy within rank {needed} (of {held}): --rank {needed} "
                f"would likely have done; `stylelora resize FILE --rank {needed}` makes it now")
    return f"some modules use all {held} ranks for 95% of their energy: the rank was not too high"


def ranks_as_text(info: dict) -> str:
    lines = [info["file"], f"  {'module':<72} rank   90%   95%   99%"]
    for m in info["modules"]:
        name = f"{m['part']}: {m['module']}"
        lines.append(f"  {name[-72:]:<72} {m['rank']:>4} {m['90%']:>5} {m['95%']:>5} {m['99%']:>5}")
    lines.append(f"  {info['verdict']}")
    return "\n".join(lines)
