"""Where a training run's settings come from, and how they are written back: plain values (flags, a TOML
table, UI fields) read into a TrainConfig, the --config file, the shipped presets, and `--print-config`.

`--preset NAME` (a `preset` key in a --config file, or the UI's Preset field) starts from a preset's settings
(presets.toml); the --config file's keys and the flags given win over them, in that order. `--print-config`
prints the settings a run resolves to, as a --config file.
"""

from __future__ import annotations

import dataclasses
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..options import as_list, field_values, read_toml, toml_value
from .config import TrainConfig

PRESETS_FILE = Path(__file__).with_name("presets.toml")


@cache
def presets() -> dict[str, dict[str, Any]]:
    """Each shipped preset's settings (flag names), with its `about` line, in the file's order."""
    return tomllib.loads(PRESETS_FILE.read_text())


def preset_values(name: str) -> dict[str, Any]:
    """The settings of the preset `name`, or a one-line ConfigError naming the presets there are."""
    if name not in presets():
        raise ConfigError(f"--preset {name!r}: no such preset; choose one of {', '.join(presets())}")
    return {key: value for key, value in presets()[name].items() if key != "about"}


def with_preset(values: dict[str, Any]) -> dict[str, Any]:
    """Settings with their `preset` (if they name one) filled in underneath them."""
    name = values.get("preset")
    rest = {key: value for key, value in values.items() if key != "preset"}
    return rest if not name else preset_values(str(name)) | rest


def presets_markdown() -> str:
    """The docs' table of presets: name, what it is for, and its settings."""
    rows = ["| preset | for | settings |", "| --- | --- | --- |"]
    for name, table in presets().items():
        settings = ", ".join(f"`{key} = {value}`" for key, value in table.items() if key != "about")
        rows.append(f"| `{name}` | {table['about']} | {settings} |")
    return "\n".join(rows) + "\n"


_TUPLE_FIELDS = {f.name for f in dataclasses.fields(TrainConfig) if "tuple" in str(f.type)}
_PATH_FIELDS = {"data", "out", "validation_data", "preserve_prompts", "masks", "reg_data"}


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from plain values (a TOML table, UI fields), converting types; unknown keys are errors."""
    convert = {name: Path for name in _PATH_FIELDS} | {name: as_list for name in _TUPLE_FIELDS}
    converted = field_values(TrainConfig, with_preset(values), "train", convert)
    if "data" not in converted:
        raise ConfigError("no image folder given: pass it as the first argument, e.g. `stylelora train ./images`")
    return TrainConfig(**converted)


def train_table(values: dict[str, Any]) -> str:
    """TrainConfig values (field names) as the [train] table of a --config file, under flag names."""
    return "[train]\n" + "".join(f"{key.replace('_', '-')} = {toml_value(value)}\n" for key, value in values.items())


def config_toml(config: TrainConfig) -> str:
    """The settings of `config` as a `stylelora train --config` file: the folder and every setting that differs
    from its default (what `--print-config` prints)."""
    defaults = TrainConfig(data=Path(".")).to_json_dict()
    return train_table({key: value for key, value in config.to_json_dict().items()
                        if value is not None and (key == "data" or value != defaults[key])})


def load_toml(path: Path) -> dict[str, Any]:
    """Read a --config file. Its keys are the flag names, e.g. `max-steps = 500`."""
    table = read_toml(path)
    return dict(table.get("train", table))
