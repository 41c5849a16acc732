"""The adapter library: a folder of adapter files the UI lists, imports into, renames and deletes from."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AdapterFileError, ConfigError, ConflictError
from ..files import safe_file_name
from ..methods import KINDS
from .inspection import describe

MAX_UPLOAD_BYTES = 512 * 1024 * 1024


@dataclass
class AdapterEntry:
    name: str
    path: Path
    architecture: str
    method: str  # as trained (AdaLoRA and DyLoRA files hold plain LoRA)
    rank: int
    trigger: str
    images: str
    created: str
    preview: Path | None
    base: str = ""  # what it was trained on, as --base was given ("" when the file does not say)
    steps: str = ""  # the steps trained ("" when the file does not say)
    kept_step: str = ""  # the step whose weights the file holds, where validation chose one
    settings: dict = field(default_factory=dict)  # the TrainConfig it was trained with, as plain values


def list_adapters(folder: Path) -> list[AdapterEntry]:
    """Every .safetensors adapter directly in `folder` or one level down (adapters/<name>/<name>.safetensors)."""
    folder = Path(folder)
    entries = []
    files = sorted(set(folder.glob("*.safetensors")) | set(folder.glob("*/*.safetensors")))
    for path in files:
        try:
            info = describe(path)
        except AdapterFileError:
            continue
        meta = info["metadata"]
        samples = sorted(path.parent.glob("samples/*.png"))
        entries.append(AdapterEntry(
            name=path.stem, path=path, architecture=info["architecture"],
            method=KINDS.get(meta.get("stylelora.method", ""), info["method"]),
            rank=max((g["rank"] for g in info["groups"]), default=0),
            trigger=", ".join(_json_list(meta.get("stylelora.trigger_words", "[]"))),
            images=meta.get("stylelora.image_count", meta.get("ss_num_train_images", "?")),
            created=time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime)),
            preview=samples[-1] if samples else None, base=meta.get("stylelora.base", ""),
            steps=meta.get("stylelora.trained_steps", meta.get("stylelora.steps", meta.get("ss_max_train_steps", ""))),
            kept_step=meta.get("stylelora.kept_step", ""), settings=info["settings"]))
    return entries


def library_stamp(folder: Path) -> tuple:
    """What changes whenever an adapter is added, rewritten, renamed or removed: each file's path, size and time.
    Cheap to read every second or two, so a page can re-read the library only when it changed."""
    files = sorted(set(Path(folder).glob("*.safetensors")) | set(Path(folder).glob("*/*.safetensors")))
    stamp = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:  # removed between the listing and the look
            continue
        stamp.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(stamp)


def known_bases(folder: Path) -> list[str]:
    """The bases to offer in a base-model field: the miniature first, then every base the adapters in
    `folder` were trained on, in the order first met."""
    return list(dict.fromkeys(["mini"] + [e.base for e in list_adapters(folder) if e.base]))


def _json_list(text: str) -> list[str]:
    import json

    try:
        value = json.loads(text)
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    except json.JSONDecodeError:
        return [text]


def import_adapter(source: Path, folder: Path, original_name: str | None = None,
                   fits: Callable[[Path], object] | None = None) -> Path:
    """Check an uploaded file as `stylelora inspect` does (and with `fits`, which raises if it does not fit a
    base: the server's check), then copy it into the library."""
    source = Path(source)
    name = safe_file_name(original_name or source.name)
    if not name.endswith(".safetensors"):
        raise AdapterFileError(f"{name}: only .safetensors adapters can be imported (pickle formats can run code)")
    if source.stat().st_size > MAX_UPLOAD_BYTES:
        raise AdapterFileError(f"{name}: larger than {MAX_UPLOAD_BYTES // 2**20} MB; that is no LoRA adapter")
    describe(source)  # raises a one-line AdapterFileError for anything broken
    if fits is not None:
        fits(source)
    target = Path(folder) / name
    if target.exists():
        raise ConflictError(f"{name}: an adapter with that name is already in the library; rename one first")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def _inside(path: Path, folder: Path) -> Path:
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(Path(folder).resolve()):
        raise ConfigError(f"{path}: not in the adapters folder {folder}")
    return resolved


def rename_adapter(path: Path, new_name: str, folder: Path) -> Path:
    path = _inside(path, folder)
    name = safe_file_name(new_name)
    target = path.with_name(name if name.endswith(".safetensors") else f"{name}.safetensors")
    if target.exists():
        raise ConfigError(f"{target.name}: that name is taken")
    path.rename(target)
    return target


def delete_adapter(path: Path, folder: Path) -> None:
    _inside(path, folder).unlink()
