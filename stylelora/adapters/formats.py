"""LoRA key layouts: kohya / AUTOMATIC1111 / ComfyUI, diffusers, and peft, through one exact in-memory form.

Every layout is read into `LoraWeights`: per module, the down (A) and up (B) matrices and
the alpha, so scale = alpha / rank is kept exactly, whatever the layout stores it as. The kohya
layout also carries DoRA, LoHa and LoKr modules (methods/layouts.py); the others hold LoRA only.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import safetensors.torch
import torch

from ..errors import AdapterFileError
from ..families import FAMILIES, Family, family_of_weights
from ..files import read_safetensors, write_atomically
from ..methods import KINDS
from ..methods.layouts import MODULE_SUFFIXES, LoraModule, ModuleAdapter, read_module
from .fused import fuse, split

FORMATS = ("kohya", "diffusers", "peft")
PARTS = ("unet", "text_encoder", "text_encoder_2")
# Read: kohya's SD1/SD2 prefix and its SDXL pair (lora_te1_ the CLIP-L encoder, lora_te2_ the OpenCLIP-G one).
KOHYA_PREFIX = {"lora_unet_": "unet", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2", "lora_te_": "text_encoder"}


# The kohya names of the denoisers whose original checkpoints fuse layers (Flux), read whichever family a file is for.
FUSED_NAMES = tuple(name for family in FAMILIES.values() for name in family.kohya_fused)


def kohya_prefixes(weights: "LoraWeights", family: Family | None = None) -> dict[str, str]:
    """Each part's prefix when writing: the family's own (SDXL's and the DiTs' CLIP-L is lora_te1_, as kohya writes
    and AUTOMATIC1111 and ComfyUI (comfy/lora.py) map it); for a file of unknown family, lora_te1_/lora_te2_ where
    it has a second encoder, else SD1/SD2's lora_te_."""
    if family is not None:
        return {"unet": "lora_unet_"} | {encoder.part: encoder.kohya_prefix for encoder in family.text_encoders}
    sdxl = any(part == "text_encoder_2" for part, _ in weights)
    return {"unet": "lora_unet_", "text_encoder": "lora_te1_" if sdxl else "lora_te_", "text_encoder_2": "lora_te2_"}


DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"

# Module-name pieces that contain '_' in diffusers/transformers; kohya flattens every '.' to '_'. Longer pieces
# first: "add_k_proj" must be joined before "k_proj" (SD3's caption stream).
_COMPOUND = ["add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff_context", "norm1_context", "context_embedder",
             "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
             "proj_in", "proj_out", "time_emb_proj", "conv_shortcut", "conv_in", "conv_out", "time_embedding",
             "linear_1", "linear_2", "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj",
             "final_layer_norm", "layer_norm1", "layer_norm2", "token_embedding", "position_embedding",
             "add_embedding", "text_projection"]


# Keys are (part, module path) with diffusers module paths; the text encoder's keep `text_model.`.
LoraWeights = dict[tuple[str, str], ModuleAdapter]


def _unflatten(flat: str) -> str:
    path = flat.replace("_", ".")
    for word in _COMPOUND:
        path = path.replace(word.replace("_", "."), word)
    return path


def _text_path(module: str) -> str:
    return module if module.startswith("text_model.") else "text_model." + module


def from_kohya(tensors: dict[str, torch.Tensor], source: Path) -> LoraWeights:
    """Every adapted module of a kohya/LyCORIS file: LoRA, DoRA, LoHa or LoKr (methods/layouts.py)."""
    weights: LoraWeights = {}
    names = {key.split(".", 1)[0] for key in tensors if key.endswith(MODULE_SUFFIXES)}
    for name in sorted(names):
        prefix = next((prefix for prefix in KOHYA_PREFIX if name.startswith(prefix)), None)
        if prefix is None:
            raise AdapterFileError(f"{source}: key {name} is none of lora_unet_, lora_te_, lora_te1_, lora_te2_; "
                                   "only Stable Diffusion 1.x/2.x/XL/3.x and Flux.1 LoRA files are supported")
        module = read_module(name, tensors)
        if isinstance(module, str):
            raise AdapterFileError(f"{source}: {module}")
        part, flat = KOHYA_PREFIX[prefix], name[len(prefix):]
        members = split(flat, module, FUSED_NAMES) if part == "unet" and type(module) is LoraModule else None
        if members is None:
            weights[(part, _unflatten(flat))] = module
        else:
            weights |= {(part, path): member for path, member in members.items()}
    return weights


