"""Find images and captions in a folder, load them safely as RGB, and preprocess them.

Every file with an image extension is either used or reported by name with the reason;
nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import DatasetError
from ..families import Placement

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
# Image formats people drop in a folder that we do not read, so we can say why.
OTHER_IMAGE_EXTENSIONS = {".gif", ".tif", ".tiff", ".heic", ".avif", ".svg", ".psd"}
CAPTION_SUFFIXES = (".txt", ".caption")
MAX_ASPECT = 8  # a center square of a longer image keeps under an eighth of it


@dataclass(frozen=True)
class Example:
    path: Path
    caption: str
    caption_source: str  # ".txt", ".caption", "metadata.jsonl", "--caption" or "none"
    size: tuple[int, int]
    sha256: str
    caption_file: Path  # where a person edits this caption: the sidecar, metadata.jsonl, or the image itself


@dataclass
class ImageFolder:
    root: Path
    examples: list[Example]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def captions_found(self) -> int:
        return sum(e.caption_source not in ("--caption", "none") for e in self.examples)

    @property
    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for e in self.examples:
            digest.update(f"{e.path.relative_to(self.root)}\0{e.sha256}\0{e.caption}\n".encode())
        return digest.hexdigest()


def load_rgb(path: Path) -> Image.Image:
    """Decode the whole image and normalise it to 8-bit RGB; raise ValueError with a reason."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as opened:
                if getattr(opened, "n_frames", 1) > 1:
                    warnings.warn(f"{path}: animated image, only its first frame is used")
                opened.load()
                image = ImageOps.exif_transpose(opened)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ValueError("larger than Pillow's decompression-bomb limit; downscale it first") from None
        except Image.UnidentifiedImageError:
            raise ValueError("not a readable image (wrong extension or corrupt)") from None
        except (OSError, SyntaxError) as error:
            raise ValueError(f"cannot be decoded ({error})") from None
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit integer) greyscale: scale the full range down to 8 bits.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray((array / top * 255).clip(0, 255).round().astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


def _read_text(path: Path, folder: ImageFolder) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
        folder.warnings.append(f"{path}: caption is not UTF-8; read it as Latin-1 (save it as UTF-8 to be sure)")
    return " ".join(text.split())


def _metadata_captions(root: Path, folder: ImageFolder) -> dict[Path, tuple[str, Path]]:
    """Each image's caption from the metadata.jsonl files under `root`, with the file it came from."""
    captions: dict[Path, tuple[str, Path]] = {}
    for jsonl in sorted(root.rglob("metadata.jsonl")):
        for number, line in enumerate(jsonl.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                captions[(jsonl.parent / row["file_name"]).resolve()] = (" ".join(str(row["text"]).split()), jsonl)
            except (json.JSONDecodeError, KeyError, TypeError):
                folder.warnings.append(f"{jsonl}:{number}: not a JSON object with file_name and text; line ignored")
    return captions


def _find_files(root: Path, folder: ImageFolder) -> list[Path]:
    files: list[Path] = []
    seen: set[Path] = set()
    # os.walk-style recursion that does not follow symlinked folders round in loops.
    for path in sorted(root.rglob("*")):
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            folder.skipped.append((path, "broken or looping symlink"))
            continue
        if path.is_dir() or path.name.startswith("."):
            continue
        suffix = path.suffix.lower()
        if suffix in OTHER_IMAGE_EXTENSIONS:
            folder.skipped.append((path, f"{suffix} is not supported; convert it to PNG"))
        elif suffix in IMAGE_EXTENSIONS and real not in seen:
            seen.add(real)
            files.append(path)
    return files


def _caption_for(path: Path, metadata: dict[Path, tuple[str, Path]], default: str,
                 folder: ImageFolder) -> tuple[str, str, Path]:
    """(caption, where it came from, the file that holds it) for one image."""
    for suffix in CAPTION_SUFFIXES:
        sidecar = path.with_suffix(suffix)
        if sidecar.is_file():
            return _read_text(sidecar, folder), suffix, sidecar
    if path.resolve() in metadata:
        caption, jsonl = metadata[path.resolve()]
        return caption, "metadata.jsonl", jsonl
    return (default, "--caption", path) if default else ("", "none", path)


def check_folder(root: Path, holds: str = "your training images") -> Path:
    """`root` if it is a folder; a DatasetError saying what it is instead (before any image is read), and that
    the folder wanted is the one that `holds` them."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: no such folder; give the folder that holds {holds}")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; give the folder that holds {holds}")
    return root


def scan_folder(root: Path, default_caption: str = "", trigger: str = "",
                holds: str = "your training images") -> ImageFolder:
    """Find and fully decode every image under `root`, with its caption. Raise DatasetError if none is usable."""
    root = check_folder(root, holds)
    folder = ImageFolder(root=root, examples=[])
    metadata = _metadata_captions(root, folder)
    for path in _find_files(root, folder):
        try:
            data = path.read_bytes()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                image = load_rgb(path)
            folder.warnings += [str(w.message) for w in caught if "animated" in str(w.message)]
        except PermissionError:
            folder.skipped.append((path, "permission denied; make it readable"))
            continue
        except ValueError as error:
            folder.skipped.append((path, str(error)))
            continue
        if max(image.size) > MAX_ASPECT * min(image.size):
            folder.skipped.append((path, f"{image.width}x{image.height} is too long and thin for a square crop "
                                         f"(more than {MAX_ASPECT}:1); crop it to the part that shows the style"))
            continue
        caption, source, caption_file = _caption_for(path, metadata, default_caption, folder)
        if trigger:
            caption = f"{trigger}, {caption}" if caption else trigger
        folder.examples.append(Example(path, caption, source, image.size, hashlib.sha256(data).hexdigest(), caption_file))
    if not folder.examples:
        reasons = f" ({len(folder.skipped)} files skipped: {folder.skipped[0][0].name}: {folder.skipped[0][1]})" if folder.skipped else ""
        raise DatasetError(f"{root}: no usable image (png, jpg, jpeg, webp, bmp) found{reasons}")
    return folder


Size = tuple[int, int]  # (width, height), as PIL gives it


def placement(size: Size, target: Size, random_crop: bool = False, flip: bool = False,
              rng: random.Random | None = None) -> tuple[Size, Size, Placement]:
    """How an image of `size` fills `target`: the size it is resized to (covering the target), the crop's
    top-left (left, top) in it, and the Placement SDXL's micro-conditioning reads. A flipped image's corner is
    where the crop sits in the flipped picture, as in diffusers' train_text_to_image_sdxl.py, which flips first."""
    (width, height), (target_w, target_h) = size, target
    scale = max(target_w / width, target_h / height)
    resized = (max(target_w, round(width * scale)), max(target_h, round(height * scale)))
    if random_crop:
        rng = rng or random.Random()
        left, top = rng.randint(0, resized[0] - target_w), rng.randint(0, resized[1] - target_h)
    else:
        left, top = (resized[0] - target_w) // 2, (resized[1] - target_h) // 2
    corner_left = resized[0] - left - target_w if flip else left
    return resized, (left, top), Placement((height, width), (top, corner_left), (target_h, target_w))


def preprocess(image: Image.Image, target: int | Size, random_crop: bool, flip: bool,
               rng: random.Random | None = None) -> torch.Tensor:
    """Resize to cover `target` (a bucket's (width, height), or a square side), crop it, maybe flip; return
    CxHxW in [-1, 1]."""
    return preprocess_placed(image, target, random_crop, flip, rng)[0]


def preprocess_placed(image: Image.Image, target: int | Size, random_crop: bool, flip: bool,
                      rng: random.Random | None = None) -> tuple[torch.Tensor, Placement]:
    """preprocess, and where the image sits in its bucket (SDXL's micro-conditioning)."""
    target = (target, target) if isinstance(target, int) else target
    resized, (left, top), where = placement(image.size, target, random_crop, flip, rng)
    image = image.resize(resized, Image.Resampling.BICUBIC).crop((left, top, left + target[0], top + target[1]))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    return array.permute(2, 0, 1) / 127.5 - 1, where


def training_caption(caption: str, trigger: str, dropout: float, shuffle: bool, keep: int,
                     rng: random.Random) -> str:
    """The caption one step trains on: dropped to "" at rate `dropout`, or with its comma-separated
    tags shuffled after the first `keep` (the trigger always stays first)."""
    if dropout and rng.random() < dropout:
        return ""
    if not shuffle:
        return caption
    body = caption[len(trigger) + 2 :] if trigger and caption.startswith(trigger + ", ") else caption
    tags = [t.strip() for t in body.split(",") if t.strip()]
    head, tail = tags[:keep], tags[keep:]
    rng.shuffle(tail)
    return ", ".join(([trigger] if trigger and body is not caption else []) + head + tail)


def describe_folder(folder: ImageFolder, log: Callable[[str], None]) -> None:
    log(f"Found {len(folder.examples)} images in {folder.root}, {folder.captions_found} with captions.")
    for path, reason in folder.skipped:
        log(f"  skipped {path}: {reason}")
    for warning in folder.warnings:
        log(f"  warning: {warning}")
    if folder.captions_found == 0:
        log("WARNING: no caption found (.txt / .caption sidecars or metadata.jsonl). Every image trains on "
            f"{folder.examples[0].caption!r}; add captions or pass --caption / --trigger.")


def warn_long_captions(folder: ImageFolder, tokenizer, say: Callable[[str], None], limit: int | None = None,
                       reader: str = "the text encoder") -> None:
    """The text encoder (`reader`) reads a fixed number of tokens (`limit`, default its tokenizer's) and cuts the
    rest: say so, by file, rather than cut silently."""
    limit = limit or tokenizer.model_max_length
    for example in folder.examples:
        # Counting a prefix is enough to know it is too long, and stays fast on a megabyte of text.
        if len(tokenizer(example.caption[: 40 * limit]).input_ids) > limit:
            say(f"  warning: {example.caption_file}: the caption is longer than {limit} tokens, {reader}'s limit; "
                "the rest is cut")


def read_prompts(path: Path, flag: str) -> list[str]:
    """The non-empty lines of a prompt file (one prompt a line; lines starting with # are comments)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{flag} {path}: no such file; give a text file with one prompt a line") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{flag} {path}: cannot be read as UTF-8 text ({error})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise DatasetError(f"{flag} {path}: holds no prompt; write one prompt a line")
    return prompts
