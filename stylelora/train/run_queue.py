"""A queue of training runs in a file: `stylelora queue add` (and the web UI's "Add to queue") append a run's
settings; `stylelora queue run` trains them one after another.

The queue is a JSON file written atomically under a lock, so adding runs while the queue trains loses nothing.
A run is waiting, running, done or failed. Every run trains with --resume in an output folder of its own, so a
queue killed mid-run (Ctrl-C, SIGKILL, a reboot) continues, at the next `queue run`, from that run's last
checkpoint and ends with the adapters an uninterrupted queue writes. A failed run is marked failed with its
one-line error, and the queue goes on. One runner works on a queue at a time (a second is refused in one line).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, StyleloraError, TrainingInterrupted
from ..files import write_atomically
from .config import TrainConfig, validate
from .settings import from_dict

DEFAULT_FILE = Path("queue.json")
SAVE_EVERY = 100  # a queued run without --save-every checkpoints this often: a killed queue loses at most that
_PATHS = ("data", "validation_data", "preserve_prompts", "masks", "reg_data")


@dataclasses.dataclass
class QueuedRun:
    """One run of the queue: its settings (TrainConfig values), its state, and what came of it."""

    id: int
    settings: dict[str, Any]
    state: str = "waiting"
    message: str = ""  # a failed run's error, a finished run's adapter
    added: float = 0.0
    finished: float = 0.0

    @property
    def name(self) -> str:
        return str(self.settings.get("name") or "")


@contextmanager
def _locked(path: Path, suffix: str, blocking: bool = True) -> Iterator[bool]:
    """An exclusive lock on the file beside `path` named by `suffix`; yields False when `blocking` is off and
    another process holds it. The kernel drops the lock when its holder dies, however it dies."""
    lock = path.with_name(path.name + suffix)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True


def read_queue(path: Path) -> list[QueuedRun]:
    """The queue's runs, in the order they were added ([] when there is no queue file yet)."""
    try:
        raw = json.loads(Path(path).read_text())
        return [QueuedRun(**run) for run in raw["runs"]]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path}: not a stylelora queue file ({error}); give another --file") from None


def _write(path: Path, runs: list[QueuedRun]) -> None:
    write_atomically(path, json.dumps({"runs": [dataclasses.asdict(r) for r in runs]}, indent=1).encode())


def _update(path: Path, change: Callable[[list[QueuedRun]], Any]) -> Any:
    """Read, change and write the queue under its lock: adds and state changes never overwrite each other."""
    with _locked(path, ".lock"):
        runs = read_queue(path)
        result = change(runs)
        _write(path, runs)
        return result


def queued_settings(config: TrainConfig) -> dict[str, Any]:
    """`config` as a queued run keeps it: every path absolute (a queue runs from anywhere), the output folder
    and adapter name fixed now, checkpoints on, and only what differs from the defaults."""
    resolved = {name: Path(getattr(config, name)).expanduser().resolve() for name in _PATHS
                if getattr(config, name) is not None}
    out = config.out.expanduser().resolve() if config.out is not None else config.out_dir.resolve()
    config = dataclasses.replace(config, **resolved, out=out, name=config.adapter_name,
                                 save_every=config.save_every or SAVE_EVERY)
    defaults = TrainConfig(data=Path(".")).to_json_dict()
    return {key: value for key, value in config.to_json_dict().items()
            if key == "data" or (value is not None and value != defaults[key])}


def add_run(path: Path, config: TrainConfig) -> QueuedRun:
    """Append a run of `config` (checked now, so a bad setting is refused at once, not at its turn)."""
    from .checkpoint import latest_checkpoint  # it loads peft (3 s): not for `stylelora --help` or `queue list`

    validate(config)
    settings = queued_settings(config)
    out_dir = from_dict(settings).out_dir
    if not config.resume and latest_checkpoint(out_dir) is not None:
        raise ConfigError(f"{out_dir}: holds a checkpoint of an earlier run; give another --out or --name, or add "
                          "--resume to continue that run")

    def append(runs: list[QueuedRun]) -> QueuedRun:
        for run in runs:
            if run.state in ("waiting", "running") and from_dict(run.settings).out_dir == out_dir:
                raise ConfigError(f"queued run {run.id} already writes to {out_dir}; give another --out or --name")
        run = QueuedRun(max((r.id for r in runs), default=0) + 1, settings, added=time.time())
        runs.append(run)
        return run

    return _update(path, append)


