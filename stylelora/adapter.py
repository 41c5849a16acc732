"""The adapter file: LoRA weights in kohya/AUTOMATIC1111 key layout, plus metadata, in .safetensors.

kohya's layout (`lora_unet_<module path with _>.lora_down.weight`, `.lora_up.weight`,
`.alpha`) is the one that diffusers, AUTOMATIC1111 and ComfyUI all read. Alpha is stored
per module as written by the trainer, never re-derived from the rank.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from .errors import AdapterFileError, ConfigError

PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename over `path`:
    a crash at any moment leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def attach_lora(model: torch.nn.Module, targets: tuple[str, ...], rank: int, alpha: float, dropout: float,
                flag: str = "--target-modules", adapter_name: str = "default") -> list[str]:
    """Add a trainable LoRA to every module whose path ends in one of `targets`; return their paths.
    B starts at zero (peft's default init), so the model's output is unchanged until training moves it."""
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                        init_lora_weights=True)
    try:
        model.add_adapter(config, adapter_name=adapter_name)
    except ValueError as error:
        if "not found" in str(error) or "Target modules" in str(error):
            raise ConfigError(f"{flag} = {','.join(targets)}: no module of the {type(model).__name__} matches; "
                              "give module-name suffixes such as to_q,to_k,to_v,to_out.0") from None
        raise
    return sorted({key.rsplit(".lora_A", 1)[0] for key in lora_state_dict(model, adapter_name) if ".lora_A" in key})


def lora_state_dict(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """peft-layout LoRA tensors of one adapter: `<module>.lora_A.weight` and `<module>.lora_B.weight`."""
    return get_peft_model_state_dict(model, adapter_name=adapter_name)


def _file_path(part: str, module: str) -> str:
    """A module's path as the file names it. transformers 5 dropped CLIPTextModel's `text_model.`
    level, but every file in the wild (and AUTOMATIC1111, ComfyUI) still spells it out."""
    if part == "text_encoder" and not module.startswith("text_model."):
        return "text_model." + module
    return module


def to_kohya(peft_tensors: dict[str, torch.Tensor], part: str, alpha: float) -> dict[str, torch.Tensor]:
    prefix = PREFIXES[part]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in peft_tensors.items():
        module, _, rest = key.partition(".lora_")
        name = prefix + _file_path(part, module).replace(".", "_")
        if rest == "A.weight":
            out[f"{name}.lora_down.weight"] = tensor.detach().float().cpu().contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
        elif rest == "B.weight":
            out[f"{name}.lora_up.weight"] = tensor.detach().float().cpu().contiguous()
    return out


def from_kohya(tensors: dict[str, torch.Tensor], part: str, model: torch.nn.Module,
               source: Path) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Map kohya keys back onto `model`'s module paths (the '_' in kohya names is ambiguous, so we
    look every name up in the model instead of guessing). Returns peft tensors and per-module alphas."""
    prefix = PREFIXES[part]
    by_kohya = {prefix + _file_path(part, name).replace(".", "_"): name for name, _ in model.named_modules()
                if name and ".lora_" not in name and not name.endswith(("base_layer", "lora_dropout"))}
    peft_tensors: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for key, tensor in tensors.items():
        if not key.startswith(prefix):
            continue
        name, _, kind = key.partition(".")
        module = by_kohya.get(name)
        if module is None:
            raise AdapterFileError(f"{source}: key {name} does not fit this base model; "
                                   "the adapter was trained for another architecture")
        if kind == "lora_down.weight":
            peft_tensors[f"{module}.lora_A.weight"] = tensor
        elif kind == "lora_up.weight":
            peft_tensors[f"{module}.lora_B.weight"] = tensor
        elif kind == "alpha":
            alphas[module] = float(tensor.item())
    return peft_tensors, alphas


@dataclass
class AdapterFile:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]

    def parts(self) -> list[str]:
        return [part for part, prefix in PREFIXES.items() if any(k.startswith(prefix) for k in self.tensors)]

    def rank(self) -> int:
        downs = [t for k, t in self.tensors.items() if k.endswith("lora_down.weight")]
        return int(downs[0].shape[0]) if downs else 0


def save_adapter(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    write_atomically(Path(path), safetensors.torch.save(tensors, metadata=metadata))


def read_adapter(path: Path) -> AdapterFile:
    """Read an adapter file, refusing pickles and broken files with a one-line reason."""
    path = Path(path)
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin", ".pkl"):
        raise AdapterFileError(f"{path}: pickle files can run code when loaded, so they are refused; load it in "
                               "a sandbox you trust and save it again with safetensors.torch.save_file")
    if not path.is_file():
        raise AdapterFileError(f"{path}: no such adapter file")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for every kind of damage
        raise AdapterFileError(f"{path}: not a valid .safetensors file ({str(error).splitlines()[0]})") from None
    if not any(key.endswith(("lora_down.weight", "lora_A.weight")) for key in tensors):
        raise AdapterFileError(f"{path}: holds no LoRA weights (no lora_down/lora_A keys)")
    return AdapterFile(tensors, metadata)


def load_into(model: torch.nn.Module, adapter: AdapterFile, part: str, source: Path,
              adapter_name: str = "default") -> None:
    """Copy an adapter file's weights into the LoRA already attached to `model` (for resume)."""
    peft_tensors, _ = from_kohya(adapter.tensors, part, model, source)
    result = set_peft_model_state_dict(model, peft_tensors, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise AdapterFileError(f"{source}: {len(unexpected)} weights do not fit the attached LoRA (first: {unexpected[0]})")


def metadata_json(values: dict[str, object]) -> dict[str, str]:
    """safetensors metadata must be str -> str: JSON-encode what is not already a string."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
