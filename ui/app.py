"""The stylelora web UI: Train, Generate and Library tabs over the same library calls as the CLI.

This file only lays out the page and turns library results and errors into page messages;
training, blending and file checks all live in the `stylelora` package.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from stylelora.adapters.library import delete_adapter, import_adapter, list_adapters, rename_adapter
from stylelora.data.workspace import caption_rows, dataset_folder, save_captions, save_uploads
from stylelora.errors import StyleloraError
from stylelora.methods import METHOD_FIELDS, own_fields
from stylelora.model.precision import bf16_support
from stylelora.options import page_values
from stylelora.train.config import TrainConfig, validate
from stylelora.ui.train_fields import (base_dropdown, bucket_row, bucket_settings, method_row, quantize_dropdown,
                                       show_only_own_fields, stopping_row, stopping_settings, suggested_fields)
from stylelora.ui.generate_tab import generate_tab
from stylelora.ui.session import Session, error_message
from stylelora.ui.fields import widget
from stylelora.ui.train_view import loss_svg, progress_html
from stylelora.ui.tune_tab import tune_tab

MAX_UPLOAD = "50mb"


def build_app(workspace: Path, adapters: Path) -> gr.Blocks:
    session = Session(workspace, adapters)
    session.workspace.mkdir(parents=True, exist_ok=True)
    session.adapters.mkdir(parents=True, exist_ok=True)
    with gr.Blocks(title="stylelora") as app:
        gr.Markdown("# stylelora\nTeach Stable Diffusion a style from a few pictures, then paint with several styles.")
        with gr.Tab("Train", id="train"):
            train_tab(session)
        with gr.Tab("Generate", id="generate"):
            generate_tab(session)
        with gr.Tab("Library", id="library"):
            library_tab(session)
        with gr.Tab("Tune", id="tune"):
            tune_tab(session.workspace, session.adapters, session.tune_job, session.job)
    return app


def folder_view(folder_path: Path, extra: list[str]):
    """The Train tab's view of an image folder: its path, thumbnails, caption table and a report."""
    try:
        rows, skipped = caption_rows(folder_path)
    except StyleloraError as error:
        return str(folder_path), [], pd.DataFrame(columns=["file", "caption"]), error_message(error)
    lines = [f"{len(rows)} images in `{folder_path}`."] + [f"- skipped {s}" for s in skipped] + [f"- {e}" for e in extra]
    images = [str(folder_path / row[0]) for row in rows]
    return str(folder_path), images, pd.DataFrame(rows, columns=["file", "caption"]), "\n".join(lines)


def save_caption_table(folder_path, table) -> str:
    """Write the edited caption table as .txt sidecars; the answer shown under it."""
    if not folder_path:
        return "**Error:** upload images or choose a folder first"
    try:
        rows = table.values.tolist() if isinstance(table, pd.DataFrame) else table
        return f"Saved {save_captions(Path(folder_path), rows)} captions as .txt files."
    except StyleloraError as error:
        return error_message(error)


# The Train tab's plain fields, by TrainConfig name, in the order on_start receives them.
MAIN_FIELDS = ("rank", "max_steps", "learning_rate", "resolution")
ADVANCED_FIELDS = ("sample_every", "sample_prompts", "flip", "caption_dropout", "resume", "precision", "timestep_sampling",
                   "loss", "format", "optimizer", "optimizer_args", "block_lr")
PLAIN_FIELDS = ("trigger", "base", "train_text_encoder", *MAIN_FIELDS, "batch_size", "alpha", "seed", "save_every",
                *ADVANCED_FIELDS, "quantize_base", "method", "targets")


