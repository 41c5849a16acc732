"""Resumable checkpoints under <out>/checkpoints/step-NNNNNN/: adapter weights, optimizer and LR-scheduler state.

No RNG state is stored because none is needed: every step draws its randomness from a
generator seeded by (seed, step), and the data order from (seed, epoch), so a resumed run
replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import safetensors.torch
import torch

from ..adapters.in_model import load_into
from ..errors import TrainingError
from ..files import SafetensorsFile, folder_written_atomically, read_safetensors, save_safetensors, write_atomically

if TYPE_CHECKING:
    from .config import TrainConfig
    from .stages import Optimisation

# Settings that change what the adapter is; resuming with any of them changed is refused.
IDENTITY_FIELDS = ("base", "rank", "alpha", "target_modules", "train_text_encoder", "text_encoder_targets", "resolution",
                   "rslora", "loraplus_ratio", "method", "targets", "conv_rank", "conv_alpha", "target_rank", "train_bias",
                   "validation_split", "ema_decay", "buckets", "bucket_step", "min_bucket", "max_bucket", "no_upscale",
                   "quantize_base")
# Fields added after checkpoints were first written: a checkpoint without them was made with these values.
LATER_FIELDS = {"rslora": False, "loraplus_ratio": 0.0, "method": "lora", "targets": None, "conv_rank": None,
                "conv_alpha": None, "target_rank": None, "train_bias": False, "validation_split": 0.0,
                "ema_decay": 0.0, "buckets": False, "bucket_step": None, "min_bucket": None, "max_bucket": None,
                "no_upscale": False, "quantize_base": "none"}
KEEP = 3


def checkpoint_root(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint (a folder is complete once it has been renamed into place)."""
    root = checkpoint_root(out_dir)
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and (p / "state.pt").is_file()) if root.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(out_dir: Path, step: int, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                    optimizer_state: dict, scheduler_state: dict, config_json: dict[str, Any],
                    trainable: dict[str, torch.Tensor], states: dict[str, dict] | None = None,
                    best: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the checkpoint into a temporary folder, then rename it into place, then prune old ones. `states`
    are the method's, the EMA's and the validation watch's; `best` the best step's adapter tensors so far."""
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    for stale in root.glob(".step-*"):  # staging folders of a run killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    with folder_written_atomically(final) as staging:
        save_safetensors(staging / "adapter.safetensors", tensors, metadata)
        save_safetensors(staging / "trainable.safetensors", trainable, {})
        if best is not None:
            save_safetensors(staging / "best.safetensors", best, {})
        buffer = _torch_bytes({"step": step, "optimizer": optimizer_state, "scheduler": scheduler_state,
                               "config": json.dumps(config_json), **(states or {})})
        write_atomically(staging / "state.pt", buffer)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _torch_bytes(value: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def load_checkpoint(path: Path) -> tuple[SafetensorsFile, dict[str, Any], dict[str, torch.Tensor] | None]:
    """Read a checkpoint: the adapter file, the optimizer state, and the trainable tensors by parameter name
    (None in checkpoints written before they were kept). torch.load runs with weights_only=True, so a
    tampered file cannot run code."""
    adapter = read_safetensors(path / "adapter.safetensors")
    trainable_file = path / "trainable.safetensors"
    try:
        trainable = safetensors.torch.load_file(trainable_file) if trainable_file.is_file() else None
    except Exception as error:  # safetensors raises its own error types for every kind of damage
        raise TrainingError(f"{trainable_file}: unreadable checkpoint ({str(error).splitlines()[0]}); "
                            "delete that folder to resume from the one before") from None
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as error:
        raise TrainingError(f"{path / 'state.pt'}: unreadable checkpoint ({str(error).splitlines()[0]}); "
                            "delete that folder to resume from the one before") from None
    state["config"] = json.loads(state["config"])
    return adapter, state, trainable


def check_compatible(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse a resume whose settings would make a different adapter; name every difference."""
    saved = LATER_FIELDS | saved
    changed = [f"{name}: {saved.get(name)!r} -> {current.get(name)!r}" for name in IDENTITY_FIELDS
               if saved.get(name) != current.get(name)]
    if changed:
        raise TrainingError(f"{path}: cannot resume with changed settings ({'; '.join(changed)}); "
                            "use the original values, or a new --out to start afresh")


def trainable_tensors(parts: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Every trainable tensor of each part, as 'part/parameter name': what a checkpoint resumes from, exact
    for every method (the adapter file holds the loaders' form of it, e.g. DoRA's scale folded into up)."""
    return {f"{part}/{name}": p.detach().float().cpu().contiguous()
            for part, model in parts.items() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor], part: str, source: Path) -> None:
    """Copy a checkpoint's trainable tensors of `part` back into `model`; refuse a checkpoint that does not fit."""
    wanted = {name: p for name, p in model.named_parameters() if p.requires_grad}
    saved = {key.split("/", 1)[1]: t for key, t in tensors.items() if key.startswith(part + "/")}
    if saved.keys() != wanted.keys():
        missing = sorted(wanted.keys() - saved.keys()) or sorted(saved.keys() - wanted.keys())
        raise TrainingError(f"{source}: its {part} tensors do not fit this run's adapter (first: {missing[0]}); "
                            "resume with the settings it was trained with, or a new --out")
    with torch.no_grad():
        for name, parameter in wanted.items():
            parameter.copy_(saved[name])


def refuse_unresumable(config: TrainConfig, resolution: int) -> None:
    """Before minutes of caching: refuse an output folder that holds an earlier run's checkpoint unless --resume,
    and a --resume whose checkpoint was trained with other settings."""
    path = latest_checkpoint(config.out_dir)
    if path is None:
        return
    if not config.resume:
        raise TrainingError(f"{path}: this output folder holds a checkpoint of an earlier run; add --resume to "
                            "continue it, or choose another --out (or delete that checkpoints folder) to start afresh")
    check_compatible(load_checkpoint(path)[1]["config"], config.to_json_dict() | {"resolution": resolution}, path)


def resume(config: TrainConfig, models: dict[str, torch.nn.Module], optimisation: Optimisation, resolution: int,
           say: Callable[[str], None]) -> int:
    """Load the latest checkpoint's adapters, optimizer, schedule and method state; return its step (0 if none)."""
    path = latest_checkpoint(config.out_dir)
    if path is None:
        say(f"No checkpoint in {config.out_dir / 'checkpoints'}; starting from step 0.")
        return 0
    adapter, state, trainable = load_checkpoint(path)
    check_compatible(state["config"], config.to_json_dict() | {"resolution": resolution}, path)
    for part, model in models.items():
        if trainable is not None:
            load_trainable(model, trainable, part, path)
        else:  # a checkpoint from before trainable.safetensors: LoRA only, from the adapter file
            load_into(model, adapter.tensors, part, path)
    optimisation.optimizer.load_state_dict(state["optimizer"])
    optimisation.lr_schedule.load_state_dict(state["scheduler"])
    optimisation.hooks.load_state_dict(state.get("method", {}))
    optimisation.average.load_state_dict(state.get("ema", {}))
    best = path / "best.safetensors"
    optimisation.resumed_watch = (state.get("watch", {}), read_safetensors(best).tensors if best.is_file() else None)
    say(f"Resuming from {path} (step {state['step']}).")
    return int(state["step"])
