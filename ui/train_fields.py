"""The Train tab's field groups: the method row, the "knowing when to stop" row, buckets, and the base and
quantization dropdowns the Generate tab shares.
Layout and the translation of field values into TrainConfig fields only; the rules live in stylelora."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from stylelora.data.workspace import save_prompts
from stylelora.methods import METHODS, METHOD_FIELDS, TARGET_PRESETS, own_fields
from stylelora.model.quantize import QUANTIZE_MODES


def method_row():
    """The Method and Modules dropdowns, and the fields only some methods have (hidden until they apply):
    train_bias, target_rank, export_rank, conv_rank, conv_alpha, in METHOD_FIELDS' order."""
    with gr.Row():
        method = gr.Dropdown(list(METHODS), value="lora", elem_id="method",
                             label="Method (every one writes a file AUTOMATIC1111 and ComfyUI load)")
        targets = gr.Dropdown(list(TARGET_PRESETS), value="attn", elem_id="targets",
                              label="Modules (attn; attn-mlp adds feed-forward; all-linear; all adds convolutions)")
        train_bias = gr.Checkbox(False, label="Train the biases too (ComfyUI applies them)", elem_id="train-bias")
        target_rank = gr.Number(0, label="AdaLoRA target rank (0 = half the rank)", precision=0, elem_id="target-rank",
                                visible=False)
        export_rank = gr.Number(0, label="DyLoRA rank to write (0 = the rank)", precision=0, elem_id="export-rank",
                                visible=False)
        conv_rank = gr.Number(0, label="Conv rank (0 = rank)", precision=0, elem_id="conv-rank", visible=False)
        conv_alpha = gr.Number(0, label="Conv alpha (0 = conv rank)", elem_id="conv-alpha", visible=False)
    return method, targets, [train_bias, target_rank, export_rank, conv_rank, conv_alpha]


def show_only_own_fields(method, targets, fields) -> None:
    """A method's own fields show only when they apply to it (stylelora.methods.own_fields says which)."""

    def show(method_, targets_):
        shown = own_fields(method_, targets_)
        return [gr.update(visible=name in shown) for name in METHOD_FIELDS]

    method.change(show, [method, targets], fields)
    targets.change(show, [method, targets], fields)


# The fields of "Knowing when to stop", in the order stopping_row() lays them out; 0 or blank means the default.
STOPPING_FIELDS = ("validation_split", "validation_data", "validate_every", "early_stop", "min_delta", "keep",
                   "ema_decay", "preserve_prompts", "preserve_weight")


def stopping_row() -> list:
    """Validation, early stopping, EMA and preservation fields, as STOPPING_FIELDS names them."""
    with gr.Accordion("Knowing when to stop: validation, early stopping, EMA, preservation", open=False):
        with gr.Row():
            fields = [gr.Number(0, label="Hold out for validation (fraction, 0 = off)", elem_id="validation-split"),
                      gr.Textbox("", label="...or a validation folder on this machine", elem_id="validation-data"),
                      gr.Number(0, label="Validate every N steps (0 = a twentieth of the run)", precision=0,
                                elem_id="validate-every"),
                      gr.Number(0, label="Early stop after N validations without improvement (0 = never)", precision=0,
                                elem_id="early-stop"),
                      gr.Number(0, label="Least improvement that counts", elem_id="min-delta"),
                      gr.Dropdown([("best with validation, else last", ""), ("best", "best"), ("last", "last")], value="",
                                  label="Adapter kept", elem_id="keep")]
        with gr.Row():
            fields += [gr.Number(0, label="EMA decay (0 = off; 0.99 is usual)", elem_id="ema-decay"),
                       gr.Textbox("", lines=3, label="Preserve the base on these prompts (one a line)",
                                  elem_id="preserve-prompts"),
                       gr.Number(1, label="Preservation weight", elem_id="preserve-weight")]
    return fields


def stopping_settings(workspace: Path, adapter_name: str, values: list) -> dict:
    """The TrainConfig fields the stopping row's values ask for. Blank leaves a field at its default, and so
    does 0, which is each field's default or "off", except the preservation weight's (default 1)."""
    settings = {name: value for name, value in zip(STOPPING_FIELDS, values)
                if value not in (None, "") and (value != 0 or name == "preserve_weight")}
    if "preserve_prompts" in settings:
        settings["preserve_prompts"] = save_prompts(workspace, adapter_name or "style", settings["preserve_prompts"])
    if "validation_data" in settings:
        settings["validation_data"] = Path(settings["validation_data"]).expanduser()
    for name in ("validate_every", "early_stop"):
        if name in settings:
            settings[name] = int(settings[name])
    return settings


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
    reasons = "".join(f"\n- `--{s.flag} {s.value:g}`: {s.reason}" for s in suggestion.settings)
    return v["rank"], v["max_steps"], v["learning_rate"], v["alpha"], f"Suggested ({suggestion.summary}):{reasons}"


# The fields of "Aspect-ratio buckets", in the order bucket_row() lays them out; 0 means the default.
BUCKET_FIELDS = ("buckets", "bucket_step", "min_bucket", "max_bucket", "no_upscale")


def bucket_row(dataset, base, resolution, validation_split) -> list:
    """Bucketing's fields (BUCKET_FIELDS), and a button that shows the buckets a run of the chosen folder, base,
    resolution and validation split would use, under them."""
    with gr.Accordion("Aspect-ratio buckets", open=False):
        with gr.Row():
            fields = [gr.Checkbox(True, label="Keep each image's shape (buckets); off: centre squares", elem_id="buckets"),
                      gr.Number(0, label="Bucket step in px (0 = 64; 8 on mini)", precision=0, elem_id="bucket-step"),
                      gr.Number(0, label="Shortest side (0 = half the resolution)", precision=0, elem_id="min-bucket"),
                      gr.Number(0, label="Longest side (0 = twice the resolution)", precision=0, elem_id="max-bucket"),
                      gr.Checkbox(False, label="Never enlarge an image", elem_id="no-upscale")]
            show = gr.Button("Show the buckets", elem_id="show-buckets")
        report = gr.Markdown(elem_id="bucket-report")
    show.click(bucket_report, [dataset, base, resolution, validation_split, *fields], [report])
    return fields


def bucket_settings(values: list) -> dict:
    """The TrainConfig fields the bucket row asks for (0 leaves a side or step at its default)."""
    settings = dict(zip(BUCKET_FIELDS, values))
    return {name: (int(value) if name not in ("buckets", "no_upscale") else bool(value))
            for name, value in settings.items() if value or name == "buckets"}


def bucket_report(folder_path: str, base_model: str, resolution: float, validation_split: float, *values) -> str:
    """The Train tab's bucket table for the chosen folder, base and settings (stylelora.buckets does the work)."""
    from stylelora.data.buckets import plan_for_config, report_as_markdown
    from stylelora.train.config import TrainConfig, validate
    from stylelora.errors import StyleloraError

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
