"""Training in the background: one job at a time, with live progress, a loss history and Stop.

The web UI polls `TrainingJob.snapshot()`; the training itself is the library's `train()`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..errors import StyleloraError, TrainingInterrupted
from .config import TrainConfig
from .loop import Progress, train


@dataclass
class JobState:
    status: str = "idle"  # idle, running, stopping, done, stopped, failed
    message: str = ""
    step: int = 0
    total_steps: int = 0
    steps_per_second: float = 0.0
    seconds_left: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    validation_losses: list[tuple[int, float]] = field(default_factory=list)
    scores: list[tuple[int, float, float]] = field(default_factory=list)  # (step, style, prompt), --select-by score
    validating: bool = False  # the run measures a validation loss
    samples: list[Path] = field(default_factory=list)
    adapter_path: Path | None = None
    kept_previews: list[Path] = field(default_factory=list)  # the kept step's scored previews, once done
    log: list[str] = field(default_factory=list)
    started_at: float = 0.0  # time.time() when the run started, and when it finished (0: not yet)
    finished_at: float = 0.0


class BackgroundJob:
    """At most one run at a time in a daemon thread, with a stop flag it reads between steps. The state is a
    dataclass with `status`, `message` and `finished_at`; the page polls a copy of it."""

    busy = "a job is already running; stop it or wait for it to finish"

    def __init__(self, state) -> None:
        self._lock = threading.Lock()
        self._state = state
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _launch(self, state, target, *args) -> None:
        with self._lock:
            if self.running:
                raise StyleloraError(self.busy)
            self._stop.clear()
            self._state = state
            self._thread = threading.Thread(target=target, args=args, daemon=True, name=f"stylelora-{type(self).__name__}")
            self._thread.start()

    def stop(self) -> bool:
        """Ask the running job to stop after its step; False when nothing is running (nothing to stop)."""
        if not self.running:
            return False
        self._stop.set()
        with self._lock:
            self._state.status = "stopping"
        return True

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _finish(self, status: str, message: str) -> None:
        with self._lock:
            self._state.status, self._state.message = status, message
            self._state.finished_at = time.time()

    def _guarded(self, work: Callable[[], str], stopped: Callable[[TrainingInterrupted], str]) -> None:
        """Run `work` and finish with its message; a stop, a StyleloraError or any other error is said in one
        line, and the page stays alive."""
        try:
            message = work()
        except TrainingInterrupted as stop:
            self._finish("stopped", stopped(stop))
        except StyleloraError as error:
            self._finish("failed", str(error))
        except Exception as error:
            self._finish("failed", f"unexpected error: {type(error).__name__}: {error}")
        else:
            self._finish("done", message)


class TrainingJob(BackgroundJob):
    """Runs at most one training at a time in a daemon thread."""

    busy = "a training is already running; stop it or wait for it to finish"

    def __init__(self) -> None:
        super().__init__(JobState())

    def start(self, config: TrainConfig) -> None:
        self._launch(JobState(status="running", message=f"starting {config.adapter_name}", validating=config.validating,
                              started_at=time.time()), self._run, config)

    def snapshot(self) -> JobState:
        with self._lock:
            s = self._state
            return replace(s, losses=list(s.losses), validation_losses=list(s.validation_losses),
                           scores=list(s.scores), samples=list(s.samples), log=list(s.log))

    def start_queue(self, path: Path) -> None:
        """Train the queue in `path` (train/run_queue.py), one run after another, with this job's progress."""
        self._launch(JobState(status="running", message=f"training the queue {path}", started_at=time.time()),
                     self._run_queue, path)

    def _on_progress(self, progress: Progress) -> None:
        with self._lock:
            s = self._state
            if s.losses and progress.step <= s.losses[-1][0]:  # the queue's next run: its own curve
                s.losses, s.validation_losses, s.scores, s.samples = [], [], [], []
            s.step, s.total_steps = progress.step, progress.total_steps
            s.steps_per_second, s.seconds_left = progress.steps_per_second, progress.seconds_left
            s.losses.append((progress.step, progress.loss))
            if progress.validation_loss is not None:
                s.validation_losses.append((progress.step, progress.validation_loss))
            if progress.scores is not None:
                s.scores.append((progress.step, progress.scores.style, progress.scores.prompt))
            s.samples += progress.samples

    def _log(self, line: str) -> None:
        with self._lock:
            self._state.log.append(line)

    def _run(self, config: TrainConfig) -> None:
        started = self._state.started_at

        def work() -> str:
            result = train(config, on_progress=self._on_progress, should_stop=self._stop.is_set, log=self._log,
                           progress_bar=False)
            with self._lock:
                self._state.adapter_path = result.adapter_path
                self._state.kept_previews = sorted((config.out_dir / "scored").glob(f"step-{result.kept_step:06d}-*.png"))
            kept = (f"; kept step {result.kept_step} of {result.steps}, {result.kept_measures()}"
                    if result.measured else "")
            return f"adapter written to {result.adapter_path} in {time.time() - started:.0f}s{kept}"

        self._guarded(work, str)

    def _run_queue(self, path: Path) -> None:
        from .run_queue import read_queue, run_queue

        def work() -> str:
            done = run_queue(path, log=self._log, should_stop=self._stop.is_set, on_progress=self._on_progress,
                             progress_bar=False)
            failed = sum(r.state == "failed" for r in read_queue(path))
            return f"the queue is done: {len(done)} run(s) trained" + (f", {failed} failed" if failed else "")

        self._guarded(work, lambda stop: f"{stop}; 'Run the queue' continues it")
