"""The web UI's workspace: uploaded image sets and their captions, kept inside one folder."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError
from ..files import safe_file_name, write_atomically
from .folder import CAPTION_SUFFIXES, IMAGE_EXTENSIONS, scan_folder

MAX_IMAGE_BYTES = 50 * 1024 * 1024
THUMBNAIL_SIDE = 192  # px: the Train tab's thumbnails, copied into the workspace


def new_folder(parent: Path, name: str) -> Path:
    """A new, empty folder `parent/name`, or `name-2`, `name-3`, ... where that one is taken, so an upload never
    mixes with an earlier one. mkdir claims the name, so two uploads at once cannot both take it (files.free_path,
    for single files, only checks that the name is free)."""
    stem = safe_file_name(name)
    Path(parent).mkdir(parents=True, exist_ok=True)
    for number in range(1, 100_000):
        folder = Path(parent) / (stem if number == 1 else f"{stem}-{number}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise ConfigError(f"{parent}: no free folder name for {stem}; tidy the folder up")


def dataset_folder(workspace: Path, name: str) -> Path:
    """A new folder under the workspace's datasets/ for one upload of images named `name`."""
    return new_folder(Path(workspace) / "datasets", name)


def thumbnails(folder: Path, names: list[str], workspace: Path) -> list[Path]:
    """Downscaled PNG copies of `folder`'s images `names`, kept in the workspace's thumbnails/ cache.

    The page shows these rather than the images themselves, so a folder anywhere on the machine can be shown
    while the web server serves only the workspace: the user's folder is never added to what it may serve.
    A copy is made again when its image is newer; an image that will not open gets no thumbnail."""
    root = Path(folder).expanduser().resolve()
    cache = Path(workspace) / "thumbnails" / hashlib.sha256(str(root).encode()).hexdigest()[:16]
    made = []
    for name in names:
        source = root / name
        target = cache / (safe_file_name(name.replace("/", "__")) + ".png")
        try:
            if not target.exists() or target.stat().st_mtime_ns < source.stat().st_mtime_ns:
                with Image.open(source) as image:
                    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                    buffer = io.BytesIO()
                    image.convert("RGBA" if "A" in image.getbands() else "RGB").save(buffer, format="PNG")
                write_atomically(target, buffer.getvalue())
        except (OSError, UnidentifiedImageError):
            continue
        made.append(target)
    return made


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
