"""What a study leaves: the results table (best first), `best.toml` for `stylelora train --config`, plots."""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.folder import scan_folder
from ..data.split import held_out_count
from ..files import write_atomically
from ..train.config import TrainConfig
from ..train.settings import train_table
from .space import TuneConfig, settings_of

@dataclass
class TrialReport:
    """One finished trial, as the progress line and the results table show it."""

    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    value: float | None
    settings: dict[str, Any]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TuneResult:
    out_dir: Path
    trials: list[TrialReport]  # best first
    best: TrialReport | None
    best_toml: Path | None
    files: list[Path]  # results.md, plots
    correlation: float | None  # Spearman's rank correlation of validation loss and judged style (judge objective)


SETTING_NAMES = {"rank": "rank", "alpha": "alpha", "learning_rate": "lr", "max_steps": "steps", "method": "method",
                 "targets": "targets", "train_text_encoder": "text encoder"}


def describe_settings(settings: dict[str, Any]) -> str:
    """'rank 8, alpha 8, lr 0.0021, steps 640, method lora, targets attn, text encoder off'."""
    return ", ".join(f"{SETTING_NAMES[k]} {_cell(v)}" for k, v in settings.items())


def progress_line(report: TrialReport, finished: int, budget: int | None) -> str:
    """'trial 3 (3/10) complete: rank 8, ...; validation loss 0.01452 at step 120 (41s)'."""
    a = report.attrs
    scores = [f"style {a['style']:.0%}, colour {a['colour']:.0%}"] if "style" in a else []
    if "score" in a:
        scores.append(f"score {a['score']:.3f} (style {a['style_score']:.3f} x prompt {a['prompt_score']:.3f})")
    if a.get("validation_loss") is not None:
        scores.append(f"validation loss {a['validation_loss']:.5f} at step {a.get('kept_step')}")
    if "pruned_at" in a:
        scores.append(f"pruned at step {a['pruned_at']}")
    if "error" in a:
        scores.append(a["error"])
    count = f"{finished}/{budget}" if budget else str(finished)
    return (f"trial {report.number} ({count}) {report.state.lower()}: {describe_settings(report.settings)}; "
            f"{'; '.join(scores)} ({a.get('seconds', 0):.0f}s)")


def report_of(frozen, config: TuneConfig) -> TrialReport:
    return TrialReport(frozen.number, frozen.state.name, frozen.value if frozen.values else None,
                       settings_of(frozen.params, config), dict(frozen.user_attrs))


def ranked(study, config: TuneConfig) -> list[TrialReport]:
    """Every finished trial, best first: complete ones by their value (feasible ones first under the judge's
    colour constraint), then pruned, then failed."""
    reports = [report_of(t, config) for t in study.get_trials(deepcopy=False)
               if t.state.name in ("COMPLETE", "PRUNED", "FAIL") and "surplus" not in t.user_attrs
               and not (t.state.name == "FAIL" and "error" not in t.user_attrs)]
    sign = 1 if config.objective == "loss" else -1

    def key(r: TrialReport):
        order = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2}[r.state]
        infeasible = r.attrs.get("colour_shortfall", 0.0) > 0
        return order, infeasible, sign * r.value if r.value is not None else 0.0, r.number

    return sorted(reports, key=key)


RUN_ONLY = ("out", "name", "resume", "save_every", "auto")  # where the trial wrote, not how it trained
# What only a trial needs: its held-out images and the rules that chose its step. The winner is trained again
# without them, on every image (every_image_steps).
TRIAL_ONLY = ("validation_split", "validation_data", "validate_every", "select_by", "early_stop", "min_delta", "keep",
              "scorer")


def every_image_steps(trial: dict[str, Any], kept: int) -> int:
    """The steps that give every image as many passes as the trial's `kept` steps gave the images it trained on
    (with --validation-split, the held-out ones train too; --validation-data is another folder)."""
    if not trial.get("validation_split"):
        return kept
    count = len(scan_folder(Path(trial["data"]), trial.get("caption") or "", trial.get("trigger") or "").examples)
    return round(kept * count / (count - held_out_count(count, trial["validation_split"])))


