"""A config option's field on the page, built from its declaration (stylelora.options): label, widget, element id
and starting value all come from there, so the page and the CLI cannot disagree."""

from __future__ import annotations

from typing import Any

import gradio as gr

from stylelora.options import SAME, declaration, default_of, flag_of


def widget(kind: type, name: str, **layout: Any):
    """The Gradio component of `kind`'s option `name`, as its UiField declares it; `layout` adds Gradio's own
    layout keywords (visible, lines, ...)."""
    f, opt = declaration(kind, name)
    ui = opt.ui
    value = default_of(f) if ui.default is SAME else ui.default
    if value is None:
        value = 0 if ui.widget in ("number", "integer") else ""
    if isinstance(value, tuple):
        value = list(value) if ui.widget == "multiselect" else ",".join(str(v) for v in value)
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
