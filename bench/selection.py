"""Choosing the step by score, measured: a long run on a small folder, each checkpoint judged, against the step the
preview score keeps, the step the validation loss keeps, and the last step.

    python bench/selection.py                 # 8 images per prompt (96 per judged step)
    python bench/selection.py --quick         # 2 images per prompt
    python bench/selection.py --preview-sets  # the same checkpoints scored from larger preview sets (after the above)
    python bench/selection.py --cost          # what scoring the previews costs, against plain previews (time it alone)
    python bench/selection.py --statistics    # the step each style statistic would keep (after the above)

For each of stripes, dots, pastel and flat (the held-out style, drawn by stylelora.mini.samples into the work
folder): the folder's first 8 images (a small folder, as style sets are), 1500 steps of
the mini's earlier recipe with 2 of the 8 held out (--validation-split 0.25), validated every 150 steps with
--select-by score --scorer paired, and a checkpoint at each. The paired score's choice is the step of the highest
logged score, the first of equals, as --keep best keeps it (tests/test_validation.py checks that it does). The plain
score's (--scorer base) is read from the same run's saved previews: its previews are the paired set's first ones,
the held-out captions' (the paired set adds training captions), so it is what a run with --scorer base logs. The
loss's is the lowest validation loss of the same run. Selection does not change the training, so one run serves
all three; its kept steps are stored with the judged points.
Every checkpoint is then judged on the 12 colour x shape prompts; a step's judged quality is its style rate times its
prompt-right rate (colour and shape both right). Judged points are stored as they come (docs/results/selection.json),
so an interrupted run continues. Writes docs/results/selection.md and the table into the "when to stop" guide.

--preview-sets asks whether a larger preview set would choose better. Each checkpoint paints its held-out captions
at 16 seeds each with the sampler `generate` uses (DPM++, 20 steps) at guidance 4 (the judge's) and 7.5; each
picture's style distance and prompt probability are stored (in the gitignored runs folder), and the step a set of
the first K seeds per caption would keep is read off them. Writes docs/results/selection-previews.md and its table.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import stylelora.train.checkpoint as checkpoint  # noqa: E402
from stylelora.files import write_atomically  # noqa: E402
from stylelora.data.folder import load_rgb, scan_folder  # noqa: E402
from stylelora.data.split import split_examples  # noqa: E402
from stylelora.mini.evaluate import measure  # noqa: E402
from stylelora.families import family_of_pipe  # noqa: E402
from stylelora.score.previews import PreviewScorer  # noqa: E402
from stylelora.score.prompt import PromptJudge  # noqa: E402
from stylelora.score.style import STATISTICS, StyleReference  # noqa: E402
from stylelora.tune.results import spearman  # noqa: E402
from stylelora.paint.styler import Styler  # noqa: E402
from stylelora.train.config import TrainConfig  # noqa: E402
from stylelora.train.loop import train  # noqa: E402

from judged import Store, sample_folder  # noqa: E402
from report_section import write_section  # noqa: E402
from timesteps import EARLIER_MINI, RESULTS, STYLES as SAMPLE_STYLES  # noqa: E402

STYLES = SAMPLE_STYLES | {"flat": "flat"}  # and the held-out style the base seldom draws (stylelora.mini.samples)
STORE = RESULTS / "selection.json"
WORK = RESULTS / "selection-adapters"  # gitignored, as the other benches' adapters
STEPS, EVERY, IMAGES = 1500, 150, 8


def small_folder(style: str) -> Path:
    folder = WORK / "folders" / style
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for image in sorted(sample_folder(style, WORK).glob("*.png"))[:IMAGES]:
            shutil.copy(image, folder / image.name)
            shutil.copy(image.with_suffix(".txt"), folder / f"{image.stem}.txt")
    return folder


def run(style: str) -> tuple[Path, list[dict]]:
    """The run's folder (its file is the last step's: --keep last), and its validation rows with their scores."""
    out = WORK / "runs" / style
    if not (out / f"{style}.safetensors").is_file():
        checkpoint.KEEP = STEPS // EVERY + 1  # keep every checkpoint: each is judged
        train(TrainConfig(data=small_folder(style), out=out, seed=0, **(EARLIER_MINI | {"max_steps": STEPS}),
                          validation_split=0.25,
                          validate_every=EVERY, save_every=EVERY, select_by="score", scorer="paired", keep="last"),
              progress_bar=False, log=lambda m: None)
    return out, [row for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "score" in row]


def plain_scores(base: Styler, style: str, rows: list[dict]) -> list[dict]:
    """Each validation's plain score (--scorer base), read from the run's saved previews of its held-out captions:
    the first pictures of the paired set, painted at the seeds a --scorer base run paints them at."""
    training, captions, contrasts = run_split(style)
    scorer = PreviewScorer(base.pipe, family_of_pipe(base.pipe), training, captions, contrasts, [], base.native_size, 0)
    asked = [prompt for prompt in scorer.prompts for _ in range(scorer.per_prompt)]
    plain = []
    for row in rows:
        scores = scorer.score(saved_previews(style, row["step"], len(asked)), asked)
        plain.append({"step": row["step"], "score": scores.quality, "style_score": scores.style,
                      "prompt_score": scores.prompt})
    return plain


def run_split(style: str) -> tuple[list, list[str], list[str]]:
    """The run's own split (seed 0): its training images, its held-out captions and its training captions."""
    folder = scan_folder(small_folder(style), "", "")
    training, held_out = split_examples(folder.examples, 0.25, 0)
    return [load_rgb(e.path) for e in training], [e.caption for e in held_out], [e.caption for e in training]


