"""What the web UI's page shares between requests, and how a library error reads on the page."""

from __future__ import annotations

import threading
from pathlib import Path

from stylelora.adapters.library import list_adapters
from stylelora.paint.styler import Styler
from stylelora.train.jobs import TrainingJob
from stylelora.tune.jobs import TuneJob


class Session:
    """What the page shares between requests: one training job and one Styler per base model and quantization."""

    def __init__(self, workspace: Path, adapters: Path):
        self.workspace, self.adapters = workspace.resolve(), adapters.resolve()
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


def error_message(error: Exception) -> str:
    return f"**Error:** {error}"
