"""The miniature Stable Diffusion: the same classes as the real one, at a size a CPU trains in minutes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from .tokenizer import write_tokenizer
from .world import SIZE, WORDS


@dataclass(frozen=True)
class MiniSize:
    """Widths of the miniature model. `TINY` is for fast tests with random weights."""

    unet_channels: tuple[int, ...] = (64, 128, 128)
    vae_channels: tuple[int, ...] = (32, 32, 64)
    text_width: int = 64
    text_layers: int = 2
    max_tokens: int = 24
    image_size: int = SIZE


DEFAULT = MiniSize()
TINY = MiniSize(unet_channels=(32, 32), vae_channels=(32, 32), text_width=32, text_layers=1, image_size=32)


def build_unet(size: MiniSize) -> UNet2DConditionModel:
    levels = len(size.unet_channels)
    return UNet2DConditionModel(
        sample_size=size.image_size // 2 ** (len(size.vae_channels) - 1),
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=size.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=size.text_width,
        # diffusers reads this as the number of heads. Two heads (32-64 wide) rather than SD's eight:
        # eight 8-wide heads made attention a third of a pretraining step (measured 1.42 vs 0.95 s).
        attention_head_dim=2,
        norm_num_groups=32,
    )


def build_vae(size: MiniSize) -> AutoencoderKL:
    levels = len(size.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=size.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        # 8 groups, not SD's 32: with 32 channels, 32 groups is per-channel instance norm, which
        # strips each image's mean colour and made a small VAE's colours drift (measured: test
        # MSE 0.053 vs 0.031 after 400 steps).
        norm_num_groups=8,
        sample_size=size.image_size,
    )


def build_text_encoder(size: MiniSize, vocab_size: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=size.text_width,
        intermediate_size=size.text_width * 4,
        num_hidden_layers=size.text_layers,
        num_attention_heads=4,
        max_position_embeddings=size.max_tokens,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        projection_dim=size.text_width,
    )
    return CLIPTextModel(config)


def build_scheduler() -> DDPMScheduler:
    # Stable Diffusion 1.x's training schedule.
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", clip_sample=False, steps_offset=1,
    )


def build_pipeline(folder: Path, size: MiniSize = DEFAULT, seed: int = 0) -> StableDiffusionPipeline:
    """A randomly initialised miniature pipeline, with its tokenizer written to `folder`/tokenizer."""
    torch.manual_seed(seed)
    tokenizer = write_tokenizer(folder / "tokenizer", WORDS, max_length=size.max_tokens)
    return StableDiffusionPipeline(
        vae=build_vae(size),
        text_encoder=build_text_encoder(size, len(tokenizer)),
        tokenizer=tokenizer,
        unet=build_unet(size),
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
