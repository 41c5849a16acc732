"""A training run's flags, shared by `stylelora train` and `stylelora queue add`: the folder, --config, --preset and
every option of TrainConfig, read into one TrainConfig."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..options import add_arguments
from ..train.config import TrainConfig
from ..train.settings import from_dict, load_toml, presets

# Arguments of the commands that are not training settings.
NOT_SETTINGS = ("command", "config", "quiet", "print_config", "queue_command", "file")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """A training run's arguments: the folder, --config, --preset and every option of TrainConfig."""
    p.add_argument("data", nargs="?", help="folder of images (png, jpg, webp, bmp; subfolders too)")
    p.add_argument("--config", type=Path, help="TOML file with the same options as these flags (flags win)")
    p.add_argument("--preset", metavar="NAME", help=f"start from a shipped preset ({', '.join(presets())}); "
                                                     "--config keys and flags win over it")
    add_arguments(p, TrainConfig)  # every option of TrainConfig, as it declares them


def train_config_of(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig that add_train_arguments' flags ask for: the --config file's settings, the flags over them."""
    values = load_toml(args.config) if args.config else {}
    flags = {k: v for k, v in vars(args).items() if v is not None and k not in NOT_SETTINGS}
    return from_dict(values | flags)
