"""Load a base Stable Diffusion pipeline: the built-in miniature, a hub id, a diffusers folder or a single file."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import DiffusionPipeline

from ..errors import BaseModelError
from ..families import SD1, Family, family_of_config, family_of_single_file
from ..files import PICKLE_SUFFIXES
from .loading import stream_denoiser
from .quantize import check_quantize, quantization_of, quantize_model

diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()

MINI_WEIGHTS = Path(__file__).parent.parent / "mini" / "weights"


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


def load_base(spec: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
              quantize: str = "none", quantize_text: bool = True, denoiser_later: bool = False) -> DiffusionPipeline:
    """Load the whole pipeline of the base's family (StableDiffusionPipeline or StableDiffusionXLPipeline) in
    `dtype` on `device`, with the safety checker off (we train styles, not filters). `quantize` (quantize.py)
    holds the UNet, and the text encoders unless `quantize_text` is False, in NF4, int8 or fp8.
    `denoiser_later`: leave a folder's or hub base's denoiser unread, an empty one in its place (its class and
    config on the meta device, no weights) until `load_denoiser` reads it. Training caches latents and captions
    first and frees the encoders and VAE, so they never share memory with the denoiser (a single file loads whole)."""
    check_quantize(quantize)
    kind = resolve_base(spec)
    family = base_family(spec)
    later = denoiser_later and kind != "file"
    options = dict(dtype=dtype) | (dict(safety_checker=None, requires_safety_checker=False) if family.safety_checker else {})
    # Loading builds modules on the meta device inside a process-wide context, so two threads loading
    # at once (the UI: a training job and a generation) break each other. One load at a time.
    with _LOADING:
        pipe = _load(spec, kind, family, options, quantize, denoiser_later=later)
        quantize_pipe(pipe, family, quantize, dtype, quantize_text)
    pipe.set_progress_bar_config(disable=True)
    if not later:
        return pipe.to(device)
    for module in pipe.components.values():  # the empty denoiser has nothing to move
        if isinstance(module, torch.nn.Module) and not is_unread(module):
            module.to(device)
    return pipe


def load_denoiser(spec: str, dtype: torch.dtype, quantize: str = "none") -> torch.nn.Module:
    """The denoiser `load_base(denoiser_later=True)` left unread, in `dtype`: streamed layer by layer and
    quantized as it is read, else through diffusers' from_pretrained and quantized after."""
    kind = resolve_base(spec)
    family = base_family(spec)
    try:
        with _LOADING:
            source = _source(spec, kind, family)
            denoiser = stream_denoiser(Path(source), family.denoiser, dtype, quantize)
            if denoiser is None:
                model_class = getattr(diffusers, _denoiser_config(spec, kind)["_class_name"])
                denoiser = model_class.from_pretrained(source, subfolder=family.denoiser, dtype=dtype)
                if quantization_of(denoiser) != quantize:
                    quantize_model(denoiser, quantize, dtype)
    except (OSError, ValueError, EnvironmentError) as error:
        raise BaseModelError(f"{spec}: cannot load the base model ({_first_line(error)})") from None
    return denoiser.eval()


def is_unread(model: torch.nn.Module) -> bool:
    """Whether `model` is the empty stand-in `load_base(denoiser_later=True)` leaves: weights on the meta device."""
    return any(p.is_meta for p in model.parameters())


def quantize_pipe(pipe: DiffusionPipeline, family: Family, quantize: str, dtype: torch.dtype,
                  quantize_text: bool = True) -> None:
    """Quantize a loaded pipeline's denoiser (unless it was quantized as it loaded) and, with `quantize_text`, its
    text encoders; the VAE stays as it is (training frees it once the latents are cached). A DiT's T5 is not
    quantized: training reads it once and frees it, and quantizing it after transformers maps it in touches
    every page of its file anyway (measured on the Flux-shaped base: the peak rose from 2.20 to 2.66 GiB)."""
    models = [family.denoiser_of(pipe)] + [getattr(pipe, encoder.part) for encoder in family.text_encoders if quantize_text]
    for model in models:
        if model is not None and quantization_of(model) != quantize:
            quantize_model(model, quantize, dtype)


def _load(spec: str, kind: str, family: Family, options: dict, quantize: str, denoiser_later: bool = False) -> DiffusionPipeline:
    try:
        if kind == "file":
            return family.pipeline_class.from_single_file(spec, dtype=options["dtype"])
        source = _source(spec, kind, family)
        # The empty denoiser goes in as a component, so that the pipeline reads its config as it would the real one's
        denoiser = _empty_denoiser(spec, kind) if denoiser_later else \
            stream_denoiser(Path(source), family.denoiser, options["dtype"], quantize)
        return family.pipeline_class.from_pretrained(source, **options, **({family.denoiser: denoiser} if denoiser else {}))
    except (OSError, ValueError, EnvironmentError) as error:
        raise BaseModelError(f"{spec}: cannot load the base model ({_first_line(error)})") from None


