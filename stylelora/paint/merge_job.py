"""The merge job: read weighted adapters, blend them exactly (cat) or at rank R (svd), or fuse into a base."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..adapters.base_weights import base_weights
from ..adapters.formats import read_lora, write_lora
from ..adapters.merge import MERGE_RULES, merge_cat, merge_sparse, merge_svd
from ..adapters.stack import parse_lora_spec
from ..errors import AdapterFileError, ConfigError
from ..families import UNKNOWN, Family, family_of_weights
from ..files import folder_written_atomically
from .engine import Engine


MERGE_METHODS = ("cat", "svd", *MERGE_RULES)


@dataclass
class MergeConfig:
    adapters: tuple[str, ...]  # "file.safetensors:0.6" specs
    out: Path
    method: str = "cat"
    rank: int | None = None
    into_base: bool = False
    base: str = "mini"
    density: float | None = None  # ties, dare-*, magnitude-prune: the share of each change's entries kept
    seed: int = 0  # dare-*: the random drop


@dataclass
class MergeResult:
    path: Path
    relative_error: float | None = None


def validate_merge(config: MergeConfig) -> None:
    if not config.adapters:
        raise ConfigError("name at least one adapter to merge, e.g. a.safetensors:0.6 b.safetensors:0.4")
    if config.method not in MERGE_METHODS:
        raise ConfigError(f"--method = {config.method!r}: choose one of {', '.join(MERGE_METHODS)}")
    if config.method == "svd" and (config.rank is None or config.rank < 1):
        raise ConfigError(f"--rank = {config.rank!r}: --method svd needs a target rank of at least 1, e.g. --rank 8")
    if config.rank is not None and config.rank < 1:
        raise ConfigError(f"--rank = {config.rank!r}: the rank must be at least 1, or left out")
    if config.method in MERGE_RULES and not (config.density is not None and 0 < config.density <= 1):
        raise ConfigError(f"--density = {config.density!r}: --method {config.method} keeps this share of each change's "
                          "entries, in (0, 1]; 0.5 is usual")
    if config.method not in MERGE_RULES and config.density is not None:
        raise ConfigError(f"--density = {config.density!r}: only {', '.join(MERGE_RULES)} take it; leave it out")
    if config.into_base and config.method != "cat":
        raise ConfigError(f"--method = {config.method!r}: --into-base fuses the exact weighted sum; leave out --method")


def merge(config: MergeConfig) -> MergeResult:
    validate_merge(config)
    specs = [parse_lora_spec(spec) for spec in config.adapters]
    if config.into_base:
        return MergeResult(fuse_into_base(config.base, specs, config.out))
    read = [read_lora(path) for path, _ in specs]
    items = [(weights, weight) for (weights, _, _), (_, weight) in zip(read, specs)]
    family = blend_family([(path, family_of_weights(w, m)) for (path, _), (w, m, _) in zip(specs, read)])
    error = None
    if config.method == "cat":
        merged = merge_cat(items)
    elif config.method == "svd":
        merged, error = merge_svd(items, config.rank, base_weights(config.base, items, family))
    else:
        merged, error = merge_sparse(items, config.method, config.density, config.rank,
                                     base_weights(config.base, items, family), config.seed)
    sources = [{"file": str(p), "unet": w.unet, "te": w.text_encoder} for p, w in specs]
    metadata = {"stylelora.merged_from": json.dumps(sources), "stylelora.merge_method": config.method,
                **({"stylelora.merge_density": str(config.density)} if config.density is not None else {}),
                "modelspec.merged_from": ", ".join(str(p) for p, _ in specs)}
    if family is not None:  # the merge fits the base its inputs fit, and says so as they did
        metadata |= {"stylelora.architecture": family.name, "ss_base_model_version": family.base_model_version}
    write_lora(merged, None, config.out, metadata)  # the family's own layout
    return MergeResult(config.out, error)


def blend_family(sources: list[tuple[Path, Family | None]]) -> Family | None:
    """The one family every adapter of a blend was made for; refuse a blend of SD1.x with SDXL (and the like)."""
    known = [(path, family) for path, family in sources if family not in (None, UNKNOWN)]
    for path, family in known[1:]:
        if family is not known[0][1]:
            raise AdapterFileError(f"{path} is made for {family.label} but {known[0][0]} for {known[0][1].label}: "
                                   "adapters of different base families cannot be merged")
    return known[0][1] if known else None


def fuse_into_base(base: str, specs, out: Path) -> Path:
    """Fuse the weighted blend into a copy of the base and save it as a diffusers folder, atomically."""
    engine = Engine(base, folder=None)
    for index, (path, _) in enumerate(specs):
        engine.add(f"adapter{index}", path)  # by index: the same file may come twice
    engine.fuse(tuple((f"adapter{index}", weight) for index, (_, weight) in enumerate(specs)))
    with folder_written_atomically(out) as staging:
        engine.pipe.save_pretrained(staging)
    return out
