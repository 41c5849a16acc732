"""The Train tab's field groups: the method row, the "knowing when to stop" row, buckets, and the base and
quantization dropdowns the Generate tab shares.
Layout and the translation of field values into TrainConfig fields only; the rules live in stylelora."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from stylelora.data.workspace import save_prompts
from stylelora.methods import METHOD_FIELDS, own_fields
from stylelora.model.quantize import QUANTIZE_MODES
from stylelora.options import page_values
from stylelora.train.config import TrainConfig
from stylelora.ui.fields import for_page, widget


def method_row():
    """The Method and Modules dropdowns, and the fields only some methods have (hidden until they apply):
    train_bias, target_rank, export_rank, conv_rank, conv_alpha, in METHOD_FIELDS' order."""
    with gr.Row():
        method, targets = widget(TrainConfig, "method"), widget(TrainConfig, "targets")
        only = [widget(TrainConfig, "train_bias")] + [widget(TrainConfig, name, visible=False) for name in
                                                      ("target_rank", "export_rank", "conv_rank", "conv_alpha")]
    return method, targets, only


def show_only_own_fields(method, targets, fields) -> None:
    """A method's own fields show only when they apply to it (stylelora.methods.own_fields says which)."""

    def show(method_, targets_):
        shown = own_fields(method_, targets_)
        return [gr.update(visible=name in shown) for name in METHOD_FIELDS]

    method.change(show, [method, targets], fields)
    targets.change(show, [method, targets], fields)


# The fields of "Knowing when to stop", in the order stopping_row() lays them out; blank (or 0 where the field is
# unset by default) means the default.
STOPPING_FIELDS = ("validation_split", "validation_data", "validate_every", "early_stop", "min_delta", "keep",
                   "select_by", "scorer", "ema_decay", "preserve_prompts", "preserve_weight", "reg_data", "reg_weight")


def stopping_row() -> list:
    """Validation, early stopping, EMA, preservation and class-image fields, as STOPPING_FIELDS names them."""
    with gr.Accordion("Knowing when to stop: validation, early stopping, EMA, preservation, class images", open=False):
        with gr.Row():
            # the "keep" dropdown's choices are sentences: wide enough to read them
            fields = [widget(TrainConfig, name, **({"min_width": 320} if name == "keep" else {}))
                      for name in STOPPING_FIELDS[:6]]
        with gr.Row():
            fields += [widget(TrainConfig, "select_by"), widget(TrainConfig, "scorer"), widget(TrainConfig, "ema_decay"),
                       widget(TrainConfig, "preserve_prompts", lines=3),
                       widget(TrainConfig, "preserve_weight")]
        with gr.Row():
            fields += [widget(TrainConfig, "reg_data"), widget(TrainConfig, "reg_weight")]
    return fields


def stopping_settings(workspace: Path, adapter_name: str, values: list) -> dict:
    """The TrainConfig fields the stopping row's values ask for (options.page_values reads them); the typed
    preservation prompts are saved to a file in the workspace, which the config names."""
    settings = dict(zip(STOPPING_FIELDS, values))
    if settings["preserve_prompts"]:
        settings["preserve_prompts"] = save_prompts(workspace, adapter_name or "style", settings["preserve_prompts"])
    return page_values(TrainConfig, settings)


def suggested_fields(folder_path: str, base_model: str):
    """`stylelora suggest` for the Train tab: rank, steps, learning rate and alpha, and the reasons."""
    from stylelora.errors import StyleloraError
    from stylelora.train.suggest import suggest

    if not folder_path:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), "**Error:** upload images or choose a folder first"
    try:
        suggestion = suggest(Path(folder_path), base_model or "mini")
    except StyleloraError as error:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**Error:** {error}"
    v = suggestion.values()
    reasons = "".join(f"\n- {for_page('--' + s.flag)} {s.value:g}: {s.reason}" for s in suggestion.settings)
    rate = float(f"{v['learning_rate']:.3g}")  # for people: 0.00105, not 0.0010490756141474163
    return v["rank"], v["max_steps"], rate, v["alpha"], f"Suggested ({suggestion.summary}):{reasons}"


# The fields of "Aspect-ratio buckets", in the order bucket_row() lays them out; 0 means the default.
BUCKET_FIELDS = ("buckets", "bucket_step", "min_bucket", "max_bucket", "no_upscale")


def bucket_row(dataset, base, resolution, validation_split) -> list:
    """Bucketing's fields (BUCKET_FIELDS), and a button that shows the buckets a run of the chosen folder, base,
    resolution and validation split would use, under them."""
    with gr.Accordion("Aspect-ratio buckets", open=False):
        with gr.Row():
            fields = [widget(TrainConfig, name) for name in BUCKET_FIELDS]
            show = gr.Button("Show the buckets", elem_id="show-buckets")
        report = gr.Markdown(elem_id="bucket-report")
    show.click(bucket_report, [dataset, base, resolution, validation_split, *fields], [report])
    return fields


def bucket_settings(values: list) -> dict:
    """The TrainConfig fields the bucket row asks for (0 leaves a side or step at its default)."""
    return page_values(TrainConfig, dict(zip(BUCKET_FIELDS, values)))


def bucket_report(folder_path: str, base_model: str, resolution: float, validation_split: float, *values) -> str:
    """The Train tab's bucket table for the chosen folder, base and settings (stylelora.buckets does the work)."""
    from stylelora.data.buckets import plan_for_config, report_as_markdown
    from stylelora.errors import StyleloraError
    from stylelora.train.config import validate

    if not folder_path:
        return "**Error:** upload images or choose a folder first"
    try:
        config = validate(TrainConfig(data=Path(folder_path), base=base_model or "mini",
                                      resolution=int(resolution) or None, validation_split=float(validation_split or 0),
                                      **bucket_settings(list(values))))
        return report_as_markdown(plan_for_config(config))
    except StyleloraError as error:
        return f"**Error:** {error}"


def base_dropdown(adapters: Path, elem_id: str) -> gr.Dropdown:
    """The base-model field: the miniature and every base the adapters in `adapters` were trained on, or
    any folder, file or Hub id typed in."""
    from stylelora.adapters.library import known_bases

    return gr.Dropdown(known_bases(adapters), value="mini", allow_custom_value=True, interactive=True,
                       elem_id=elem_id, label="Base model (mini, a diffusers folder, a .safetensors file or a Hub id)")


def quantize_dropdown(elem_id: str) -> gr.Dropdown:
    """--quantize-base, for the Train and Generate tabs alike."""
    return gr.Dropdown(list(QUANTIZE_MODES), value="none", elem_id=elem_id, interactive=True,
                       label="Quantize the frozen base (nf4 or int8: bitsandbytes; fp8: built in; the adapter stays float32)")
