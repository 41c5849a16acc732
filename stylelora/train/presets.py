"""Presets: named sets of training settings shipped in presets.toml, under the --config file and the flags.

`--preset NAME` (a `preset` key in a --config file, or the UI's Preset field) starts from the preset's settings;
the --config file's keys and the flags given win over them, in that order. `--print-config` prints the settings
a run resolves to, as a --config file.
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import ConfigError

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
