"""Files on disk: atomic writes, and the one place that opens a .safetensors adapter file."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from .errors import AdapterFileError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


def _read_umask() -> int:
    # The only portable way to read the umask is to set it and put it back; done once, at import,
    # because the UI writes from worker threads and a brief umask of 0 there would be a race.
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


# tempfile creates private files (0600) and folders (0700); outputs get the modes open() would give.
UMASK = _read_umask()
FILE_MODE, FOLDER_MODE = 0o666 & ~UMASK, 0o777 & ~UMASK


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename over `path`:
    a crash at any moment leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:  # say which file a full disk refused
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise


@contextmanager
def folder_written_atomically(final: Path) -> Iterator[Path]:
    """Yield a staging folder beside `final`; when the block ends, rename it into place. On an error
    the staging folder is removed and `final` is untouched. An existing `final` is moved aside first
    and deleted only after the new one is in place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.staging-"))
    try:
        yield staging
        os.chmod(staging, FOLDER_MODE)
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
            os.replace(final, old / final.name)
        os.replace(staging, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def free_path(path: Path) -> Path:
    """`path`, or, where a file is there already, the first of `name~2.png`, `name~3.png`, ... that is free: a new
    result never overwrites an old one."""
    path = Path(path)
    number = 2
    while path.exists():
        path = path.with_name(f"{path.stem.rsplit('~', 1)[0]}~{number}{path.suffix}")
        number += 1
    return path


def refuse_pickle(path: Path, what: str = "file") -> None:
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise AdapterFileError(f"{path}: pickle {what}s can run code when loaded, so they are refused; load it in "
                               "a sandbox you trust and save it again with safetensors.torch.save_file")


@dataclass
class SafetensorsFile:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]


def read_safetensors(path: Path) -> SafetensorsFile:
    """Read a LoRA .safetensors file, refusing pickles and damaged files with a one-line reason."""
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise AdapterFileError(f"{path}: no such adapter file")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for every kind of damage
        raise AdapterFileError(f"{path}: not a valid .safetensors file ({str(error).splitlines()[0]})") from None
    if not any(key.endswith(("lora_down.weight", "lora_A.weight", "hada_w1_a", "lokr_w1", "lokr_w1_a")) for key in tensors):
        raise AdapterFileError(f"{path}: holds no adapter weights (no lora_down/lora_A, hada_ or lokr_ keys)")
    return SafetensorsFile(tensors, metadata)


def save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    write_atomically(Path(path), safetensors.torch.save(tensors, metadata=metadata))
    return Path(path)


def metadata_json(values: dict[str, object]) -> dict[str, str]:
    """safetensors metadata must be str -> str: JSON-encode what is not already a string."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


# A bare file name's characters: letters, digits, dot, underscore, space and hyphen.
SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]")


def safe_file_name(name: str) -> str:
    """A bare file name with no path parts and no odd characters: '../../etc/passwd' -> 'passwd'."""
    bare = Path(str(name).replace("\\", "/")).name
    cleaned = SAFE_NAME.sub("_", bare).strip(" .")
    return cleaned or "file"
