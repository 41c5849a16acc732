"""Timestep sampling on the miniature base: does `--timestep-sampling style` (high-noise steps weighted up, as
ai-toolkit's content_or_style: style) reach the style sooner than uniform, and keep the colour?

    python bench/timesteps.py                 # 8 images per prompt (96 per judged point)
    python bench/timesteps.py --quick         # 2 images per prompt

Each sampling trains on the stripes, dots and pastel folders with the mini's earlier recipe (800 steps at 2e-3, seed
0). The adapters of steps 100, 200, 400 and 800 are judged with the strict judge (stylelora.mini.judge) on the 12
colour x shape prompts. Writes docs/results/timesteps.md and timesteps.json, and the table into the "timesteps and
loss" guide between its markers. Measure alone: another CPU-heavy process slows both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import stylelora.train.checkpoint as checkpoint  # noqa: E402
from stylelora.files import write_atomically  # noqa: E402
from stylelora.mini.evaluate import measure  # noqa: E402
from stylelora.paint.styler import Styler  # noqa: E402
from stylelora.train.config import TrainConfig  # noqa: E402
from stylelora.train.loop import train  # noqa: E402
from stylelora.train.optimizers import OPTIMIZERS  # noqa: E402

from report_section import write_section  # noqa: E402  (bench/ is on the path when run as a script)

RESULTS = ROOT / "docs" / "results"
STYLES = {"stripes": "striped", "dots": "dotted", "pastel": "pastel"}
SAMPLINGS = ("uniform", "style")
JUDGED_STEPS = (100, 200, 400, 800)
# The mini's recipe until the 400-step one (bench/recipe.py). The reports measured with it (timesteps, optimizers,
# knobs, methods, stopping, selection, tune) train with it still, so that running them again measures what they say.
EARLIER_MINI = {"learning_rate": 2e-3, "max_steps": 800, "timestep_sampling": "uniform"}


def earlier_recipe(**settings) -> dict:
    """EARLIER_MINI with `settings` changed. An optimizer's rate is 2e-3 as it takes AdamW's usual rate (Prodigy's
    own 1.0, Lion's third), as these runs were first trained when 2e-3 was the mini's unset rate."""
    rate = OPTIMIZERS[settings.get("optimizer", "adamw")].learning_rate(EARLIER_MINI["learning_rate"])
    return EARLIER_MINI | {"learning_rate": rate} | settings


def train_run(work: Path, style: str, name: str, **settings) -> Path:
    """The mini's earlier recipe on `style` with `settings` changed, a checkpoint every 100 steps, in work/name."""
    out = work / name / style
    if (out / f"{style}.safetensors").is_file():
        return out  # trained by an earlier run of this script: judged again, not retrained
    train(TrainConfig(data=ROOT / "datasets" / style, out=out, seed=0, save_every=100, **earlier_recipe(**settings)),
          progress_bar=False, log=lambda m: None)
    return out


def judge_run(styler: Styler, out: Path, style: str, per_prompt: int) -> dict[int, dict]:
    points = {}
    for step in JUDGED_STEPS:
        path = out / f"{style}.safetensors" if step == JUDGED_STEPS[-1] else \
            out / "checkpoints" / f"step-{step:06d}" / "adapter.safetensors"  # the last step is the run's own file
        name = styler.load(path, f"s{step}")
        styler.set_weights({name: 1.0})
        rates = measure(styler, per_prompt=per_prompt)
        points[step] = {"style": rates.share(STYLES[style]), "colour": rates.share("colour"),
                        "broken": rates.broken / rates.images, "images": rates.images}
        styler.unload(name)
    return points


def steps_to_90(points: dict[int, dict]) -> int:
    final = points[JUDGED_STEPS[-1]]["style"]
    return next(step for step in JUDGED_STEPS if points[step]["style"] >= 0.9 * final)


def table(results: dict, base: dict, per_prompt: int) -> str:
    return judged_table(results, base, per_prompt, "timesteps.py", "", ["sampling"], {s: [s] for s in SAMPLINGS})


def judged_table(results: dict, base: dict, per_prompt: int, script: str, extra: str, columns: list[str],
                 rows: dict[str, list[str]]) -> str:
    """The report of a bench that judges runs at JUDGED_STEPS: one row per setting (`rows`: its first cells, under
    `columns`) and style, then the base's own rates. `extra` is said after "strict judge"."""
    images = 12 * per_prompt
    head = " | ".join(columns)
    lines = [f"Measured on the miniature base by `python bench/{script}`: {images} images per judged point, "
             f"strict judge{extra}. With {images} images a rate's standard error is at most "
             f"{0.5 / images ** 0.5:.0%} (binomial).", "",
             f"| {head} | style | style at 100 / 200 / 400 / 800 steps | first judged step at 90% of step 800's "
             "style | colour right at 800 | broken at 800 |",
             "| " + " | ".join(["---"] * (len(columns) + 5)) + " |"]
    for name, cells in rows.items():
        for style in STYLES:
            points = {int(k): v for k, v in results[name][style].items()}
            curve = " / ".join(f"{points[s]['style']:.0%}" for s in JUDGED_STEPS)
            last = points[JUDGED_STEPS[-1]]
            lines.append(f"| {' | '.join(cells)} | {style} | {curve} | {steps_to_90(points)} | {last['colour']:.0%} | "
                         f"{last['broken']:.0%} |")
    lines.append(f"| base, no adapter | {'| ' * (len(columns) - 1)}| {base['striped']:.0%} striped, "
                 f"{base['dotted']:.0%} dotted, {base['pastel']:.0%} pastel | | {base['colour']:.0%} | |")
    return "\n".join(lines) + "\n"


def images_per_prompt(doc: str) -> int:
    """The images per prompt a judging bench asks of the judge: 8 (96 per judged point), or 2 with --quick."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 images per prompt instead of 8")
    return 2 if parser.parse_args().quick else 8


def main() -> None:
    per_prompt = images_per_prompt(__doc__)
    checkpoint.KEEP = len(JUDGED_STEPS) * 10  # keep every checkpoint of the run: each judged step is one
    work = RESULTS / "timestep-adapters"
    runs = {sampling: {style: train_run(work, style, sampling, timestep_sampling=sampling) for style in STYLES}
            for sampling in SAMPLINGS}
    styler = Styler("mini")
    base = base_rates(styler, per_prompt)
    results = {sampling: {style: judge_run(styler, out, style, per_prompt) for style, out in by_style.items()}
               for sampling, by_style in runs.items()}
    write_report("timesteps", {"per_prompt": per_prompt, "base": base, "results": results},
                 table(results, base, per_prompt))


def base_rates(styler: Styler, per_prompt: int) -> dict[str, float]:
    """The base's own colour and style rates, with no adapter on."""
    rates = measure(styler, per_prompt=per_prompt)
    return {key: rates.share(key) for key in ("colour", *STYLES.values())}


def write_report(name: str, measured: dict, text: str) -> None:
    """docs/results/NAME.json and NAME.md, and the table into the docs page between the NAME-report markers."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomically(RESULTS / f"{name}.json", json.dumps(measured, indent=1).encode())
    write_atomically(RESULTS / f"{name}.md", text.encode())
    write_section(f"{name}-report", text)
    print(text)


if __name__ == "__main__":
    main()