def best_toml(config: TuneConfig, best: TrialReport) -> str:
    """A `stylelora train --config` file that trains the winner again on every image: the best trial's settings,
    without its held-out images and stopping rules, for as many passes over the images as its kept step made. A
    trial learns from the images it did not hold out; the adapter a person keeps should learn from all of them
    (its trial's own settings are in results.json, its adapter in trials/)."""
    defaults = TrainConfig(data=Path(".")).to_json_dict()
    trial = best.attrs["train_config"]
    values = {k: v for k, v in trial.items() if k not in RUN_ONLY + TRIAL_ONLY and v is not None
              and (v != defaults[k] or k == "data" or k in best.settings)}
    kept = best.attrs.get("kept_step") or best.attrs.get("trained_steps") or trial["max_steps"]
    values["max_steps"] = steps = every_image_steps(trial, kept)
    a = best.attrs
    lines = [f"# The best trial ({best.number}) of study {config.name!r}, objective {config.objective}: "
             + {"loss": lambda: f"validation loss {a.get('validation_loss'):.5f}, kept step {a.get('kept_step')}",
                "score": lambda: f"score {a['score']:.3f}, kept step {a.get('kept_step')}",
                "judge": lambda: f"style {a['style']:.0%}, colour {a['colour']:.0%}"}[config.objective]() + ".",
             f"# `stylelora train --config best.toml` trains it again on every image (none held out), {steps} steps: "
             f"the {kept} its trial kept, as many passes over the images."]
    return "\n".join(lines) + "\n" + train_table(values)


def objective_of(reports: list[TrialReport]) -> str:
    """The objective a study's trials were scored by, read off what they recorded."""
    recorded = {key for report in reports for key in report.attrs}
    return "judge" if "style" in recorded else "score" if "score" in recorded else "loss"


def best_of(reports: list[TrialReport], objective: str) -> TrialReport | None:
    """The best finished trial so far, as the study ranks them: lowest loss, or highest score or judged style;
    once the best trials are scored again (confirm.py), the highest of those scores."""
    confirmed = confirmed_first(reports)
    if confirmed and "confirmed" in confirmed[0].attrs:
        return confirmed[0]
    scored = [r for r in reports if r.state == "COMPLETE" and r.value is not None]
    if not scored:
        return None
    return min(scored, key=lambda r: r.value) if objective == "loss" else max(scored, key=lambda r: r.value)


def confirmed_first(reports: list[TrialReport]) -> list[TrialReport]:
    """The trials scored again first, highest of those scores first (under the judge, those that kept the colour
    again before those that did not), then the others in their order."""
    confirmed = sorted((r for r in reports if "confirmed" in r.attrs),
                       key=lambda r: (r.attrs.get("confirmed_colour_shortfall", 0.0) > 0, -r.attrs["confirmed"]))
    return confirmed + [r for r in reports if "confirmed" not in r.attrs]


def table_header(objective: str) -> list[str]:
    return ["trial", "state", *SETTING_NAMES.values()] + (["style", "colour"] if objective == "judge" else []) + \
        (["score"] if objective == "score" else []) + \
        (["scored again"] if objective != "loss" else []) + ["validation loss", "kept step", "seconds"]


def table_row(report: TrialReport, objective: str) -> list[str]:
    """One trial as the results table (and the UI's Tune tab) shows it."""
    a = report.attrs
    cells = [str(report.number), report.state.lower() + (f" at {a['pruned_at']}" if "pruned_at" in a else "")]
    cells += [_cell(report.settings[k]) for k in SETTING_NAMES]
    if objective == "judge":
        cells += [f"{a['style']:.0%}" if "style" in a else "", f"{a['colour']:.0%}" if "colour" in a else ""]
    if objective == "score":
        cells.append(f"{a['score']:.3f}" if "score" in a else "")
    if objective != "loss":
        cells.append("" if "confirmed" not in a else f"{a['confirmed']:.0%}" if objective == "judge"
                     else f"{a['confirmed']:.3f}")
    loss = a.get("validation_loss")
    return cells + [f"{loss:.5f}" if loss is not None else "", str(a.get("kept_step", "")), str(a.get("seconds", ""))]


