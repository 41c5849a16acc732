"""stylelora: teach Stable Diffusion a visual style with LoRA, then paint with several styles at once."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .model import precision as _precision

__version__ = "0.1.0"
__all__ = ["TrainConfig", "TrainResult", "StyleloraError", "train", "TuneConfig", "tune", "suggest", "__version__"]

# Where a CPU's AMX kernels were measured to die, cap oneDNN below them before any kernel runs.
# This reads a cached verdict only (a small JSON file); the probe itself runs when bf16 is considered.
_precision.apply_isa_cap(_precision.cached_bf16_support())

# diffusers imports bitsandbytes wherever it is installed, and on CPUs with AVX512-BF16 bitsandbytes logs at import
# that the optional `kernels` package (which downloads from the hub) is missing; its own kernels run without it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# It imports torchao too (the [quant] extra's, for convolutions): torchao 0.18 then logs each CUDA-only library a
# CPU build of torch cannot load, torch logs its enums' deprecated registration, and diffusers 0.42 warns that a
# class torchao moved is gone. None of it concerns a run; torchao's own errors still show.
for _name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    logging.getLogger(_name).setLevel(logging.ERROR)
# Loading an SD pipeline names CLIP's image processor, and transformers then warns that it falls back from a
# torchvision backend to PIL's: the pipeline's feature extractor is never run here, and torchvision is not needed.
logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)

if TYPE_CHECKING:
    from .train.config import TrainConfig
    from .errors import StyleloraError
    from .train.loop import TrainResult, train
    from .tune.search import tune
    from .tune.space import TuneConfig
    from .train.suggest import suggest


def __getattr__(name: str):
    # Imported on first use, so `stylelora --help` does not pay for torch and diffusers.
    if name == "TrainConfig":
        from .train.config import TrainConfig

        return TrainConfig
    if name == "StyleloraError":
        from .errors import StyleloraError

        return StyleloraError
    if name in ("train", "TrainResult"):
        import importlib

        return getattr(importlib.import_module("stylelora.train.loop"), name)
    if name in ("tune", "TuneConfig", "suggest"):
        import importlib

        module = {"tune": "tune.search", "TuneConfig": "tune.space", "suggest": "train.suggest"}[name]
        return getattr(importlib.import_module(f"stylelora.{module}"), name)
    raise AttributeError(f"module 'stylelora' has no attribute {name!r}")
