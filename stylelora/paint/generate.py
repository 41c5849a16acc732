"""The generate job: paint a request (request.GenerateConfig) with a Styler and write PNGs that carry their settings,
never over an earlier picture. The CLI and the UI call it."""

from __future__ import annotations

import re
from pathlib import Path

from ..adapters.stack import parse_lora_spec
from ..files import free_path
from ..model.cores import CoreShare
from ..images import save_png
from .request import GenerateConfig, image_settings, validate_generate
from .styler import Styler


def generate(config: GenerateConfig, styler: Styler | None = None) -> list[Path]:
    """Render `count` images and write them as PNGs carrying their settings; return the paths."""
    validate_generate(config)
    specs = [parse_lora_spec(spec) for spec in config.loras]
    with CoreShare(config.threads):
        styler = styler or Styler(config.base, quantize=config.quantize_base)
        weights = {styler.load(path): weight for path, weight in specs}
        styler.set_weights(weights)
        images = styler.generate(config.prompt, config.negative, config.count, config.steps, config.cfg,
                                 config.seed, config.size, config.scheduler, config.blend, config.width, config.height,
                                 config.blend_density)
    slug = re.sub(r"[^a-z0-9]+", "-", config.prompt.lower()).strip("-")[:40] or "image"
    paths = []
    for index, image in enumerate(images):
        settings = image_settings(config, config.seed + index, image.size, specs)
        paths.append(save_png(image, free_path(config.out / f"{slug}-{config.seed + index}.png"), settings))
    return paths


