"""The web UI's workspace: uploaded image sets and their captions, kept inside one folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ConfigError
from ..files import safe_file_name, write_atomically
from .folder import CAPTION_SUFFIXES, IMAGE_EXTENSIONS, scan_folder

MAX_IMAGE_BYTES = 50 * 1024 * 1024


def dataset_folder(workspace: Path, name: str) -> Path:
    folder = Path(workspace) / "datasets" / safe_file_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_uploads(uploads: list[tuple[Path, str]], folder: Path) -> tuple[list[Path], list[str]]:
    """Copy uploaded (temporary path, original name) pairs into `folder`. Only images and caption
    files are kept, under sanitised names; every refusal is returned as a sentence."""
    saved, refused = [], []
    for temporary, original in uploads:
        name = safe_file_name(original)
        suffix = Path(name).suffix.lower()
        if suffix not in IMAGE_EXTENSIONS | set(CAPTION_SUFFIXES):
            refused.append(f"{original}: not an image (png, jpg, jpeg, webp, bmp) or caption (.txt, .caption)")
        elif Path(temporary).stat().st_size > MAX_IMAGE_BYTES:
            refused.append(f"{original}: larger than {MAX_IMAGE_BYTES // 2**20} MB")
        else:
            target = Path(folder) / name
            shutil.copyfile(temporary, target)
            saved.append(target)
    return saved, refused


def caption_rows(folder: Path) -> tuple[list[list[str]], list[str]]:
    """[[file name, caption], ...] for every usable image, and the files that were skipped, with reasons."""
    found = scan_folder(Path(folder))
    rows = [[str(e.path.relative_to(found.root)), e.caption] for e in found.examples]
    return rows, [f"{p.name}: {reason}" for p, reason in found.skipped]


def save_captions(folder: Path, rows: list[list[str]]) -> int:
    """Write each row's caption to the image's .txt sidecar; only files inside `folder` are touched."""
    root = Path(folder).resolve()
    written = 0
    for name, caption in rows:
        image = (root / str(name)).resolve()
        if not image.is_relative_to(root) or not image.is_file():
            raise ConfigError(f"{name}: not an image in {folder}")
        write_atomically(image.with_suffix(".txt"), (str(caption).strip() + "\n").encode("utf-8"))
        written += 1
    return written


def save_prompts(workspace: Path, name: str, text: str) -> Path | None:
    """Prompts typed into the page (one a line) as the file --preserve-prompts reads; None when blank."""
    if not text or not text.strip():
        return None
    path = Path(workspace) / "prompts" / f"{safe_file_name(name)}-preserve.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, (text.strip() + "\n").encode())
    return path
