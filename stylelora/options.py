"""Options: each declared once on its job's config, and read from plain settings (TOML tables, UI fields, flags)."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError


def refuse_first(config: Any, checks: list[tuple[bool, str, str]]) -> None:
    """Raise a ConfigError for the first (holds, field, fix) that does not hold, naming its flag and the value:
    `--rank = 0: the rank must be ...`. Each job's validate() lists its checks; this says them one way."""
    for ok, name, fix in checks:
        if not ok:
            field = name.replace("-", "_")
            raise ConfigError(f"--{field.replace('_', '-')} = {getattr(config, field)!r}: {fix}")


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


def toml_value(value: Any) -> str:
    """A value as a TOML file writes it (what `--print-config` and best.toml print)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is a one-line ConfigError naming it."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None


# -- option declarations ---------------------------------------------------------------------------------------
# Each option of a job is declared once, on its config dataclass's field: the field gives its name, type and
# default; `option(...)` adds its help, group, choices, flag spellings and how the web UI shows it. The CLI
# parser (`add_arguments`), the TOML keys (`field_values`), the UI's fields and the docs' option tables
# (`options_markdown`) are all built from these declarations.

SAME = object()  # a UI default equal to the config's


@dataclass(frozen=True)
class UiField:
    """How the web UI shows an option: its label, widget, element id and, where it differs, its own default."""

    label: str
    widget: str = "number"  # number, integer, checkbox, textbox, dropdown, multiselect or slider
    elem_id: str | None = None  # None: the flag without its dashes (`rank`, `train-bias`)
    default: Any = SAME  # the page's starting value, where it differs from the config's (said in the docs)
    span: tuple[float, float, float] | None = None  # a slider's (least, most, step)


@dataclass(frozen=True)
class Option:
    help: str  # one line; `--help` and the docs add the default from the field
    group: str = "general"
    flag: str | None = None  # the spelling where it is not --field-name (--sample-prompt for sample_prompts)
    aliases: tuple[str, ...] = ()  # further spellings (--lr)
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    metavar: str | None = None
    default_text: str | None = None  # the default in words, where the field's value says too little
    repeat: bool = False  # given once per value (the field is a tuple)
    negatable: bool = True  # a switch gets --no-NAME too
    cli: bool = True  # False: positional or set by other means (the image folder)
    cli_type: Callable[[str], Any] | None = None  # how a flag's text is read, where the field's type does not say
                                                  # (a duration, a list the config's reader parses)
    ui: UiField | None = None  # None: not on the page

    def choice_list(self) -> list[str] | None:
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)


def option(default: Any = dataclasses.MISSING, help: str = "", group: str = "general", **details: Any) -> Any:
    """A dataclass field with its option declaration (`Option`'s other fields as keywords)."""
    return dataclasses.field(default=default, metadata={"option": Option(help=help, group=group, **details)})


def like(kind: type, name: str, **changes: Any) -> Any:
    """A field declared as `kind`'s `name` is (its default, help, choices and spelling), for another job that takes
    the same option, with `changes` (the default among them) where it differs: so it is still declared once."""
    f, opt = declaration(kind, name)
    default = changes.pop("default", default_of(f))
    return dataclasses.field(default=default, metadata={"option": dataclasses.replace(opt, **changes)})


def as_list(value: Any) -> tuple:
    """'to_q, to_k' (a flag, a TOML string or a page's text) or a list, as a tuple; blanks around commas dropped."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(value)


def declared(kind: type) -> list[tuple[dataclasses.Field, Option]]:
    """The declared options of a config dataclass, in field order."""
    return [(f, f.metadata["option"]) for f in dataclasses.fields(kind) if "option" in f.metadata]


def declaration(kind: type, name: str) -> tuple[dataclasses.Field, Option]:
    return next((f, o) for f, o in declared(kind) if f.name == name)


def flag_of(f: dataclasses.Field, opt: Option) -> str:
    return opt.flag or "--" + f.name.replace("_", "-")


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def default_words(f: dataclasses.Field, opt: Option) -> str:
    """The default as `--help` and the docs say it: 'on', '4', 'to_q,to_k', 'none'."""
    if opt.default_text is not None:
        return opt.default_text
    value = default_of(f)
    if value is dataclasses.MISSING:
        return "required"
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == ():
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(_word(v) for v in value)
    return _word(value)


def _word(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _kind_of(f: dataclasses.Field) -> str:
    """bool, int, float, path, tuple or str, read off the field's annotation (a string under __future__)."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    for kind in ("bool", "tuple", "Path", "int", "float"):
        if text.startswith(kind):
            return kind.lower()
    return "str"


def add_arguments(parser: Any, kind: type, only: tuple[str, ...] | None = None, group: str | None = None,
                  defaults: dict[str, str] | None = None) -> None:
    """Add the declared options of `kind` (or those `only` names) to an argparse parser, in argument groups (or
    all in `group`), every default None: a flag overrides only what it names. The help says the default once,
    from the declaration (or from `defaults`, where the calling job has its own)."""
    import argparse

    groups: dict[str, Any] = {}
    for f, opt in declared(kind):
        if not opt.cli or (only is not None and f.name not in only):
            continue
        where = group or opt.group
        if where not in groups:
            groups[where] = parser if where == "general" else parser.add_argument_group(where)
        said = (defaults or {}).get(f.name) or default_words(f, opt)
        arguments: dict[str, Any] = dict(dest=f.name, default=None, help=f"{opt.help} ({said})")
        field_kind = _kind_of(f)
        if field_kind == "bool":
            arguments["action"] = argparse.BooleanOptionalAction if opt.negatable else "store_true"
        elif opt.repeat:
            arguments["action"] = "append"
        else:
            arguments["type"] = opt.cli_type or {"int": int, "float": float, "path": Path}.get(field_kind, str)
        if opt.choice_list() is not None and field_kind != "tuple":  # a list's flag is one comma-separated word
            arguments["choices"] = opt.choice_list()
        if opt.metavar:
            arguments["metavar"] = opt.metavar
        groups[where].add_argument(flag_of(f, opt), *opt.aliases, **arguments)


def options_markdown(kind: type) -> str:
    """The docs' option tables of `kind`: one per group, in declaration order, each flag with its default."""
    out: list[str] = []
    for group in dict.fromkeys(opt.group for _, opt in declared(kind)):
        out += [f"**{group}**", "", "| flag | default | what it does |", "| --- | --- | --- |"]
        for f, opt in declared(kind):
            if opt.group != group:
                continue
            flag = flag_of(f, opt)
            spelled = " / ".join(f"`{s}`" for s in (flag, *opt.aliases)) if opt.cli else f"`{f.name.upper()}` (first)"
            if _kind_of(f) == "bool" and opt.negatable and opt.cli:
                spelled += f" / `--no-{flag[2:]}`"
            ui = "" if opt.ui is None or opt.ui.default is SAME else f"; the web UI starts at {_word(opt.ui.default)}"
            out.append(f"| {spelled} | {default_words(f, opt)} | {opt.help}{ui} |")
        out.append("")
    return "\n".join(out)


def page_values(kind: type, values: dict[str, Any]) -> dict[str, Any]:
    """Field values as a web page sends them, as `kind`'s config values: only those that differ from the field's
    default. Blank leaves a field at its default, and so does 0 where the default is unset (None: "0 = the base's
    usual"); numbers come back as the field's type, a text field as a path or a one-item tuple where the field is one."""
    fields = {f.name: (f, f.metadata.get("option")) for f in dataclasses.fields(kind)}
    out: dict[str, Any] = {}
    for name, value in values.items():
        f, opt = fields[name]
        unset = value == 0 and not isinstance(value, bool) and f.default is None
        value = value.strip() if isinstance(value, str) and _kind_of(f) == "path" else value  # a pasted path's spaces
        if value is None or value == "" or unset:
            continue
        field_kind = _kind_of(f)
        if field_kind == "tuple":
            value = (value,) if isinstance(value, str) and opt is not None and opt.repeat else as_list(value)
        else:
            convert = {"int": int, "float": float, "bool": bool, "path": lambda v: Path(str(v)).expanduser()}
            value = convert.get(field_kind, lambda v: v)(value)
        if value != default_of(f):  # what equals the default is left to the config
            out[name] = value
    return out
