"""The bases the benchmarks run on, and random adapters for them.

- the built-in miniature base at its native 64 px;
- Stable Diffusion 1.5's UNet, VAE and text-encoder shapes with random weights, at 256 px
  (32x32 latents): the largest real-shaped case a CPU trains in minutes;
- SDXL's UNet (2.6 billion parameters), VAE and both text encoders (CLIP-L and OpenCLIP-G) at their real
  sizes with random weights (`bench/run.py --sdxl`);
- Flux.1-dev's transformer at its real widths with fewer of its blocks (its 12 billion parameters do not fit
  a 24 GiB machine in bfloat16), its VAE and CLIP-L at their real sizes, and a two-layer T5 at T5-XXL's width
  (`bench/run.py --flux`, `bench/quantize.py --bases flux`);
- Stable Diffusion 3.5 Large's transformer at its real widths with 6 of its 38 blocks, its VAE, CLIP-L and
  CLIP-G at their real sizes, and the same two-layer T5 (`bench/run.py --sd35`, `bench/quantize.py --bases sd35`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from stylelora.adapters.formats import to_kohya
from stylelora.adapters.in_model import attach_lora, lora_weights
from stylelora.files import save_safetensors
from stylelora.train.config import UNET_TARGETS


@dataclass(frozen=True)
class Base:
    label: str
    spec: str  # what --base takes
    resolution: int
    batch: int


MINI = Base("miniature", "mini", 64, 4)


def sd15(folder: Path | None = None) -> Base:
    return Base("SD1.5-shaped UNet", str(sd15_pipeline(folder or Path(tempfile.gettempdir()) / "stylelora-bench-sd15")),
                256, 1)


def sd15_pipeline(folder: Path) -> Path:
    """SD 1.5's shapes with random weights, saved once in the diffusers layout (float16 on disk)."""
    if (folder / "model_index.json").is_file():
        return folder
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from stylelora.mini.architecture import build_scheduler
    from stylelora.mini.tokenizer import write_tokenizer
    from stylelora.mini.world import WORDS

    torch.manual_seed(0)
    tokenizer = write_tokenizer(folder / "tokenizer", WORDS, max_length=77)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1,
                                        pad_token_id=len(tokenizer) - 1))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=build_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(folder)
    return folder


def sdxl(resolution: int, folder: Path | None = None) -> Base:
    return Base("SDXL-shaped UNet", str(sdxl_pipeline(folder or Path(tempfile.gettempdir()) / "stylelora-bench-sdxl")),
                resolution, 1)


def sdxl_pipeline(folder: Path) -> Path:
    """SDXL base 1.0's shapes (its published unet, vae, text_encoder and text_encoder_2 configs) with random
    weights, saved once in the diffusers layout (float16 on disk)."""
    if (folder / "model_index.json").is_file():
        return folder
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from stylelora.mini.architecture import build_scheduler
    from stylelora.mini.tokenizer import write_tokenizer
    from stylelora.mini.world import WORDS

    torch.manual_seed(0)
    tokenizers = [write_tokenizer(folder / name, WORDS, max_length=77) for name in ("tokenizer", "tokenizer_2")]
    vocab = len(tokenizers[0])
    unet = UNet2DConditionModel(
        sample_size=128, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        scaling_factor=0.13025, force_upcast=True)

    def encoder(kind, width: int, layers: int, heads: int, act: str):
        return kind(CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=width * 4,
                                   num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                                   hidden_act=act, projection_dim=1280 if kind is CLIPTextModelWithProjection else 768,
                                   bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1))

    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=encoder(CLIPTextModel, 768, 12, 12, "quick_gelu"),
        text_encoder_2=encoder(CLIPTextModelWithProjection, 1280, 32, 20, "gelu"), tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1], unet=unet, scheduler=build_scheduler(), add_watermarker=False)
    pipe.to(torch.float16).save_pretrained(folder)
    return folder


def _dit_vae(shift: float, scale: float):
    """The 16-channel VAE that SD3 and Flux.1 share, at its real size, with a family's latent shift and scale."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         shift_factor=shift, scaling_factor=scale, use_quant_conv=False, use_post_quant_conv=False)


def _two_layer_t5_xxl(vocab: int):
    """T5-XXL's encoder widths (4096, 64 heads, gated GELU) with 2 of its 24 layers."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=4096, d_kv=64, d_ff=10240, num_layers=2, num_heads=64,
                                   feed_forward_proj="gated-gelu", pad_token_id=vocab - 1))