def saved_previews(style: str, step: int, count: int) -> list:
    scored = WORK / "runs" / style / "scored"
    return [load_rgb(scored / f"step-{step:06d}-{index}.png") for index in range(count)]


def first_best(rows: list[dict], key: str, sign: float) -> int:
    """The step --keep best keeps by `key` (sign -1: the highest): the first of equals, as EarlyStopping does."""
    return min(rows, key=lambda row: (sign * row[key], row["step"]))["step"]


def judge_steps(styler: Styler, style: str, per_prompt: int) -> dict[int, dict]:
    store, judged = Store(STORE), {}
    for step in range(EVERY, STEPS + 1, EVERY):
        key = f"{style}/{step}"
        if key not in store.read():
            name = styler.load(checkpoint_path(style, step), f"step{step}")
            styler.set_weights({name: 1.0})
            rates = measure(styler, per_prompt=per_prompt)
            styler.unload(name)
            store.put(key, {"style": rates.share(STYLES[style]), "prompt": rates.share("prompt"),
                            "colour": rates.share("colour"), "images": rates.images})
        judged[step] = store.read()[key]
    return judged


def agreement(rows: list[dict], style: str) -> float:
    """Spearman of the logged style scores with the judged style rate, over the run's checkpoints."""
    judged = Store(STORE).read()
    return spearman([row["style_score"] for row in rows], [judged[f"{style}/{row['step']}"]["style"] for row in rows])


def quality(point: dict) -> float:
    return point["style"] * point["prompt"]


TOLERANCE = 0.03  # the target: within 3 points of the best judged step


def oracle_meets(judged: dict[int, dict], draws: int = 20_000) -> float:
    """How often keeping the truly best step would meet the target, under the judge's own noise: the judged rates
    taken as the true ones, and each judging drawn again as binomial counts over its pictures (a parametric
    bootstrap, seeded). The best judged step of one judging is the highest of ten noisy values."""
    rng = np.random.default_rng(0)
    steps = sorted(judged)
    images = judged[steps[0]]["images"]
    style, prompt = (np.array([judged[step][rate] for step in steps]) for rate in ("style", "prompt"))
    drawn = (rng.binomial(images, style, (draws, len(steps))) * rng.binomial(images, prompt, (draws, len(steps)))
             / images ** 2)
    best = int(np.argmax(style * prompt))
    kept = drawn[:, best]
    return float(np.mean((kept >= drawn.max(axis=1) - TOLERANCE) & (kept >= drawn[:, -1])))


