"""How many previews does the score need to rank tune trials as the judge does, and how well can any score do?

    python bench/agreement.py            # scores and judges every agreement trial not yet done, then reports
    python bench/agreement.py --report   # the report from what is stored

The agreement studies (`python bench/tune.py --part score-agreement`) left 30 trials a folder, each trial's kept
adapter judged on 96 pictures. A trial was ranked on 4 previews (its 2 held-out captions x 2 seeds). Here each
kept adapter is scored again at seeds no trial saw, on preview sets of four sizes:
- "2 x 2": the trial's own prompts, 2 pictures each (the size it was ranked on, painted anew);
- "2 x 6": the same prompts, 6 pictures each;
- "12 x 1" and "12 x 2": every colour x shape caption of the folder, 1 and 2 pictures each.
and judged a second time on 96 pictures at other seeds. Spearman of the first judging with the second is the
judge's own repeatability: no score can be expected to agree with one judging better than the judge agrees with
itself. These previews are painted with DPM++ at 20 steps, the sampler `stylelora generate` and the judge use. A
second pass reads the "12 x 2" previews with every texture statistic at every depth, painted with the base's own
sampler (DDPM for the mini), as a training run's previews are. Numbers are stored as they come
(docs/results/agreement.json), so an interrupted run continues.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stylelora.data.folder import load_rgb  # noqa: E402
from stylelora.files import write_atomically  # noqa: E402
from stylelora.mini.evaluate import measure  # noqa: E402
from stylelora.paint.pipeline import use_scheduler  # noqa: E402
from stylelora.paint.styler import Styler  # noqa: E402
from stylelora.score.previews import PreviewScorer  # noqa: E402
from stylelora.score.style import STATISTICS, StyleReference  # noqa: E402
from stylelora.train.loop import prepare_data  # noqa: E402
from stylelora.train.settings import from_dict  # noqa: E402
from stylelora.tune.results import spearman  # noqa: E402

from report_section import run_bench  # noqa: E402

RESULTS = ROOT / "docs" / "results"
WORK = RESULTS / "tune-work"
STORE = RESULTS / "agreement.json"
STYLES = {"stripes": "striped", "dots": "dotted"}  # the folders with agreement studies
PREVIEW_SEED = 4242  # previews at seeds no trial and no judging used
SECOND_JUDGING_SEED = 900  # the judge's second look: seeds apart from the first's (500)
SETS = ("2 x 2", "2 x 6", "12 x 1", "12 x 2")
# The preview sets are painted with DPM++ (stylelora generate's sampler), the statistics sweep with the base's own
# sampler (DDPM for the mini, as a training run's previews are): see the report.
PREVIEW_SAMPLER = "dpm++"


def trial_adapter(style: str, number: int) -> Path:
    return WORK / f"agreement-{style}" / "trials" / f"trial-{number:04d}" / f"trial-{number:04d}.safetensors"


def trial_config(style: str):
    """The training settings the study's trials shared (the same folder, split and seed in every trial)."""
    report = json.loads((WORK / f"agreement-{style}" / "results.json").read_text())[0]
    return from_dict({k: v for k, v in report["attrs"]["train_config"].items() if v is not None})


def scorer_for(styler: Styler, style: str, prompts: list[str], per_prompt: int) -> PreviewScorer:
    """A preview scorer as the study's trials had one (their training images, their folder's captions as
    contrasts), painting `prompts`, `per_prompt` pictures each: every caption is a candidate the base tells
    a picture's own prompt apart from."""
    folder, _, _ = prepare_data(trial_config(style), say=lambda m: None)
    scorer = PreviewScorer(styler.pipe, styler.family, [load_rgb(e.path) for e in folder.examples], prompts,
                           [*prompts, *(e.caption for e in folder.examples)], [], 64, PREVIEW_SEED,
                           per_prompt=per_prompt)
    scorer.prompts = prompts  # every one of them, past the 6 a training run previews
    return scorer


def preview_prompts(style: str) -> dict[str, list[str]]:
    """The trials' own preview prompts (their held-out captions), and every caption of the folder."""
    folder, held_out, _ = prepare_data(trial_config(style), say=lambda m: None)
    return {"held out": [e.caption for e in held_out],
            "every caption": sorted({e.caption for e in [*folder.examples, *held_out]})}


PAINTED = {"2 x 6": ("held out", 6), "12 x 2": ("every caption", 2)}  # what is painted: prompts, pictures each
SUBSETS = {"2 x 2": ("2 x 6", 2), "2 x 6": ("2 x 6", 6), "12 x 1": ("12 x 2", 1), "12 x 2": ("12 x 2", 2)}


