"""`stylelora tune` and `stylelora suggest`, measured on the miniature base.

    python bench/tune.py --part evidence   # tune each style folder at 6, 12, 36 images; fit suggest's rules
    python bench/tune.py --part search     # a 20-minute study on stripes (judge objective, default space)
    python bench/tune.py --part compare    # defaults vs the best trial vs suggest, judged on held-out seeds
    python bench/tune.py --part score --style stripes   # a 20-minute --objective score study on 12 images (also
                                                        # dots, pastel, and flat: the held-out style)
    python bench/tune.py --part score-compare           # each score study's winner vs the defaults, judged
    python bench/tune.py --part score-agreement --style stripes   # 30 score-objective trials, each judged
    python bench/tune.py --part suggest-compare   # suggest fitted on the score studies vs the judged fit vs defaults
    python bench/tune.py                   # all three, in that order
    python bench/tune.py --quick           # tiny budgets, to check the script runs

Each part runs with one CPU thread, so a budget of T minutes is T minutes of CPU; the evidence and search
parts can run side by side. Writes docs/results/rules-judged.json (`--part evidence`: the fit to the judged
studies), stylelora/train/rules.json (`--part suggest-compare`: the fit to the score studies, which `suggest`
applies), docs/results/tune-*.json, docs/results/tune.md and the same text into its docs page between its
tune-report markers (not with --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import os  # noqa: E402

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import torch  # noqa: E402

from stylelora.train.config import TrainConfig  # noqa: E402
from stylelora.train.settings import from_dict, load_toml  # noqa: E402
from stylelora.files import write_atomically  # noqa: E402
from stylelora.mini.evaluate import measure  # noqa: E402
from stylelora.paint.styler import Styler  # noqa: E402
from stylelora.train.loop import train  # noqa: E402
from stylelora.tune.results import describe_settings, spearman  # noqa: E402
from stylelora.tune.search import tune  # noqa: E402
from stylelora.tune.space import TuneConfig  # noqa: E402
from stylelora.train.recipe import MINI_RECIPE  # noqa: E402
from stylelora.train.suggest import RULES, suggest  # noqa: E402

from judged import sample_folder  # noqa: E402  (bench/ is on the path when run as a script)
from report_section import write_section  # noqa: E402

RESULTS = ROOT / "docs" / "results"
WORK = ROOT / "docs" / "results" / "tune-work"
STYLES = {"stripes": "striped", "dots": "dotted", "pastel": "pastel"}  # the sample folders: suggest's evidence
# and flat, the held-out style the base seldom draws (stylelora.mini.samples.HELD_OUT): never evidence, only measured
FOLDERS = STYLES | {"flat": "flat"}
EVIDENCE = ("stripes", "dots")  # suggest's score fit reads these folders' score studies; pastel's and flat's measure it
COUNTS = (6, 12, 36)
JUDGED_RULES = RESULTS / "rules-judged.json"  # suggest's fit to the judge-objective studies (--part evidence)
HELD_OUT_SEED = 500  # the comparison's images use seeds the studies never judged (they use 0 + 1000 x prompt)


def subset(style: str, count: int) -> Path:
    """The first `count` images of a style folder (its first 12 cover every colour x shape pair once)."""
    folder = WORK / "folders" / f"{style}-{count}"
    if not folder.exists():
        folder.mkdir(parents=True)
        for image in sorted(sample_folder(style, WORK).glob("*.png"))[:count]:
            shutil.copy(image, folder / image.name)
            shutil.copy(image.with_suffix(".txt"), folder / image.with_suffix(".txt").name)
    return folder


def evidence(trials: int, max_steps: int, styles: dict[str, str], counts: tuple[int, ...], rules_out: Path,
             reverse: bool = False) -> None:
    """A judge-objective study per style and image count over rank, learning rate and steps; the top trials'
    settings become suggest's rules. Alpha stays at the rank: under Adam it acts as a factor on the rate."""
    studies = []
    order = [(style, judged, count) for style, judged in styles.items() for count in counts]
    for style, judged, count in (reversed(order) if reverse else order):
        start = time.time()
        config = TuneConfig(data=subset(style, count), out=WORK / f"evidence-{style}-{count}", trials=trials,
                            objective="judge", judge_style=judged, alpha_ratios=(1.0,), max_steps=max_steps,
                            min_steps=min(100, max_steps),
                            target_presets=("attn",))
        result = tune(config, log=lambda m: print(f"  {m}", flush=True))
        top = [r for r in result.trials if r.state == "COMPLETE" and r.attrs.get("colour_shortfall", 0) <= 0][:3]
        studies.append({"style": style, "images": count, "minutes": round((time.time() - start) / 60, 1),
                        "top": [{"settings": r.settings, "style": r.attrs["style"], "colour": r.attrs["colour"]}
                                for r in top],
                        "all": [{"settings": r.settings, **{k: r.attrs.get(k) for k in ("style", "colour",
                                 "validation_loss")}} for r in result.trials if r.state == "COMPLETE"]})
        print(f"{style} at {count} images: best {describe_settings(top[0].settings) if top else 'none'}", flush=True)
    studies.sort(key=lambda s: (list(styles).index(s["style"]), s["images"]))
    write_atomically(RESULTS / "tune-evidence.json", json.dumps(studies, indent=1).encode())
    write_atomically(rules_out, json.dumps(fit_rules(studies), indent=1).encode())


