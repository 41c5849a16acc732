"""stylelora: teach Stable Diffusion a visual style with LoRA, then paint with several styles at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["TrainConfig", "TrainResult", "StyleloraError", "train", "__version__"]

if TYPE_CHECKING:
    from .config import TrainConfig
    from .errors import StyleloraError
    from .training import TrainResult, train


def __getattr__(name: str):
    # Imported on first use, so `stylelora --help` does not pay for torch and diffusers.
    if name == "TrainConfig":
        from .config import TrainConfig

        return TrainConfig
    if name == "StyleloraError":
        from .errors import StyleloraError

        return StyleloraError
    if name in ("train", "TrainResult"):
        import importlib

        return getattr(importlib.import_module("stylelora.training"), name)
    raise AttributeError(f"module 'stylelora' has no attribute {name!r}")
