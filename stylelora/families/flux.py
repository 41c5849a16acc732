"""Flux.1: a transformer over 2x2-packed latent patches, trained by flow matching with a size-dependent shift."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import ConfigError
from .family import Conditioning, Family, FusedName, Placement, TextEncoder
from .sd3 import _SD3_ATTENTION, _SD3_MLP


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

    def claims_config(self, config) -> bool:
        return "guidance_embeds" in config and "axes_dims_rope" in config

    def claims_weights(self, weights, metadata: dict[str, str]) -> bool:
        return str(metadata.get("ss_base_model_version", "")).startswith("flux") or any(
            part == "unet" and module.startswith("single_transformer_blocks.") for part, module in weights)

    def native_size(self, pipe) -> int:
        return pipe.default_sample_size * pipe.vae_scale_factor

    def prompt_options(self, pipe) -> dict:
        t5 = getattr(pipe, "tokenizer_2", None)
        return {"prompt_2": None, "max_sequence_length": min(512, t5.model_max_length if t5 else 512)}

    def longest_reader(self, pipe) -> tuple[object, int, str]:
        return pipe.tokenizer_2, self.prompt_options(pipe)["max_sequence_length"], "T5"

    def encode(self, pipe, captions: list[str], device: torch.device | str) -> Conditioning:
        context, pooled, _ = pipe.encode_prompt(prompt=captions, device=device, **self.prompt_options(pipe))
        return Conditioning(context, pooled)

    def paint_embeddings(self, pipe, prompt: str, negative: str, count: int, guided: bool) -> dict:
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


# Flux's double blocks are SD3's joint blocks by name; its single blocks have q/k/v and a fused MLP and output.
_FLUX_ALL_LINEAR = _SD3_ATTENTION + _SD3_MLP + ("proj_mlp", "proj_out", "norm1.linear", "norm1_context.linear",
                                                "norm.linear")
FLUX_TARGETS = {"attn": _SD3_ATTENTION, "attn-mlp": _SD3_ATTENTION + _SD3_MLP + ("proj_mlp",),
                "all-linear": _FLUX_ALL_LINEAR, "all": _FLUX_ALL_LINEAR}  # no convolutions to adapt


def _double(kohya: str, *members: str) -> FusedName:
    return FusedName(f"double_blocks_{{}}_{kohya}", tuple(f"transformer_blocks.{{}}.{m}" for m in members))


def _single(kohya: str, *members: str, shares: tuple[int, ...] = ()) -> FusedName:
    return FusedName(f"single_blocks_{{}}_{kohya}", tuple(f"single_transformer_blocks.{{}}.{m}" for m in members),
                     shares)


# kohya's Flux names (the original checkpoint's, which Forge and ComfyUI map): the tables of diffusers'
# _convert_kohya_flux_lora_to_diffusers, read the other way.
FLUX_KOHYA = (
    _double("img_attn_qkv", "attn.to_q", "attn.to_k", "attn.to_v"), _double("img_attn_proj", "attn.to_out.0"),
    _double("txt_attn_qkv", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    _double("txt_attn_proj", "attn.to_add_out"),
    _double("img_mlp_0", "ff.net.0.proj"), _double("img_mlp_2", "ff.net.2"),
    _double("txt_mlp_0", "ff_context.net.0.proj"), _double("txt_mlp_2", "ff_context.net.2"),
    _double("img_mod_lin", "norm1.linear"), _double("txt_mod_lin", "norm1_context.linear"),
    _single("linear1", "attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", shares=(1, 1, 1, 4)),
    _single("linear2", "proj_out"), _single("modulation_lin", "norm.linear"),
    FusedName("final_layer_linear", ("proj_out",)),
    FusedName("final_layer_adaLN_modulation_1", ("norm_out.linear",), swap_halves=True),
    FusedName("img_in", ("x_embedder",)), FusedName("txt_in", ("context_embedder",)),
    FusedName("time_in_in_layer", ("time_text_embed.timestep_embedder.linear_1",)),
    FusedName("time_in_out_layer", ("time_text_embed.timestep_embedder.linear_2",)),
    FusedName("vector_in_in_layer", ("time_text_embed.text_embedder.linear_1",)),
    FusedName("vector_in_out_layer", ("time_text_embed.text_embedder.linear_2",)),
    FusedName("guidance_in_in_layer", ("time_text_embed.guidance_embedder.linear_1",)),
    FusedName("guidance_in_out_layer", ("time_text_embed.guidance_embedder.linear_2",)),
)
FLUX = FluxFamily("flux", "Flux.1", (TextEncoder("text_encoder", "tokenizer", "lora_te1_"),),
                  base_model_version="flux1", bucket_step=16, denoiser="transformer", kohya_fused=FLUX_KOHYA,
                  safety_checker=False, flow_matching=True, target_presets=FLUX_TARGETS, unet_blocks=False,
                  single_file_types=("flux",), frozen_encoders=("text_encoder_2",))
