"""The generate job: a typed config, checked in one place, and the function the CLI and UI call."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..adapters.stack import StyleWeight, parse_lora_spec
from ..errors import ConfigError
from ..images import save_png
from ..model.quantize import check_quantize
from .styler import Styler


@dataclass
class GenerateConfig:
    prompt: str
    loras: tuple[str, ...] = ()  # "file.safetensors:0.7" specs
    base: str = "mini"
    negative: str = ""
    count: int = 4
    steps: int = 30
    cfg: float = 7.5
    seed: int = 1
    size: int | None = None  # a square side; width and height override it
    width: int | None = None
    height: int | None = None
    scheduler: str = "dpm++"
    out: Path = Path("outputs")
    blend: str = "merge"
    quantize_base: str = "none"  # quantize.py: nf4, int8 or fp8; the adapters stay float32 and unfused


def validate_generate(config: GenerateConfig) -> GenerateConfig:
    checks = [
        (config.count >= 1, "count", "make at least 1 image"),
        (config.steps >= 1, "steps", "use at least 1 denoising step; 20-30 is usual"),
        (config.cfg >= 0, "cfg", "guidance must be 0 or more; 7.5 is usual"),
        (config.size is None or (config.size >= 8 and config.size % 8 == 0), "size", "use a multiple of 8"),
        (config.width is None or (config.width >= 8 and config.width % 8 == 0), "width", "use a multiple of 8"),
        (config.height is None or (config.height >= 8 and config.height % 8 == 0), "height", "use a multiple of 8"),
        (bool(config.prompt.strip()), "prompt", "give a prompt, e.g. \"a red circle\""),
    ]
    for ok, name, fix in checks:
        if not ok:
            raise ConfigError(f"--{name} = {getattr(config, name)!r}: {fix}")
    check_quantize(config.quantize_base)
    return config


def generate(config: GenerateConfig, styler: Styler | None = None) -> list[Path]:
    """Render `count` images and write them as PNGs carrying their settings; return the paths."""
    validate_generate(config)
    specs = [parse_lora_spec(spec) for spec in config.loras]
    styler = styler or Styler(config.base, quantize=config.quantize_base)
    weights = {styler.load(path): weight for path, weight in specs}
    styler.set_weights(weights)
    images = styler.generate(config.prompt, config.negative, config.count, config.steps, config.cfg,
                             config.seed, config.size, config.scheduler, config.blend, config.width, config.height)
    slug = re.sub(r"[^a-z0-9]+", "-", config.prompt.lower()).strip("-")[:40] or "image"
    paths = []
    for index, image in enumerate(images):
        settings = image_settings(config, config.seed + index, image.size, specs)
        paths.append(save_png(image, config.out / f"{slug}-{config.seed + index}.png", settings))
    return paths


def image_settings(config: GenerateConfig, seed: int, size: tuple[int, int],
                   specs: list[tuple[Path, StyleWeight]]) -> dict:
    """What a PNG carries in its text chunks: every setting that reproduces it (the server writes the same)."""
    return {"prompt": config.prompt, "negative": config.negative, "seed": seed,
            "steps": config.steps, "cfg": config.cfg, "scheduler": config.scheduler, "blend": config.blend,
            "base": config.base, **({"quantize_base": config.quantize_base} if config.quantize_base != "none" else {}),
            "size": size[0], "width": size[0], "height": size[1],
            "loras": [{"file": str(p), "unet": w.unet, "te": w.text_encoder} for p, w in specs]}
