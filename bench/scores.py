"""Do the scores see what the judge sees? Over every judged checkpoint of the knob and timestep benches (8 recipes x
3 styles x steps 100, 200, 400, 800, each judged on 96 pictures), the style and prompt scores of a small preview
set against the judge's rates, as Spearman rank correlations, with a held-out denoising loss for comparison.

    python bench/scores.py            # scores every judged checkpoint not yet scored, then reports
    python bench/scores.py --report   # the report from what is stored

Each checkpoint paints 24 previews: the mini's 12 colour x shape prompts, 2 seeds each, at seeds the judge's
pictures do not use. Then:
- the style score of the previews against the folder's training images, for each texture statistic at each depth
  of the VAE encoder (stylelora.score.style), the nearest reference picture per preview;
- the prompt score of the previews, with the base (adapter off) as a zero-shot classifier among the 12 prompts
  (stylelora.score.prompt): the share classified right, and the mean probability of the own prompt;
- the held-out loss: the adapter's denoising error on 12 new pictures of the style (drawn from the mini world at
  another seed than the folder's), under their captions, at the classifier's fixed timesteps and noises.
- the paired style scores (StyleReference.shift and .gain), against the base's own previews at the same prompts and
  seeds, for the checkpoints whose adapters are still on disk (the runs' folders are not committed).
The knob runs' checkpoints on disk that the knob bench did not judge (it judges steps 100, 200, 400, 800 of runs
that keep one every 100) are judged here too, on 96 pictures each, for more points.
Each checkpoint's numbers are stored as they come (docs/results/scores.json), so an interrupted run continues.
Spearman is given per style and pooled; the paired scores in a second table, over the checkpoints they have.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from stylelora.data.folder import scan_folder  # noqa: E402
from stylelora.mini.evaluate import prompts  # noqa: E402
from stylelora.mini.samples import STYLES as SAMPLE_STYLES, make  # noqa: E402
from stylelora.paint.styler import Styler  # noqa: E402
from stylelora.score.prompt import PromptJudge  # noqa: E402
from stylelora.score.style import STATISTICS, StyleReference  # noqa: E402
from stylelora.tune.results import spearman  # noqa: E402

from judged import Store  # noqa: E402
from report_section import run_bench  # noqa: E402
from timesteps import RESULTS, STYLES  # noqa: E402

STORE = RESULTS / "scores.json"
PAIRED = ("shift ", "gain ")  # the paired style scores' labels begin so
SIZE = 64  # the mini paints, and its sample folders hold, 64 x 64 pictures
PREVIEW_SEED, PREVIEWS_PER_PROMPT = 7_000_000, 2  # the judge paints from seed 1000 * prompt index: never these
HELD_OUT_SEED = 900  # the sample folders are drawn from seeds 100-102
SOURCES = {"knobs": (RESULTS / "knobs.json", RESULTS / "knob-adapters" / "curves"),
           "timesteps": (RESULTS / "timesteps.json", RESULTS / "timestep-adapters")}


def judged_checkpoints() -> list[tuple[str, Path, str, dict]]:
    """(key, adapter file, style, the judge's rates) of every judged checkpoint of the two benches."""
    import json

    found = []
    for source, (store, adapters) in SOURCES.items():
        data = json.loads(store.read_text())
        runs = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith("curves/")} if source == "knobs" else \
            {f"{recipe}/{style}": points for recipe, styles in data["results"].items() for style, points in styles.items()}
        for run, points in sorted(runs.items()):
            recipe, style = run.split("/")
            folder = adapters / recipe / style
            for step, rates in sorted(points.items(), key=lambda item: int(item[0])):
                final = folder / f"{style}.safetensors"
                path = final if int(step) == max(map(int, points)) else \
                    folder / "checkpoints" / f"step-{int(step):06d}" / "adapter.safetensors"
                if path.is_file():
                    found.append((f"{source}/{recipe}/{style}/{step}", path, style, rates))
    return found


def previews(styler: Styler) -> tuple[list[Image.Image], list[str]]:
    images, asked = [], []
    for index, (prompt, _, _) in enumerate(prompts()):  # picture i of a batch is painted at seed + i
        images += styler.generate(prompt, count=PREVIEWS_PER_PROMPT, steps=20, cfg=4.0, seed=PREVIEW_SEED + 1000 * index)
        asked += [prompt] * PREVIEWS_PER_PROMPT
    return images, asked


