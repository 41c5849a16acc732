"""Before a study names its winner, its best trials are scored again on more pictures at seeds no trial saw, so the
winner is not merely the trial that was luckiest on its own few pictures (the winner's curse: a study's best trial
judged 92% on its own 24 pictures and 84% on new ones, bench/tune.py). Each confirmation is stored in
`confirmed.json` beside the study, so a rerun does not paint them again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..files import write_atomically
from .results import TrialReport
from .space import TuneConfig

MORE_PICTURES = 4  # a confirmation paints this many times the pictures its trial was ranked on
CONFIRM_SEED = 777_777  # added to the study's seed: pictures no trial painted


def confirmable(report: TrialReport) -> bool:
    """A finished trial whose adapter is on disk, and which kept the judge's colour constraint."""
    return (report.state == "COMPLETE" and report.attrs.get("colour_shortfall", 0.0) <= 0
            and Path(report.attrs.get("adapter", "")).is_file())


def chosen(reports: list[TrialReport], count: int) -> list[TrialReport]:
    """The best `count` trials that can be scored again, and the defaults' trial (trial 0) with them: measured on
    a study of 18 trials, the top three by their own scores were weak adapters that had been lucky on their few
    previews, and on new pictures the defaults outscored all three (bench/tune.py). Scored again beside them,
    the defaults make a study end no worse than they are, on the pictures that name the winner."""
    best = [r for r in reports if confirmable(r)][:count]
    defaults = [r for r in reports if r.attrs.get("defaults") and confirmable(r) and r not in best]
    return best + defaults


def confirm_best(reports: list[TrialReport], config: TuneConfig, judge, log: Callable[[str], None]) -> None:
    """Score the best `config.confirm` trials (of `reports`, best first) and the defaults' trial again, and put
    the value in each one's attrs: "confirmed" (the score, or the judged style) and, for the judge,
    "confirmed_colour_shortfall" (the colour constraint read again). The loss objective has nothing to paint."""
    if config.confirm == 0 or config.objective == "loss":
        return
    path = config.out_dir / "confirmed.json"
    stored: dict[str, dict] = json.loads(path.read_text()) if path.is_file() else {}
    painters: dict[tuple, tuple] = {}  # one base and one scorer for every trial that shares them
    for report in chosen(reports, config.confirm):
        key = str(report.number)
        if key not in stored:
            stored[key] = (_judged_again(report, judge) if config.objective == "judge"
                           else {"confirmed": _scored_again(report, config.seed, painters)})
            write_atomically(path, json.dumps(stored, indent=1).encode())
            log(f"trial {report.number} scored again on {MORE_PICTURES}x the pictures at new seeds: "
                f"{stored[key]['confirmed']:.3f} (it was ranked on {report.value:.3f})")
        report.attrs |= stored[key]


def _judged_again(report: TrialReport, judge) -> dict:
    style, colour = judge.rate(Path(report.attrs["adapter"]), per_prompt=judge.per_prompt * MORE_PICTURES,
                               seed=CONFIRM_SEED)
    return {"confirmed": style, "confirmed_colour_shortfall": judge.colour_floor - colour}


def _scored_again(report: TrialReport, seed: int, painters: dict) -> float:
    """The trial's preview score, read from MORE_PICTURES times its previews at new seeds: the base paints the
    trial's held-out captions with its adapter on; the base alone reads the prompts."""
    from ..train.settings import from_dict

    trial = from_dict({k: v for k, v in report.attrs["train_config"].items() if v is not None})
    styler, scorer = _painter_and_scorer(trial, seed, painters)
    name = styler.load(Path(report.attrs["adapter"]))
    try:
        styler.set_weights({name: 1.0})
        images, asked = scorer.paint()
    finally:
        styler.unload(name)  # the base again, exactly: it reads the prompts
    return scorer.score(images, asked).quality


def _painter_and_scorer(trial, seed: int, painters: dict) -> tuple:
    """The base and the preview scorer for `trial`, made once for every trial that shares what they read (the
    base, the folder and its split, the preview prompts): the trials of one study do, so the training images are
    encoded and the prompts embedded once, not once per trial."""
    from ..data.folder import load_rgb
    from ..paint.styler import Styler
    from ..score.previews import MOST_REFERENCES, PREVIEWS_PER_PROMPT, PreviewScorer
    from ..train.loop import prepare_data

    key = (trial.base, str(trial.data), trial.caption, trial.trigger, trial.validation_split,
           str(trial.validation_data), trial.seed, trial.resolution, trial.scorer, tuple(trial.sample_prompts))
    if key not in painters:
        folder, held_out, _ = prepare_data(trial, say=lambda m: None)
        styler = next((made for made, _ in painters.values() if made.base == trial.base), None) or Styler(trial.base)
        painters[key] = styler, PreviewScorer(
            styler.pipe, styler.family, [load_rgb(e.path) for e in folder.examples[:MOST_REFERENCES]],
            [*(e.caption for e in held_out), *trial.sample_prompts], [e.caption for e in folder.examples], [],
            trial.resolution or styler.native_size, seed + CONFIRM_SEED, trial.scorer,
            per_prompt=PREVIEWS_PER_PROMPT * MORE_PICTURES)
    return painters[key]
