"""A study in the background, for the web UI: one at a time, its finished trials listed as they come, Stop."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data.folder import check_folder
from ..train.jobs import BackgroundJob
from .results import TrialReport
from .search import tune
from .space import TuneConfig


@dataclass
class TuneState:
    status: str = "idle"  # idle, running, stopping, done, stopped, failed
    message: str = ""
    trials: list[TrialReport] = field(default_factory=list)  # in the order they finished
    best_toml: Path | None = None
    log: list[str] = field(default_factory=list)
    finished_at: float = 0.0  # time.time() when the study finished (0: not yet)


class TuneJob(BackgroundJob):
    """Runs at most one study at a time in a daemon thread; the page polls `snapshot()`."""

    busy = "a study is already running; stop it or wait for it to finish"

    def __init__(self) -> None:
        super().__init__(TuneState())

    def start(self, config: TuneConfig) -> None:
        """Start the study in the background; a folder that cannot be used is refused here, before it starts."""
        check_folder(config.data)
        self._launch(TuneState("running", f"study {config.name!r} in {config.out_dir}"), self._run, config)

    def snapshot(self) -> TuneState:
        with self._lock:
            s = self._state
            return TuneState(s.status, s.message, list(s.trials), s.best_toml, list(s.log))

    def _add(self, report: TrialReport) -> None:
        with self._lock:
            self._state.trials.append(report)

    def _say(self, line: str) -> None:
        with self._lock:
            self._state.log.append(line)

    def _run(self, config: TuneConfig) -> None:
        def work() -> str:
            result = tune(config, on_trial=self._add, should_stop=self._stop.is_set, log=self._say)
            with self._lock:
                self._state.best_toml = result.best_toml
                final = {r.number: r for r in result.trials}  # with the scores read again for the best ones
                self._state.trials = [final.get(t.number, t) for t in self._state.trials]
            best = f"; best trial {result.best.number}" if result.best else ""
            return f"{len(result.trials)} trials in {result.out_dir}{best}"

        self._guarded(work, lambda stop: "stopped; the trial in flight is queued again: start the same study to "
                                         "continue it")