def train_tab(session: Session) -> None:
    with gr.Row():
        uploads = gr.File(label="Drop images (and .txt captions) here", file_count="multiple", elem_id="uploads")
        with gr.Column():
            name = widget(TrainConfig, "name")
            folder = gr.Textbox(label="...or a folder of images on this machine", elem_id="folder")
            load_folder = gr.Button("Use this folder", elem_id="use-folder")
    data_message = gr.Markdown(elem_id="data-message")
    refused_message = gr.Markdown(elem_id="refused")
    dataset = gr.State("")
    thumbs = gr.Gallery(label="Images", columns=10, height=160, elem_id="thumbs")
    captions = gr.Dataframe(headers=["file", "caption"], interactive=True, column_count=(2, "fixed"), elem_id="captions")
    save = gr.Button("Save captions", elem_id="save-captions")
    with gr.Row():
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
    samples = gr.Gallery(label="Previews (newest first)", columns=6, height=180, elem_id="samples")
    drawn = gr.State(None)  # what the loss plot last drew, so an unchanged plot is not sent again
    timer = gr.Timer(1.0)

    def on_upload(files, adapter_name):
        if not files:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        target = dataset_folder(session.workspace, adapter_name or "mystyle")
        pairs = [(Path(f), Path(getattr(f, "orig_name", None) or f).name) for f in files]
        _, refused = save_uploads(pairs, target)
        view = folder_view(target, [f"refused {r}" for r in refused])
        # The upload list becomes what will be trained on: a refused file leaves it, and says why below it.
        kept = sorted(str(p) for p in target.iterdir() if p.is_file())
        return *view, kept, refused_list(refused)

    def on_folder(path):
        return folder_view(Path(path).expanduser(), [])

    uploads.upload(on_upload, [uploads, name], [dataset, thumbs, captions, data_message, uploads, refused_message])
    load_folder.click(on_folder, [folder], [dataset, thumbs, captions, data_message])
    save.click(save_caption_table, [dataset, captions], [data_message])

    # In METHOD_FIELDS' order: rslora and LoRA+ sit under Advanced, the rest in the method row.
    method_fields = [rslora, loraplus_ratio, *method_only]
    show_only_own_fields(method, targets, method_fields)

    plain = [trigger, base, text_encoder, rank, steps, learning_rate, resolution, batch_size, alpha, seed, save_every,
             *advanced, quantize, method, targets]

    def on_start(folder_path, adapter_name, *values):
        fields = dict(zip(PLAIN_FIELDS, values[:len(plain)]))
        method_values = values[len(plain):len(plain) + len(method_fields)]
        stopping_values = values[len(plain) + len(method_fields):-len(buckets)]
        if not folder_path:
            return "**Error:** upload images or choose a folder first"
        try:
            config = validate(TrainConfig(
                data=Path(folder_path), out=session.adapters / re.sub(r"[^A-Za-z0-9_-]", "_", adapter_name or "style"),
                **page_values(TrainConfig, fields),
                # Hidden fields keep what was typed before; only the shown ones are sent, and 0 / off means
                # the default.
                **{name: value for name, value in page_values(TrainConfig, dict(zip(METHOD_FIELDS, method_values))).items()
                   if value and name in own_fields(fields["method"], fields["targets"])},
                **stopping_settings(session.workspace, adapter_name, stopping_values),
                **bucket_settings(values[-len(buckets):])))
            session.job.start(config)
        except StyleloraError as error:
            return error_message(error)
        return "Training started."

    start.click(on_start, [dataset, name, *plain, *method_fields, *stopping, *buckets], [start_message])
    stop.click(lambda: "Stopping after this step; the checkpoint is kept." if session.job.stop() else
               "Nothing is training.", None, [start_message])

    suggest_settings.click(suggested_fields, [dataset, base], [rank, steps, learning_rate, alpha, start_message])

    live = [status, progress, loss_plot, samples, drawn]
    timer.tick(lambda log, last: train_status(session, log, last), [log_y, drawn], live)
    log_y.change(lambda log: train_status(session, log, None), [log_y], live)


def refused_list(refused: list[str]) -> str:
    if not refused:
        return ""
    return "**Refused** (left out of the training folder):\n" + "\n".join(f"- {reason}" for reason in refused)


def train_status(session: Session, log_y: bool, last_drawn):
    """The Train tab's status line, progress bar, loss plot and previews, as the running job stands."""
    state = session.job.snapshot()
    if state.status == "idle":
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    text = {"running": "Training:", "stopping": "Stopping:", "done": "Done:", "stopped": "Stopped:",
            "failed": "**Error:**"}[state.status]
    line = state.log[-1] if state.status == "running" and state.log else state.message
    message = line if line.startswith("Training") else f"{text} {line}"
    key = (state.started_at, len(state.losses), len(state.validation_losses), bool(log_y))  # this run, this much
    if not state.losses:  # a new run, preparing: nothing of the last run's plot stays on the page
        plot = "" if last_drawn is not None else gr.skip()
    else:
        plot = loss_svg(state.losses, state.validation_losses, log_y) if key != last_drawn else gr.skip()
    previews = [(str(p), f"step {p.stem.split('-')[1].lstrip('0') or 0}") for p in reversed(state.samples)]
    return message, progress_html(state, time.time()), plot, previews, key if state.losses else None


