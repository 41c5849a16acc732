"""Where a run's metrics go besides metrics.jsonl: TensorBoard, Weights & Biases, both or neither (--log-with),
through accelerate's tracker API. The trackers are accelerate's own; this module only chooses them, where they
write, and W&B's mode: online only where W&B has an API key, else offline, so nothing is ever sent unasked."""

from __future__ import annotations

import importlib.util
import netrc
import os
import secrets
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import write_atomically

TRACKERS = ("tensorboard", "wandb", "all", "none")
TRACKERS_HELP = ("where metrics go besides metrics.jsonl: tensorboard (OUT/tensorboard), wandb (Weights & Biases, the "
                 "[wandb] extra: online where it has an API key, else offline in OUT/wandb), all, or none")
WANDB_ID_FILE = "wandb-run-id"


def tracker_names(log_with: str) -> list[str]:
    return {"all": ["tensorboard", "wandb"], "none": []}.get(log_with, [log_with])


def check_trackers(log_with: str) -> None:
    """A tracker whose package is missing, refused in one line before the base loads."""
    if "wandb" in tracker_names(log_with) and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"--log-with {log_with}: Weights & Biases is not installed; pip install 'stylelora[wandb]', "
                          "or choose --log-with tensorboard")


def wandb_mode() -> str:
    """WANDB_MODE where set; else online only if W&B has an API key (WANDB_API_KEY, or `wandb login`'s netrc
    entry), else offline: a run never asks for a login or waits on a network it cannot reach."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        logged_in = False
    return "online" if logged_in else "offline"


def wandb_run_id(out_dir: Path, resume: bool) -> str:
    """The W&B run id of this output folder: kept in a file, so a resumed run logs on into the same W&B run."""
    path = out_dir / WANDB_ID_FILE
    if resume and path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    write_atomically(path, run_id.encode())
    return run_id


def trackers_for(log_with: str, out_dir: Path, run_name: str, resume: bool) -> list:
    """accelerate's trackers for --log-with, writing under `out_dir` (not started: Accelerator.init_trackers does)."""
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    names = tracker_names(log_with)
    trackers: list = [TensorBoardTracker("tensorboard", out_dir)] if "tensorboard" in names else []
    if "wandb" in names:
        os.environ.setdefault("WANDB_SILENT", "true")  # its banner would interleave with the progress bar
        trackers.append(WandBTracker(os.environ.get("WANDB_PROJECT", "stylelora"), name=run_name, dir=str(out_dir),
                                     mode=wandb_mode(), id=wandb_run_id(out_dir, resume), resume="allow"))
    return trackers


def hyperparameters(settings: dict[str, Any]) -> dict[str, Any]:
    """A run's settings as trackers take them (TensorBoard's hparams: str, int, float, bool)."""
    return {key: (", ".join(map(str, value)) if isinstance(value, (list, tuple)) else
                  value if isinstance(value, (str, int, float, bool)) else str(value))
            for key, value in settings.items() if value is not None}
