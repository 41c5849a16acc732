"""Model families: what differs between bases, one object each, one module per kind: the UNet families (unet.py:
SD1.x, SD2.x, SDXL, the miniature), SD3.x (sd3.py) and Flux.1 (flux.py), over the Family base (family.py).

A family says what its denoiser is (a UNet, or a transformer) and how it is called, how captions become its
conditioning, which extra inputs it takes, whether it trains by flow matching, its --targets presets, whether the
VAE must stay in float32, which diffusers pipeline class loads it, the layout and metadata of its adapter files,
and how its bases and files are recognised. The training loop, the painter, the file formats and the UI ask the
family; none of them asks `if sdxl`. Adapter weights call the denoiser's part "unet" for every family, as kohya's
`lora_unet_` prefix does for DiT bases too. A family is read off the denoiser's config, never off a name.
"""

from __future__ import annotations

from ..errors import AdapterFileError
from .family import Conditioning, Family, FusedName, Placement, TextEncoder
from .flux import FLUX
from .sd3 import SD3
from .unet import MINI, SD1, SD2, SDXL, UNKNOWN

__all__ = ["Conditioning", "Family", "FusedName", "Placement", "TextEncoder", "FAMILIES", "FLUX", "MINI", "SD1",
           "SD2", "SD3", "SDXL", "UNKNOWN", "TEXT_PARTS", "architecture_of_weights", "check_fits", "family_of_config",
           "family_of_pipe", "family_of_single_file", "family_of_weights"]

FAMILIES = {family.name: family for family in (SD1, SD2, SDXL, MINI, SD3, FLUX)}
# The families that recognise their own bases and files, asked in this order (Flux before SD3: both have MMDiT
# blocks). A new family is one module here and one entry in these two.
CLAIMING = (FLUX, SD3, SDXL)
TEXT_PARTS = ("text_encoder", "text_encoder_2")


def family_of_config(config) -> Family:
    """The family of a denoiser, from its config: a family that recognises its own (the DiTs, SDXL's text-and-time
    conditioned UNet); else SD1.x and SD2.x by their context width (768, 1024), narrower the miniature."""
    for family in CLAIMING:
        if family.claims_config(config):
            return family
    width = config.get("cross_attention_dim")
    return {768: SD1, 1024: SD2}.get(width, MINI if isinstance(width, int) and width < 768 else UNKNOWN)


def family_of_single_file(model_type: str) -> Family:
    """The family of diffusers' single-file model type (`infer_diffusers_model_type`); SD1.x for the rest."""
    return next((family for family in CLAIMING if model_type.startswith(family.single_file_types)), SD1)


def family_of_pipe(pipe) -> Family:
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    return family_of_config(denoiser.config)


def check_fits(source: object, made_for: Family | None, base: str, family: Family) -> None:
    """Refuse an adapter made for one family on a base of another (SD1.x on SDXL, or the reverse), naming both;
    an adapter or base whose family cannot be read is let through to the module-by-module check."""
    if made_for not in (None, UNKNOWN, family) and family is not UNKNOWN:
        raise AdapterFileError(f"{source}: made for {made_for.label}, but base {base!r} is {family.label}; "
                               f"load it on a {made_for.label} base")


def family_of_weights(weights, metadata: dict[str, str]) -> Family | None:
    """The family an adapter was made for: from our metadata, else kohya's ss_base_model_version, else the
    file itself (a second text encoder, or the width of the cross-attention key/value inputs); None if unknown."""
    named = metadata.get("stylelora.architecture")
    if named in FAMILIES:
        return FAMILIES[named]
    claimed = next((family for family in CLAIMING if family.claims_weights(weights, metadata)), None)
    if claimed is not None:
        return claimed
    widths = _context_widths(weights)
    return {768: SD1, 1024: SD2, 2048: SDXL}.get(next(iter(widths))) if widths else None


def _context_widths(weights) -> set[int]:
    """The input widths of the UNet's cross-attention key/value projections: the text context's width."""
    return {adapter.in_features for (part, module), adapter in weights.items()
            if part == "unet" and "attn2" in module and module.endswith(("to_k", "to_v"))}


def architecture_of_weights(weights, metadata: dict[str, str]) -> str:
    """SD1.x / SD2.x / SDXL / stylelora mini, as family_of_weights reads it."""
    family = family_of_weights(weights, metadata)
    if family is not None:
        return family.label
    widths = _context_widths(weights)
    return f"unknown (context width {next(iter(widths))})" if widths else "unknown"
