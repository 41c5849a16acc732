"""The `stylelora tune` and `stylelora suggest` commands: flags into a config, the library call, its output."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..train.config import PRECISIONS


def add_tune_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("tune", help="search rank, alpha, learning rate, steps and more (optuna)",
                            description="Search training settings with optuna (TPE, median pruning on the validation "
                                        "loss). The study lives in --out (SQLite) or --storage, survives a kill, and "
                                        "continues when run again; several processes on one --storage share it.")
    p.add_argument("data", nargs="?", help="folder of captioned images")
    p.add_argument("--config", type=Path, help="TOML file: a [tune] table with these options, and a [train] table "
                                               "of fixed training settings (flags win)")
    p.add_argument("--out", type=Path, help="folder for the study, the trials' adapters and the results "
                                            "(tune/<folder name>)")
    p.add_argument("--storage", help="database URL optuna accepts, shared by every process of the study, e.g. "
                                     "postgresql://user:pass@host/db (SQLite in --out)")
    p.add_argument("--study-name", help="the study's name in the storage (the folder's name)")
    g = p.add_argument_group("budget")
    g.add_argument("--trials", type=int, help="finished trials in all, over every process (20 unless --timeout)")
    g.add_argument("--timeout", help="no new trial starts after this long in this process: 30m, 2h, 900 (seconds)")
    g.add_argument("--max-steps", type=int, help="cap on each trial's steps (1600)")
    g.add_argument("--min-steps", type=int, help="fewest steps a trial trains (100)")
    g = p.add_argument_group("objective")
    g.add_argument("--objective", choices=("loss", "judge"),
                   help="loss: the held-out validation loss (any base); judge: the style rate the mini's judge reads "
                        "on fixed prompts and seeds, colour kept as a constraint (--base mini only) (loss)")
    g.add_argument("--judge-style", choices=("striped", "dotted", "pastel"),
                   help="the style the judge counts (what it sees most in the folder)")
    g.add_argument("--judge-images", type=int, help="images per colour x shape prompt the judge reads (2)")
    g = p.add_argument_group("search space (one value fixes a setting)")
    g.add_argument("--ranks", help="ranks to try (2,4,8,16)")
    g.add_argument("--alpha-ratios", help="alpha as a multiple of the rank (0.5,1,2)")
    g.add_argument("--lr-range", help="learning rates, log scale, LOW:HIGH (the base's default / 10 to x 5)")
    g.add_argument("--methods", help="adapter methods to try: lora,dora,loha,lokr,adalora,dylora (lora)")
    g.add_argument("--target-presets", help="module presets to try: attn,attn-mlp,all-linear,all (attn,attn-mlp)")
    g.add_argument("--text-encoder", help="off, on, or off,on to search it (off)")
    g = p.add_argument_group("inside each trial")
    g.add_argument("--early-stop", type=int, metavar="PATIENCE", help="stop a trial after PATIENCE validations "
                   "without improvement, keeping its best step (loss objective; 0 = off) (5)")
    g.add_argument("--pruner", choices=("median", "none"), help="stop a trial whose validation loss is worse than "
                   "the median of earlier trials at the same step (loss objective) (median)")
    g.add_argument("--seed", type=int, help="the sampler's seed and every trial's training seed (0)")
    g = p.add_argument_group("fixed training settings (as in `stylelora train`)")
    g.add_argument("--base", help="'mini' (default), a hub id, a diffusers folder or a .safetensors checkpoint")
    g.add_argument("--validation-split", type=float, help="fraction of the images held out (0.2)")
    g.add_argument("--validation-data", type=Path, help="a separate folder of held-out images instead")
    g.add_argument("--trigger", help="trigger phrase put before every caption")
    g.add_argument("--caption", help="caption for images that have none")
    g.add_argument("--batch-size", type=int, help="images per step (4)")
    g.add_argument("--resolution", type=int, help="training size in pixels (the base's native size)")
    g.add_argument("--precision", choices=PRECISIONS, help="as `stylelora train --precision` (auto)")
    g.add_argument("--train-config", type=Path, help="a `stylelora train` TOML file of further fixed settings")


def run_tune(args: argparse.Namespace) -> int:
    from ..train.config import load_toml
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
        lines += [f"Best trial {result.best.number}: {describe_settings(result.best.settings)}.",
                  f"Train with it: stylelora train --config {result.best_toml}"]
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
