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
Each checkpoint's numbers are stored as they come (docs/results/scores.json), so an interrupted run continues.
Spearman is given per style (across recipes and steps: 28 checkpoints) and pooled (84).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from stylelora.data.folder import scan_folder  # noqa: E402
from stylelora.files import write_atomically  # noqa: E402
from stylelora.mini.evaluate import prompts  # noqa: E402
from stylelora.mini.samples import STYLES as SAMPLE_STYLES, make  # noqa: E402
from stylelora.paint.styler import Styler  # noqa: E402
from stylelora.score.prompt import PromptJudge  # noqa: E402
from stylelora.score.style import STATISTICS, StyleReference  # noqa: E402
from stylelora.tune.results import spearman  # noqa: E402

from judged import Store  # noqa: E402
from report_section import write_section  # noqa: E402
from timesteps import RESULTS, STYLES  # noqa: E402

STORE = RESULTS / "scores.json"
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


def references_for(styler: Styler, style: str) -> dict[str, StyleReference]:
    training = [Image.open(e.path).convert("RGB") for e in scan_folder(ROOT / "datasets" / style).examples]
    depths = len(styler.pipe.vae.encoder.down_blocks)
    return {f"{statistic}@{depth}": StyleReference(styler.pipe.vae, training, SIZE, statistic, depths=(depth,))
            for statistic in STATISTICS for depth in range(depths)}


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
    found = {f"style score ({label})": spearman([p["style"][label] for p in points], style)
             for label in points[0]["style"]}
    found["held-out loss, negated (style)"] = spearman([-p["held_out_loss"] for p in points], style)
    found["prompt accuracy (colour)"] = spearman([p["prompt_accuracy"] for p in points], colour)
    found["prompt probability (colour)"] = spearman([p["prompt_probability"] for p in points], colour)
    found["held-out loss, negated (colour)"] = spearman([-p["held_out_loss"] for p in points], colour)
    return found


def report() -> str:
    stored = {k: v for k, v in Store(STORE).read().items() if isinstance(v, dict)}
    groups = {style: [v for k, v in stored.items() if k.split("/")[2] == style] for style in STYLES}
    groups["pooled"] = list(stored.values())
    table = {group: correlations(points) for group, points in groups.items() if len(points) >= 3}
    rows = list(next(iter(table.values())))
    header = "| Spearman with the judge | " + " | ".join(f"{g} ({len(groups[g])})" for g in table) + " |"
    lines = [header, "|" + " --- |" * (len(table) + 1)]
    for row in rows:
        cells = ["n/a" if table[g][row] is None else f"{table[g][row]:+.2f}" for g in table]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="only write the report from the stored numbers")
    if not parser.parse_args().report:
        measure()
    text = report()
    write_atomically(RESULTS / "scores.md", (text + "\n").encode())
    write_section("scores-agreement", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
