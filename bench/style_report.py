"""Does an adapter learn its style? Train the sample styles on the miniature base and judge what they paint.

    python bench/style_report.py            # full: 8 images per prompt (96 per setting)
    python bench/style_report.py --quick    # 3 images per prompt

Writes docs/results/style_report.md (the style-report section of its docs page, written there too) and
docs/results/styles.png (base vs each adapter vs a blend, same prompts and seeds).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from report_section import write_section  # noqa: E402  (bench/ is on the path when run as a script)
from stylelora.train.config import TrainConfig  # noqa: E402
from stylelora.files import write_atomically  # noqa: E402
from stylelora.images import save_png  # noqa: E402
from stylelora.mini.evaluate import measure  # noqa: E402
from stylelora.paint.styler import Styler  # noqa: E402
from stylelora.train.loop import train  # noqa: E402

RESULTS = ROOT / "docs" / "results"
STYLES = {"stripes": "striped", "dots": "dotted", "pastel": "pastel"}
BLEND_STEPS = (0.0, 0.25, 0.5, 0.75, 1.0)
GRID_PROMPTS = ("a red circle", "a blue square", "a green triangle", "a yellow circle")


def train_styles(work: Path) -> dict[str, tuple[Path, float]]:
    trained = {}
    for name in STYLES:
        start = time.time()
        result = train(TrainConfig(data=ROOT / "datasets" / name, out=work / name), progress_bar=False,
                       log=lambda m: None)
        trained[name] = (result.adapter_path, time.time() - start)
        print(f"trained {name} in {trained[name][1]:.0f}s, final loss {result.loss:.4f}", flush=True)
    return trained


def grid_image(styler: Styler, names: dict[str, str]) -> Image.Image:
    columns = [("base", {}), ("stripes", {names["stripes"]: 1.0}), ("dots", {names["dots"]: 1.0}),
               ("pastel", {names["pastel"]: 1.0}), ("stripes+pastel", {names["stripes"]: 0.5, names["pastel"]: 0.5})]
    size = 128
    sheet = Image.new("RGB", (size * len(columns), size * len(GRID_PROMPTS)), "white")
    for c, (_, weights) in enumerate(columns):
        styler.set_weights(weights)
        for r, prompt in enumerate(GRID_PROMPTS):
            image = styler.generate(prompt, count=1, steps=20, cfg=4.0, seed=7 + r)[0]
            sheet.paste(image.resize((size, size), Image.Resampling.NEAREST), (c * size, r * size))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    per_prompt = 3 if args.quick else 8
    trained = train_styles(RESULTS / "adapters")
    styler = Styler("mini")
    names = {name: styler.load(path, name) for name, (path, _) in trained.items()}

    def rates(weights):
        styler.set_weights(weights)
        return measure(styler, per_prompt=per_prompt)

    lines = ["| setting | images | colour right | shape right | broken | striped | dotted | pastel | train time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    base = rates({})

    def row(label, r, seconds=""):
        return (f"| {label} | {r.images} | {r.share('colour'):.0%} | {r.share('shape'):.0%} | {r.share('broken'):.0%} "
                f"| {r.share('striped'):.0%} "
                f"| {r.share('dotted'):.0%} | {r.share('pastel'):.0%} | {seconds} |")

    lines.append(row("base, no adapter", base))
    for name, (_, seconds) in trained.items():
        lines.append(row(f"{name} at 1.0", rates({names[name]: 1.0}), f"{seconds:.0f} s"))
    blend = ["", "| stripes weight w, pastel 1-w | striped | pastel | colour right |", "| --- | --- | --- | --- |"]
    for w in BLEND_STEPS:
        r = rates({names["stripes"]: w, names["pastel"]: 1 - w})
        blend.append(f"| w = {w:g} | {r.share('striped'):.0%} | {r.share('pastel'):.0%} | {r.share('colour'):.0%} |")
    report = "\n".join(lines + blend) + "\n"
    header = (f"Measured by `python bench/style_report.py{' --quick' if args.quick else ''}`: {per_prompt} images for "
              "each of the 12 colour x shape prompts per setting, 20 DPM++ steps, guidance 4, judged by "
              "`stylelora.mini.judge` (strict: a colour between two hue bands is no colour, and a broken picture counts "
              "against colour, shape and style). Adapters trained with default settings.\n\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomically(RESULTS / "style_report.md", (header + report).encode())
    write_section("style-report", header + report)
    save_png(grid_image(styler, names), RESULTS / "styles.png", {"columns": "base, stripes, dots, pastel, stripes 0.5 + pastel 0.5"})
    print(header + report)


if __name__ == "__main__":
    main()
