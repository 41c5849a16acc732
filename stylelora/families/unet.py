"""The UNet families: SD1.x, SD2.x, the miniature (one text encoder; the context is its last hidden state), and
SDXL (two encoders, a pooled embedding and micro-conditioning)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .family import Conditioning, Family, Placement, TextEncoder, _token_ids


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

    def claims_config(self, config) -> bool:
        return config.get("addition_embed_type") == "text_time"  # a dict, or diffusers' FrozenDict config

    def claims_weights(self, weights, metadata: dict[str, str]) -> bool:
        return (str(metadata.get("ss_base_model_version", "")).startswith("sdxl")
                or any(part == "text_encoder_2" for part, _ in weights))

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


SD1 = Family("sd1", "SD1.x", base_model_version="sd_v1")
SD2 = Family("sd2", "SD2.x", base_model_version="sd_v2", openclip_in_a1111="SD2")
MINI = Family("mini", "stylelora mini", base_model_version="mini", bucket_step=8)
UNKNOWN = Family("unknown", "an unknown architecture", base_model_version="unknown")
SDXL = SDXLFamily("sdxl", "SDXL", (TextEncoder("text_encoder", "tokenizer", "lora_te1_"),
                                    TextEncoder("text_encoder_2", "tokenizer_2", "lora_te2_")),
                  base_model_version="sdxl_base_v1-0", vae_float32_in_fp16=True,
                  openclip_in_a1111="SDXL second", safety_checker=False, single_file_types=("xl_", "playground"))
