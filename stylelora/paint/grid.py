"""X/Y comparison grids: prompts (or adapter B's weight) down, adapter A's weight across, one seed."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..adapters.stack import StyleWeight, parse_lora_spec
from ..errors import ConfigError
from ..images import save_png
from ..model.cores import CoreShare
from ..model.quantize import check_quantize
from .pipeline import check_sampler_and_blend
from .request import GridConfig, density_setting
from .styler import Styler

LABEL = 18  # pixels of label band


def parse_weights(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give comma-separated numbers, e.g. 0,0.25,0.5,0.75,1") from None
    if not values:
        raise ConfigError(f"{flag} {text!r}: give at least one weight")
    return values


def make_grid(config: GridConfig, styler: Styler | None = None) -> Path:
    with CoreShare(config.threads):
        return _make_grid(config, styler)


def _make_grid(config: GridConfig, styler: Styler | None) -> Path:
    if not config.lora:
        raise ConfigError("--lora: give adapter A, e.g. --lora a.safetensors")
    if not config.prompts:
        raise ConfigError("give at least one prompt")
    if config.lora_b and not config.weights_b:
        raise ConfigError("--lora-b needs --weights-b, e.g. --weights-b 0,0.5,1")
    check_quantize(config.quantize_base)
    check_sampler_and_blend(config.scheduler, config.blend)
    if config.judge and config.base != "mini":
        raise ConfigError(f"--judge: the judge reads the built-in mini's pictures only, and --base is {config.base!r}; "
                          "leave out --judge")
    styler = styler or Styler(config.base, quantize=config.quantize_base)
    a = styler.load(parse_lora_spec(config.lora)[0])
    b = styler.load(parse_lora_spec(config.lora_b)[0]) if config.lora_b else None
    name_a, name_b = axis_names(config)
    rows = [(f"{name_b} {w:g}", config.prompts[0], {b: w}) for w in config.weights_b] if b else \
           [(prompt, prompt, {}) for prompt in config.prompts]
    cells: list[list[Image.Image]] = []
    for _, prompt, extra in rows:
        row = []
        for weight in config.weights:
            styler.set_weights({a: StyleWeight(weight, weight)} | {k: StyleWeight(v, v) for k, v in extra.items()})
            row.append(styler.generate(prompt, config.negative, 1, config.steps, config.cfg, config.seed,
                                       scheduler=config.scheduler, blend=config.blend,
                                       blend_density=config.blend_density)[0])
        cells.append(row)
    verdicts = [[verdict_words(cell) for cell in row] for row in cells] if config.judge else None
    image = _compose(cells, [f"{name_a} {w:g}" for w in config.weights], [label for label, _, _ in rows], verdicts)
    settings = {"columns": name_a, "rows": name_b or "prompt", "prompts": list(config.prompts), "lora": config.lora,
                "weights": list(config.weights),
                "lora_b": config.lora_b, "weights_b": list(config.weights_b), "base": config.base,
                "seed": config.seed, "steps": config.steps, "cfg": config.cfg, "scheduler": config.scheduler,
                "blend": config.blend,
                **density_setting(config.blend, config.blend_density),
                **({"verdicts": verdicts} if verdicts else {})}
    return save_png(image, config.out, settings)


def axis_names(config: GridConfig) -> tuple[str, str]:
    """The names the grid's axes are labelled with: each adapter's file name without .safetensors ("" for no B)."""
    return (Path(parse_lora_spec(config.lora)[0]).stem,
            Path(parse_lora_spec(config.lora_b)[0]).stem if config.lora_b else "")


def verdict_words(image: Image.Image) -> str:
    """What the mini's judge reads in a picture, in words: 'broken', or its texture, palette, colour and shape."""
    import numpy as np

    from ..mini.judge import judge

    verdict = judge(np.asarray(image.convert("RGB")))
    if verdict.broken:
        return "broken"
    return " ".join(word for word in (verdict.texture, verdict.palette, verdict.colour, verdict.shape) if word) or "?"


def _compose(cells: list[list[Image.Image]], column_labels: list[str], row_labels: list[str],
             verdicts: list[list[str]] | None = None) -> Image.Image:
    native = cells[0][0].width
    side = native * max(1, 128 // native)  # small images are enlarged so the grid can be read
    band = LABEL if verdicts else 0  # a line of words under each cell for the judge's verdict
    left = 8 + 7 * max(len(label) for label in row_labels)
    grid = Image.new("RGB", (left + side * len(column_labels), LABEL + (side + band) * len(row_labels)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for c, label in enumerate(column_labels):
        draw.text((left + c * side + 4, 3), label, fill="black", font=font)
    for r, row in enumerate(cells):
        top = LABEL + r * (side + band)
        draw.text((4, top + side // 2 - 6), row_labels[r], fill="black", font=font)
        for c, cell in enumerate(row):
            grid.paste(cell.resize((side, side), Image.Resampling.NEAREST), (left + c * side, top))
            if verdicts:
                draw.text((left + c * side + 2, top + side + 3), verdicts[r][c][:22], fill="black", font=font)
    return grid
