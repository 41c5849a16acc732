"""SD3.x (Stable Diffusion 3 and 3.5): an MMDiT denoiser trained by flow matching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .family import Conditioning, Family, Placement, TextEncoder


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

    def claims_config(self, config) -> bool:
        return "caption_projection_dim" in config and "pooled_projection_dim" in config  # the MMDiT's own

    def claims_weights(self, weights, metadata: dict[str, str]) -> bool:
        """kohya's version says sd3, or the modules are MMDiT blocks (a UNet's start down_blocks, mid_block or
        up_blocks; Flux, which has these too, is asked first)."""
        return str(metadata.get("ss_base_model_version", "")).startswith("sd3") or any(
            part == "unet" and (module.startswith("transformer_blocks.") or ".attn.add_" in module)
            for part, module in weights)

    def prompt_options(self, pipe) -> dict:
        """The second and third prompts are the first (None), and T5 reads up to 256 tokens (diffusers' default),
        or its tokenizer's own limit where that is shorter."""
        t5 = getattr(pipe, "tokenizer_3", None)
        return {"prompt_2": None, "prompt_3": None, "max_sequence_length": min(256, t5.model_max_length if t5 else 256)}

    def longest_reader(self, pipe) -> tuple[object, int, str]:
        return pipe.tokenizer_3, self.prompt_options(pipe)["max_sequence_length"], "T5"

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
                safety_checker=False, flow_matching=True, target_presets=SD3_TARGETS, unet_blocks=False,
                single_file_types=("sd3",), frozen_encoders=("text_encoder_3",))
