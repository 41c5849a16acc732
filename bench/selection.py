"""Choosing the step by score, measured: a long run on a small folder, each checkpoint judged, against the step the
preview score keeps, the step the validation loss keeps, and the last step.

    python bench/selection.py                 # 8 images per prompt (96 per judged step)
    python bench/selection.py --quick         # 2 images per prompt

For each of stripes, dots and pastel: the folder's first 8 images (a small folder, as style sets are), 1500 steps of
the mini's default recipe with 2 of the 8 held out (--validation-split 0.25), validated every 150 steps with
--select-by score, and a checkpoint at each. The score's choice is the step of the highest logged score, the first
of equals, as --keep best keeps it (tests/test_validation.py checks that it does); the loss's is the lowest
validation loss of the same run (selection does not change the training, so one run serves both).
Every checkpoint is then judged on the 12 colour x shape prompts; a step's judged quality is its style rate times its
prompt-right rate (colour and shape both right). Judged points are stored as they come (docs/results/selection.json),
so an interrupted run continues. Writes docs/results/selection.md and the table into the "when to stop" guide.
"""

from __future__ import annotations

import argparse
import json
import shutil
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

from judged import Store  # noqa: E402
from report_section import write_section  # noqa: E402
from timesteps import RESULTS, STYLES  # noqa: E402

STORE = RESULTS / "selection.json"
WORK = RESULTS / "selection-adapters"  # gitignored, as the other benches' adapters
STEPS, EVERY, IMAGES = 1500, 150, 8


def small_folder(style: str) -> Path:
    folder = WORK / "folders" / style
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for image in sorted((ROOT / "datasets" / style).glob("*.png"))[:IMAGES]:
            shutil.copy(image, folder / image.name)
            shutil.copy(image.with_suffix(".txt"), folder / f"{image.stem}.txt")
    return folder


def run(style: str) -> tuple[Path, list[dict]]:
    """The run's folder (its file is the last step's: --keep last), and its validation rows with their scores."""
    out = WORK / "runs" / style
    if not (out / f"{style}.safetensors").is_file():
        checkpoint.KEEP = STEPS // EVERY + 1  # keep every checkpoint: each is judged
        train(TrainConfig(data=small_folder(style), out=out, seed=0, max_steps=STEPS, validation_split=0.25,
                          validate_every=EVERY, save_every=EVERY, select_by="score", keep="last"),
              progress_bar=False, log=lambda m: None)
    return out, [row for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "score" in row]


def first_best(rows: list[dict], key: str, sign: float) -> int:
    """The step --keep best keeps by `key` (sign -1: the highest): the first of equals, as EarlyStopping does."""
    return min(rows, key=lambda row: (sign * row[key], row["step"]))["step"]


def judge_steps(styler: Styler, style: str, out: Path, per_prompt: int) -> dict[int, dict]:
    store, judged = Store(STORE), {}
    for step in range(EVERY, STEPS + 1, EVERY):
        key = f"{style}/{step}"
        if key not in store.read():
            path = out / f"{style}.safetensors" if step == STEPS else \
                out / "checkpoints" / f"step-{step:06d}" / "adapter.safetensors"  # the last step is the run's file
            name = styler.load(path, f"step{step}")
            styler.set_weights({name: 1.0})
            rates = measure(styler, per_prompt=per_prompt)
            styler.unload(name)
            store.put(key, {"style": rates.share(STYLES[style]), "prompt": rates.share("prompt"),
                            "colour": rates.share("colour"), "images": rates.images})
        judged[step] = store.read()[key]
    return judged


def quality(point: dict) -> float:
    return point["style"] * point["prompt"]


def report(results: dict[str, dict]) -> str:
    lines = ["| folder (8 images) | best judged step | score keeps | loss keeps | last step |",
             "| --- | --- | --- | --- | --- |"]
    for style, found in results.items():
        judged = found["judged"]
        best = max(judged, key=lambda step: quality(judged[step]))
        cell = lambda step: f"step {step}: {quality(judged[step]):.0%} ({judged[step]['style']:.0%} x {judged[step]['prompt']:.0%})"
        lines.append(f"| {style} | {cell(best)} | {cell(found['score'])} | {cell(found['loss'])} | {cell(STEPS)} |")
    lines.append("")
    lines.append("Judged quality is the style rate times the prompt-right rate (colour and shape both right), on 96 "
                 "pictures a step (12 prompts x 8 seeds): about ±4 points of noise on each rate.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 images per prompt instead of 8")
    per_prompt = 2 if parser.parse_args().quick else 8
    Store(STORE).begin(per_prompt)
    styler, results = Styler("mini"), {}
    for style in STYLES:
        out, rows = run(style)
        results[style] = {"score": first_best(rows, "score", -1.0), "loss": first_best(rows, "validation_loss", 1.0),
                          "judged": judge_steps(styler, style, out, per_prompt)}
        print(style, {k: v for k, v in results[style].items() if k != "judged"}, flush=True)
    text = report(results)
    write_atomically(RESULTS / "selection.md", (text + "\n").encode())
    write_section("selection-report", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