def held_out(style: str, work: Path) -> tuple[list[Image.Image], list[str]]:
    folder = work / f"held-out-{style}"
    make(folder, SAMPLE_STYLES[style], HELD_OUT_SEED + list(SAMPLE_STYLES).index(style), count=12)
    examples = scan_folder(folder).examples
    return [Image.open(e.path).convert("RGB") for e in examples], [e.caption for e in examples]


def score_checkpoint(styler: Styler, path: Path, references: dict[str, StyleReference], judge: PromptJudge,
                     held: tuple[list[Image.Image], list[str]]) -> dict:
    name = styler.load(path, "candidate")
    styler.set_weights({name: 1.0})
    images, asked = previews(styler)
    held_images, captions = held
    loss = sum(float(judge.errors(image, SIZE, [caption])[0])
               for image, caption in zip(held_images, captions)) / len(held_images)
    styler.set_weights({})  # the classifier is the base alone
    prompt = judge.score(images, asked, SIZE)
    styler.unload(name)
    return {"style": {label: reference.score(images) for label, reference in references.items()},
            "prompt_accuracy": prompt.accuracy, "prompt_probability": prompt.probability, "held_out_loss": loss}


def paired_style(styler: Styler, style: str, todo: list) -> None:
    """The paired style scores (StyleReference.shift and .gain) of each checkpoint in `todo`, against the base's own
    previews at the same prompts and seeds, added to its stored "style" numbers."""
    store = Store(STORE)
    references = references_for(styler, style)
    styler.set_weights({})
    base_images, _ = previews(styler)
    base = {label: reference.statistics(base_images) for label, reference in references.items()}
    for key, path, _ in todo:
        name = styler.load(path, "candidate")
        styler.set_weights({name: 1.0})
        images, _ = previews(styler)
        styler.unload(name)
        paired = {f"{kind} {label}": getattr(reference, kind)(images, base[label])
                  for label, reference in references.items() for kind in ("shift", "gain")}
        entry = store.read()[key]
        store.put(key, entry | {"style": entry["style"] | paired})
        print(key, {k: round(v, 3) for k, v in paired.items() if k.endswith("@0")}, flush=True)


def references_for(styler: Styler, style: str) -> dict[str, StyleReference]:
    training = [Image.open(e.path).convert("RGB") for e in scan_folder(ROOT / "datasets" / style).examples]
    depths = len(styler.pipe.vae.encoder.down_blocks)
    return {f"{statistic}@{depth}": StyleReference(styler.pipe.vae, training, SIZE, statistic, depths=(depth,))
            for statistic in STATISTICS for depth in range(depths)}


def unjudged_checkpoints() -> list[tuple[str, Path, str]]:
    """(key, adapter file, style) of the knob curves' checkpoints on disk that the knob bench did not judge (it
    judges steps 100, 200, 400 and 800; its runs keep one every 100 steps)."""
    import json

    judged = {k.split("/", 1)[1]: v for k, v in json.loads(SOURCES["knobs"][0].read_text()).items()
              if k.startswith("curves/")}
    found = []
    for run, points in sorted(judged.items()):
        recipe, style = run.split("/")
        for path in sorted((SOURCES["knobs"][1] / recipe / style / "checkpoints").glob("step-*/adapter.safetensors")):
            step = int(path.parent.name.removeprefix("step-"))
            if str(step) not in points:
                found.append((f"knobs-more/{recipe}/{style}/{step}", path, style))
    return found


def judge_more() -> None:
    """Judge (96 pictures each) and score the checkpoints unjudged_checkpoints() finds: more points for the
    agreement, from runs whose adapters are still on disk."""
    from stylelora.mini.evaluate import measure as judge

    store, styler = Store(STORE), Styler("mini")
    prompt_judge = PromptJudge(styler.pipe, styler.family, [p for p, _, _ in prompts()])
    with tempfile.TemporaryDirectory() as work:
        for style in STYLES:
            todo = [c for c in unjudged_checkpoints() if c[2] == style and c[0] not in store.read()]
            if not todo:
                continue
            references, held = references_for(styler, style), held_out(style, Path(work))
            for key, path, _ in todo:
                name = styler.load(path, "judged")
                styler.set_weights({name: 1.0})
                rates = judge(styler, per_prompt=8)
                styler.unload(name)
                judged = {"style": rates.share(STYLES[style]), "colour": rates.share("colour"),
                          "broken": rates.broken / rates.images, "images": rates.images}
                store.put(key, score_checkpoint(styler, path, references, prompt_judge, held) | {"judge": judged})
                print(key, judged, flush=True)


