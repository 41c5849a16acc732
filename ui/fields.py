"""A config option's field on the page, built from its declaration (stylelora.options): label, widget, element id
and starting value all come from there, so the page and the CLI cannot disagree."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import gradio as gr

from stylelora.options import SAME, declaration, declared, default_of, flag_of


def widget(kind: type, name: str, **layout: Any):
    """The Gradio component of `kind`'s option `name`, as its UiField declares it; `layout` adds Gradio's own
    layout keywords (visible, lines, ...)."""
    f, opt = declaration(kind, name)
    ui = opt.ui
    value = page_value(kind, name, default_of(f) if ui.default is SAME else ui.default)
    elem_id = ui.elem_id or flag_of(f, opt)[2:]
    common = dict(label=ui.label, elem_id=elem_id, **layout)
    if ui.widget == "checkbox":
        return gr.Checkbox(bool(value), **common)
    if ui.widget == "textbox":
        return gr.Textbox(str(value), **common)
    if ui.widget == "slider":
        least, most, step = ui.span
        return gr.Slider(least, most, value, step=step, **common)
    if ui.widget == "multiselect":
        return gr.Dropdown(opt.choice_list(), value=value, multiselect=True, **common)
    if ui.widget == "dropdown":
        unset = [(opt.default_text, "")] if value == "" else []  # the blank choice: the field's default
        return gr.Dropdown(unset + opt.choice_list(), value=value, **common)
    return gr.Number(value, precision=0 if ui.widget == "integer" else None, **common)


def page_default(kind: type, name: str) -> Any:
    """The value a field starts at on the page (the UI's own default where one is declared)."""
    f, opt = declaration(kind, name)
    return default_of(f) if opt.ui is None or opt.ui.default is SAME else opt.ui.default


def page_value(kind: type, name: str, value: Any) -> Any:
    """A config value as `kind`'s field `name` shows it: unset as 0 or blank, a list as its widget takes it,
    a path as text (the inverse of options.page_values)."""
    ui = declaration(kind, name)[1].ui
    widget_kind = ui.widget if ui else "dropdown"  # the fields the page lays out itself are dropdowns
    if value is None:
        return 0 if widget_kind in ("number", "integer") else ""
    if isinstance(value, (tuple, list)):
        return list(value) if widget_kind == "multiselect" else ",".join(str(v) for v in value)
    return str(value) if isinstance(value, Path) else value


@cache
def _labels() -> dict[str, str]:
    """Each option's flag, and its field name in flag spelling, to its label on the page."""
    from stylelora.paint.request import GenerateConfig, GridConfig
    from stylelora.train.config import TrainConfig
    from stylelora.tune.space import TuneConfig

    labels = {}
    for kind in (TuneConfig, GridConfig, GenerateConfig, TrainConfig):  # the Train tab's labels win
        for f, opt in declared(kind):
            if opt.ui is not None:
                label = opt.ui.label.split(" (")[0]
                labels[flag_of(f, opt)] = labels["--" + f.name.replace("_", "-")] = label
    return labels


def for_page(text: str) -> str:
    """A library message as the page says it: each --flag named by its field's label, and "run the same command
    with --resume" as what a person does on the page."""
    text = re.sub(r"run (the same command|again) with --resume", "tick Resume and press Start again", text)
    return re.sub(r"--[a-z][a-z0-9-]*", lambda m: f"'{_labels().get(m.group(0), m.group(0))}'", text)
