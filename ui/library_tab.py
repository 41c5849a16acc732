"""The Library tab: the adapters on disk, each one's file (to download), its path, how it was trained and its
preview, its settings loaded back into the Train tab, and import, rename and delete. Layout only: the library
is stylelora.adapters.library."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from stylelora.adapters.library import AdapterEntry, delete_adapter, import_adapter, list_adapters, rename_adapter
from stylelora.errors import StyleloraError
from stylelora.ui.session import Session, error_message, shown_path
from stylelora.ui.train_tab import TrainForm

COLUMNS = ["name", "base", "method", "rank", "trigger", "images", "steps", "created"]


def details_markdown(entry: AdapterEntry) -> str:
    """What the Library says of one adapter: where its file is and how it was trained."""
    kept = (f"step {entry.kept_step} of {entry.steps} (the best validation)" if entry.kept_step and
            entry.kept_step != entry.steps else "the last step")
    rows = [("file", f"`{shown_path(entry.path)}`"), ("method", entry.method), ("rank", str(entry.rank)),
            ("base", entry.base or entry.architecture), ("steps", entry.steps or "not recorded"),
            ("weights from", kept if entry.steps else "not recorded"),
            ("trigger word", f"`{entry.trigger}`" if entry.trigger else "none"), ("images", str(entry.images)),
            ("created", entry.created)]
    return f"### {entry.name}\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def library_tab(session: Session, form: TrainForm, tabs: gr.Tabs):
    """Lays the tab out; returns what the page refreshes when the library changes: a function of no arguments
    and the components it fills."""
    table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="library")
    with gr.Row():
        with gr.Column(scale=3):
            target = gr.Dropdown(choices=[], label="Adapter (or click its row above)", elem_id="library-target")
            details = gr.Markdown(elem_id="library-details")
            with gr.Row():
                download = gr.DownloadButton("Download the .safetensors file", elem_id="library-download",
                                             visible=False)
                load = gr.Button("Load these settings into Train", elem_id="library-load", visible=False)
        # Each adapter's preview shows here, under its name, at a size it can be seen (a gallery of all of them
    # cropped and enlarged them, with no names)
    preview = gr.Image(label="Its latest preview", elem_id="library-preview", height=256, interactive=False,
                           buttons=[], scale=1)
    gr.Markdown(f"`stylelora serve --adapters {shown_path(session.adapters)}` serves these adapters over HTTP, by "
                "name (docs/guides/serving.md).", elem_id="library-serve")
    refresh = gr.Button("Refresh", elem_id="library-refresh")
    message = gr.Markdown(elem_id="library-message")
    with gr.Row():
        upload = gr.File(label="Import an adapter (.safetensors)", file_count="single", elem_id="import")
    with gr.Row():
        new_name = gr.Textbox(label="New name for the chosen adapter")
        rename = gr.Button("Rename")
    with gr.Row():
        confirm = gr.Checkbox(False, label="Yes, delete it")
        delete = gr.Button("Delete the chosen adapter", variant="stop")

    def listing(note: str = ""):
        entries = list_adapters(session.adapters)
        rows = [[e.name, e.base or e.architecture, e.method, e.rank, e.trigger, e.images, e.steps, e.created]
                for e in entries]
        return pd.DataFrame(rows, columns=COLUMNS), gr.update(choices=[e.name for e in entries]), note

    def on_choose(name):
        entry = next((e for e in list_adapters(session.adapters) if e.name == name), None)
        if entry is None:
            return "", gr.update(visible=False, value=None), gr.update(visible=False), None
        return (details_markdown(entry), gr.update(visible=True, value=str(entry.path)),
                gr.update(visible=bool(entry.settings)), str(entry.preview) if entry.preview else None)

    def on_row(table_, event: gr.SelectData):
        return table_.iloc[event.index[0], 0]

    def on_load(name):
        entry = next((e for e in list_adapters(session.adapters) if e.name == name), None)
        if entry is None or not entry.settings:
            return *[gr.update()] * len(form.components()), gr.update(), "**Error:** this file does not say how it was trained"
        return (*form.values_of(entry.settings, entry.name), gr.Tabs(selected="train"),
                f"Loaded {entry.name}'s settings into the Train tab.")

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

    outputs = [table, target, message]
    refresh.click(listing, None, outputs)
    upload.upload(on_import, [upload], outputs + [upload])
    rename.click(on_rename, [target, new_name], outputs)
    delete.click(on_delete, [target, confirm], outputs)
    table.select(on_row, [table], [target])
    target.change(on_choose, [target], [details, download, load, preview])
    load.click(on_load, [target], [*form.components(), tabs, message]).then(
        form.show_folder, [form.folder], form.folder_view)
    return lambda: listing()[:2], outputs[:2]
