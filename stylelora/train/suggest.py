"""`stylelora suggest`: training settings for a folder in a second, with the reason for each, no training.

The rules are not folklore: `bench/tune.py` ran `stylelora tune --objective score` on the style folders'
first 12 images on the miniature base and fitted them to each study's best trials by their own score, their
steps the step each kept (`--part suggest-compare`); the image-count exponent comes from earlier judge-objective
studies at 6, 12 and 36 images, as one image count cannot fix it. The fit is `rules.json` beside this file; the
evidence and its measurement against the defaults are in docs/guides/tuning.md. What the mini cannot vary
(resolution, aspect, caption vocabulary) is reported as advice and said to be unmeasured.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..data.folder import scan_folder
from .config import TrainConfig
from .optimizers import OPTIMIZERS

RULES = Path(__file__).with_name("rules.json")
SD_LEARNING_RATE = 1e-4  # the trainer's default for real Stable Diffusion (not measured here: no GPU)


@dataclass(frozen=True)
class Setting:
    flag: str  # the `stylelora train` flag
    field: str  # the TrainConfig field
    value: int | float
    reason: str


@dataclass(frozen=True)
class Suggestion:
    images: int
    summary: str  # what was read off the folder
    settings: tuple[Setting, ...]
    advice: tuple[str, ...] = ()  # what could not be measured on the mini, said as such

    def values(self) -> dict[str, int | float]:
        return {s.field: s.value for s in self.settings}


def load_rules(path: Path = RULES) -> dict:
    return json.loads(path.read_text())


def steps_for(images: int, rules: dict) -> int:
    """steps = a * images^b, the fit to the best trials' steps, rounded to 10 and kept in the measured range."""
    fit = rules["steps"]
    steps = fit["a"] * images ** fit["b"]
    return int(min(max(round(steps / 10) * 10, fit["low"]), fit["high"]))


def _folder_facts(data: Path, caption: str, trigger: str) -> tuple[int, list[tuple[int, int]], list[str]]:
    folder = scan_folder(data, caption, trigger)
    sizes = []
    for example in folder.examples:
        with Image.open(example.path) as image:  # the header only: no decoding
            sizes.append(image.size)
    return len(folder.examples), sizes, [e.caption for e in folder.examples]


def suggest(data: Path, base: str = "mini", caption: str = "", trigger: str = "", rules: dict | None = None) -> Suggestion:
    """Suggested rank, alpha, learning rate and steps for the folder, each with its reason. Deterministic: a
    function of the folder's image count, sizes and captions, the base, and the measured rules."""
    rules = rules or load_rules()
    images, sizes, captions = _folder_facts(Path(data), caption, trigger)
    scored = rules.get("objective") == "score"
    evidence = f"(from {rules['studies']} {'score-objective ' if scored else ''}tuning studies on the mini)"
    steps_fitted = "steps the best trials kept" if scored else "best trials' steps"
    steps = steps_for(images, rules)
    lr = rules["learning_rate"] if base == "mini" else SD_LEARNING_RATE
    lr_reason = (f"the median learning rate of the best trials {evidence}" if base == "mini" else
                 "the usual LoRA rate for Stable Diffusion; the mini's measured rate does not carry over to a base "
                 "of another size (not measured here)")
    settings = (
        Setting("rank", "rank", rules["rank"], f"the rank the best trials chose most {evidence}; "
                f"`stylelora inspect FILE --ranks` tells afterwards whether less would have done"),
        Setting("alpha", "alpha", float(rules["rank"] * rules["alpha_ratio"]),
                f"alpha = {rules['alpha_ratio']:g} x rank, the best trials' most common ratio {evidence}"),
        Setting("learning-rate", "learning_rate", lr, lr_reason),
        Setting("max-steps", "max_steps", steps, f"{images} images: steps = {rules['steps']['a']:.0f} x images^"
                f"{rules['steps']['b']:.2f}, fitted to the {steps_fitted} {evidence}"),
    )
    return Suggestion(images, _summary(images, sizes, captions, base), settings, _advice(sizes, captions))


def _summary(images: int, sizes: list[tuple[int, int]], captions: list[str], base: str) -> str:
    aspects = [w / h for w, h in sizes]
    words = [w for c in captions for w in c.lower().replace(",", " ").split()]
    return (f"{images} images, {min(min(s) for s in sizes)}-{max(max(s) for s in sizes)} px, aspect "
            f"{min(aspects):.2f}-{max(aspects):.2f}, captions of {len(words) / max(len(captions), 1):.1f} words "
            f"on average with {len(set(words))} distinct words, base {base}")


def _advice(sizes: list[tuple[int, int]], captions: list[str]) -> tuple[str, ...]:
    notes = []
    aspects = [w / h for w, h in sizes]
    if max(aspects) / min(aspects) > 1.5:
        notes.append("the images' aspect ratios differ widely: a square crop cuts part of some away (advice, "
                     "not measured on the mini, whose images are all square)")
    empty = sum(not c.strip() for c in captions)
    if empty:
        notes.append(f"{empty} images have no caption: give --caption or sidecar .txt files")
    counts = Counter(captions)
    if captions and counts.most_common(1)[0][1] == len(captions) and len(captions) > 1:
        notes.append("every caption is the same: the adapter then learns the style for that prompt only; a "
                     "trigger word with varied captions blends better (advice, not measured)")
    return tuple(notes)


def as_toml(suggestion: Suggestion) -> str:
    lines = [f"# stylelora suggest: {suggestion.summary}"]
    for s in suggestion.settings:
        lines += [f"# {s.reason}", f"{s.flag} = {s.value!r}"]
    return "\n".join(lines) + "\n"


def fill_unset(config: TrainConfig, say=print) -> TrainConfig:
    """`--auto`: every suggested setting the config leaves at its default takes the suggestion."""
    suggestion = suggest(config.data, config.base, config.caption, config.trigger)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    chosen = {s.field: s.value for s in suggestion.settings if getattr(config, s.field) == defaults[s.field]
              and not (s.field == "max_steps" and config.epochs is not None)}
    if "learning_rate" in chosen:  # measured with AdamW: another optimizer runs at its own multiple of it
        chosen["learning_rate"] = OPTIMIZERS[config.optimizer].learning_rate(chosen["learning_rate"])
    if chosen:
        say("Auto: " + ", ".join(f"--{s.flag} {s.value:g}" for s in suggestion.settings if s.field in chosen)
            + " (stylelora suggest; settings you gave are kept)"
            + (f"; the rate as --optimizer {config.optimizer} runs it: {chosen['learning_rate']:g}"
               if "learning_rate" in chosen and config.optimizer != "adamw" else ""))
    return dataclasses.replace(config, **chosen, auto=False)
