"""Model families: what differs between Stable Diffusion bases (SD1.x, SD2.x, SDXL, the miniature, SD3.x), one
object each.

A family says what its denoiser is (a UNet, or a transformer) and how it is called, how captions become its
conditioning (one text encoder, or several and a pooled embedding), which extra inputs it takes (SDXL's
`text_embeds` and `time_ids`, SD3's `pooled_projections`), whether the VAE must stay in float32, which diffusers
pipeline class loads it, and how adapter files name its text encoders and mark its base. The training loop, the
painter, the file formats and the UI ask the family; none of them asks `if sdxl`. Adapter weights call the
denoiser's part "unet" for every family, as kohya's `lora_unet_` prefix does for DiT bases too.
A family is read off the denoiser's config (never off a name): `family_of_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    denoiser: str = "unet"  # the pipeline's attribute (and model subfolder) of the denoiser
    # The layout adapter files are written in: kohya's, which AUTOMATIC1111, ComfyUI and diffusers read for UNet
    # bases; diffusers' (`transformer.` keys, scale folded) for SD3, whose kohya names diffusers does not read.
    file_layout: str = "kohya"
    safety_checker: bool = True  # the pipeline takes safety_checker (SD1.x/SD2.x); SDXL's and SD3's do not
    flow_matching: bool = False  # trained and sampled by flow matching (SD3.x), not DDPM
    unet_blocks: bool = True  # per-block weights (down=, mid=, up=) name its blocks
    # --targets presets by this family's own layer names (None: the UNet presets of methods/)
    target_presets: dict[str, tuple[str, ...]] | None = field(default=None, hash=False, compare=False)

    @property
    def pipeline_class(self) -> type:
        from diffusers import StableDiffusionPipeline  # imported when a base loads, not with the config

        return StableDiffusionPipeline

    def modelspec_architecture(self, prediction_type: str) -> str:
        """The modelspec.architecture value (Stability's model spec) for an adapter of this family."""
        return {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-768-v" if prediction_type == "v_prediction"
                else "stable-diffusion-v2-512"}.get(self.name, f"stylelora-{self.name}") + "/lora"

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

    def denoiser_inputs(self, conditioning: Conditioning, placements: Sequence[Placement], dtype: torch.dtype) -> dict:
        time_ids = torch.tensor([[*p.original, *p.crop_top_left, *p.target] for p in placements], dtype=dtype,
                                device=conditioning.context.device)
        return {"encoder_hidden_states": conditioning.context.to(dtype),
                "added_cond_kwargs": {"text_embeds": conditioning.pooled.to(dtype), "time_ids": time_ids}}


@dataclass(frozen=True)
class SD3Family(Family):
    """SD3.x (MMDiT): a transformer denoiser trained by flow matching. Its conditioning is CLIP-L's and CLIP-G's
    penultimate hidden states beside T5's, and both CLIPs' pooled projections, built by the pipeline's own
    `encode_prompt` (as diffusers' train_dreambooth_lora_sd3.py builds it). T5 is never adapted."""

    @property
    def pipeline_class(self) -> type:
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline

    def modelspec_architecture(self, prediction_type: str) -> str:
        return "stable-diffusion-3/lora"  # kohya's ARCH_SD3 (a "-m" or "-5-large" suffix where the size is known)

    def prompt_options(self, pipe) -> dict:
        """The second and third prompts are the first (None), and T5 reads up to 256 tokens (diffusers' default),
        or its tokenizer's own limit where that is shorter."""
        t5 = getattr(pipe, "tokenizer_3", None)
        return {"prompt_2": None, "prompt_3": None, "max_sequence_length": min(256, t5.model_max_length if t5 else 256)}

    def encode(self, pipe, captions: list[str], device: torch.device | str) -> Conditioning:
        context, _, pooled, _ = pipe.encode_prompt(prompt=captions, device=device, do_classifier_free_guidance=False,
                                                   **self.prompt_options(pipe))
        return Conditioning(context, pooled)

    def denoiser_inputs(self, conditioning: Conditioning, placements: Sequence[Placement], dtype: torch.dtype) -> dict:
        return {"encoder_hidden_states": conditioning.context.to(dtype), "pooled_projections": conditioning.pooled.to(dtype)}

    def predict(self, denoiser: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, inputs: dict) -> torch.Tensor:
        return denoiser(hidden_states=noisy, timestep=timesteps, **inputs).sample

    def guided(self, pipe, cfg: float) -> bool:
        return cfg > 1


SD1 = Family("sd1", "SD1.x", base_model_version="sd_v1")
SD2 = Family("sd2", "SD2.x", base_model_version="sd_v2", openclip_in_a1111="SD2")
MINI = Family("mini", "stylelora mini", base_model_version="mini", bucket_step=8)
UNKNOWN = Family("unknown", "an unknown architecture", base_model_version="unknown")
SDXL = SDXLFamily("sdxl", "SDXL", (TextEncoder("text_encoder", "tokenizer", "lora_te1_"),
                                    TextEncoder("text_encoder_2", "tokenizer_2", "lora_te2_")),
                  base_model_version="sdxl_base_v1-0", vae_float32_in_fp16=True,
                  openclip_in_a1111="SDXL second", safety_checker=False)
@dataclass(frozen=True)
class FluxFamily(Family):
    """Flux.1: a transformer over 2x2-packed latent patches, trained by flow matching with the shift Flux's
    scheduler sets by image size. Its conditioning is T5's hidden states and CLIP-L's pooled projection (the
    pipeline's own `encode_prompt`); a guidance-distilled model (dev) also takes the guidance scale as an input,
    fed at 3.5 in training as diffusers' train_dreambooth_lora_flux.py feeds it. T5 is never adapted."""

    training_guidance: float = 3.5

    @property
    def pipeline_class(self) -> type:
        from diffusers import FluxPipeline

        return FluxPipeline

    def modelspec_architecture(self, prediction_type: str) -> str:
        return "flux-1/lora"  # kohya's ARCH_FLUX_1_UNKNOWN (flux-1-dev or -schnell where the model is known)

    def native_size(self, pipe) -> int:
        return pipe.default_sample_size * pipe.vae_scale_factor

    def prompt_options(self, pipe) -> dict:
        t5 = getattr(pipe, "tokenizer_2", None)
        return {"prompt_2": None, "max_sequence_length": min(512, t5.model_max_length if t5 else 512)}

    def encode(self, pipe, captions: list[str], device: torch.device | str) -> Conditioning:
        context, pooled, _ = pipe.encode_prompt(prompt=captions, device=device, **self.prompt_options(pipe))
        return Conditioning(context, pooled)

    def paint_embeddings(self, pipe, prompt: str, negative: str, count: int, guided: bool) -> dict:
        from ..errors import ConfigError

        if negative:
            raise ConfigError("--negative: Flux.1 paints with distilled guidance, which takes no negative prompt; "
                              "leave it out")
        context, pooled, _ = pipe.encode_prompt(prompt=prompt, device=pipe.device, num_images_per_prompt=count,
                                                **self.prompt_options(pipe))
        return {"prompt_embeds": context, "pooled_prompt_embeds": pooled}

    def denoiser_inputs(self, conditioning: Conditioning, placements: Sequence[Placement], dtype: torch.dtype) -> dict:
        return {"encoder_hidden_states": conditioning.context.to(dtype), "pooled_projections": conditioning.pooled.to(dtype)}

    def predict(self, denoiser: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, inputs: dict) -> torch.Tensor:
        """As FluxPipeline calls it: latents packed 2x2 into tokens with their position ids, the timestep over
        1000, the guidance for a distilled model; the output unpacked to the latents' shape."""
        from diffusers import FluxPipeline

        batch, channels, height, width = noisy.shape
        packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, noisy.device, noisy.dtype)
        text_ids = torch.zeros(inputs["encoder_hidden_states"].shape[1], 3, device=noisy.device, dtype=noisy.dtype)
        guidance = (torch.full((batch,), self.training_guidance, device=noisy.device, dtype=noisy.dtype)
                    if denoiser.config.guidance_embeds else None)
        out = denoiser(hidden_states=packed, timestep=timesteps.to(noisy.dtype) / 1000, guidance=guidance,
                       txt_ids=text_ids, img_ids=image_ids, return_dict=False, **inputs)[0]
        return out.view(batch, height // 2, width // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(noisy.shape)

    def guided(self, pipe, cfg: float) -> bool:
        return False  # distilled guidance is an input, not a second (negative) row


# SD3's joint blocks: the image stream's attention (to_q/k/v, to_out.0) and the caption stream's (add_q/k/v_proj,
# to_add_out), then each stream's MLP, then the adaptive norms' projections (diffusers' SD3 script targets these).
_SD3_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
_SD3_MLP = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
_SD3_OTHER = ("norm1.linear", "norm1_context.linear")
SD3_TARGETS = {"attn": _SD3_ATTENTION, "attn-mlp": _SD3_ATTENTION + _SD3_MLP,
               "all-linear": _SD3_ATTENTION + _SD3_MLP + _SD3_OTHER, "all": _SD3_ATTENTION + _SD3_MLP + _SD3_OTHER}
SD3 = SD3Family("sd3", "SD3.x", (TextEncoder("text_encoder", "tokenizer", "lora_te1_"),
                                 TextEncoder("text_encoder_2", "tokenizer_2", "lora_te2_")),
                base_model_version="sd3", bucket_step=16, denoiser="transformer", file_layout="diffusers",
                safety_checker=False, flow_matching=True, target_presets=SD3_TARGETS, unet_blocks=False)
# Flux's double blocks are SD3's joint blocks by name; its single blocks have q/k/v and a fused MLP and output.
FLUX_TARGETS = {"attn": _SD3_ATTENTION, "attn-mlp": _SD3_ATTENTION + _SD3_MLP + ("proj_mlp",),
                "all-linear": _SD3_ATTENTION + _SD3_MLP + ("proj_mlp", "proj_out", "norm1.linear", "norm1_context.linear",
                                                           "norm.linear"),
                "all": _SD3_ATTENTION + _SD3_MLP + ("proj_mlp", "proj_out", "norm1.linear", "norm1_context.linear",
                                                    "norm.linear")}
FLUX = FluxFamily("flux", "Flux.1", (TextEncoder("text_encoder", "tokenizer", "lora_te1_"),),
                  base_model_version="flux1", bucket_step=16, denoiser="transformer", file_layout="diffusers",
                  safety_checker=False, flow_matching=True, target_presets=FLUX_TARGETS, unet_blocks=False)
FAMILIES = {family.name: family for family in (SD1, SD2, SDXL, MINI, SD3, FLUX)}
TEXT_PARTS = ("text_encoder", "text_encoder_2")


def family_of_config(config) -> Family:
    """The family of a denoiser, from its config: SD3's MMDiT projects a caption and pooled text; SDXL's UNet
    takes text-and-time added conditioning; SD1.x and SD2.x differ in their context width (768, 1024); narrower
    is the miniature."""
    if "guidance_embeds" in config and "axes_dims_rope" in config:
        return FLUX
    if "caption_projection_dim" in config and "pooled_projection_dim" in config:
        return SD3
    if config.get("addition_embed_type") == "text_time":  # a dict, or diffusers' FrozenDict config
        return SDXL
    width = config.get("cross_attention_dim")
    return {768: SD1, 1024: SD2}.get(width, MINI if isinstance(width, int) and width < 768 else UNKNOWN)


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
    if str(metadata.get("ss_base_model_version", "")).startswith("flux") or any(
            part == "unet" and module.startswith("single_transformer_blocks.") for part, module in weights):
        return FLUX
    if str(metadata.get("ss_base_model_version", "")).startswith("sd3") or any(
            part == "unet" and (module.startswith("transformer_blocks.") or ".attn.add_" in module) for part, module in weights):
        return SD3  # MMDiT blocks (a UNet's modules start down_blocks, mid_block or up_blocks)
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