def measure_paired() -> None:
    styler, done = Styler("mini"), Store(STORE).read()
    on_disk = [c[:3] for c in judged_checkpoints()] + unjudged_checkpoints()
    for style in STYLES:
        todo = [c for c in on_disk if c[2] == style and c[0] in done
                and not any(label.startswith(PAIRED) for label in done[c[0]]["style"])]
        if todo:
            paired_style(styler, style, todo)


def measure() -> None:
    store = Store(STORE)
    styler = Styler("mini")
    judge = PromptJudge(styler.pipe, styler.family, [p for p, _, _ in prompts()])
    done = store.read()
    with tempfile.TemporaryDirectory() as work:
        for style in STYLES:
            todo = [c for c in judged_checkpoints() if c[2] == style and c[0] not in done]
            if not todo:
                continue
            references, held = references_for(styler, style), held_out(style, Path(work))
            for key, path, _, rates in todo:
                scores = score_checkpoint(styler, path, references, judge, held)
                store.put(key, scores | {"judge": rates})
                print(key, {k: v for k, v in scores.items() if k != "style"}, flush=True)


def correlations(points: list[dict]) -> dict[str, float | None]:
    """Spearman of each score with the judge's rate it stands for (the loss negated: lower is better)."""
    style = [p["judge"]["style"] for p in points]
    colour = [p["judge"]["colour"] for p in points]
    labels = dict.fromkeys(label for p in points for label in p["style"])
    found = {f"style score ({label})": _spearman_where(points, label) for label in labels}
    found["held-out loss, negated (style)"] = spearman([-p["held_out_loss"] for p in points], style)
    found["prompt accuracy (colour)"] = spearman([p["prompt_accuracy"] for p in points], colour)
    found["prompt probability (colour)"] = spearman([p["prompt_probability"] for p in points], colour)
    found["held-out loss, negated (colour)"] = spearman([-p["held_out_loss"] for p in points], colour)
    return found


def _spearman_where(points: list[dict], label: str) -> float | None:
    """Spearman of one style score with the judge's style rate, over the checkpoints that have it (the paired scores
    need the adapter file, which the timestep bench's runs no longer have here)."""
    having = [p for p in points if label in p["style"]]
    return spearman([p["style"][label] for p in having], [p["judge"]["style"] for p in having]) if len(having) >= 3 else None


def report() -> str:
    """Two tables: every score over every judged checkpoint, the paired ones left out; then, over the checkpoints
    whose adapters are on disk (the only ones the paired scores could be read from), the paired scores beside the
    plain ones on those same checkpoints."""
    stored = {k: v for k, v in Store(STORE).read().items() if isinstance(v, dict)}
    plain = {k: v | {"style": {label: value for label, value in v["style"].items() if not label.startswith(PAIRED)}}
             for k, v in stored.items()}
    paired = {k: v for k, v in stored.items() if any(label.startswith(PAIRED) for label in v["style"])}
    return "\n".join(correlation_table(plain) + [""] + correlation_table(paired, paired_only=True))


def correlation_table(stored: dict[str, dict], paired_only: bool = False) -> list[str]:
    groups = {style: [v for k, v in stored.items() if k.split("/")[2] == style] for style in STYLES}
    groups["pooled"] = list(stored.values())
    table = {group: correlations(points) for group, points in groups.items() if len(points) >= 3}
    rows = [row for row in next(iter(table.values())) if not paired_only or row.startswith("style score")]
    header = "| Spearman with the judge | " + " | ".join(f"{g} ({len(groups[g])})" for g in table) + " |"
    lines = [header, "|" + " --- |" * (len(table) + 1)]
    for row in rows:
        cells = ["n/a" if table[g][row] is None else f"{table[g][row]:+.2f}" for g in table]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def measure_everything() -> None:
    measure()
    judge_more()
    measure_paired()


def main() -> None:
    run_bench(__doc__.splitlines()[0], measure_everything, report, "scores-agreement", RESULTS / "scores.md")


if __name__ == "__main__":
    main()