def report(results: dict[str, dict]) -> str:
    lines = ["| folder (8 images) | best judged step | paired score keeps | plain score keeps | loss keeps | last step |",
             "| --- | --- | --- | --- | --- | --- |"]
    for style, found in results.items():
        judged = found["judged"]
        best = max(judged, key=lambda step: quality(judged[step]))
        cell = lambda step: f"step {step}: {quality(judged[step]):.0%} ({judged[step]['style']:.0%} x {judged[step]['prompt']:.0%})"
        lines.append(f"| {style} | {cell(best)} | {cell(found['paired'])} | {cell(found['plain'])} | {cell(found['loss'])} "
                     f"| {cell(STEPS)} |")
    lines.append("")
    lines.append("Spearman of the style score with the judged style rate over the ten checkpoints: paired "
                 + ", ".join(f"{style} {found['agreement']['paired']:+.2f}" for style, found in results.items())
                 + "; plain " + ", ".join(f"{style} {found['agreement']['plain']:+.2f}" for style, found in results.items())
                 + ".")
    lines.append("")
    lines.append("A choice of the truly best step would meet the target in "
                 + ", ".join(f"{style} {oracle_meets(found['judged']):.0%}" for style, found in results.items())
                 + " of judgings: the judge's own noise, with each step's judged rates taken as true and each judging "
                 "drawn again (bench/selection.py's oracle_meets).")
    lines.append("")
    lines.append("Judged quality is the style rate times the prompt-right rate (colour and shape both right), on 96 "
                 "pictures a step (12 prompts x 8 seeds): about ±4 points of noise on each rate.")
    return "\n".join(lines)


SEEDS, SETTINGS = 16, (4.0, 7.5)  # seeds per held-out caption; guidance scales
PREVIEWS = WORK / "previews.json"  # each scored picture (gitignored: 30 checkpoints x 64 pictures x 2)


def checkpoint_path(style: str, step: int) -> Path:
    out = WORK / "runs" / style
    if step == STEPS:
        return out / f"{style}.safetensors"  # the last step is the run's file
    return out / "checkpoints" / f"step-{step:06d}" / "adapter.safetensors"


def score_pictures(painter: Styler, base: Styler, style: str, store: dict) -> None:
    """Each checkpoint's pictures of its run's held-out captions, each with its style distance (to the nearest
    training image, as StyleReference measures it) and its prompt probability (as PromptJudge reads it)."""
    training, prompts, contrasts = run_split(style)
    size = painter.native_size
    reference = StyleReference(base.pipe.vae, training, size)
    judge = PromptJudge(base.pipe, base.family, [*prompts, *contrasts])
    for step in range(EVERY, STEPS + 1, EVERY):
        if f"{style}/{step}" in store:
            continue
        name = painter.load(checkpoint_path(style, step), f"step{step}")
        painter.set_weights({name: 1.0})
        rows = {}
        for cfg in SETTINGS:
            rows[str(cfg)] = []
            for index, prompt in enumerate(prompts):
                pictures = painter.generate(prompt, count=SEEDS, steps=20, cfg=cfg, seed=5_000_000 + 1000 * index)
                for picture in pictures:
                    rows[str(cfg)].append({"caption": index, "distance": reference.distance([picture]),
                                           "prompt": judge.score([picture], [prompt], size).probability})
        painter.unload(name)
        store[f"{style}/{step}"] = rows
        write_atomically(PREVIEWS, json.dumps(store).encode())
        print(f"{style}/{step} scored", flush=True)


def score_of(rows: list[dict], seeds: int) -> float:
    """What --select-by score reads from the first `seeds` pictures of each caption: exp(-mean distance) x the
    mean prompt probability."""
    seen: dict[int, int] = {}
    kept = []
    for row in rows:  # in painting order: each caption's pictures by seed
        seen[row["caption"]] = seen.get(row["caption"], 0) + 1
        if seen[row["caption"]] <= seeds:
            kept.append(row)
    return style_of(kept) * sum(r["prompt"] for r in kept) / len(kept)


def style_of(rows: list[dict]) -> float:
    """The style score of the pictures `rows`: exp(-their mean distance), as StyleReference.score reads it."""
    return math.exp(-sum(r["distance"] for r in rows) / len(rows))


