"""stylelora: teach Stable Diffusion a visual style with LoRA, then paint with several styles at once."""

__version__ = "0.1.0"

from .config import TrainConfig  # noqa: E402
from .errors import StyleloraError  # noqa: E402
from .train import TrainResult, train  # noqa: E402

__all__ = ["TrainConfig", "TrainResult", "StyleloraError", "train", "__version__"]
