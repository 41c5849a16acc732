"""What a painting asks for: the options of `stylelora generate`, which are also one served request's, and of
`stylelora grid`, declared once (options.option) and checked in one place, and the settings each PNG carries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..adapters.stack import StyleWeight
from ..errors import ConfigError
from ..model.cores import THREADS_DEFAULT, THREADS_HELP
from ..model.quantize import QUANTIZE_HELP, QUANTIZE_MODES, check_quantize
from ..options import UiField, like, option
from ..adapters.merge import MERGE_RULES
from .pipeline import BLENDS, SCHEDULERS


@dataclass
class GenerateConfig:
    """One `stylelora generate` run (and one served request), each option declared once (options.option)."""

    prompt: str = option(help="what to paint", cli=False,
                         ui=UiField("Prompt", "textbox", "prompt", default="a red circle"))
    loras: tuple[str, ...] = option((), "adapter and weight, e.g. a.safetensors:0.7 or a.safetensors:unet=0.8,te=0.5 "
                                        "(repeatable)", flag="--lora", repeat=True, metavar="FILE[:WEIGHT]")
    base: str = option("mini", "'mini' (built in), a hub id, a diffusers folder or a .safetensors file")
    negative: str = option("", "negative prompt", default_text="none", ui=UiField("Negative prompt", "textbox"))
    count: int = option(4, "number of images", aliases=("-n",), ui=UiField("Images", "slider", span=(1, 16, 1)))
    steps: int = option(30, "denoising steps",
                        ui=UiField("Steps", "slider", "gen-steps", default=20, span=(1, 100, 1)))
    cfg: float = option(7.5, "classifier-free guidance scale (Flux.1: its distilled guidance, 3.5 is usual)",
                        ui=UiField("Guidance", "slider", default=4.0, span=(0, 20, 0.5)))
    seed: int = option(1, "seed of the first image; image i uses seed + i", ui=UiField("Seed", "integer"))
    size: int | None = option(None, "image size in pixels, a square side", default_text="the base's native size")
    width: int | None = option(None, "image width in pixels, a multiple of 8",
                               default_text="--size, or the base's native size",
                               ui=UiField("Width in px (0 = the base's own)", "integer", "gen-width"))
    height: int | None = option(None, "image height in pixels, a multiple of 8",
                                default_text="--size, or the base's native size",
                                ui=UiField("Height in px (0 = the base's own)", "integer", "gen-height"))
    scheduler: str = option("dpm++", "sampler (on SD3.x and Flux.1, euler or dpm++ in their flow-matching form)",
                            choices=tuple(SCHEDULERS))
    out: Path = option(Path("outputs"), "folder for the PNG files")
    blend: str = option("merge", "merge: weighted sum, fused (1x cost); switch: one adapter per step in turn (1x); "
                                 "composite: every adapter's prediction averaged each step (N x cost); ties, "
                                 "dare-linear, dare-ties, magnitude-prune, klora: the stack merged once by that rule "
                                 "at --blend-density, cached, then fused (1x)", choices=BLENDS,
                        ui=UiField("Blend of two or more adapters", "dropdown"))
    blend_density: float = option(0.5, "ties, dare-*, magnitude-prune: the share of each adapter's change kept; "
                                       "klora: the share of entries whose sum picks each layer's adapter",
                                  ui=UiField("Blend density (ties, dare, magnitude-prune, klora)"))
    quantize_base: str = option("none", QUANTIZE_HELP, choices=QUANTIZE_MODES)
    threads: int | None = option(None, THREADS_HELP, default_text=THREADS_DEFAULT)


def validate_generate(config: GenerateConfig) -> GenerateConfig:
    checks = [
        (config.count >= 1, "count", "make at least 1 image"),
        (config.steps >= 1, "steps", "use at least 1 denoising step; 20-30 is usual"),
        (config.cfg >= 0, "cfg", "guidance must be 0 or more; 7.5 is usual"),
        (config.size is None or (config.size >= 8 and config.size % 8 == 0), "size", "use a multiple of 8"),
        (config.width is None or (config.width >= 8 and config.width % 8 == 0), "width", "use a multiple of 8"),
        (config.height is None or (config.height >= 8 and config.height % 8 == 0), "height", "use a multiple of 8"),
        (bool(config.prompt.strip()), "prompt", "give a prompt, e.g. \"a red circle\""),
        (config.threads is None or config.threads >= 1, "threads", "use at least 1 thread, or leave it out"),
        (0 < config.blend_density <= 1, "blend_density", "keep a share in (0, 1] of each change; 0.5 is usual"),
    ]
    for ok, name, fix in checks:
        if not ok:
            raise ConfigError(f"--{name} = {getattr(config, name)!r}: {fix}")
    check_quantize(config.quantize_base)
    return config


def density_setting(blend: str, density: float) -> dict:
    """A merge rule's density, as a picture's settings record it (a blend without a density records none)."""
    return {"blend_density": density} if blend in MERGE_RULES else {}


def image_settings(config: GenerateConfig, seed: int, size: tuple[int, int],
                   specs: list[tuple[Path, StyleWeight]]) -> dict:
    """What a PNG carries in its text chunks: every setting that reproduces it (the server writes the same)."""
    return {"prompt": config.prompt, "negative": config.negative, "seed": seed,
            "steps": config.steps, "cfg": config.cfg, "scheduler": config.scheduler, "blend": config.blend,
            **density_setting(config.blend, config.blend_density),
            "base": config.base, **({"quantize_base": config.quantize_base} if config.quantize_base != "none" else {}),
            "size": size[0], "width": size[0], "height": size[1],
            "loras": [{"file": str(p), "unet": w.unet, "te": w.text_encoder} for p, w in specs]}


@dataclass
class GridConfig:
    """One `stylelora grid`: each option declared once (options.option), the painting ones as `generate` has them."""

    prompts: tuple[str, ...] = option((), "the prompts, one row each", cli=False, default_text="required")
    lora: str = option("", "adapter A: its weights go across", default_text="required", metavar="FILE")
    weights: tuple[float, ...] = option((0.0, 0.25, 0.5, 0.75, 1.0), "A's weights across", cli_type=str)
    out: Path = option(Path("outputs/grid.png"), "the grid's PNG file", aliases=("-o",))
    lora_b: str | None = option(None, "adapter B: rows become B's weights", default_text="none", metavar="FILE")
    weights_b: tuple[float, ...] = option((), "B's weights down, e.g. 0,0.5,1", default_text="none", cli_type=str)
    base: str = like(GenerateConfig, "base")
    negative: str = like(GenerateConfig, "negative", ui=None)
    steps: int = like(GenerateConfig, "steps", ui=None)
    cfg: float = like(GenerateConfig, "cfg", ui=None)
    seed: int = like(GenerateConfig, "seed", help="the seed of every cell", ui=None)
    scheduler: str = like(GenerateConfig, "scheduler")
    quantize_base: str = like(GenerateConfig, "quantize_base")
    threads: int | None = like(GenerateConfig, "threads")
    blend: str = like(GenerateConfig, "blend", help="how A and B blend in each cell (as `generate --blend`)", ui=None)
    blend_density: float = like(GenerateConfig, "blend_density", ui=None)
    judge: bool = option(False, "on the built-in mini: write each cell's verdict by stylelora.mini.judge under it "
                                "(texture, palette, colour, shape)",
                         ui=UiField("Judge each cell (the mini only)", "checkbox", "grid-judge"))
