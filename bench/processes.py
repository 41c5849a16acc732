"""Two trainings on one machine: one after the other, together with the cores shared (the default), and together
with every process on all the cores (what torch does on its own, and stylelora did before it shared them).

    python bench/processes.py [--steps 300]

Each run is `stylelora train datasets/stripes` and `... datasets/dots` on the miniature base, `--steps` steps
each, no previews. Prints the wall times and ratios and writes docs/results/processes.md. Run it alone: its
point is how stylelora's own processes share the machine, and anything else running spoils that.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STYLES = ("stripes", "dots")


def training(style: str, steps: int, work: Path, extra: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"XDG_CACHE_HOME": str(work / "cache")}
    return subprocess.Popen([sys.executable, "-m", "stylelora", "train", str(ROOT / "datasets" / style),
                             "--out", str(work / f"{style}-{time.monotonic_ns()}"), "--max-steps", str(steps),
                             "--sample-every", "0", "--save-every", "0", "--quiet", *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        _, errors = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"a training failed:\n{errors}")


def serially(steps: int, work: Path) -> float:
    start = time.perf_counter()
    for style in STYLES:
        finish([training(style, steps, work, [])])
    return time.perf_counter() - start


def together(steps: int, work: Path, extra: list[str]) -> float:
    start = time.perf_counter()
    finish([training(style, steps, work, extra) for style in STYLES])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "processes.md")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="stylelora-processes-") as folder:
        work = Path(folder)
        one_after_other = serially(args.steps, work)
        shared = together(args.steps, work, [])
        all_cores_each = together(args.steps, work, ["--threads", str(cores)])
    rows = [("one after the other", one_after_other), ("together, cores shared (the default)", shared),
            (f"together, each on all {cores} cores (--threads {cores})", all_cores_each)]
    lines = [f"Measured by `python bench/processes.py --steps {args.steps}` on {time.strftime('%Y-%m-%d')}, "
             f"{cores} cores: two `stylelora train` runs (stripes and dots, the mini, {args.steps} steps each).", "",
             "| how | both finished in | against one after the other |", "| --- | --- | --- |"]
    lines += [f"| {name} | {seconds:.1f} s | {seconds / one_after_other:.2f}x |" for name, seconds in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