def fit_rules(studies: list[dict]) -> dict:
    """steps = a * images^b by least squares on log(steps) of every study's top trials; the median learning
    rate and the most common rank of those trials."""
    points = [(s["images"], t["settings"]) for s in studies for t in s["top"]]
    xs, ys = [math.log(n) for n, _ in points], [math.log(p["max_steps"]) for _, p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / spread if spread else 0.0
    a = math.exp(my - b * mx)
    steps = [p["max_steps"] for _, p in points]
    return {"studies": len(studies), "steps": {"a": a, "b": b, "low": min(steps), "high": max(steps)},
            "learning_rate": float(statistics.median(p["learning_rate"] for _, p in points)),
            "rank": Counter(p["rank"] for _, p in points).most_common(1)[0][0], "alpha_ratio": 1.0,
            "evidence": [{"style": s["style"], "images": s["images"], "best": s["top"][0]["settings"] if s["top"] else None}
                         for s in studies]}


def score_evidence() -> list[dict]:
    """The `--objective score` studies on record for the EVIDENCE folders (the agreement studies and the 20-minute
    score studies, each on a folder's first 12 images), as its best 3 trials by their own score. A trial's steps
    are the step it kept (the step its score chose), not the steps it was allowed."""
    studies = []
    for style in EVIDENCE:
        for name in (f"tune-agreement-{style}.json", f"tune-score-{style}.json"):
            path = RESULTS / name
            if path.exists():
                trials = [t for t in json.loads(path.read_text())["trials"] if t.get("score") is not None]
                top = sorted(trials, key=lambda t: -t["score"])[:3]
                studies.append({"style": style, "images": SCORE_IMAGES, "study": name,
                                "top": [{"settings": t["settings"] | {"max_steps": t["kept_step"]}, "score": t["score"]}
                                        for t in top]})
    return studies


def fit_score_rules(studies: list[dict], judged: dict) -> dict:
    """fit_rules over score evidence. The score studies hold one image count, which fixes no exponent: steps keep
    the judged studies' exponent `b`, through the score evidence's own steps at its image count; alpha is the top
    trials' most common share of the rank (the score studies search it)."""
    rules = fit_rules(studies)
    points = [(s["images"], t["settings"]) for s in studies for t in s["top"]]
    if len({images for images, _ in points}) == 1:
        b = judged["steps"]["b"]
        mean_log_steps = statistics.fmean(math.log(p["max_steps"]) for _, p in points)
        rules["steps"] |= {"a": math.exp(mean_log_steps - b * math.log(points[0][0])), "b": b}
    ratios = Counter(round(p["alpha"] / p["rank"], 3) for _, p in points)
    return rules | {"alpha_ratio": ratios.most_common(1)[0][0], "objective": "score",
                    "evidence": [{"style": s["style"], "images": s["images"], "study": s["study"],
                                  "best": s["top"][0]["settings"]} for s in studies]}


SPACES = {  # the CLI's default space, and every searchable setting
    "default": {},
    "full": {"methods": ("lora", "dora", "loha", "lokr", "dylora", "adalora"),
             "target_presets": ("attn", "attn-mlp", "all-linear", "all"), "text_encoder": (False, True)},
}


def search(space: str, timeout: float, max_steps: int) -> None:
    out = WORK / f"search-{space}"
    config = TuneConfig(data=ROOT / "datasets" / "stripes", out=out, timeout=timeout, objective="judge",
                        max_steps=max_steps, min_steps=min(100, max_steps), judge_style="striped", **SPACES[space])
    start = time.time()
    result = tune(config, log=lambda m: print(f"  {m}", flush=True))
    summary = {"space": space, "minutes": round((time.time() - start) / 60, 1), "correlation": result.correlation,
               "trials": [{"number": r.number, "state": r.state, "settings": r.settings,
                           **{k: r.attrs.get(k) for k in ("style", "colour", "validation_loss", "kept_step", "seconds",
                                                          "adapter")}} for r in result.trials],
               "best": result.best.number if result.best else None}
    write_atomically(RESULTS / f"tune-search-{space}.json", json.dumps(summary, indent=1).encode())
    for plot in ("history", "importances"):
        if (out / f"{plot}.png").exists():
            shutil.copy(out / f"{plot}.png", RESULTS / f"tune-{space}-{plot}.png")


def judged(path: Path | None, per_prompt: int, style: str = "striped") -> dict:
    styler = Styler("mini")
    if path is not None:
        styler.set_weights({styler.load(path): 1.0})
    rates = measure(styler, per_prompt=per_prompt, steps=20, cfg=4.0, seed=HELD_OUT_SEED)
    return {style: rates.share(style), "colour": rates.share("colour"), "shape": rates.share("shape"),
            "images": rates.images}


SCORE_IMAGES = 12  # a small style set, as people bring: each colour x shape pair once


def score_search(style: str, timeout: float, max_steps: int) -> None:
    """`stylelora tune --objective score` on a style's first 12 images, default space, for `timeout` seconds:
    the judge is not the objective here, only the referee of score_compare."""
    out = WORK / f"score-{style}"
    config = TuneConfig(data=subset(style, SCORE_IMAGES), out=out, timeout=timeout, objective="score",
                        max_steps=max_steps, min_steps=min(100, max_steps))
    start = time.time()
    result = tune(config, log=lambda m: print(f"  {m}", flush=True))
    summary = {"style": style, "images": SCORE_IMAGES, "minutes": round((time.time() - start) / 60, 1),
               "max_steps": max_steps,
               "best": result.best.number if result.best else None,
               "trials": [{"number": r.number, "state": r.state, "settings": r.settings,
                           **{k: r.attrs.get(k) for k in ("score", "style_score", "prompt_score", "kept_step",
                                                          "seconds", "adapter")}} for r in result.trials]}
    write_atomically(RESULTS / f"tune-score-{style}.json", json.dumps(summary, indent=1).encode())


AGREEMENT_TRIALS = 30


def score_agreement(style: str, trials: int, max_steps: int, per_prompt: int) -> None:
    """Do the preview scores rank a study's trials as the judge does? A `--objective score` study of `trials`
    trials on the style's first 12 images (default space, no pruning: each trial runs to its end), each trial's kept adapter judged on
    12 x per_prompt pictures at seeds no trial saw; Spearman of its style score with the judged style rate, of its
    prompt score with colour right, and of its score (style x prompt) with judged style x colour."""
    out = WORK / f"agreement-{style}"
    config = TuneConfig(data=subset(style, SCORE_IMAGES), out=out, trials=trials, objective="score",
                        max_steps=max_steps, min_steps=min(100, max_steps), pruner="none")  # every trial judged
    result = tune(config, log=lambda m: print(f"  {m}", flush=True))
    rows = []
    for report in result.trials:
        adapter = Path(report.attrs.get("adapter", ""))
        if report.state == "COMPLETE" and adapter.is_file():
            rows.append({"number": report.number, "settings": report.settings,
                         **{k: report.attrs.get(k) for k in ("score", "style_score", "prompt_score", "kept_step")},
                         "judged": cached_judgement(adapter, per_prompt, FOLDERS[style])})
            print(f"  trial {report.number}: {rows[-1]}", flush=True)
    name = FOLDERS[style]
    agreement = {
        "style": spearman([r["style_score"] for r in rows], [r["judged"][name] for r in rows]),
        "prompt": spearman([r["prompt_score"] for r in rows], [r["judged"]["colour"] for r in rows]),
        "quality": spearman([r["score"] for r in rows], [r["judged"][name] * r["judged"]["colour"] for r in rows])}
    write_atomically(RESULTS / f"tune-agreement-{style}.json",
                     json.dumps({"style": style, "trials": rows, "agreement": agreement}, indent=1).encode())
    print(style, agreement, flush=True)


def agreement_markdown() -> str:
    """Each agreement study's table: its trials by their own score, best first, each with what the judge saw."""
    parts = []
    for style, name in FOLDERS.items():
        path = RESULTS / f"tune-agreement-{style}.json"
        if not path.is_file():
            continue
        found = json.loads(path.read_text())
        rows = sorted(found["trials"], key=lambda r: -r["score"])
        lines = [f"| {style}: trial, by its own score | settings | kept step | score (style x prompt) | judged {name} | "
                 "judged colour right |", "| --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            lines.append(f"| {r['number']} | {describe_settings(r['settings'])} | {r['kept_step']} | {r['score']:.3f} "
                         f"({r['style_score']:.3f} x {r['prompt_score']:.3f}) | {r['judged'][name]:.0%} | "
                         f"{r['judged']['colour']:.0%} |")
        a = found["agreement"]
        lines += ["", f"Spearman over the {style} study's {len(rows)} trials: style score with the judged {name} rate "
                  f"{_rho(a['style'])}, prompt score with colour right {_rho(a['prompt'])}, score with {name} x "
                  f"colour right {_rho(a['quality'])}."]
        parts.append("\n".join(lines))
    parts.append("Each study: `--objective score`, default space, no pruning, on the folder's first 12 images; each "
                 "trial's kept adapter judged on 96 pictures (12 prompts x 8 seeds no trial saw): about ±4 points of "
                 "noise on each rate.")
    return "\n\n".join(parts)


def _rho(value: float | None) -> str:
    return "none (one side has no spread)" if value is None else f"{value:+.2f}"


def cached_judgement(path: Path, per_prompt: int, style: str) -> dict:
    """judged(), kept by the file's path and modification time: a rerun judges only adapters that changed."""
    store = WORK / "score-judged.json"
    known = json.loads(store.read_text()) if store.exists() else {}
    key = f"{path.resolve()}@{path.stat().st_mtime_ns}/{per_prompt}"
    if key not in known:
        known[key] = judged(path, per_prompt, style)
        write_atomically(store, json.dumps(known, indent=1).encode())
    return known[key]


def compare(per_prompt: int, rules: Path) -> None:
    """The defaults, suggest's settings and each search's best trial, judged on 96 images with seeds no trial
    saw. The defaults and suggest train on all 36 images; a trial trained on the 29 it did not hold out."""
    stripes = ROOT / "datasets" / "stripes"
    suggested = suggest(stripes, rules=json.loads(rules.read_text()))
    rows = {}
    for label, settings in (("defaults", {}), ("suggest", suggested.values())):
        start = time.time()
        result = train(TrainConfig(data=stripes, out=WORK / f"compare-{label}", **settings), progress_bar=False,
                       log=lambda m: None)
        rows[label] = {"adapter": str(result.adapter_path), "seconds": round(time.time() - start), "settings": settings}
    for space in SPACES:
        found = json.loads((RESULTS / f"tune-search-{space}.json").read_text())
        best = next(t for t in found["trials"] if t["number"] == found["best"])
        rows[f"best trial, {space} space"] = {"adapter": best["adapter"], "seconds": best["seconds"],
                                              "settings": best["settings"], "trial": best["number"]}
    report = {"base": judged(None, per_prompt)}
    for label, row in rows.items():
        report[label] = row | judged(Path(row["adapter"]), per_prompt)
        print(f"{label}: {report[label]}", flush=True)
    write_atomically(RESULTS / "tune-compare.json", json.dumps(report, indent=1).encode())


def score_compare(per_prompt: int, styles: tuple[str, ...]) -> None:
    """Per score study: the defaults trained on the same 12 images; the study's best trial by its own score (trained
    on the images it did not hold out); the winner once the best 3 are scored again on 4x the previews
    (`--confirm 3`, run here on the finished study: no new trial); and that winner trained again on every image
    (its best.toml). The defaults and best.toml train at each of SUGGEST_SEEDS, one row a seed. Each is judged on
    12 x per_prompt pictures at seeds no trial saw. The other folders' rows stay as measured."""
    path = RESULTS / "tune-score-compare.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    for style in styles:
        name = FOLDERS[style]
        found_path = RESULTS / f"tune-score-{style}.json"
        if not found_path.exists():
            continue
        found = json.loads(found_path.read_text())
        # the study's best is the confirmed winner when it ran with --confirm; this row is the best before that
        best = max((t for t in found["trials"] if t.get("score") is not None), key=lambda t: t["score"])
        if not Path(best["adapter"]).is_file():
            print(f"{style}: the study's adapters are gone (its work folder); its measured rows stay", flush=True)
            continue
        judge = lambda path: cached_judgement(path, per_prompt, name)  # noqa: E731
        rows = {"base": judged(None, per_prompt, name)}
        for seed in SUGGEST_SEEDS:
            defaults = TrainConfig(data=subset(style, SCORE_IMAGES), out=WORK / f"score-defaults-{style}", seed=seed)
            rows[_seeded("defaults", seed)] = judge(_trained(defaults))
        rows["best trial by its own score"] = {"trial": best["number"], "settings": best["settings"],
                                               "score": best["score"], "kept_step": best["kept_step"]} | \
            judge(Path(best["adapter"]))
        confirmed = tune(TuneConfig(data=subset(style, SCORE_IMAGES), out=WORK / f"score-{style}", objective="score",
                                    trials=len(found["trials"]), max_steps=found.get("max_steps", 1600),
                                    min_steps=min(100, found.get("max_steps", 1600)), confirm=3),
                         log=lambda m: print(f"  {m}", flush=True)).best
        rows["winner scored again (--confirm 3)"] = {"trial": confirmed.number,
                                                     "confirmed": confirmed.attrs["confirmed"]} | \
            judge(Path(confirmed.attrs["adapter"]))
        settings = load_toml(WORK / f"score-{style}" / "best.toml")  # that winner again, on every image
        for seed in SUGGEST_SEEDS:
            final = replace(from_dict(settings), out=WORK / f"score-final-{style}", seed=seed)
            rows[_seeded("winner on every image (best.toml)", seed)] = {"steps": settings["max-steps"]} | \
                judge(_trained(final))
        report[style] = {"minutes": found["minutes"], "trials": len(found["trials"]), "rows": rows}
        print(style, json.dumps(rows), flush=True)
        write_atomically(path, json.dumps(report, indent=1).encode())


def _seeded(label: str, seed: int) -> str:
    return label if seed == 0 else f"{label}, seed {seed}"


def _trained(config: TrainConfig) -> Path:
    """The adapter `config` trains, trained unless it is there: seed 0 in `config.out`, another seed beside it."""
    if config.seed != 0:
        config = replace(config, out=config.out.with_name(f"{config.out.name}-seed{config.seed}"))
    config = replace(config, name=config.out.name)
    adapter = config.out / f"{config.name}.safetensors"
    if not adapter.exists():
        train(config, progress_bar=False, log=lambda m: None)
    return adapter


SUGGEST_COUNTS = (SCORE_IMAGES, 36)  # the score studies' image count, and whole folders: one they never saw
SUGGEST_SEEDS = (0, 1, 2)  # training seeds of the defaults and the score fit: one run a row is one draw of its noise


def suggest_compare(per_prompt: int, rules_out: Path) -> None:
    """suggest's rules fitted on score evidence (score_evidence; written to `rules_out`, which suggest applies) and
    on the judge-objective studies (`--part evidence`), each against the defaults, on every style folder's first 12
    images and on the whole 36: the fit reads no pastel or flat study (EVIDENCE), and no score study held 36
    images, so the score fit was fitted on neither. The defaults and the score fit train at each of SUGGEST_SEEDS,
    the retired judged fit at the first; on the fitted folders at 36 images, the score fit at the defaults' steps
    too (_at_default_steps). Each adapter judged on 12 x per_prompt pictures at seeds no trial saw."""
    judged_rules = json.loads(JUDGED_RULES.read_text())
    score_rules = fit_score_rules(score_evidence(), judged_rules)
    write_atomically(rules_out, json.dumps(score_rules, indent=1).encode())
    report = {}
    for count in SUGGEST_COUNTS:
        for style, name in FOLDERS.items():
            folder = subset(style, count)
            rows = {}
            fitted = suggest(folder, rules=score_rules).values()
            for label, kind, settings, seeds in (
                    ("defaults", "defaults", {}, SUGGEST_SEEDS),
                    ("suggest, fitted on score studies", "score", fitted, SUGGEST_SEEDS),
                    ("suggest, fitted on judge studies", "judge", suggest(folder, rules=judged_rules).values(), (0,)),
                    *_at_default_steps(style, count, fitted)):
                stem = f"suggest-{style}-{kind}" if count == SCORE_IMAGES else f"suggest-{style}-{count}-{kind}"
                rows[label] = {"settings": settings, "seeds": {}}
                for seed in seeds:
                    adapter = _trained(TrainConfig(data=folder, out=WORK / stem, seed=seed, **settings))
                    rows[label]["seeds"][str(seed)] = cached_judgement(adapter, per_prompt, name)
                    print(style, count, label, seed, json.dumps(rows[label]["seeds"][str(seed)]), flush=True)
            report[style if count == SCORE_IMAGES else f"{style}-{count}"] = rows
    write_atomically(RESULTS / "suggest-compare.json", json.dumps(report, indent=1).encode())


def _at_default_steps(style: str, count: int, fitted: dict) -> tuple:
    """Where the score fit fell short (the fitted folders at 36 images), the same settings at the defaults' steps:
    whether the shortfall is its fewer passes over the images."""
    if count == SCORE_IMAGES or style not in EVIDENCE:
        return ()
    return (("suggest, fitted on score studies, at the defaults' steps", f"score-{MINI_RECIPE.steps}",
             fitted | {"max_steps": MINI_RECIPE.steps}, SUGGEST_SEEDS),)


def _over_seeds(row: dict, rate: str) -> str:
    """A rate's mean over the row's training seeds, and each seed's when there are several: "91% (93, 89)"."""
    rates = [judged[rate] for judged in row["seeds"].values()]
    each = f" ({', '.join(f'{100 * r:.0f}' for r in rates)})" if len(rates) > 1 else ""
    return f"{statistics.mean(rates):.0%}{each}"


def suggest_markdown() -> str:
    report = json.loads((RESULTS / "suggest-compare.json").read_text())
    rules = json.loads(RULES.read_text())
    lines = ["| folder | adapter | settings | style | colour right | shape right |",
             "| --- | --- | --- | --- | --- | --- |"]
    for key, rows in report.items():
        style, _, count = key.partition("-")
        unfitted = [why for why, applies in (("not in the fit", style in STYLES and style not in EVIDENCE),
                                             ("held-out style", style not in STYLES), ("size unseen", bool(count)))
                    if applies]
        folder = f"{style}, {count or SCORE_IMAGES} images" + (f" ({', '.join(unfitted)})" if unfitted else "")
        for label, row in rows.items():
            settings = ", ".join(f"{k.replace('learning_rate', 'lr').replace('max_steps', 'steps')} {v:.3g}"
                                 for k, v in row["settings"].items()) or \
                f"the mini's recipe: rank 4, alpha 4, lr {MINI_RECIPE.learning_rate:g}, steps {MINI_RECIPE.steps}"
            lines.append(f"| {folder} | {label} | {settings} | {_over_seeds(row, FOLDERS[style])} | "
                         f"{_over_seeds(row, 'colour')} | {_over_seeds(row, 'shape')} |")
    studies = ", ".join(s["study"] for s in rules["evidence"])
    seeds = ", ".join(map(str, SUGGEST_SEEDS[:-1])) + f" and {SUGGEST_SEEDS[-1]}"
    runs = len(SUGGEST_SEEDS)
    lines += ["", f"The score fit: the best 3 trials by their own score of {rules['studies']} `--objective score` "
              f"studies ({studies}), each trial's steps the step it kept. The defaults and the score fit are trained "
              f"at seeds {seeds}: each rate is their mean, with each seed's in brackets; the judged fit (retired) at "
              "seed 0. Each adapter is judged on 96 pictures (12 prompts x 8 seeds no trial saw): about ±4 points of "
              f"noise on each rate, about ±{4 / math.sqrt(runs):.1f} on a mean of {runs}."]
    return "\n".join(lines)


def score_markdown() -> str:
    report = json.loads((RESULTS / "tune-score-compare.json").read_text())
    lines = ["| folder (12 images) | adapter | style | colour right | shape right |", "| --- | --- | --- | --- | --- |"]
    for style, found in report.items():
        name = FOLDERS[style]
        for label, row in found["rows"].items():
            what = label + (f" (trial {row['trial']})" if "trial" in row else "")
            lines.append(f"| {style} | {what} | {row[name]:.0%} | {row['colour']:.0%} | {row['shape']:.0%} |")
    studies = ", ".join(f"{style} {found['trials']} trials in {found['minutes']} min"
                        for style, found in report.items())
    lines += ["", "Studies: `--objective score --timeout 20m` on each folder's first 12 images, default space "
              f"({studies}; one thread each, stripes and dots two at a time, flat and pastel alone). flat is the "
              "held-out style (datasets/README.md). Judged on 96 pictures per row (12 prompts x 8 seeds no trial "
              "saw): about ±4 points of noise on each rate."]
    return "\n".join(lines)


def _settings_text(label: str, row: dict) -> str:
    if label == "base":
        return ""
    if label == "defaults":
        return "rank 4, alpha 4, lr 0.002, steps 800, method lora, targets attn, text encoder off"
    if label == "suggest":
        return ", ".join(f"{k.replace('learning_rate', 'lr').replace('max_steps', 'steps')} {v:.3g}"
                         for k, v in row["settings"].items())
    return f"trial {row['trial']}: {describe_settings(row['settings'])}"


def markdown() -> str:
    compared = json.loads((RESULTS / "tune-compare.json").read_text())
    rules = json.loads(JUDGED_RULES.read_text())
    studies = json.loads((RESULTS / "tune-evidence.json").read_text())
    searches = {space: json.loads((RESULTS / f"tune-search-{space}.json").read_text()) for space in SPACES}
    lines = ["Measured by `python bench/tune.py` on the miniature base, one CPU thread per part, the parts two at a "
             "time on this 2-core machine.", ""]
    for space, found in searches.items():
        done = [t for t in found["trials"] if t["state"] == "COMPLETE"]
        what = ("the default space (rank, alpha, learning rate, steps, attn or attn-mlp; LoRA, text encoder off)"
                if space == "default" else "every searchable setting (also the six methods, four module presets "
                "and the text encoder)")
        corr = found["correlation"]
        lines.append(f"- **{space} space**: `stylelora tune datasets/stripes --objective judge --timeout 20m` over "
                     f"{what}: {len(done)} trials in {found['minutes']} min; rank correlation (Spearman) of the "
                     f"held-out validation loss and the judged style rate over its trials: "
                     + (f"{corr:+.2f}." if corr is not None else "too few trials."))
    lines += ["", "Each trial is judged on 24 images (fixed seeds); below, every adapter is judged again on 96 images "
              "whose seeds no trial saw.", "",
              "| adapter | settings | striped | colour right | shape right | train time |",
              "| --- | --- | --- | --- | --- | --- |"]
    for label, row in compared.items():
        seconds = f"{row['seconds']:.0f} s" if row.get("seconds") else ""
        lines.append(f"| {label} | {_settings_text(label, row)} | {row['striped']:.0%} | {row['colour']:.0%} | "
                     f"{row['shape']:.0%} | {seconds} |")
    scored = []
    for space, found in searches.items():
        best = next(t for t in found["trials"] if t["number"] == found["best"])
        scored.append(f"{best['style']:.0%} striped and colour {best['colour']:.0%} ({space} space)")
    lines += ["", f"In their studies the best trials had scored {' and '.join(scored)} on the 24 images each trial is "
              "judged on."]
    lines += ["", f"**Suggest's rules** come from {rules['studies']} judge-objective studies (`--part evidence`: each "
              f"style folder at {', '.join(map(str, COUNTS))} images, searching rank, learning rate and steps, "
              f"{len(studies[0]['all'])} trials each). Fitted over the top three trials of every study: steps = "
              f"{rules['steps']['a']:.0f} x images^{rules['steps']['b']:.2f} (kept within {rules['steps']['low']}-"
              f"{rules['steps']['high']}), learning rate {rules['learning_rate']:.2g} (their median), rank "
              f"{rules['rank']} (their most common).", "",
              "| folder | images | best trial | its style rate | colour right |", "| --- | --- | --- | --- | --- |"]
    for s in studies:
        top = s["top"][0] if s["top"] else None
        lines.append(f"| {s['style']} | {s['images']} | {describe_settings(top['settings'])} | {top['style']:.0%} | "
                     f"{top['colour']:.0%} |" if top else f"| {s['style']} | {s['images']} | none feasible | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("evidence", "search", "compare", "score", "score-compare",
                                           "score-agreement", "suggest-compare", "report", "all"),
                        default="all")
    parser.add_argument("--style", choices=tuple(FOLDERS), default=None,
                        help="the score parts' folder (score-compare: every folder with a score study if not given)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reverse", action="store_true",
                        help="evidence: take the studies in reverse order; a second process so started shares the "
                             "work with the first (they meet in a study and share its trials, optuna's distributed mode)")
    parser.add_argument("--space", choices=("default", "full", "both"), default="both",
                        help="the search part's space: the CLI's default one, every setting, or both")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quick = args.quick
    if quick:  # everything into a scratch folder: the committed results and rules stay as measured
        global RESULTS, WORK
        WORK = WORK / "quick"
        RESULTS = WORK / "results"
        RESULTS.mkdir(parents=True, exist_ok=True)
    if args.part in ("evidence", "all"):
        evidence(trials=2 if quick else 6, max_steps=60 if quick else 1600,
                 styles={"stripes": "striped"} if quick else STYLES, counts=(6,) if quick else COUNTS, reverse=args.reverse,
                 rules_out=RESULTS / "rules-judged.json" if quick else JUDGED_RULES)
    if args.part in ("search", "all"):
        for space in (("default", "full") if args.space == "both" else (args.space,)):
            search(space, timeout=60 if quick else 20 * 60, max_steps=60 if quick else 1600)
    if args.part == "score":
        score_search(args.style or "stripes", timeout=60 if quick else 20 * 60,
                     max_steps=60 if quick else 1600)
    if args.part == "score-agreement":
        score_agreement(args.style or "stripes", trials=2 if quick else AGREEMENT_TRIALS,
                        max_steps=60 if quick else 1600, per_prompt=1 if quick else 8)
        if not quick:  # a rerun reads the finished study and its judged trials back: nothing is trained again
            text = agreement_markdown()
            write_atomically(RESULTS / "tune-agreement.md", (text + "\n").encode())
            write_section("tune-agreement", text + "\n")
    if args.part == "score-compare":
        studied = tuple(style for style in FOLDERS if (RESULTS / f"tune-score-{style}.json").exists())
        score_compare(per_prompt=1 if quick else 8, styles=(args.style,) if args.style else studied)
        if not quick:
            text = score_markdown()
            write_atomically(RESULTS / "tune-score.md", (text + "\n").encode())
            write_section("tune-score-report", text + "\n")
    if args.part == "suggest-compare":
        suggest_compare(per_prompt=1 if quick else 8, rules_out=RESULTS / "rules.json" if quick else RULES)
        if not quick:
            text = suggest_markdown()
            write_atomically(RESULTS / "suggest-compare.md", (text + "\n").encode())
            write_section("suggest-score", text + "\n")
    if args.part in ("compare", "all"):
        compare(per_prompt=1 if quick else 8, rules=RESULTS / "rules-judged.json" if quick else JUDGED_RULES)
    if args.part in ("report", "all") and not quick:
        text = markdown()
        write_atomically(RESULTS / "tune.md", text.encode())
        write_section("tune-report", text)
    print(f"done: {RESULTS}")


if __name__ == "__main__":
    main()