def _source(spec: str, kind: str, family: Family) -> str:
    """The local folder a non-file base loads from; a hub base's snapshot is fetched (or found in the cache) first,
    so that its denoiser streams from its files."""
    if kind == "hub":
        return str(family.pipeline_class.download(spec))
    return str(MINI_WEIGHTS) if kind == "mini" else spec


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def base_family(spec: str) -> Family:
    """The base's model family, read before any weight: from the UNet's config (a folder or hub id), or from a
    single file's tensor names and shapes, through diffusers' own checkpoint detection. SD1.x where neither can
    be read first: loading proper then says what is wrong."""
    kind = resolve_base(spec)
    if kind == "file":
        return _single_file_family(Path(spec).expanduser())
    try:
        return family_of_config(_denoiser_config(spec, kind))
    except (OSError, ValueError, TypeError):
        return SD1


def _denoiser_config(spec: str, kind: str) -> dict:
    """The denoiser's config: the UNet's (unet/), else a DiT's (transformer/). load_config only reads a model
    folder's config.json, whichever model it describes."""
    from diffusers import UNet2DConditionModel

    source = str(MINI_WEIGHTS) if kind == "mini" else spec
    try:
        return UNet2DConditionModel.load_config(source, subfolder="unet")
    except EnvironmentError:
        return UNet2DConditionModel.load_config(source, subfolder="transformer")


def _single_file_family(path: Path) -> Family:
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors import safe_open

    try:  # shapes only: meta tensors, nothing read
        with safe_open(str(path), "pt") as opened:
            shapes = {key: torch.empty(opened.get_slice(key).get_shape(), device="meta") for key in opened.keys()}
    except Exception:  # safetensors has its own error types; loading proper reports the damage
        return SD1
    return family_of_single_file(infer_diffusers_model_type(shapes))


def denoiser_parameter_count(spec: str) -> int | None:
    """The denoiser's parameter count from its config alone (built on the meta device, no weights read), so the
    precision can be chosen before loading; None where the config cannot be read first (a single file)."""
    kind = resolve_base(spec)
    if kind == "file":
        return None
    try:
        denoiser = _empty_denoiser(spec, kind)
    except (OSError, ValueError, TypeError, AttributeError):  # loading proper says what is wrong, in its own words
        return None
    return sum(p.numel() for p in denoiser.parameters())


def _empty_denoiser(spec: str, kind: str) -> torch.nn.Module:
    """The denoiser its config describes, built on the meta device: every shape, no weights read or held."""
    from accelerate import init_empty_weights

    config = _denoiser_config(spec, kind)
    with init_empty_weights():
        return getattr(diffusers, config.get("_class_name", "UNet2DConditionModel")).from_config(config)


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A cheap, stable id of a model's weights: every tensor's name, shape and first values.
    Hashing every byte of a 3 GB UNet would cost seconds on each run for no real gain."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        head = tensor.detach().flatten()[:64].float().cpu().numpy().tobytes()
        digest.update(name.encode() + str(tuple(tensor.shape)).encode() + head)
    return digest.hexdigest()[:16]


def base_fingerprint(spec: str, unet: torch.nn.Module) -> str:
    """The id an adapter's `stylelora.base_hash` names its base by: the same for every run on that base, whatever
    the method, precision or quantization. Read from the UNet's weight files (each one's safetensors header, which
    names every tensor with its dtype, shape and offsets, and its first 64 KiB of data); a hub base, whose files
    sit in a cache, by `weights_fingerprint` of its UNet as loaded, before any adapter is attached."""
    kind = resolve_base(spec)
    folder = "unet" if kind in ("mini", "file", "hub") or (Path(spec).expanduser() / "unet").is_dir() else "transformer"
    files = [Path(spec).expanduser()] if kind == "file" else sorted(
        (MINI_WEIGHTS if kind == "mini" else Path(spec).expanduser()).joinpath(folder).glob("*.safetensors"))
    if kind == "hub" or not files:
        return weights_fingerprint(unet)
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            digest.update(handle.read(header_size) + handle.read(64 * 1024))
    return digest.hexdigest()[:16]


def native_resolution(spec: str) -> int | None:
    """The base's native image side, from its UNet and VAE configs alone (no weights read); None for a single
    file, whose configs come with loading."""
    from diffusers import AutoencoderKL

    kind = resolve_base(spec)
    if kind == "file":
        return None
    try:
        source = str(MINI_WEIGHTS) if kind == "mini" else spec
        vae = AutoencoderKL.load_config(source, subfolder="vae")
        return int(_denoiser_config(spec, kind)["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, TypeError, KeyError):
        return None
