"""Options: reading plain settings (TOML tables, UI fields, flags) into a job's typed config."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError


def field_values(kind: type, values: dict[str, Any], command: str,
                 convert: dict[str, Callable[[Any], Any]] | None = None) -> dict[str, Any]:
    """Plain values (a TOML table, UI fields, flags; kebab-case or snake_case keys) under the field names of the
    dataclass `kind`, each converted by `convert` where it names one (None stays None); an unknown key is a
    ConfigError that points at `stylelora COMMAND --help`."""
    known = {f.name for f in dataclasses.fields(kind)}
    converted: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"unknown {'' if command == 'train' else command + ' '}setting {key!r}: "
                              f"see `stylelora {command} --help` for the list")
        converted[name] = value if value is None or name not in (convert or {}) else convert[name](value)
    return converted


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is a one-line ConfigError naming it."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