def to_kohya(weights: LoraWeights, family: Family | None = None) -> dict[str, torch.Tensor]:
    """kohya's names: diffusers' paths with '.' flattened to '_', or, for a family whose original checkpoint fuses
    layers (Flux), that checkpoint's names, the fused layers' modules fused too (adapters/fused.py)."""
    out, prefixes = {}, kohya_prefixes(weights, family)
    if family is not None and family.kohya_fused:
        denoiser = {module: adapter for (part, module), adapter in weights.items() if part == "unet"}
        weights = {key: adapter for key, adapter in weights.items() if key[0] != "unet"}
        for name, adapter in fuse(denoiser, family.kohya_fused, family.label).items():
            out |= adapter.tensors(prefixes["unet"] + name)
    for (part, module), adapter in weights.items():
        out |= adapter.tensors(prefixes[part] + module.replace(".", "_"))
    return out


def one_alpha(weights: LoraWeights) -> LoraWeights:
    """The same change with every plain LoRA module at one alpha, the most common one, each module's own scale
    folded into its up matrix (up * alpha / common): exact in every loader. diffusers' loader applies one alpha to
    the modules its kohya conversion cannot key an alpha to (SD1 attention layers, in 0.42), so a file whose modules
    differ in alpha (AdaLoRA's, `resize --dynamic`'s, merges') was mis-scaled there; ranks may still differ, which
    diffusers reads off the shapes. DoRA, LoHa and LoKr modules are left as they are (their own layouts)."""
    alphas = Counter(adapter.alpha for adapter in weights.values() if type(adapter) is LoraModule)
    if len(alphas) < 2:
        return weights
    common = alphas.most_common(1)[0][0]
    return {key: LoraModule(a.down, a.up * (a.alpha / common), common, a.bias)
            if type(a) is LoraModule and a.alpha != common else a for key, a in weights.items()}


def without_biases(weights: LoraWeights) -> tuple[LoraWeights, int]:
    """The weights with their trained biases (diff_b) left out, and how many were: diffusers' load_lora_weights
    refuses a file that has any (its kohya conversion has no key for them), so this is the form it loads."""
    dropped = sum(getattr(adapter, "bias", None) is not None for adapter in weights.values())
    return {key: dataclasses.replace(adapter, bias=None) if getattr(adapter, "bias", None) is not None else adapter
            for key, adapter in weights.items()}, dropped


