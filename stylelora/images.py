"""Write PNG images atomically, with their generation settings in the PNG text chunks."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image, PngImagePlugin

from .files import write_atomically


def png_bytes(image: Image.Image, settings: dict) -> bytes:
    """The PNG file of an image, its settings in text chunks: all of them as JSON under `stylelora`, and each
    under its own key (what AUTOMATIC1111-style readers show)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("stylelora", json.dumps(settings))
    for key, value in settings.items():
        info.add_text(str(key), value if isinstance(value, str) else json.dumps(value))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(image: Image.Image, path: Path, settings: dict) -> Path:
    write_atomically(Path(path), png_bytes(image, settings))
    return Path(path)
