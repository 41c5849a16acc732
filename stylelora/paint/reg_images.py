"""The reg-images job: paint regularisation (class) images with the base alone, each beside its caption, for
`stylelora train --reg-data DIR`. Image i of a prompt is `slug-i.png` with `slug-i.txt`, painted at seed + i, so
a second run with a larger --count paints only the images that are missing and an interrupted run loses nothing
that was written (each file is written atomically, the caption after its image)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..data.folder import read_prompts
from ..errors import ConfigError
from ..files import write_atomically
from ..images import save_png
from ..model.cores import CoreShare
from ..options import like, option, refuse_first
from .request import GenerateConfig

if TYPE_CHECKING:  # the CLI reads the options without loading torch's painting stack
    from .styler import Styler

BATCH = 4  # images painted at once: memory stays that of a small batch whatever --count is


@dataclass
class RegImagesConfig:
    """One `stylelora reg-images` run, each option declared once (options.option)."""

    prompts: tuple[str, ...] = option((), "the class prompts, e.g. \"a circle\"", cli=False,
                                      default_text="required, or --prompts-file")
    prompts_file: Path | None = option(None, "a text file of class prompts, one a line", metavar="FILE")
    out: Path = option(Path("reg"), "the folder to write images and captions to", aliases=("-o",))
    count: int = like(GenerateConfig, "count", help="images per prompt", default=50, ui=None)
    base: str = like(GenerateConfig, "base", help="the base to paint with: the one you will train on")
    negative: str = like(GenerateConfig, "negative", ui=None)
    steps: int = like(GenerateConfig, "steps", ui=None)
    cfg: float = like(GenerateConfig, "cfg", ui=None)
    seed: int = like(GenerateConfig, "seed", help="seed of each prompt's first image; image i uses seed + i", ui=None)
    size: int | None = like(GenerateConfig, "size", help="image size in pixels, a square side; the training "
                                                         "resolution is usual")
    scheduler: str = like(GenerateConfig, "scheduler", ui=None)
    quantize_base: str = like(GenerateConfig, "quantize_base", ui=None)
    threads: int | None = like(GenerateConfig, "threads")


def class_prompts(config: RegImagesConfig) -> list[str]:
    """The prompts given, then the file's; refused in one line when there are none or a setting is wrong."""
    refuse_first(config, [(config.count >= 1, "count", "paint at least 1 image per prompt"),
                          (config.steps >= 1, "steps", "use at least 1 denoising step; 20-30 is usual"),
                          (config.size is None or (config.size >= 8 and config.size % 8 == 0), "size",
                           "use a multiple of 8")])
    prompts = [p.strip() for p in config.prompts if p.strip()]
    prompts += read_prompts(config.prompts_file, "--prompts-file") if config.prompts_file else []
    if not prompts:
        raise ConfigError("give a class prompt, e.g. stylelora reg-images \"a circle\", or --prompts-file FILE")
    stems: dict[str, str] = {}
    for prompt in dict.fromkeys(prompts):
        clash = stems.setdefault(image_stem(prompt, 0), prompt)
        if clash != prompt:
            raise ConfigError(f"the prompts {clash!r} and {prompt!r} would share file names ({image_stem(prompt, 0)}"
                              "...); give one of them other words, or paint them into separate --out folders")
    return list(dict.fromkeys(prompts))


def image_stem(prompt: str, index: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "image"
    return f"{slug}-{index:04d}"


def missing_runs(config: RegImagesConfig, prompts: list[str]) -> list[tuple[str, list[int]]]:
    """The images not yet written with their caption, as (prompt, consecutive indices), at most BATCH a run: one
    batch paints a run exactly as one image at a time would (image i's generator is seeded with seed + i)."""
    runs: list[tuple[str, list[int]]] = []
    for prompt in prompts:
        for index in range(config.count):
            if (config.out / f"{image_stem(prompt, index)}.txt").is_file():
                continue
            if runs and runs[-1][0] == prompt and runs[-1][1][-1] == index - 1 and len(runs[-1][1]) < BATCH:
                runs[-1][1].append(index)
            else:
                runs.append((prompt, [index]))
    return runs


def write_reg_images(config: RegImagesConfig, styler: Styler | None = None,
                     say: Callable[[str], None] = lambda message: None) -> list[Path]:
    """Paint every missing class image of every prompt with the base (no adapter); return the images written."""
    prompts = class_prompts(config)
    runs = missing_runs(config, prompts)
    missing = sum(len(indices) for _, indices in runs)
    say(f"{len(prompts) * config.count - missing} of {len(prompts) * config.count} class images are in "
        f"{config.out} already; painting {missing}.")
    written: list[Path] = []
    with CoreShare(config.threads):
        from .styler import Styler

        styler = styler or (Styler(config.base, quantize=config.quantize_base) if runs else None)
        if styler is not None:
            styler.set_weights({})  # the base alone: a class image must not carry any style
        for prompt, indices in runs:
            images = styler.generate(prompt, config.negative, len(indices), config.steps, config.cfg,
                                     config.seed + indices[0], config.size, config.scheduler)
            for index, image in zip(indices, images):
                stem = config.out / image_stem(prompt, index)
                settings = {"prompt": prompt, "negative": config.negative, "seed": config.seed + index,
                            "steps": config.steps, "cfg": config.cfg, "scheduler": config.scheduler, "base": config.base}
                written.append(save_png(image, stem.with_suffix(".png"), settings))
                write_atomically(stem.with_suffix(".txt"), prompt.encode())  # after the image: it marks it done
    return written