def measure_trial(styler: Styler, scorers: dict[str, PreviewScorer], path: Path, judged_style: str) -> dict:
    """One kept adapter's scores on each preview set (each set the first pictures of each prompt of a painting),
    and its second judging."""
    name = styler.load(path)
    own = styler.pipe.scheduler
    try:
        styler.set_weights({name: 1.0})
        use_scheduler(styler.pipe, PREVIEW_SAMPLER)
        painted = {key: scorers[key].paint() for key in PAINTED}
        rates = measure(styler, per_prompt=8, steps=20, cfg=4.0, seed=SECOND_JUDGING_SEED)
    finally:
        styler.pipe.scheduler = own
        styler.unload(name)  # the base alone reads the prompts
    scores = {}
    for label, (source, wanted) in SUBSETS.items():
        images, asked = painted[source]
        chosen = [i for i in range(len(images)) if i % PAINTED[source][1] < wanted]  # painted prompt by prompt
        found = scorers[source].score([images[i] for i in chosen], [asked[i] for i in chosen])
        scores[label] = {"style": found.style, "prompt": found.prompt, "pictures": len(chosen)}
    return {"scores": scores, "judged_again": {judged_style: rates.share(judged_style),
                                               "colour": rates.share("colour"), "images": rates.images}}


def confirmed_winner(style: str) -> dict:
    """The study's winner once its best 3 trials and the defaults' were scored again (`--confirm 3`: 2 held-out
    captions x 8 pictures at new seeds), with the judge's rates of its adapter."""
    reports = json.loads((WORK / f"agreement-{style}" / "results.json").read_text())
    confirmed = [r for r in reports if "confirmed" in r["attrs"]]
    winner = max(confirmed, key=lambda r: r["attrs"]["confirmed"])
    study = json.loads((RESULTS / f"tune-agreement-{style}.json").read_text())
    judged = next(t["judged"] for t in study["trials"] if t["number"] == winner["number"])
    return {"trial": winner["number"], "judged": judged,
            "candidates": {r["number"]: r["attrs"]["confirmed"] for r in confirmed}}


def measure_all() -> None:
    stored = json.loads(STORE.read_text()) if STORE.exists() else {}
    styler = Styler("mini")
    for style, judged_style in STYLES.items():
        study = json.loads((RESULTS / f"tune-agreement-{style}.json").read_text())
        prompts = preview_prompts(style)
        scorers = {key: scorer_for(styler, style, prompts[which], count) for key, (which, count) in PAINTED.items()}
        stored[f"winner/{style}"] = confirmed_winner(style)
        write_atomically(STORE, json.dumps(stored, indent=1).encode())
        for trial in study["trials"]:
            key = f"{style}/{trial['number']}"
            path = trial_adapter(style, trial["number"])
            if key in stored or not path.is_file():
                continue
            stored[key] = {"judged": trial["judged"], "trial_score": {k: trial[k] for k in ("style_score",
                                                                                           "prompt_score")}} | \
                measure_trial(styler, scorers, path, judged_style)
            write_atomically(STORE, json.dumps(stored, indent=1).encode())
            print(key, json.dumps(stored[key]["scores"]), flush=True)


def statistics_sweep() -> None:
    """Each trial's "12 x 2" previews (painted again: the same seeds give the same pictures) read by every texture
    statistic at every depth of the VAE encoder, plainly and paired with the base's own previews (the shift toward
    the training images); stored beside the trial's other numbers as "statistics"."""
    stored = json.loads(STORE.read_text())
    styler = Styler("mini")
    for style in STYLES:
        scorer = scorer_for(styler, style, preview_prompts(style)["every caption"], 2)
        folder, _, _ = prepare_data(trial_config(style), say=lambda m: None)
        training = [load_rgb(e.path) for e in folder.examples]
        references = {f"{statistic}@{depth}": StyleReference(styler.pipe.vae, training, 64, statistic, (depth,))
                      for statistic in STATISTICS for depth in range(len(styler.pipe.vae.encoder.down_blocks))}
        base_images, _ = scorer.paint()  # no adapter loaded: the base's own previews
        base = {label: reference.statistics(base_images) for label, reference in references.items()}
        for key, entry in stored.items():
            if not key.startswith(style + "/") or "statistics" in entry:
                continue
            name = styler.load(trial_adapter(style, int(key.split("/")[1])))
            try:
                styler.set_weights({name: 1.0})
                images, _ = scorer.paint()
            finally:
                styler.unload(name)
            half = images[:12]  # the first 6 prompts, 2 pictures each: the preview set a training run paints
            entry["statistics"] = {label: reference.score(images) for label, reference in references.items()} | \
                {f"shift {label}": reference.shift(images, base[label]) for label, reference in references.items()} | \
                {f"6 x 2 {label}": reference.score(half) for label, reference in references.items()}
            write_atomically(STORE, json.dumps(stored, indent=1).encode())
            print(key, "statistics", flush=True)


