"""The README's quickstart, run as a new user would, and its pictures sorted by the strict judge.

    python bench/quickstart.py [--work DIR] [--count 24] [--seed 100] [--runs 3]

Runs, in a fresh folder, the quickstart's own commands with their defaults:

    stylelora train datasets/stripes
    stylelora generate "a red circle" --lora adapters/stripes/stripes.safetensors -n 24 --seed 100

then counts what `stylelora.mini.judge` sees: red circles (what was asked), striped ones among them, the
other colours and shapes drawn, and broken pictures. Writes docs/results/quickstart.md and the docs page's
quickstart-report section, with the training command's wall time in three runs, from the command to the adapter
file, and the phases the median run reports (start-up, loading, caching, steps, saving). About 4 minutes. Measure
alone: the load average before each run is written beside its time.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from report_section import write_section  # noqa: E402  (bench/ is on the path when run as a script)
from stylelora.files import write_atomically  # noqa: E402
from stylelora.mini.judge import judge  # noqa: E402


def stylelora(work: Path, *args: str) -> tuple[float, str]:
    """Run `stylelora ARGS` in `work`; its wall time in seconds and what it said (on stderr, as log lines do)."""
    command = [sys.executable, "-m", "stylelora", *args]
    print("$ stylelora", " ".join(args), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=work, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return time.perf_counter() - start, done.stderr


def timed_training(work: Path, runs: int) -> str:
    """Train `runs` times from scratch: each command's wall time, from the command to the adapter file, the phases
    the median run reports, and how busy the machine was before each (1-minute load average)."""
    measured = []
    for _ in range(runs):
        shutil.rmtree(work / "adapters", ignore_errors=True)
        load = os.getloadavg()[0]
        seconds, said = stylelora(work, "train", "datasets/stripes")
        phases = next((line for line in said.splitlines() if line.startswith("Took ")), "no phases printed")
        measured.append((seconds, phases, load))
    seconds, phases, _ = sorted(measured)[len(measured) // 2]
    each = ", ".join(f"{s:.1f} s (load {load:.2f})" for s, _, load in measured)
    return (f"`stylelora train datasets/stripes`, from the command to the adapter file, {runs} runs one after another "
            f"on {platform.machine()} with {os.cpu_count()} cores: {each}; the median {seconds:.1f} s. The median run "
            f"said: \"{phases}\"")


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
    parser.add_argument("--runs", type=int, default=3, help="trainings timed (the pictures are the last one's)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="stylelora-quickstart-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if not (work / "datasets").exists():
            shutil.copytree(ROOT / "datasets" / "stripes", work / "datasets" / "stripes")
        trained = timed_training(work, args.runs)
        stylelora(work, "generate", "a red circle", "--lora", "adapters/stripes/stripes.safetensors",
                  "-n", str(args.count), "--seed", str(args.seed))
        pictures = sorted((work / "outputs").glob("a-red-circle-*.png"))
        report = (f"Measured by `python bench/quickstart.py`: the quickstart's `stylelora train datasets/stripes`, "
                  f"then `stylelora generate \"a red circle\" --lora adapters/stripes/stripes.safetensors -n "
                  f"{args.count} --seed {args.seed}` (30 DPM++ steps, guidance 7.5), sorted by the strict judge.\n\n"
                  + sort_pictures(pictures) + "\n\n" + trained + "\n")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    (ROOT / "docs" / "results").mkdir(exist_ok=True)
    write_atomically(ROOT / "docs" / "results" / "quickstart.md", report.encode())
    write_section("quickstart-report", report)
    print(report)


if __name__ == "__main__":
    main()