def library_tab(session: Session) -> None:
    table = gr.Dataframe(headers=["name", "base", "method", "rank", "trigger", "images", "created"], interactive=False,
                         elem_id="library")
    previews = gr.Gallery(label="Previews", columns=8, height=140, elem_id="previews")
    gr.Markdown(f"`stylelora serve --adapters {session.adapters}` serves these adapters over HTTP, by name "
                "(docs/guides/serving.md).", elem_id="library-serve")
    refresh = gr.Button("Refresh", elem_id="library-refresh")
    message = gr.Markdown(elem_id="library-message")
    with gr.Row():
        upload = gr.File(label="Import an adapter (.safetensors)", file_count="single", elem_id="import")
    with gr.Row():
        target = gr.Dropdown(choices=[], label="Adapter", elem_id="library-target")
        new_name = gr.Textbox(label="New name")
        rename = gr.Button("Rename")
    with gr.Row():
        confirm = gr.Checkbox(False, label="Yes, delete it")
        delete = gr.Button("Delete", variant="stop")

    def listing(note: str = ""):
        entries = list_adapters(session.adapters)
        rows = [[e.name, e.architecture, e.method, e.rank, e.trigger, e.images, e.created] for e in entries]
        return (pd.DataFrame(rows, columns=["name", "base", "method", "rank", "trigger", "images", "created"]),
                [(str(e.preview), e.name) for e in entries if e.preview],
                gr.update(choices=[e.name for e in entries]), note)

    def on_import(file):
        # The upload box is emptied after each import, so the next file can be dropped straight in.
        if file is None:
            return *listing(), None
        try:
            path = import_adapter(Path(file), session.adapters, Path(getattr(file, "orig_name", None) or file).name)
        except StyleloraError as error:
            return *listing(error_message(error)), None
        return *listing(f"Imported {path.name}."), None

    def on_rename(name, new):
        try:
            rename_adapter(session.adapter_paths()[name], new, session.adapters)
        except (StyleloraError, KeyError) as error:
            return listing(error_message(error))
        return listing(f"Renamed {name} to {new}.")

    def on_delete(name, sure):
        if not sure:
            return listing("Tick 'Yes, delete it' to confirm.")
        try:
            delete_adapter(session.adapter_paths()[name], session.adapters)
        except (StyleloraError, KeyError) as error:
            return listing(error_message(error))
        return listing(f"Deleted {name}.")

    outputs = [table, previews, target, message]
    refresh.click(listing, None, outputs)
    upload.upload(on_import, [upload], outputs + [upload])
    rename.click(on_rename, [target, new_name], outputs)
    delete.click(on_delete, [target, confirm], outputs)


def launch(workspace: Path, adapters: Path, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           auth: tuple[str, str] | None = None, block: bool = True):
    app = build_app(workspace, adapters)
    app.queue(default_concurrency_limit=1)
    return app.launch(server_name=host, server_port=port, share=share, auth=auth, max_file_size=MAX_UPLOAD,
                      allowed_paths=[str(workspace.resolve()), str(adapters.resolve())], prevent_thread_lock=not block,
                      quiet=not block)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stylelora ui", description="Open the stylelora web UI.")
    parser.add_argument("--workspace", type=Path, default=Path("stylelora-workspace"))
    parser.add_argument("--adapters", type=Path, default=Path("adapters"))
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="make a public Gradio link (off by default)")
    parser.add_argument("--auth", help="user:password required to open the page")
    args = parser.parse_args(argv)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    if args.auth and len(auth) != 2:
        parser.error("--auth takes user:password")
    bf16_support()  # probe (once per machine) before any kernel runs here, so a needed oneDNN cap takes hold
    launch(args.workspace, args.adapters, args.host, args.port, args.share, auth)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
