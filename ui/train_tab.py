"""The Train tab: images (uploaded, or a folder on this machine), captions, the settings, Start and Stop, and
the running job's progress, loss plot and previews. Layout only: the work is stylelora's."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from stylelora.data.workspace import caption_rows, dataset_folder, save_captions, save_uploads, thumbnails
from stylelora.errors import DatasetError, StyleloraError
from stylelora.methods import METHOD_FIELDS, own_fields
from stylelora.train.config import TrainConfig, validate
from stylelora.train.settings import from_dict
from stylelora.train.settings import preset_values, presets
from stylelora.options import declaration, default_of, page_values
from stylelora.ui.fields import page_default, page_value, widget
from stylelora.ui.session import Session, error_message
from stylelora.ui.train_fields import (BUCKET_FIELDS, STOPPING_FIELDS, base_dropdown, bucket_row, bucket_settings,
                                       method_row, quantize_dropdown, show_only_own_fields, stopping_row,
                                       stopping_settings, suggested_fields)
from stylelora.ui.queue_view import queue_row
from stylelora.ui.train_view import loss_svg, progress_html

# The Train tab's plain fields, by TrainConfig name, in the order on_start receives them.
MAIN_FIELDS = ("rank", "max_steps", "learning_rate", "resolution")
ADVANCED_FIELDS = ("sample_every", "sample_prompts", "flip", "caption_dropout", "resume", "precision", "timestep_sampling",
                   "loss", "format", "optimizer", "optimizer_args", "block_lr", "threads", "masks", "mask_from_alpha",
                   "mask_prior", "log_with")
PLAIN_FIELDS = ("trigger", "base", "train_text_encoder", *MAIN_FIELDS, "batch_size", "alpha", "seed", "save_every",
                *ADVANCED_FIELDS, "quantize_base", "method", "targets")
NO_IMAGES = "**Error:** drop images above, or type a folder and press 'Use this folder', first"


@dataclass
class TrainForm:
    """The Train tab's fields, by TrainConfig name, with the adapter's name, the typed folder and the chosen
    one: what the Library's "load these settings" and the Tune tab's "train with the best" fill in."""

    name: gr.Textbox
    folder: gr.Textbox
    fields: dict[str, gr.components.Component]
    show_folder: Callable  # the typed folder's images and captions, as "Use this folder" shows them
    folder_view: list  # what show_folder fills

    def components(self) -> list:
        return [self.name, self.folder, *self.fields.values()]

    def values_of(self, settings: dict, name: str | None = None) -> list:
        """The page values that show `settings` (a TrainConfig as plain values), in components()' order;
        a field the settings leave out, and the name and folder when not given, stay as they are."""
        values = [gr.update() if name is None else name, str(settings["data"]) if "data" in settings else gr.update()]
        for field_name, component in self.fields.items():
            if field_name not in settings:
                values.append(gr.update())
            elif field_name == "preserve_prompts":  # the page holds the prompts, the config their file
                saved = Path(str(settings[field_name] or ""))
                values.append(saved.read_text() if settings[field_name] and saved.is_file() else "")
            elif settings[field_name] == default_of(declaration(TrainConfig, field_name)[0]):
                # the page's own starting value where the setting is the default (a name, not blank)
                values.append(page_value(TrainConfig, field_name, page_default(TrainConfig, field_name)))
            else:
                values.append(page_value(TrainConfig, field_name, settings[field_name]))
        return values


def folder_view(workspace: Path, folder_path: Path, shown_as: str = "", refused: list[str] = ()):
    """The Train tab's view of an image folder: the folder to train on, thumbnails, caption table and a report.
    Thumbnails are downscaled copies in the workspace, so a folder anywhere on the machine shows."""
    try:
        rows, skipped = caption_rows(folder_path)
    except (StyleloraError, OSError) as error:
        return "", [], pd.DataFrame(columns=["file", "caption"]), error_message(error)
    count = f"{len(rows)} image{'' if len(rows) == 1 else 's'}"
    lines = [f"{count} in `{shown_as or folder_path}`."] + [f"- skipped {s}" for s in skipped]
    if refused:
        lines.append(f"- {len(refused)} file{'' if len(refused) == 1 else 's'} refused, listed below")
    images = [str(p) for p in thumbnails(folder_path, [row[0] for row in rows], workspace)]
    return str(folder_path), images, pd.DataFrame(rows, columns=["file", "caption"]), "\n".join(lines)


def save_caption_table(folder_path, table) -> str:
    """Write the edited caption table as .txt sidecars; the answer shown under it."""
    if not folder_path:
        return NO_IMAGES
    try:
        rows = table.values.tolist() if isinstance(table, pd.DataFrame) else table
        return f"Saved {save_captions(Path(folder_path), rows)} captions as .txt files."
    except StyleloraError as error:
        return error_message(error)


def train_tab(session: Session) -> TrainForm:
    with gr.Row():
        # A long upload list scrolls inside its box rather than stretching the page
        uploads = gr.File(label="Drop images (and .txt captions) here", file_count="multiple", elem_id="uploads",
                          height=220)
        with gr.Column():
            name = widget(TrainConfig, "name")
            folder = gr.Textbox(label="...or a folder of images on this machine", elem_id="folder")
            load_folder = gr.Button("Use this folder", elem_id="use-folder")
    data_message = gr.Markdown(elem_id="data-message")
    refused_message = gr.Markdown(elem_id="refused")
    dataset = gr.State("")
    thumbs = gr.Gallery(label="Images", columns=10, height=160, elem_id="thumbs", interactive=False)
    captions = gr.Dataframe(headers=["file", "caption"], interactive=True, column_count=(2, "fixed"), elem_id="captions")
    save = gr.Button("Save captions", elem_id="save-captions")
    with gr.Row():
        # Not a setting of its own: choosing one fills the fields below with its settings (train/presets.toml)
        preset = gr.Dropdown([("none", "")] + [(name, name) for name in presets()], value="", elem_id="preset",
                             label="Preset (fills the fields below; shipped presets, docs/reference/options.md)")
        trigger = widget(TrainConfig, "trigger")
        base = base_dropdown(session.adapters, "train-base")
        text_encoder = widget(TrainConfig, "train_text_encoder")
    method, targets, method_only = method_row()
    with gr.Row():
        rank, steps, learning_rate, resolution = (widget(TrainConfig, name) for name in MAIN_FIELDS)
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            batch_size, alpha, seed, save_every, rslora, loraplus_ratio = (widget(TrainConfig, name) for name in (
                "batch_size", "alpha", "seed", "save_every", "rslora", "loraplus_ratio"))
        with gr.Row():
            advanced = [widget(TrainConfig, name) for name in ADVANCED_FIELDS]
            quantize = quantize_dropdown("quantize-base")
    stopping = stopping_row()
    buckets = bucket_row(dataset, base, resolution, stopping[0])  # stopping[0]: the validation split
    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="start")
        stop = gr.Button("Stop", elem_id="stop")
        suggest_settings = gr.Button("Suggest rank, alpha, rate and steps for these images", elem_id="suggest")
    # What a Start or Stop click answered, apart from the job's status: the poll rewrites that every
    # second, and a refusal shown there vanished before a person (or a test) could read it.
    start_message = gr.Markdown(elem_id="start-message")
    status = gr.Markdown(elem_id="train-status")
    progress = gr.HTML(elem_id="train-progress")
    log_y = gr.Checkbox(False, label="Log-scale loss axis", elem_id="log-y")
    loss_plot = gr.HTML(elem_id="loss-plot")
    samples = gr.Gallery(label="Previews (newest first)", columns=6, height=180, elem_id="samples", interactive=False)
    drawn = gr.State(None)  # what the loss plot last drew, so an unchanged plot is not sent again
    timer = gr.Timer(1.0)

    def on_upload(files, adapter_name):
        if not files:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        target = dataset_folder(session.workspace, adapter_name or "mystyle")  # a new folder for each upload
        pairs = [(Path(f), Path(getattr(f, "orig_name", None) or f).name) for f in files]
        _, refused = save_uploads(pairs, target)
        view = folder_view(session.workspace, target, target.relative_to(session.workspace).as_posix(), refused)
        # The upload list becomes what will be trained on: a refused file leaves it, and says why below it.
        kept = sorted(str(p) for p in target.iterdir() if p.is_file())
        return *view, kept, refused_list(refused)

    def on_folder(path):
        if not str(path).strip():
            return "", [], pd.DataFrame(columns=["file", "caption"]), "**Error:** type the folder's path first"
        return folder_view(session.workspace, Path(str(path).strip()).expanduser(), str(path).strip())

    uploads.upload(on_upload, [uploads, name], [dataset, thumbs, captions, data_message, uploads, refused_message])
    load_folder.click(on_folder, [folder], [dataset, thumbs, captions, data_message])
    folder.submit(on_folder, [folder], [dataset, thumbs, captions, data_message])
    save.click(save_caption_table, [dataset, captions], [data_message])

    # In METHOD_FIELDS' order: rslora and LoRA+ sit under Advanced, the rest in the method row.
    method_fields = [rslora, loraplus_ratio, *method_only]
    show_only_own_fields(method, targets, method_fields)

    plain = [trigger, base, text_encoder, rank, steps, learning_rate, resolution, batch_size, alpha, seed, save_every,
             *advanced, quantize, method, targets]

    def config_of(folder_path, adapter_name, *values) -> TrainConfig:
        """The run the form asks for; a StyleloraError says what is wrong."""
        fields = dict(zip(PLAIN_FIELDS, values[:len(plain)]))
        method_values = values[len(plain):len(plain) + len(method_fields)]
        stopping_values = values[len(plain) + len(method_fields):-len(buckets)]
        if not folder_path:
            raise DatasetError(NO_IMAGES.removeprefix("**Error:** "))
        return validate(TrainConfig(
            data=Path(folder_path), out=session.adapters / re.sub(r"[^A-Za-z0-9_-]", "_", adapter_name or "style"),
            **page_values(TrainConfig, fields),
            # Hidden fields keep what was typed before; only the shown ones are sent, and 0 / off means the default.
            **{name: value for name, value in page_values(TrainConfig, dict(zip(METHOD_FIELDS, method_values))).items()
               if value and name in own_fields(fields["method"], fields["targets"])},
            **stopping_settings(session.workspace, adapter_name, stopping_values),
            **bucket_settings(values[-len(buckets):])))

    def on_start(*values):
        try:
            session.job.start(config_of(*values))
        except StyleloraError as error:
            return error_message(error)
        return "Training started."

    form_inputs = [dataset, name, *plain, *method_fields, *stopping, *buckets]
    start.click(on_start, form_inputs, [start_message])
    queue_row(session, config_of, form_inputs, start_message, timer)
    stop.click(lambda: "Stopping after this step; the checkpoint is kept." if session.job.stop() else
               "Nothing is training.", None, [start_message])

    suggest_settings.click(suggested_fields, [dataset, base], [rank, steps, learning_rate, alpha, start_message])

    live = [status, progress, loss_plot, samples, drawn]
    # A poll is not a wait: no progress overlay (its "0.1s" timer) flickers over the status every second.
    timer.tick(lambda log, last: train_status(session, log, last), [log_y, drawn], live, show_progress="hidden")
    log_y.change(lambda log: train_status(session, log, None), [log_y], live, show_progress="hidden")
    named = dict(zip(PLAIN_FIELDS, plain)) | dict(zip(METHOD_FIELDS, method_fields)) | dict(
        zip(STOPPING_FIELDS, stopping)) | dict(zip(BUCKET_FIELDS, buckets))
    form = TrainForm(name, folder, named, on_folder, [dataset, thumbs, captions, data_message])
    preset.input(lambda chosen: form.values_of(preset_settings(chosen)), [preset], form.components())
    return form


def preset_settings(name: str) -> dict:
    """Every Train field's value under the preset `name` (the defaults where it says nothing; all defaults for
    none), as plain TrainConfig values; the folder, name and output are left out, and so is the base unless the
    preset names one."""
    values = from_dict({"data": ".", "preset": name or None}).to_json_dict()
    kept_as_typed = {"data", "out", "name"} | ({"base"} if not name or "base" not in preset_values(name) else set())
    return {key: value for key, value in values.items() if key not in kept_as_typed}


def refused_list(refused: list[str]) -> str:
    if not refused:
        return ""
    return "**Refused** (left out of the training folder):\n" + "\n".join(f"- {reason}" for reason in refused)


def _step_of(preview: Path) -> str:
    """The step a preview's file name (step-000120-0.png) holds."""
    return preview.stem.split("-")[1].lstrip("0") or "0"


def train_status(session: Session, log_y: bool, last_drawn):
    """The Train tab's status line, progress bar, loss plot and previews, as the running job stands."""
    state = session.job.snapshot()
    if state.status == "idle":
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    text = {"running": "Training:", "stopping": "Stopping:", "done": "Done:", "stopped": "Stopped:",
            "failed": "**Error:**"}[state.status]
    line = state.log[-1] if state.status == "running" and state.log else state.message
    message = line if line.startswith("Training") else error_message(line) if state.status == "failed" else \
        f"{text} {line}"
    key = (state.started_at, len(state.losses), len(state.validation_losses), bool(log_y))  # this run, this much
    if not state.losses:  # a new run, preparing: nothing of the last run's plot stays on the page
        plot = "" if last_drawn is not None else gr.skip()
    else:
        plot = loss_svg(state.losses, state.validation_losses, log_y, state.scores) if key != last_drawn else gr.skip()
    previews = [(str(p), f"kept step {_step_of(p)}, scored") for p in state.kept_previews] + \
        [(str(p), f"step {_step_of(p)}") for p in reversed(state.samples)]
    return message, progress_html(state, time.time()), plot, previews, key if state.losses else None
