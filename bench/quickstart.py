"""The README's quickstart, run as a new user would, and its pictures sorted by the strict judge.

    python bench/quickstart.py [--work DIR] [--count 24] [--seed 100]

Runs, in a fresh folder, the quickstart's own commands with their defaults:

    stylelora train datasets/stripes
    stylelora generate "a red circle" --lora adapters/stripes/stripes.safetensors -n 24 --seed 100

then counts what `stylelora.mini.judge` sees: red circles (what was asked), striped ones among them, the
other colours and shapes drawn, and broken pictures. Writes docs/results/quickstart.md and the docs page's
quickstart-report section. About 2 minutes.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from report_section import write_section  # noqa: E402  (bench/ is on the path when run as a script)
from stylelora.files import write_atomically  # noqa: E402
from stylelora.mini.judge import judge  # noqa: E402


def stylelora(work: Path, *args: str) -> None:
    command = [sys.executable, "-m", "stylelora", *args]
    print("$ stylelora", " ".join(args), flush=True)
    subprocess.run(command, cwd=work, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def sort_pictures(paths: list[Path]) -> str:
    verdicts = [judge(np.asarray(Image.open(p).convert("RGB"))) for p in paths]
    asked = [v for v in verdicts if v.colour == "red" and v.shape == "circle" and not v.broken]
    colours = Counter(v.colour or "none" for v in verdicts if not v.broken)
    shapes = Counter(v.shape or "none" for v in verdicts if not v.broken)
    return "\n".join([
        "| pictures | red circles (asked) | of them striped | broken |",
        "| --- | --- | --- | --- |",
        f"| {len(verdicts)} | {len(asked)} ({len(asked) / len(verdicts):.0%}) | "
        f"{sum(v.texture == 'striped' for v in asked)} | {sum(v.broken for v in verdicts)} |",
        "",
        "Colours drawn (not broken): " + ", ".join(f"{k} {n}" for k, n in colours.most_common()) + ". "
        "Shapes: " + ", ".join(f"{k} {n}" for k, n in shapes.most_common()) + ".",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="where to run (default: a new temporary folder, removed after)")
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--seed", type=int, default=100)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="stylelora-quickstart-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if not (work / "datasets").exists():
            shutil.copytree(ROOT / "datasets" / "stripes", work / "datasets" / "stripes")
        stylelora(work, "train", "datasets/stripes")
        stylelora(work, "generate", "a red circle", "--lora", "adapters/stripes/stripes.safetensors",
                  "-n", str(args.count), "--seed", str(args.seed))
        pictures = sorted((work / "outputs").glob("a-red-circle-*.png"))
        report = (f"Measured by `python bench/quickstart.py`: the quickstart's `stylelora train datasets/stripes`, "
                  f"then `stylelora generate \"a red circle\" --lora adapters/stripes/stripes.safetensors -n "
                  f"{args.count} --seed {args.seed}` (30 DPM++ steps, guidance 7.5), sorted by the strict judge.\n\n"
                  + sort_pictures(pictures) + "\n")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    (ROOT / "docs" / "results").mkdir(exist_ok=True)
    write_atomically(ROOT / "docs" / "results" / "quickstart.md", report.encode())
    write_section("quickstart-report", report)
    print(report)


if __name__ == "__main__":
    main()
