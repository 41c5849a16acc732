"""The Train tab's run queue: "Add to queue" queues the form's run in the workspace's queue file, "Run the queue"
trains the waiting runs one after another in the page's training job, and the table shows each run's state. The
queue is the library's (stylelora.train.run_queue): a file, so it outlives the page and the machine."""

from __future__ import annotations

from typing import Callable

import gradio as gr
import pandas as pd

from stylelora.errors import StyleloraError
from stylelora.train.config import TrainConfig
from stylelora.train.run_queue import QUEUE_COLUMNS, add_run, queue_table, shown_runs
from stylelora.ui.session import Session, error_message


def queue_rows(session: Session) -> pd.DataFrame:
    try:
        rows = queue_table(shown_runs(session.queue_file))
    except StyleloraError as error:
        rows = [["", "unreadable", "", "", "", str(error)]]
    return pd.DataFrame(rows, columns=QUEUE_COLUMNS)


def queue_row(session: Session, config_of: Callable[..., TrainConfig], inputs: list, message: gr.Markdown,
              timer: gr.Timer) -> None:
    """The buttons and the table; `config_of(*inputs)` is the form's run, as Start would train it."""
    with gr.Row():
        add = gr.Button("Add to queue", elem_id="queue-add")
        run = gr.Button("Run the queue", elem_id="queue-run")
    table = gr.Dataframe(queue_rows(session), headers=QUEUE_COLUMNS, interactive=False, elem_id="queue",
                         label=f"Queue (runs train one after another; kept in {session.queue_file.name})")

    def on_add(*values):
        try:
            queued = add_run(session.queue_file, config_of(*values))
        except StyleloraError as error:
            return error_message(error), gr.skip()
        return f"Queued run {queued.id}, {queued.name}.", queue_rows(session)

    def on_run():
        try:
            session.job.start_queue(session.queue_file)
        except StyleloraError as error:
            return error_message(error)
        return "The queue is training."

    def on_tick(shown):
        rows = queue_rows(session)
        now = rows.values.tolist()
        return (gr.skip(), shown) if now == shown else (rows, now)  # an unchanged table is not sent again

    shown = gr.State(None)
    add.click(on_add, inputs, [message, table])
    run.click(on_run, None, [message])
    timer.tick(on_tick, [shown], [table, shown], show_progress="hidden")