def results_markdown(config: TuneConfig, reports: list[TrialReport], correlation: float | None,
                     winner: TrialReport | None) -> str:
    head = table_header(config.objective)
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    rows += ["| " + " | ".join(table_row(r, config.objective)) + " |" for r in reports]
    note = "" if correlation is None else \
        f"\nSpearman rank correlation of validation loss and style rate over the complete trials: {correlation:+.2f}\n"
    if winner is not None and winner.attrs.get("defaults"):
        note += f"\n{DEFAULTS_WON.format(number=winner.number)}\n"
    return f"# Study {config.name!r}: objective {config.objective}, best first\n\n" + "\n".join(rows) + "\n" + note


# On the mini, no score study's search found settings measurably better than the defaults on new pictures
# (docs/guides/tuning.md): when the defaults' own trial wins, say so rather than present it as a found setting.
DEFAULTS_WON = ("Trial {number}, the best, is the defaults' own settings: nothing else this study tried did better on "
                "the pictures that named the winner, so the defaults are as good a choice here.")


def best_mark(report: TrialReport) -> str:
    """What the results table in the UI adds to the winner's state."""
    return " ★ best (the defaults)" if report.attrs.get("defaults") else " ★ best"


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None with fewer than 3 pairs or no spread."""
    if len(xs) < 3:
        return None

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5 if vx and vy else None


def write_plots(study, out_dir: Path) -> list[Path]:
    """optuna's optimisation history and parameter importances, as PNG (matplotlib). Importances need two
    complete trials that differ; a plot that cannot be drawn yet is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    written = []
    for name, draw in (("history.png", plots.plot_optimization_history), ("importances.png", plots.plot_param_importances)):
        try:
            with warnings.catch_warnings():  # optuna's notes on a small study (equal importances, no legend)
                warnings.simplefilter("ignore", UserWarning)
                axis = draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue
        buffer = io.BytesIO()
        axis.figure.set_size_inches(7, 4)
        axis.figure.tight_layout()
        axis.figure.savefig(buffer, format="png", dpi=100)
        plt.close(axis.figure)
        write_atomically(out_dir / name, buffer.getvalue())
        written.append(out_dir / name)
    return written


def write_results(study, config: TuneConfig, reports: list[TrialReport]) -> TuneResult:
    """The results table, results.json, best.toml and the plots, from the study's `reports` as `ranked` orders
    them; trials scored again (confirm.py) come first, and the winner is the best of those."""
    out = config.out_dir
    reports = confirmed_first(reports)
    complete = [r for r in reports if r.state == "COMPLETE"]
    pairs = [(r.attrs["validation_loss"], r.attrs["style"]) for r in complete
             if r.attrs.get("validation_loss") is not None and "style" in r.attrs]
    correlation = spearman(*map(list, zip(*pairs))) if pairs else None
    best = complete[0] if complete else None
    write_atomically(out / "results.md", results_markdown(config, reports, correlation, best).encode())
    write_atomically(out / "results.json", json.dumps(
        [{"number": r.number, "state": r.state, "value": r.value, "settings": r.settings, "attrs": r.attrs}
         for r in reports], indent=1).encode())
    toml = None
    if best is not None and "train_config" in best.attrs:  # (a trial of an older stylelora kept no config)
        toml = out / "best.toml"
        write_atomically(toml, best_toml(config, best).encode())
    files = [out / "results.md", out / "results.json"] + write_plots(study, out)
    return TuneResult(out, reports, best, toml, files, correlation)