def preview_sets_report(store: dict) -> str:
    judged = Store(STORE).read()
    lines = ["| guidance | seeds per caption (previews) | " + " | ".join(STYLES) + " |",
             "| --- | --- | " + " | ".join("---" for _ in STYLES) + " |"]
    for cfg in SETTINGS:
        for seeds in (2, 4, 8, 16):
            cells = []
            for style in STYLES:
                steps = range(EVERY, STEPS + 1, EVERY)
                scores = {step: score_of(store[f"{style}/{step}"][str(cfg)], seeds) for step in steps}
                kept = min(steps, key=lambda step: (-scores[step], step))
                cells.append(f"step {kept}: {quality(judged[f'{style}/{kept}']):.0%}")
            lines.append(f"| {cfg:g} | {seeds} ({2 * seeds}) | " + " | ".join(cells) + " |")
    steps = range(EVERY, STEPS + 1, EVERY)
    for cfg in SETTINGS:  # does the style score rank the checkpoints as the judge's style rate does?
        agreement = [spearman([style_of(store[f"{style}/{step}"][str(cfg)]) for step in steps],
                              [judged[f"{style}/{step}"]["style"] for step in steps]) for style in STYLES]
        lines += ["", f"Spearman of the style score ({SEEDS} seeds per caption, guidance {cfg:g}) with the judged "
                      "style rate over the ten checkpoints: "
                      + ", ".join(f"{style} {a:+.2f}" for style, a in zip(STYLES, agreement)) + "."]
    best = [max(quality(judged[f"{style}/{step}"]) for step in steps) for style in STYLES]
    lines += ["", "Best judged step: " + ", ".join(f"{style} {b:.0%}" for style, b in zip(STYLES, best)) +
              "; last step: " + ", ".join(f"{style} {quality(judged[f'{style}/{STEPS}']):.0%}" for style in STYLES) +
              ". Training paints 2 seeds per caption (4 previews here) with the base's own sampler."]
    return "\n".join(lines)


def preview_sets() -> None:
    store = json.loads(PREVIEWS.read_text()) if PREVIEWS.exists() else {}
    painter, base = Styler("mini"), Styler("mini")  # base: never given an adapter, the prompt judge and the VAE
    for style in STYLES:
        score_pictures(painter, base, style, store)
    text = preview_sets_report(store)
    write_atomically(RESULTS / "selection-previews.md", (text + "\n").encode())
    write_section("selection-previews", text + "\n")
    print(text)


def statistics_report(base: Styler) -> str:
    """--statistics: the step --select-by score would keep with each style statistic in place of gram@2, read from
    each run's saved previews of its held-out captions (4 a validation) times the run's prompt score, and how the
    statistic alone ranks the ten checkpoints against the judged style rate."""
    judged, steps = Store(STORE).read(), range(EVERY, STEPS + 1, EVERY)
    cells: dict[str, list[str]] = {}
    for style in STYLES:
        training, captions, _ = run_split(style)
        prompt = {row["step"]: row["prompt_score"] for row in plain_scores(base, style, run(style)[1])}
        pictures = {step: saved_previews(style, step, 2 * len(captions)) for step in steps}
        for statistic in STATISTICS:
            for depth in range(len(base.pipe.vae.encoder.down_blocks)):
                reference = StyleReference(base.pipe.vae, training, base.native_size, statistic, (depth,))
                styled = {step: reference.score(pictures[step]) for step in steps}
                kept = min(steps, key=lambda step: (-styled[step] * prompt[step], step))
                rho = spearman([styled[step] for step in steps], [judged[f"{style}/{step}"]["style"] for step in steps])
                cells.setdefault(f"{statistic}@{depth}", []).append(
                    f"step {kept}: {quality(judged[f'{style}/{kept}']):.0%} ({rho:+.2f})")
    best = [max(quality(judged[f"{style}/{step}"]) for step in steps) for style in STYLES]
    lines = ["| style statistic | " + " | ".join(STYLES) + " |", "| --- | " + " | ".join("---" for _ in STYLES) + " |",
             *(f"| {name} | " + " | ".join(row) + " |" for name, row in cells.items()),
             "| best judged step, last step | " + " | ".join(
                 f"{b:.0%}, {quality(judged[f'{style}/{STEPS}']):.0%}" for style, b in zip(STYLES, best)) + " |",
             "", "Each cell: the step kept, its judged quality (style x prompt right), and in brackets the Spearman of "
                 "the statistic's style score with the judged style rate over the ten checkpoints. gram@2 is the "
                 "statistic in use: its row is the plain score's choice in the table above."]
    return "\n".join(lines)


