"""The family object every base family is: what its denoiser is and how it is called, how captions become its
conditioning, its file layout and metadata (families/__init__.py says what each family module provides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import torch

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
class FusedName:
    """A kohya module name of a denoiser whose original checkpoint fuses Linear layers diffusers keeps apart:
    `kohya` (with `{}` for the block number) holds `members` (diffusers paths), stacked by output rows in that
    order, each `shares` parts of the rows (Flux's linear1: q, k, v and the 4x-wide MLP input, 1:1:1:4)."""

    kohya: str
    members: tuple[str, ...]
    shares: tuple[int, ...] = ()
    swap_halves: bool = False  # the rows' two halves are in the other order (Flux's final modulation)

    def __post_init__(self):
        if not self.shares:
            object.__setattr__(self, "shares", (1,) * len(self.members))


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
    denoiser: str = "unet"  # the pipeline's attribute (and model subfolder) of the denoiser
    # The layout adapter files are written in: kohya's, which AUTOMATIC1111, ComfyUI and diffusers read for UNet
    # bases and Flux; diffusers' (`transformer.` keys, scale folded) for SD3, whose kohya names diffusers does not
    # read. `--format` writes the other.
    file_layout: str = "kohya"
    # The denoiser's kohya names where they follow an original checkpoint that fuses layers (Flux), instead of
    # diffusers' paths with '.' flattened to '_' (adapters/fused.py). Such files hold plain LoRA only.
    kohya_fused: tuple[FusedName, ...] = field(default=(), hash=False, compare=False)
    safety_checker: bool = True  # the pipeline takes safety_checker (SD1.x/SD2.x); SDXL's and the DiTs' do not
    flow_matching: bool = False  # trained and sampled by flow matching (SD3.x, Flux.1), not DDPM
    unet_blocks: bool = True  # per-block weights (down=, mid=, up=) name its blocks
    # --targets presets by this family's own layer names (None: the UNet presets of methods/)
    target_presets: dict[str, tuple[str, ...]] | None = field(default=None, hash=False, compare=False)
    # Text encoders the family encodes with but never adapts (T5 on SD3 and Flux): freed with the others once
    # every caption is cached
    frozen_encoders: tuple[str, ...] = ()
    # How a base or file is recognised as this family, for the families that say so themselves (the UNet families
    # without their own mark are told apart by context width in __init__.py): diffusers' single-file model types
    # that are this family, its denoiser's config, an adapter file's modules
    # (claims_config, claims_weights).
    single_file_types: tuple[str, ...] = ()

    def plain_layout(self, layout: str | None = None) -> str:
        """The name of this family's file layout `layout` (None: its own) where it holds plain LoRA only, and ""
        where it holds every method (kohya's, unfused)."""
        layout = layout or self.file_layout
        if layout == "diffusers":
            return "diffusers' layout"
        return "kohya's layout with fused q/k/v" if self.kohya_fused else ""

    @property
    def pipeline_class(self) -> type:
        from diffusers import StableDiffusionPipeline  # imported when a base loads, not with the config

        return StableDiffusionPipeline

    def modelspec_architecture(self, prediction_type: str) -> str:
        """The modelspec.architecture value (Stability's model spec) for an adapter of this family."""
        return {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-768-v" if prediction_type == "v_prediction"
                else "stable-diffusion-v2-512"}.get(self.name, f"stylelora-{self.name}") + "/lora"

    def claims_config(self, config) -> bool:
        return False

    def claims_weights(self, weights, metadata: dict[str, str]) -> bool:
        return False

    def denoiser_of(self, pipe) -> torch.nn.Module:
        return getattr(pipe, self.denoiser)

    def native_size(self, pipe) -> int:
        """The base's own image side in pixels."""
        return self.denoiser_of(pipe).config.sample_size * pipe.vae_scale_factor

    def models(self, pipe) -> dict[str, torch.nn.Module]:
        """The pipeline's adaptable models by part name: the denoiser ("unet") and each text encoder still loaded."""
        parts = {"unet": self.denoiser_of(pipe)} | {e.part: getattr(pipe, e.part, None) for e in self.text_encoders}
        return {part: model for part, model in parts.items() if model is not None}

    def predict(self, denoiser: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, inputs: dict) -> torch.Tensor:
        """The denoiser's output for noisy latents at `timesteps`, given `denoiser_inputs`."""
        return denoiser(noisy, timesteps, **inputs).sample

    def prompt_options(self, pipe) -> dict:
        """What the pipeline's `encode_prompt` takes beyond the prompt, device, count, guidance and negative."""
        return {}

    def paint_embeddings(self, pipe, prompt: str, negative: str, count: int, guided: bool) -> dict:
        """A painting's prompt embeddings, as the pipeline's call takes them (its `encode_prompt`, run here so
        that each request of a batch is encoded through its own adapter stack)."""
        out = pipe.encode_prompt(prompt=prompt, device=pipe.device, num_images_per_prompt=count,
                                 do_classifier_free_guidance=guided, negative_prompt=negative or None,
                                 **self.prompt_options(pipe))
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        return dict(zip(names, out))

    def longest_reader(self, pipe) -> tuple[object, int, str]:
        """The tokenizer, token limit and name of the text encoder that reads captions furthest (a caption longer
        than that is cut for every encoder): the first encoder here, T5 on the DiT bases."""
        tokenizer = getattr(pipe, self.text_encoders[0].tokenizer)
        return tokenizer, tokenizer.model_max_length, "the text encoder"

    def guided(self, pipe, cfg: float) -> bool:
        """Whether the pipeline runs classifier-free guidance at `cfg` (a negative row per sample), as it decides."""
        return cfg > 1 and self.denoiser_of(pipe).config.time_cond_proj_dim is None

    def encode(self, pipe, captions: list[str], device: torch.device | str) -> Conditioning:
        encoder = self.text_encoders[0]
        return Conditioning(getattr(pipe, encoder.part)(_token_ids(getattr(pipe, encoder.tokenizer), captions, device))[0])

    def denoiser_inputs(self, conditioning: Conditioning, placements: Sequence[Placement], dtype: torch.dtype) -> dict:
        """The denoiser's keyword inputs beyond (sample, timestep): its context, and whatever else the family adds."""
        return {"encoder_hidden_states": conditioning.context.to(dtype)}


def _token_ids(tokenizer, captions: list[str], device: torch.device | str) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)
