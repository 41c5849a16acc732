"""The Tune tab: start a `stylelora tune` study in the background, list its trials as they finish, and train
with the best one's settings. Layout only: the study is `stylelora.tune`, the training `stylelora.jobs`."""

from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
import pandas as pd

from stylelora.errors import StyleloraError
from stylelora.train.settings import from_dict, load_toml
from stylelora.tune.results import best_mark, best_of, objective_of, table_header, table_row
from stylelora.tune.space import TuneConfig, tune_config_from_dict, validate_tune
from stylelora.ui.fields import widget
from stylelora.ui.session import Session, error_message, shown_path
from stylelora.ui.train_fields import base_dropdown
from stylelora.ui.train_tab import TrainForm

TEXT_ENCODER_CHOICES = {"off": "off", "on": "on", "search both": "off,on"}


def study_settings(workspace: Path, folder: str, base: str, objective: str, confirm, trials, minutes, min_steps,
                   max_steps, ranks: str, methods: list[str], targets: list[str], text_encoder: str) -> dict:
    """The tab's fields as `stylelora tune` settings (flag names); 0 minutes means no time limit."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", Path(folder).name or "study")
    return {"data": folder, "out": str(workspace / "tune" / name), "base": base or "mini", "objective": objective,
            "confirm": int(confirm), "trials": int(trials) or None, "timeout": float(minutes) * 60 if minutes else None,
            "min-steps": int(min_steps), "max-steps": int(max_steps), "ranks": ranks, "methods": ",".join(methods),
            "target-presets": ",".join(targets), "text-encoder": TEXT_ENCODER_CHOICES[text_encoder]}


def tune_tab(session: Session, form: TrainForm) -> None:
    workspace, adapters, tune_job, training_job = session.workspace, session.adapters, session.tune_job, session.job
    gr.Markdown("Search rank, alpha, learning rate and steps (and, if you like, the method, modules and text "
                "encoder) with optuna. Each trial trains an adapter on most of the folder and is scored on the "
                "images it held out (or, on the mini base, by the judge). The study is kept: Start again continues it.")
    with gr.Row():
        folder = gr.Textbox(label="Image folder on this machine", elem_id="tune-folder")
        base = base_dropdown(adapters, "tune-base")
        objective, confirm = widget(TuneConfig, "objective"), widget(TuneConfig, "confirm")
    with gr.Row():
        trials = widget(TuneConfig, "trials")
        # The page asks minutes, the config (--timeout) seconds or a duration: study_settings converts.
        minutes = gr.Number(0, label="Time limit in minutes (0 = none)", elem_id="tune-minutes")
        min_steps, max_steps = widget(TuneConfig, "min_steps"), widget(TuneConfig, "max_steps")
    with gr.Row():
        ranks, methods, targets = (widget(TuneConfig, name) for name in ("ranks", "methods", "target_presets"))
        # The page's three choices stand for the flag's "off", "on" and "off,on".
        text_encoder = gr.Dropdown(list(TEXT_ENCODER_CHOICES), value="off", label="Text encoder", elem_id="tune-te")
    with gr.Row():
        start = gr.Button("Start the study", variant="primary", elem_id="tune-start")
        stop = gr.Button("Stop", elem_id="tune-stop")
    start_message = gr.Markdown(elem_id="tune-start-message")
    status = gr.Markdown(elem_id="tune-status")
    table = gr.Dataframe(headers=table_header("loss"), interactive=False, elem_id="tune-trials-table")
    with gr.Row():
        train_best = gr.Button("Train the best settings on every image", elem_id="tune-train-best")
        best_message = gr.Markdown(elem_id="tune-best-message")
    timer = gr.Timer(1.0)
    fields = [folder, base, objective, confirm, trials, minutes, min_steps, max_steps, ranks, methods, targets,
              text_encoder]

    def on_start(*values):
        if not values[0]:
            return "**Error:** name a folder of images first"
        try:
            config = validate_tune(tune_config_from_dict(study_settings(workspace, *values)))
            tune_job.start(config)
        except StyleloraError as error:
            return error_message(error)
        return f"Study started in `{shown_path(config.out_dir)}`."

    def poll():
        state = tune_job.snapshot()
        if state.status == "idle":
            return gr.skip(), gr.skip()
        word = {"running": "Running", "stopping": "Stopping", "done": "Done", "stopped": "Stopped",
                "failed": "**Error**"}[state.status]
        objective_ = objective_of(state.trials)
        best = best_of(state.trials, objective_)
        cells = [table_row(r, objective_) for r in state.trials]
        for report, row in zip(state.trials, cells):
            row[1] += best_mark(report) if report is best else ""
        rows = pd.DataFrame(cells, columns=table_header(objective_))
        count = f" ({len(state.trials)} trials finished)" if state.status in ("running", "stopping") else ""
        return f"{word}: {state.message}{count}", rows

    def on_train_best(folder_):
        """Start the best trial's training and show its settings in the Train tab's fields."""
        best = tune_job.snapshot().best_toml
        unchanged = [gr.update()] * len(form.components())
        if best is None or not Path(best).exists():
            return "**Error:** no study has finished here yet", *unchanged
        name = re.sub(r"[^A-Za-z0-9_-]", "_", Path(folder_).name or "style") + "-tuned"
        try:
            config = from_dict(load_toml(best) | {"out": adapters / name})
            training_job.start(config)
        except StyleloraError as error:
            return error_message(error), *unchanged
        return (f"Training {name} with the best trial's settings (`{shown_path(best)}`); follow it in the Train tab, "
                "whose fields now show them.", *form.values_of(config.to_json_dict(), name))

    start.click(on_start, fields, [start_message])
    stop.click(lambda: "Stopping after this step; the trial is queued again." if tune_job.stop() else
               "No study is running.", None, [start_message])
    train_best.click(on_train_best, [folder], [best_message, *form.components()]).then(
        form.show_folder, [form.folder], form.folder_view)
    timer.tick(poll, None, [status, table], show_progress="hidden")  # a poll, not a wait: no overlay