def flux(double_blocks: int = 2, single_blocks: int = 4, folder: Path | None = None, resolution: int = 256) -> Base:
    name = f"stylelora-bench-flux-{double_blocks}-{single_blocks}"
    return Base(f"Flux.1-shaped transformer ({double_blocks} of 19 double, {single_blocks} of 38 single blocks)",
                str(flux_pipeline(folder or Path(tempfile.gettempdir()) / name, double_blocks, single_blocks)),
                resolution, 1)


def flux_pipeline(folder: Path, double_blocks: int, single_blocks: int) -> Path:
    """Flux.1-dev's published transformer config (widths, heads, guidance embedding, RoPE axes) with fewer blocks,
    its 16-channel VAE and CLIP-L, and a T5 encoder at T5-XXL's width (4096) with 2 of its 24 layers and 128
    tokens instead of 512, random weights, saved once in the diffusers layout (bfloat16 on disk)."""
    if (folder / "model_index.json").is_file():
        return folder
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from stylelora.mini.tokenizer import write_tokenizer
    from stylelora.mini.world import WORDS

    torch.manual_seed(0)
    clip_tokenizer, t5_tokenizer = write_tokenizer(folder / "tokenizer", WORDS, 77), write_tokenizer(folder / "tokenizer_2", WORDS, 128)
    vocab = len(clip_tokenizer)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=double_blocks, num_single_layers=single_blocks,
                                         attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                         pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    vae = _dit_vae(shift=0.1159, scale=0.3611)  # Flux's
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1))
    t5 = _two_layer_t5_xxl(len(t5_tokenizer))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, transformer=transformer, tokenizer=clip_tokenizer,
                        text_encoder=clip, text_encoder_2=t5, tokenizer_2=t5_tokenizer)
    pipe.to(torch.bfloat16).save_pretrained(folder)
    return folder


def sd35(blocks: int = 6, folder: Path | None = None, resolution: int = 256) -> Base:
    return Base(f"SD3.5-Large-shaped transformer ({blocks} of 38 blocks)",
                str(sd35_pipeline(folder or Path(tempfile.gettempdir()) / f"stylelora-bench-sd35-{blocks}", blocks)),
                resolution, 1)


def sd35_pipeline(folder: Path, blocks: int) -> Path:
    """SD3.5 Large's published transformer config (widths, heads, RMS q/k norm) with fewer blocks, its 16-channel
    VAE, CLIP-L and OpenCLIP-G with projections, and a T5 encoder at T5-XXL's width with 2 of its 24 layers and
    128 tokens, random weights, saved once in the diffusers layout (bfloat16 on disk)."""
    if (folder / "model_index.json").is_file():
        return folder
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from stylelora.mini.tokenizer import write_tokenizer
    from stylelora.mini.world import WORDS

    torch.manual_seed(0)
    tokenizers = [write_tokenizer(folder / name, WORDS, length) for name, length in
                  (("tokenizer", 77), ("tokenizer_2", 77), ("tokenizer_3", 128))]
    vocab = len(tokenizers[0])

    def clip(width: int, layers: int, heads: int, act: str):
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=vocab, hidden_size=width, intermediate_size=width * 4, num_hidden_layers=layers,
            num_attention_heads=heads, max_position_embeddings=77, hidden_act=act, projection_dim=width,
            bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1))

    transformer = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=blocks,
                                        attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,
                                        caption_projection_dim=2432, pooled_projection_dim=2048, out_channels=16,
                                        pos_embed_max_size=192, qk_norm="rms_norm")
    vae = _dit_vae(shift=0.0609, scale=1.5305)  # SD3's
    t5 = _two_layer_t5_xxl(len(tokenizers[2]))
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                    text_encoder=clip(768, 12, 12, "quick_gelu"), tokenizer=tokenizers[0],
                                    text_encoder_2=clip(1280, 32, 20, "gelu"), tokenizer_2=tokenizers[1],
                                    text_encoder_3=t5, tokenizer_3=tokenizers[2])
    pipe.to(torch.bfloat16).save_pretrained(folder)
    return folder


def random_adapters(unet: torch.nn.Module, count: int, folder: Path, rank: int = 4) -> list[Path]:
    """`count` rank-`rank` adapter files for this UNet, with random (non-zero) up and down weights."""
    paths = []
    for index in range(count):
        torch.manual_seed(index)
        name = f"bench{index}"
        attach_lora(unet, UNET_TARGETS, rank, rank, 0.0, adapter_name=name)
        weights = lora_weights(unet, "unet", adapter_name=name)
        for module in weights.values():
            module.up = torch.randn_like(module.up) * 0.01
        unet.delete_adapters(name)
        paths.append(save_safetensors(folder / f"{name}.safetensors", to_kohya(weights), {}))
    return paths
