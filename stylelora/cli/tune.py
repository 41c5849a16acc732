"""The `stylelora tune` and `stylelora suggest` commands: flags into a config, the library call, its output."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..options import add_arguments
from ..train.config import TrainConfig
from ..tune.space import TuneConfig

# The training settings a study's flags may fix (any other goes in --train-config).
FIXED_TRAINING = ("base", "validation_split", "validation_data", "trigger", "caption", "batch_size", "resolution",
                  "precision", "threads")


def add_tune_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("tune", help="search rank, alpha, learning rate, steps and more (optuna)",
                            description="Search training settings with optuna (TPE, median pruning on the validation "
                                        "loss). The study lives in --out (SQLite) or --storage, survives a kill, and "
                                        "continues when run again; several processes on one --storage share it.")
    p.add_argument("data", nargs="?", help="folder of captioned images")
    p.add_argument("--config", type=Path, help="TOML file: a [tune] table with these options, and a [train] table "
                                               "of fixed training settings (flags win)")
    add_arguments(p, TuneConfig)
    add_arguments(p, TrainConfig, only=FIXED_TRAINING, group="fixed training settings (as in `stylelora train`)",
                  defaults={"validation_split": "0.2"})
    p.add_argument("--train-config", type=Path, help="a `stylelora train` TOML file of further fixed settings")


def run_tune(args: argparse.Namespace) -> int:
    from ..train.settings import load_toml
    from ..errors import TrainingInterrupted
    from ..tune.search import tune
    from ..tune.space import load_tune_toml, tune_config_from_dict

    values = load_tune_toml(args.config) if args.config else {}
    flags = {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "config", "train_config")}
    if args.train_config:
        values["train"] = load_toml(args.train_config) | values.get("train", {})
    config = tune_config_from_dict(values | flags)
    from .stop import StopRequest  # the same Ctrl-C handling as `train`: finish the step, keep the checkpoint

    stop = StopRequest()
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    try:
        with stop.on_signals():
            result = tune(config, should_stop=stop, log=say)
    except TrainingInterrupted as stopped:
        print(f"stylelora: tune stopped ({stopped}); the trial in flight is queued again: run the same command "
              "to continue the study", file=sys.stderr)
        return 130
    print(result_summary(result))
    return 0


def result_summary(result) -> str:
    from ..tune.results import describe_settings

    lines = [(result.out_dir / "results.md").read_text().rstrip()]
    if result.best is None:
        lines.append("No trial has finished yet: run the same command again to continue the study.")
    else:
        lines += [f"Best trial {result.best.number}: {describe_settings(result.best.settings)}; its adapter: "
                  f"{result.best.attrs.get('adapter')}.",
                  f"Train it again on every image: stylelora train --config {result.best_toml}"]
    lines.append("Files: " + ", ".join(str(p) for p in result.files))
    return "\n".join(lines)


def add_suggest_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("suggest", help="suggest rank, alpha, learning rate and steps for a folder, without training",
                            description="Print suggested training settings for an image folder and the reason for "
                                        "each, from rules measured with `stylelora tune` on the miniature base.")
    p.add_argument("data", help="folder of captioned images")
    p.add_argument("--base", default="mini", help="the base the adapter is for (mini)")
    p.add_argument("--caption", default="", help="caption for images that have none")
    p.add_argument("--trigger", default="", help="trigger phrase put before every caption")
    p.add_argument("--toml", action="store_true", help="print the settings as a `stylelora train --config` file")


def run_suggest(args: argparse.Namespace) -> int:
    from ..train.suggest import as_toml, suggest

    suggestion = suggest(Path(args.data), args.base, args.caption, args.trigger)
    if args.toml:
        print(as_toml(suggestion), end="")
        return 0
    print(f"{args.data}: {suggestion.summary}")
    for setting in suggestion.settings:
        print(f"  --{setting.flag} {setting.value:g}: {setting.reason}")
    for note in suggestion.advice:
        print(f"  note: {note}")
    print(f"Train with them: stylelora train {args.data} --auto  (or pass the flags above)")
    return 0
