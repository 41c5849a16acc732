"""Prodigy at its own rate (1.0) against the tuned AdamW default, on the miniature base: style and colour at the
same steps.

    python bench/optimizers.py                # 8 images per prompt (96 per judged point)
    python bench/optimizers.py --quick        # 2 images per prompt

Each optimizer trains on the stripes, dots and pastel folders with the mini's earlier recipe otherwise (800 steps,
seed 0, uniform timesteps), judged at steps 100, 200, 400 and 800 by the strict judge on the 12 colour x shape
prompts. The AdamW runs are bench/timesteps.py's uniform runs, and its judged numbers are read from its
timesteps.json when that was judged at the same images per prompt. Writes docs/results/optimizers.md and
optimizers.json, and the table into the optimizers guide between its markers. Measure alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import stylelora.train.checkpoint as checkpoint  # noqa: E402
from stylelora.paint.styler import Styler  # noqa: E402

from timesteps import (JUDGED_STEPS, RESULTS, STYLES, base_rates, images_per_prompt, judge_run,  # noqa: E402
                       judged_table, train_run, write_report)

OPTIMIZERS = {"adamw": {}, "prodigy": {"optimizer": "prodigy"}}


def earlier_adamw(per_prompt: int) -> dict | None:
    """bench/timesteps.py's uniform results: the same runs (the mini's earlier recipe), judged the same way."""
    path = RESULTS / "timesteps.json"
    if not path.is_file():
        return None
    earlier = json.loads(path.read_text())
    return earlier if earlier["per_prompt"] == per_prompt else None


def table(results: dict, base: dict, per_prompt: int) -> str:
    rates = {"adamw": "2e-3 (the mini's tuned default)", "prodigy": "1.0 (its own default)"}
    return judged_table(results, base, per_prompt, "optimizers.py", ", one seed", ["optimizer", "rate"],
                        {name: [name, rates[name]] for name in OPTIMIZERS})


def main() -> None:
    per_prompt = images_per_prompt(__doc__)
    checkpoint.KEEP = len(JUDGED_STEPS) * 10  # keep every checkpoint of the run: each judged step is one
    work = RESULTS / "timestep-adapters"  # the AdamW runs are timesteps.py's uniform ones
    styler = Styler("mini")
    earlier = earlier_adamw(per_prompt)
    results = {"adamw": earlier["results"]["uniform"]} if earlier else {}
    base = earlier["base"] if earlier else base_rates(styler, per_prompt)
    for name, settings in OPTIMIZERS.items():
        if name in results:
            continue
        folder = "uniform" if name == "adamw" else name
        runs = {style: train_run(work, style, folder, **settings) for style in STYLES}
        results[name] = {style: judge_run(styler, out, style, per_prompt) for style, out in runs.items()}
    write_report("optimizers", {"per_prompt": per_prompt, "base": base, "results": results},
                 table(results, base, per_prompt))


if __name__ == "__main__":
    main()