def remove_run(path: Path, run_id: int) -> QueuedRun:
    """Take a run that is not training out of the queue."""

    def remove(runs: list[QueuedRun]) -> QueuedRun:
        run = next((r for r in runs if r.id == run_id), None)
        if run is None:
            raise ConfigError(f"{path}: no run {run_id}; `stylelora queue list` shows the runs")
        if run.state == "running" and not _runner_free(path):
            raise ConfigError(f"run {run_id} is training; stop `stylelora queue run` first")
        runs.remove(run)
        return run

    return _update(path, remove)


def _runner_free(path: Path) -> bool:
    with _locked(path, ".run.lock", blocking=False) as free:
        return free


def shown_runs(path: Path) -> list[QueuedRun]:
    """The queue as a person should read it: a run left running by a runner that is gone shows as interrupted."""
    runs = read_queue(path)
    if any(r.state == "running" for r in runs) and _runner_free(path):
        runs = [dataclasses.replace(r, state="interrupted", message="`queue run` resumes it from its checkpoint")
                if r.state == "running" else r for r in runs]
    return runs


def _set(path: Path, run_id: int, **changes: Any) -> None:
    def change(runs: list[QueuedRun]) -> None:
        for run in runs:
            if run.id == run_id:
                for key, value in changes.items():
                    setattr(run, key, value)

    _update(path, change)


def _next_run(path: Path) -> QueuedRun | None:
    """The run to train now: one left running by a runner that died (it resumes), else the first waiting."""
    runs = read_queue(path)
    return (next((r for r in runs if r.state == "running"), None)
            or next((r for r in runs if r.state == "waiting"), None))


def run_queue(path: Path, log: Callable[[str], None] = print, should_stop: Callable[[], bool] | None = None,
              on_progress: Callable | None = None, progress_bar: bool = True) -> list[QueuedRun]:
    """Train the queue's waiting runs one after another (and a run a dead runner left); return the runs this
    call finished. A stop on request leaves the current run waiting, with its checkpoint, and raises
    TrainingInterrupted; another runner at work on the queue is a one-line ConfigError."""
    from .loop import train  # the training stack loads when a queue runs, not when runs are listed or added

    finished: list[QueuedRun] = []
    with _locked(path, ".run.lock", blocking=False) as free:
        if not free:
            raise ConfigError(f"{path}: another `stylelora queue run` is training this queue; wait for it, or "
                              "stop it and run again")
        while (run := _next_run(path)) is not None:
            _set(path, run.id, state="running", message=f"pid {os.getpid()}")
            log(f"Queue: run {run.id}, {run.name} ({len([r for r in read_queue(path) if r.state == 'waiting'])} "
                "waiting after it).")
            try:
                config = dataclasses.replace(from_dict(run.settings), resume=True)
                result = train(config, on_progress=on_progress, should_stop=should_stop, log=log,
                               progress_bar=progress_bar)
            except TrainingInterrupted as stopped:
                said = str(stopped).split("; run the same command")[0]  # the queue resumes it, not the user
                _set(path, run.id, state="waiting", message=f"stopped: {said}")
                raise TrainingInterrupted(f"queue run {run.id}: {said}") from None
            except (StyleloraError, OSError) as error:
                message = (str(error) if isinstance(error, StyleloraError)
                           else f"{error.filename or 'the disk'}: {error.strerror or error}")
                _set(path, run.id, state="failed", message=message, finished=time.time())
                log(f"Queue: run {run.id} failed: {message}")
                continue
            _set(path, run.id, state="done", message=str(result.adapter_path), finished=time.time())
            finished.append(dataclasses.replace(run, state="done", message=str(result.adapter_path)))
    return finished


QUEUE_COLUMNS = ["run", "state", "adapter name", "images", "length", "adapter or error"]


def run_length(settings: dict[str, Any]) -> str:
    if settings.get("max_steps"):
        return f"{settings['max_steps']} steps"
    return f"{settings['epochs']} epochs" if settings.get("epochs") else "the default"


def queue_table(runs: list[QueuedRun]) -> list[list[str]]:
    """The queue as rows of text (QUEUE_COLUMNS): id, state, name, folder, length, and the adapter or the error."""
    return [[str(r.id), r.state, r.name, str(r.settings.get("data", "")), run_length(r.settings), r.message]
            for r in runs]