def report() -> str:
    """Per folder, Spearman over its trials of each preview set's scores with the first judging, beside the
    trials' own ranking scores and the judge's second judging."""
    everything = json.loads(STORE.read_text())
    stored = {k: v for k, v in everything.items() if not k.startswith("winner/")}
    lines = ["| Spearman with the judged rate | " + " | ".join(
        f"{style} ({sum(k.startswith(style + '/') for k in stored)} trials)" for style in STYLES) + " |",
             "| --- |" + " --- |" * len(STYLES)]
    rows = {"style: the trial's own score (2 x 2, best of its checks)":
            lambda v, s: (v["trial_score"]["style_score"], v["judged"][s])}
    for label in SETS:
        pictures = SUBSETS[label][1] * (2 if PAINTED[SUBSETS[label][0]][0] == "held out" else 12)
        rows[f"style: previews {label} ({pictures} pictures), at new seeds"] = \
            lambda v, s, label=label: (v["scores"][label]["style"], v["judged"][s])
    rows["style: the judge again, 96 pictures at other seeds"] = lambda v, s: (v["judged_again"][s], v["judged"][s])
    rows["colour: the trial's own prompt score"] = \
        lambda v, s: (v["trial_score"]["prompt_score"], v["judged"]["colour"])
    for label in SETS:
        rows[f"colour: prompt score, previews {label}"] = \
            lambda v, s, label=label: (v["scores"][label]["prompt"], v["judged"]["colour"])
    rows["colour: the judge again"] = lambda v, s: (v["judged_again"]["colour"], v["judged"]["colour"])
    for label, pair in rows.items():
        cells = []
        for style, judged_style in STYLES.items():
            points = [pair(v, judged_style) for k, v in stored.items() if k.startswith(style + "/")]
            rho = spearman([x for x, _ in points], [y for _, y in points])
            cells.append("n/a" if rho is None else f"{rho:+.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + statistics_table(stored) + [""] + winners_lines(everything))


def winners_lines(stored: dict) -> list[str]:
    """Each study's winner after `--confirm 3`, with what the judge saw, beside its best trial by the judge."""
    lines = []
    for style, judged_style in STYLES.items():
        if f"winner/{style}" not in stored:
            continue
        winner = stored[f"winner/{style}"]
        trials = {int(k.split("/")[1]): v["judged"] for k, v in stored.items() if k.startswith(style + "/")}
        best = max(trials, key=lambda n: (trials[n][judged_style], trials[n]["colour"]))
        lines.append(f"- {style}: the winner after `--confirm 3` is trial {winner['trial']}, judged "
                     f"{winner['judged'][judged_style]:.0%} {judged_style} at {winner['judged']['colour']:.0%} colour "
                     f"right; the judge's best of the {len(trials)} trials is trial {best} "
                     f"({trials[best][judged_style]:.0%}, {trials[best]['colour']:.0%}). Confirmed scores: "
                     + ", ".join(f"trial {n} {v:.3f}" for n, v in winner["candidates"].items()) + ".")
    return lines


def statistics_table(stored: dict) -> list[str]:
    """Spearman with the judged style of each texture statistic's score on the "12 x 2" previews, plain and paired,
    and on their first 6 prompts ("6 x 2"), per folder: the best few by their mean over the folders."""
    having = {k: v for k, v in stored.items() if "statistics" in v}
    if not having:
        return []
    labels = next(iter(having.values()))["statistics"]
    table = {}
    for label in labels:
        table[label] = []
        for style, judged_style in STYLES.items():
            points = [(v["statistics"][label], v["judged"][judged_style]) for k, v in having.items()
                      if k.startswith(style + "/")]
            table[label].append(spearman([x for x, _ in points], [y for _, y in points]) if len(points) >= 3 else None)
    ranked = sorted(table, key=lambda label: -sum(r or 0 for r in table[label]))
    lines = ["| style statistic on the previews (12 x 2 unless named) | " + " | ".join(STYLES) + " |",
             "| --- |" + " --- |" * len(STYLES)]
    in_use = [label for label in ("gram@2", "6 x 2 gram@2") if label in table and label not in ranked[:8]]
    for label in ranked[:8] + in_use:
        lines.append(f"| {label} | " + " | ".join("n/a" if r is None else f"{r:+.2f}" for r in table[label]) + " |")
    return lines


def measure_everything() -> None:
    measure_all()
    statistics_sweep()


def main() -> None:
    run_bench(__doc__.splitlines()[0], measure_everything, report, "preview-agreement", RESULTS / "agreement.md")


if __name__ == "__main__":
    main()
