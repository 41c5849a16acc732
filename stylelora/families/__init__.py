"""Model families: what differs between Stable Diffusion bases (SD1.x, SD2.x, SDXL, the miniature), one object each.

A family says how captions become the UNet's conditioning (one text encoder, or two and a pooled embedding),
which extra inputs the UNet takes (SDXL's `text_embeds` and `time_ids`), whether the VAE must stay in float32,
which diffusers pipeline class loads it, and how adapter files name its text encoders and mark its base. The
training loop, Styler, the file formats and the UI ask the family; none of them asks `if sdxl`.
A family is read off the UNet's config (never off a name): `family_of_unet`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from ..errors import AdapterFileError


class Conditioning(NamedTuple):
    """What the text side hands the UNet, for a batch of captions: the cross-attention context, and SDXL's
    pooled embedding of its second encoder (None for single-encoder families)."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None

    def row(self, index: int) -> "Conditioning":
        return Conditioning(self.context[index], None if self.pooled is None else self.pooled[index])

    @staticmethod
    def stack(rows: Sequence["Conditioning"]) -> "Conditioning":
        pooled = [r.pooled for r in rows]
        return Conditioning(torch.stack([r.context for r in rows]),
                            None if pooled[0] is None else torch.stack(pooled))  # type: ignore[arg-type]


class Placement(NamedTuple):
    """Where one training image sits in its bucket: its original size, the crop's top-left corner in the resized
    image, and the bucket (the target size). Heights first, as SDXL's micro-conditioning reads them."""

    original: tuple[int, int]  # (height, width) of the image file
    crop_top_left: tuple[int, int]  # (top, left)
    target: tuple[int, int]  # (height, width) of the bucket


@dataclass(frozen=True)
class TextEncoder:
    """One text encoder of a family: the pipeline attributes of it and its tokenizer, which are also its part
    name in adapter weights, and the kohya key prefix the loaders (AUTOMATIC1111, ComfyUI) read it by."""

    part: str
    tokenizer: str
    kohya_prefix: str


@dataclass(frozen=True)
class Family:
    """A single-encoder Stable Diffusion family (SD1.x, SD2.x, the miniature): the context is the text encoder's
    last hidden state, and the UNet takes nothing more."""

    name: str  # "sd1", "sd2", "sdxl", "mini"
    label: str  # "SD1.x", as messages name it
    text_encoders: tuple[TextEncoder, ...] = (TextEncoder("text_encoder", "tokenizer", "lora_te_"),)
    base_model_version: str = ""  # kohya's ss_base_model_version
    vae_float32_in_fp16: bool = False  # SDXL's VAE overflows in float16 (its config says force_upcast)
    # The encoder AUTOMATIC1111 holds as OpenCLIP, whose fused attention takes a LoRA only with all of q,k,v,out
    openclip_in_a1111: str = ""
    bucket_step: int = 64  # the default --bucket-step: a side the UNet halves evenly at every level

    @property
    def pipeline_class(self) -> type:
        from diffusers import StableDiffusionPipeline  # imported when a base loads, not with the config

        return StableDiffusionPipeline

    def modelspec_architecture(self, prediction_type: str) -> str:
        """The modelspec.architecture value (Stability's model spec) for an adapter of this family."""
        return {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-768-v" if prediction_type == "v_prediction"
                else "stable-diffusion-v2-512"}.get(self.name, f"stylelora-{self.name}") + "/lora"

    def models(self, pipe) -> dict[str, torch.nn.Module]:
        """The pipeline's adaptable models by part name: the UNet and each text encoder still loaded."""
        parts = {"unet": pipe.unet} | {e.part: getattr(pipe, e.part, None) for e in self.text_encoders}
        return {part: model for part, model in parts.items() if model is not None}

    def encode(self, pipe, captions: list[str], device: torch.device | str) -> Conditioning:
        encoder = self.text_encoders[0]
        return Conditioning(getattr(pipe, encoder.part)(_token_ids(getattr(pipe, encoder.tokenizer), captions, device))[0])

    def unet_inputs(self, conditioning: Conditioning, placements: Sequence[Placement], dtype: torch.dtype) -> dict:
        """The UNet's keyword inputs beyond (sample, timestep): its context, and whatever else the family adds."""
        return {"encoder_hidden_states": conditioning.context.to(dtype)}


def _token_ids(tokenizer, captions: list[str], device: torch.device | str) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


@dataclass(frozen=True)
class SDXLFamily(Family):
    """SDXL: two text encoders. The context is both encoders' penultimate hidden states side by side, and the
    UNet also takes the second encoder's pooled projection (`text_embeds`) and each image's micro-conditioning
    (`time_ids`: original size, crop corner, target size), as diffusers' train_text_to_image_lora_sdxl.py and
    kohya's sdxl_train_network.py feed it."""

    @property
    def pipeline_class(self) -> type:
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline

    def modelspec_architecture(self, prediction_type: str) -> str:
        return "stable-diffusion-xl-v1-base/lora"

    def encode(self, pipe, captions: list[str], device: torch.device | str) -> Conditioning:
        contexts, pooled = [], None
        for encoder in self.text_encoders:
            output = getattr(pipe, encoder.part)(_token_ids(getattr(pipe, encoder.tokenizer), captions, device),
                                                 output_hidden_states=True)
            contexts.append(output.hidden_states[-2])
            pooled = getattr(output, "text_embeds", None)  # the projection model's (the last encoder's)
        return Conditioning(torch.cat(contexts, dim=-1), pooled)

    def unet_inputs(self, conditioning: Conditioning, placements: Sequence[Placement], dtype: torch.dtype) -> dict:
        time_ids = torch.tensor([[*p.original, *p.crop_top_left, *p.target] for p in placements], dtype=dtype,
                                device=conditioning.context.device)
        return {"encoder_hidden_states": conditioning.context.to(dtype),
                "added_cond_kwargs": {"text_embeds": conditioning.pooled.to(dtype), "time_ids": time_ids}}


SD1 = Family("sd1", "SD1.x", base_model_version="sd_v1")
SD2 = Family("sd2", "SD2.x", base_model_version="sd_v2", openclip_in_a1111="SD2")
MINI = Family("mini", "stylelora mini", base_model_version="mini", bucket_step=8)
UNKNOWN = Family("unknown", "an unknown architecture", base_model_version="unknown")
SDXL = SDXLFamily("sdxl", "SDXL", (TextEncoder("text_encoder", "tokenizer", "lora_te1_"),
                                    TextEncoder("text_encoder_2", "tokenizer_2", "lora_te2_")),
                  base_model_version="sdxl_base_v1-0", vae_float32_in_fp16=True,
                  openclip_in_a1111="SDXL second")
FAMILIES = {family.name: family for family in (SD1, SD2, SDXL, MINI)}
TEXT_PARTS = ("text_encoder", "text_encoder_2")


def family_of_unet(config) -> Family:
    """The family of a UNet, from its config: SDXL's UNet takes text-and-time added conditioning; SD1.x and SD2.x
    differ in their context width (768, 1024); narrower is the miniature."""
    if config.get("addition_embed_type") == "text_time":  # a dict, or diffusers' FrozenDict config
        return SDXL
    width = config.get("cross_attention_dim")
    return {768: SD1, 1024: SD2}.get(width, MINI if isinstance(width, int) and width < 768 else UNKNOWN)


def family_of_pipe(pipe) -> Family:
    return family_of_unet(pipe.unet.config)


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
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl") or any(
            part == "text_encoder_2" for part, _ in weights):
        return SDXL
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
