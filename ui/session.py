"""What the web UI's page shares between requests, and how a library error reads on the page."""

from __future__ import annotations

import threading
from pathlib import Path

from stylelora.adapters.library import list_adapters
from stylelora.paint.styler import Styler
from stylelora.train.jobs import TrainingJob
from stylelora.tune.jobs import TuneJob
from stylelora.ui.fields import for_page


class Session:
    """What the page shares between requests: one training job and one Styler per base model and quantization."""

    def __init__(self, workspace: Path, adapters: Path):
        self.workspace, self.adapters = workspace.resolve(), adapters.resolve()
        self.queue_file = self.workspace / "queue.json"  # the Train tab's run queue (train/run_queue.py)
        self.job = TrainingJob()
        self.tune_job = TuneJob()
        self.stylers: dict[tuple[str, str], Styler] = {}
        # Every browser session shares these Stylers, whose weights are set per request:
        # one painting at a time, the rest wait their turn.
        self.painting = threading.Lock()

    def styler(self, base: str, quantize: str = "none") -> Styler:
        # Loaded once per base and quantization: changing only the weights never reloads the model.
        if (base, quantize) not in self.stylers:
            self.stylers[base, quantize] = Styler(base, quantize=quantize)
        return self.stylers[base, quantize]

    def adapter_paths(self) -> dict[str, Path]:
        return {entry.name: entry.path for entry in list_adapters(self.adapters)}


def error_message(error: Exception | str) -> str:
    """A library error as the page shows it: one line, naming fields by their labels, not their flags."""
    return f"**Error:** {for_page(str(error))}"


def shown_path(path: Path) -> str:
    """A path as the page shows it: relative to the folder the UI was started in when it is inside it, else
    with the home folder as ~."""
    path = Path(path).resolve()
    for root, prefix in ((Path.cwd().resolve(), ""), (Path.home().resolve(), "~/")):
        if path.is_relative_to(root) and path != root:
            return prefix + path.relative_to(root).as_posix()
    return str(path)
