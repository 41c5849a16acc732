"""Load a base Stable Diffusion pipeline: the built-in miniature, a hub id, a diffusers folder or a single file."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import StableDiffusionPipeline

from .errors import BaseModelError
from .files import PICKLE_SUFFIXES

diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()

MINI_WEIGHTS = Path(__file__).parent / "mini" / "weights"


def resolve_base(spec: str) -> str:
    """Say what `spec` names: 'mini', 'folder', 'file' or 'hub'; raise BaseModelError if it cannot be used."""
    if spec == "mini":
        if not (MINI_WEIGHTS / "model_index.json").is_file():
            raise BaseModelError("the built-in miniature model is missing; rebuild it with "
                                 "`python -m stylelora.mini.pretrain`")
        return "mini"
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise BaseModelError(f"{path}: not a diffusers model folder (no model_index.json); give the folder "
                                 "that holds unet/, vae/ and text_encoder/, or a .safetensors checkpoint")
        return "folder"
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise BaseModelError(f"{path}: pickle checkpoints can run code when loaded, so they are refused; "
                             "convert it to .safetensors with a trusted tool first")
    if path.suffix.lower() == ".safetensors":
        if not path.is_file():
            raise BaseModelError(f"{path}: no such checkpoint file")
        return "file"
    if path.exists():
        raise BaseModelError(f"{path}: not a model; give 'mini', a hub id, a diffusers folder or a .safetensors file")
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return "hub"
    raise BaseModelError(f"{spec}: no such folder or file, and not a hub id like 'org/name'")


_LOADING = threading.Lock()


def load_base(spec: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> StableDiffusionPipeline:
    """Load the whole pipeline in `dtype` on `device`, with the safety checker off (we train styles, not filters)."""
    kind = resolve_base(spec)
    options = dict(dtype=dtype, safety_checker=None, requires_safety_checker=False)
    # Loading builds modules on the meta device inside a process-wide context, so two threads loading
    # at once (the UI: a training job and a generation) break each other. One load at a time.
    with _LOADING:
        pipe = _load(spec, kind, dtype, options)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _load(spec: str, kind: str, dtype: torch.dtype, options: dict) -> StableDiffusionPipeline:
    try:
        if kind == "file":
            pipe = StableDiffusionPipeline.from_single_file(spec, dtype=dtype)
        else:
            source = str(MINI_WEIGHTS) if kind == "mini" else spec
            pipe = StableDiffusionPipeline.from_pretrained(source, **options)
    except (OSError, ValueError, EnvironmentError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BaseModelError(f"{spec}: cannot load the base model ({first_line})") from None
    return pipe


def unet_parameter_count(spec: str) -> int | None:
    """The UNet's parameter count from its config alone (built on the meta device, no weights read), so the
    precision can be chosen before loading; None where the config cannot be read first (a single file)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    kind = resolve_base(spec)
    if kind == "file":
        return None
    source = str(MINI_WEIGHTS) if kind == "mini" else spec
    try:
        config = UNet2DConditionModel.load_config(source, subfolder="unet")
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(config)
    except (OSError, ValueError, TypeError):  # loading proper says what is wrong, in its own words
        return None
    return sum(p.numel() for p in unet.parameters())


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A cheap, stable id of a model's weights: every tensor's name, shape and first values.
    Hashing every byte of a 3 GB UNet would cost seconds on each run for no real gain."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        head = tensor.detach().flatten()[:64].float().cpu().numpy().tobytes()
        digest.update(name.encode() + str(tuple(tensor.shape)).encode() + head)
    return digest.hexdigest()[:16]


def architecture_of(unet: torch.nn.Module) -> str:
    """'sd1', 'sd2' or 'sdxl' from the UNet's cross-attention width; 'mini' for ours."""
    width = getattr(unet.config, "cross_attention_dim", None)
    return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(width, "mini" if width and width < 768 else "unknown")