COST_STEPS, COST_EVERY = 4, 2
COST_MODES = {"no previews": {}, "plain previews (--keep last)": {"sample_every": COST_EVERY, "keep": "last"},
              "scored previews (the default)": {"sample_every": COST_EVERY}}


def cost() -> str:
    """The training loop's time with no previews, with plain previews (one picture a prompt, --keep last) and with
    scored ones (two a prompt, scored for style and prompt: what --sample-every does without validation), on the
    mini and the SD1.5-shaped base; the folder's first two captions are previewed, every 2 of 4 steps."""
    from models import MINI, sd15

    lines = ["| base | mode | loop time (4 steps) | a preview step costs | in training steps |",
             "| --- | --- | --- | --- | --- |"]
    for base in (MINI, sd15()):
        seconds = {}
        for mode, extra in COST_MODES.items():
            out = WORK / "cost" / f"{base.label.split()[0]}-{len(seconds)}"
            shutil.rmtree(out, ignore_errors=True)
            train(TrainConfig(data=ROOT / "datasets" / "stripes", base=base.spec, out=out, max_steps=COST_STEPS,
                              resolution=base.resolution, batch_size=base.batch, seed=0, **extra),
                  progress_bar=False, log=lambda m: None)
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            seconds[mode] = next(row["phases"]["steps"] for row in rows if "phases" in row)
        step = seconds["no previews"] / COST_STEPS
        for mode, took in seconds.items():
            preview = (took - seconds["no previews"]) / (COST_STEPS // COST_EVERY)
            lines.append(f"| {base.label} at {base.resolution} px | {mode} | {took:.1f} s | "
                         + ("|  |" if not preview else f"{preview:.1f} s | {preview / step:.0f} |"))
        print(lines[-3:], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 images per prompt instead of 8")
    parser.add_argument("--preview-sets", action="store_true", help="score the checkpoints from larger preview sets")
    parser.add_argument("--cost", action="store_true", help="time scored previews against plain ones (alone)")
    parser.add_argument("--statistics", action="store_true",
                        help="the step each style statistic would keep, read from the runs' saved previews")
    args = parser.parse_args()
    if args.preview_sets:
        return preview_sets()
    if args.statistics:
        text = statistics_report(Styler("mini"))
        write_atomically(RESULTS / "selection-statistics.md", (text + "\n").encode())
        write_section("selection-statistics", text + "\n")
        return print(text)
    if args.cost:
        text = cost()
        write_atomically(RESULTS / "selection-cost.md", (text + "\n").encode())
        write_section("selection-cost", text + "\n")
        return print(text)
    per_prompt = 2 if args.quick else 8
    Store(STORE).begin(per_prompt)
    styler, base, results = Styler("mini"), Styler("mini"), {}  # base: never given an adapter
    for style in STYLES:
        _, rows = run(style)
        plain = plain_scores(base, style, rows)
        judged = judge_steps(styler, style, per_prompt)  # before the agreement, which reads the judged steps
        results[style] = {"paired": first_best(rows, "score", -1.0), "plain": first_best(plain, "score", -1.0),
                          "agreement": {"paired": agreement(rows, style), "plain": agreement(plain, style)},
                          "loss": first_best(rows, "validation_loss", 1.0), "judged": judged}
        Store(STORE).put(f"kept/{style}", {k: v for k, v in results[style].items() if k in ("paired", "plain", "loss")})
        print(style, {k: v for k, v in results[style].items() if k != "judged"}, flush=True)
    text = report(results)
    write_atomically(RESULTS / "selection.md", (text + "\n").encode())
    write_section("selection-report", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