def kohya_file_tensors(weights: LoraWeights, family: Family | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a kohya-layout file: every plain LoRA module at one alpha (one_alpha), then the layout."""
    return to_kohya(one_alpha(weights), family)


def _peft_config(weights: LoraWeights, part: str) -> dict:
    """A LoraConfig dict that reproduces every module's rank and alpha exactly."""
    modules = {m: w for (p, m), w in weights.items() if p == part}
    first = next(iter(modules.values()))
    return {
        "r": first.rank,
        "lora_alpha": first.alpha,
        "target_modules": sorted(modules),
        "rank_pattern": {m: w.rank for m, w in modules.items() if w.rank != first.rank},
        "alpha_pattern": {m: w.alpha for m, w in modules.items() if w.alpha != first.alpha},
    }


def _from_peft_keys(tensors: dict[str, torch.Tensor], part_of, config_of, source: Path) -> LoraWeights:
    weights: LoraWeights = {}
    for key, down in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        located = part_of(key[: -len(".lora_A.weight")])
        if located is None:
            continue
        part, module = located
        up = tensors.get(key.replace(".lora_A.weight", ".lora_B.weight"))
        if up is None:
            raise AdapterFileError(f"{source}: {key} has no matching lora_B weight")
        config = config_of(part)
        rank = int(down.shape[0])
        alpha = config.get("alpha_pattern", {}).get(module, config.get("lora_alpha", rank)) if config else rank
        if part != "unet":
            module = _text_path(module)
        weights[(part, module)] = LoraModule(down, up, float(alpha))
    return weights


def from_diffusers(tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: Path) -> LoraWeights:
    """A diffusers-layout file: `unet.` (or a DiT's `transformer.`) and `text_encoder(_2).` keys, with each part's
    ranks and alphas in the `lora_adapter_metadata` JSON (alpha = rank where it says none)."""
    packed = json.loads(metadata.get(DIFFUSERS_METADATA_KEY, "{}"))
    prefixes = {part: part for part in PARTS} | {"transformer": "unet"}
    configs: dict[str, dict] = {}
    for prefix, part in prefixes.items():
        configs.setdefault(part, {}).update({k[len(prefix) + 1:]: v for k, v in packed.items() if k.startswith(prefix + ".")})

    def part_of(key: str):
        prefix, _, module = key.partition(".")
        return (prefixes[prefix], module) if prefix in prefixes else None

    return _from_peft_keys(tensors, part_of, configs.get, source)


def to_diffusers(weights: LoraWeights, denoiser: str = "unet") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The diffusers layout; the denoiser's keys under `denoiser.` ("transformer" for DiT bases)."""
    out, packed = {}, {}
    prefix = {"unet": denoiser}
    for (part, module), lora in weights.items():
        out[f"{prefix.get(part, part)}.{module}.lora_A.weight"] = lora.down.contiguous()
        out[f"{prefix.get(part, part)}.{module}.lora_B.weight"] = lora.up.contiguous()
    for part in {p for p, _ in weights}:
        packed |= {f"{prefix.get(part, part)}.{k}": v for k, v in _peft_config(weights, part).items()}
    return out, {DIFFUSERS_METADATA_KEY: json.dumps(packed, sort_keys=True)}


def scale_folded(weights: LoraWeights) -> LoraWeights:
    """Every plain LoRA module with its scale folded into up (alpha = rank): a loader that reads no alpha (ComfyUI
    reading a diffusers-layout file, which keeps alphas only in its metadata) then applies the trained change."""
    return {key: LoraModule(m.down, m.up * m.scale, float(m.rank), m.bias) if type(m) is LoraModule else m
            for key, m in weights.items()}


def file_tensors(weights: LoraWeights, layout: str, family: Family) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and extra metadata of a `family` adapter file in `layout`: kohya (one alpha), or diffusers: for a
    transformer base, scale folded and no alpha keys (diffusers' SD3 loader refuses a diffusers-layout file with
    `.alpha` keys); for a UNet, each module's alpha in the metadata, as diffusers reads it."""
    if layout == "kohya":
        return kohya_file_tensors(weights, family), {}
    if family.denoiser == "unet":
        return to_diffusers(weights)
    return to_diffusers(scale_folded(weights), family.denoiser)


def from_peft_folder(folder: Path) -> LoraWeights:
    """A peft folder: adapter_model.safetensors + adapter_config.json for the UNet, and optionally the
    same pair in text_encoder/ (and SDXL's text_encoder_2/)."""
    weights: LoraWeights = {}
    for part, sub in _peft_subfolders(folder):
        file = sub / "adapter_model.safetensors"
        if not file.is_file():
            continue
        config_file = sub / "adapter_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        tensors = read_safetensors(file).tensors
        prefix = "base_model.model."
        weights |= _from_peft_keys(tensors, lambda k, p=part: (p, k[len(prefix):] if k.startswith(prefix) else k),
                                   lambda p, c=config: c, file)
    if not weights:
        raise AdapterFileError(f"{folder}: no adapter_model.safetensors with LoRA weights in this folder")
    return weights


def _peft_subfolders(folder: Path) -> list[tuple[str, Path]]:
    return [("unet", folder)] + [(part, folder / part) for part in PARTS[1:]]


def to_peft_folder(weights: LoraWeights, folder: Path, metadata: dict[str, str]) -> None:
    for part, sub in _peft_subfolders(folder):
        modules = {m: w for (p, m), w in weights.items() if p == part}
        if not modules:
            continue
        tensors = {}
        for module, lora in modules.items():
            name = _strip(part, module)
            tensors[f"base_model.model.{name}.lora_A.weight"] = lora.down.contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = lora.up.contiguous()
        config = _peft_config({(part, _strip(part, m)): w for m, w in modules.items()}, part)
        config |= {"peft_type": "LORA", "bias": "none", "lora_dropout": 0.0, "init_lora_weights": True}
        write_atomically(sub / "adapter_model.safetensors", safetensors.torch.save(tensors, metadata=metadata))
        write_atomically(sub / "adapter_config.json", json.dumps(config, indent=2).encode())


def _strip(part: str, module: str) -> str:
    return module[len("text_model."):] if part != "unet" and module.startswith("text_model.") else module


def detect_format(tensors: dict[str, torch.Tensor]) -> str:
    keys = list(tensors)
    if any(k.startswith(tuple(KOHYA_PREFIX)) for k in keys):
        return "kohya"
    if any(k.startswith(tuple(part + "." for part in (*PARTS, "transformer"))) and ".lora_A." in k for k in keys):
        return "diffusers"
    if any(k.startswith("base_model.model.") for k in keys):
        return "peft"
    return "unknown"


def read_lora(path: Path) -> tuple[LoraWeights, dict[str, str], str]:
    """Read any supported layout: (weights, metadata, format name). Pickles are refused unopened."""
    path = Path(path)
    if path.is_dir():
        return from_peft_folder(path), {}, "peft"
    adapter = read_safetensors(path)  # refuses pickles and damaged files, unopened
    tensors, metadata = adapter.tensors, adapter.metadata
    kind = detect_format(tensors)
    if kind == "kohya":
        weights = from_kohya(tensors, path)
    elif kind == "diffusers":
        weights = from_diffusers(tensors, metadata, path)
    elif kind == "peft":
        config_file = path.parent / "adapter_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        weights = _from_peft_keys(tensors, lambda k: ("unet", k[len("base_model.model."):]), lambda p: config, path)
    else:
        raise AdapterFileError(f"{path}: no LoRA weights in a known layout (kohya lora_unet_/lora_te_, "
                               "diffusers unet./text_encoder(_2)., or peft base_model.model.)")
    for (part, module), adapter in weights.items():
        problem = adapter.problem()
        if problem:
            raise AdapterFileError(f"{path}: {part} module {module} {problem}; the file is damaged or not a LoRA")
    return weights, metadata, kind


def write_lora(weights: LoraWeights, kind: str | None, out: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write `weights` in layout `kind` (None: the layout of the family they were made for: kohya's, or diffusers'
    for SD3 and Flux), the denoiser's keys named as that family's loader reads them."""
    metadata = dict(metadata or {})
    family = family_of_weights(weights, metadata)
    kind = kind or (family.file_layout if family else "kohya")
    other = sorted({adapter.kind for adapter in weights.values() if type(adapter) is not LoraModule})
    if kind != "kohya" and any(getattr(adapter, "bias", None) is not None for adapter in weights.values()):
        raise AdapterFileError(f"--to {kind}: this adapter carries trained biases (diff_b), which only the kohya "
                               "layout holds; keep it in the kohya layout, or add --drop-biases to write the weights "
                               "alone")
    if other and kind != "kohya":
        raise AdapterFileError(f"--to {kind}: the {kind} layout holds plain LoRA only, and this adapter has "
                               f"{'/'.join(KINDS[k] for k in other)} modules (peft's DoRA normalises per output row, "
                               "the loaders per input column); keep it in the kohya layout")
    if kind in ("kohya", "diffusers"):
        tensors, extra = (file_tensors(weights, kind, family) if family is not None else
                          (kohya_file_tensors(weights), {}) if kind == "kohya" else to_diffusers(weights))
        write_atomically(out, safetensors.torch.save(tensors, metadata=metadata | extra))
    elif kind == "peft":
        to_peft_folder(weights, out, metadata)
    else:
        raise AdapterFileError(f"unknown format {kind!r}: choose one of {', '.join(FORMATS)}")
    return out
