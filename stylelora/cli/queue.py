"""The `stylelora queue` command: add a training run (the flags of `stylelora train`), run the queue, list it,
remove a run. The queue is a file (train/run_queue.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..train.run_queue import DEFAULT_FILE, QUEUE_COLUMNS, SAVE_EVERY
from .stop import StopRequest
from .train_args import add_train_arguments, train_config_of

EXIT_INTERRUPTED = 130


def add_queue_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("queue", help="a queue of training runs, trained one after another",
                            description="A queue of training runs in a file. Runs train one after another; a queue "
                                        "that was stopped or killed continues from each run's last checkpoint.")
    actions = p.add_subparsers(dest="queue_command", required=True)
    add = actions.add_parser("add", help="add a run: the same arguments as `stylelora train`",
                             description="Add a training run: the same arguments as `stylelora train`. Paths are "
                                         f"kept absolute; a run without --save-every checkpoints every {SAVE_EVERY} "
                                         "steps, so a killed queue loses little.")
    add_train_arguments(add)
    run = actions.add_parser("run", help="train the waiting runs, one after another")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    actions.add_parser("list", help="each run and its state")
    remove = actions.add_parser("remove", help="take a run out of the queue")
    remove.add_argument("id", type=int, help="the run's number, as `queue list` shows it")
    for action in (add, run, actions.choices["list"], remove):
        action.add_argument("--file", type=Path, default=DEFAULT_FILE, help=f"the queue file ({DEFAULT_FILE})")


def run_queue_command(args: argparse.Namespace) -> int:
    from ..errors import TrainingInterrupted
    from ..train import run_queue as queue

    if args.queue_command == "add":
        run = queue.add_run(args.file, train_config_of(args))
        print(f"Queued run {run.id}, {run.name}: {queue.run_length(run.settings)}, into {run.settings['out']}. "
              f"Train the queue with `stylelora queue run{'' if args.file == DEFAULT_FILE else f' --file {args.file}'}`.")
    elif args.queue_command == "remove":
        run = queue.remove_run(args.file, args.id)
        print(f"Removed run {run.id}, {run.name} ({run.state}).")
    elif args.queue_command == "list":
        rows = queue.queue_table(queue.shown_runs(args.file))
        print("\n".join("\t".join(row) for row in [QUEUE_COLUMNS, *rows]) if rows else f"{args.file}: no runs queued")
    else:
        stop = StopRequest()  # Ctrl-C or SIGTERM: the run saves a checkpoint and stays waiting
        try:
            with stop.on_signals():
                done = queue.run_queue(args.file, log=lambda m: print(m, file=sys.stderr), should_stop=stop,
                                       progress_bar=not args.quiet)
        except TrainingInterrupted as stopped:
            print(f"stylelora: {stopped}; `stylelora queue run` continues the queue", file=sys.stderr)
            return EXIT_INTERRUPTED
        failed = [r for r in queue.read_queue(args.file) if r.state == "failed"]
        print(f"Queue done: {len(done)} run(s) trained this time"
              + (f"; {len(failed)} failed (`stylelora queue list` says why)" if failed else "") + ".")
    return 0
