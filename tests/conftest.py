"""Shared fixtures: a tiny random Stable Diffusion pipeline and a small captioned image folder, all offline."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if os.environ.get("PYTEST_XDIST_WORKER"):  # the processes the tests start, too: one thread each
    os.environ["OMP_NUM_THREADS"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from stylelora.train.config import TrainConfig  # noqa: E402
from stylelora.model.precision import bf16_support  # noqa: E402
from stylelora.mini.architecture import TINY, build_pipeline  # noqa: E402
from stylelora.mini.world import corpus  # noqa: E402

# One thread per xdist worker: two workers of two threads each on two cores stall one another (4x slower here).
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

# Probed (once per machine, cached) before any test runs a kernel, so that where AMX dies the oneDNN cap
# is in place for the whole session. Tests that compute in bfloat16 carry @pytest.mark.bf16 and are
# skipped where it does not run; tests/test_precision.py checks that every such test carries it.
BF16 = bf16_support()


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=f"needs bfloat16: {BF16.reason}")
    for item in items:
        if "bf16" in item.keywords and not BF16.runs:
            item.add_marker(skip)
    # Files holding a slow test first: the workers take files in this order, so the longest start early and
    # the two finish together instead of one waiting out the slowest file alone.
    slow_files = {item.path for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.path not in slow_files)


def _save_pipeline(folder: Path, prediction_type: str = "epsilon") -> Path:
    pipe = build_pipeline(folder, TINY, seed=0)
    if prediction_type != "epsilon":
        pipe.scheduler.register_to_config(prediction_type=prediction_type)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A randomly initialised miniature SD pipeline (32 px), saved in the diffusers layout."""
    return _save_pipeline(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture(scope="session")
def tiny_vpred_base(tmp_path_factory) -> Path:
    return _save_pipeline(tmp_path_factory.mktemp("tiny-vpred"), "v_prediction")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """Six captioned images of the miniature world."""
    folder = tmp_path_factory.mktemp("images")
    images, captions, _ = corpus(6, seed=3)
    for index, (image, caption) in enumerate(zip(images, captions)):
        Image.fromarray(image).save(folder / f"{index}.png")
        (folder / f"{index}.txt").write_text(caption)
    return folder


@pytest.fixture
def train_config(tiny_base: Path, image_folder: Path, tmp_path: Path):
    def make(**overrides) -> TrainConfig:
        values = dict(data=image_folder, out=tmp_path / "run", base=str(tiny_base), max_steps=4, batch_size=2,
                      learning_rate=1e-2)
        return TrainConfig(**(values | overrides))

    return make


def save_image(path: Path, array: np.ndarray, **kwargs) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


@pytest.fixture(scope="session")
def two_adapters(tiny_base, image_folder, tmp_path_factory):
    """Two rank-2, alpha-4 adapters trained briefly on the tiny base with different seeds."""
    from stylelora.train.loop import train

    out = tmp_path_factory.mktemp("adapters")
    paths = []
    for name, seed in (("alpha", 1), ("beta", 2)):
        config = TrainConfig(data=image_folder, out=out / f"{name}.safetensors", base=str(tiny_base), max_steps=3,
                             batch_size=2, learning_rate=3e-2, seed=seed, rank=2, alpha=4.0)
        paths.append(train(config, progress_bar=False, log=lambda m: None).adapter_path)
    return paths


@pytest.fixture
def unet_probe():
    """The UNet's output (of a Styler or anything with .pipe) on fixed random inputs."""

    def _probe(styler):
        unet = styler.pipe.unet
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, unet.config.sample_size, unet.config.sample_size, generator=g)
        text = torch.randn(1, 24, unet.config.cross_attention_dim, generator=g)
        with torch.no_grad():
            return unet(x, torch.tensor([500]), text).sample

    return _probe


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    """`stylelora ui` in a subprocess with its own workspace and adapters folder, one per test module."""
    from ui_helpers import start_ui, stop_ui

    workspace, adapters = tmp_path_factory.mktemp("ws"), tmp_path_factory.mktemp("lib")
    process, url = start_ui(workspace, adapters)
    yield url, workspace, adapters
    stop_ui(process)


def build_tiny_sdxl(folder: Path) -> Path:
    """A randomly initialised SDXL pipeline at test size (32 px): the real classes, with two small CLIP text
    encoders (the second with a projection, as SDXL's), the mini's generated tokenizer for both, and a UNet
    that takes SDXL's text-and-time added conditioning. Nothing is downloaded."""
    from dataclasses import replace

    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    from stylelora.mini.architecture import build_scheduler, build_text_encoder, build_vae
    from stylelora.mini.tokenizer import write_tokenizer
    from stylelora.mini.world import WORDS

    torch.manual_seed(0)
    tokenizers = [write_tokenizer(folder / name, WORDS, max_length=24) for name in ("tokenizer", "tokenizer_2")]
    first = build_text_encoder(replace(TINY, text_layers=2), len(tokenizers[0]))  # 32 wide, as the second
    second = CLIPTextModelWithProjection(first.config)

    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 2), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=32 + 32,
        norm_num_groups=32)
    pipe = StableDiffusionXLPipeline(vae=build_vae(TINY), text_encoder=first, text_encoder_2=second, tokenizer=tokenizers[0],
                                     tokenizer_2=tokenizers[1], unet=unet, scheduler=build_scheduler(),
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sdxl_base(tmp_path_factory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))


def _tiny_dit_vae(shift: float, scale: float):
    """A 16-channel VAE at test size with a DiT family's own latent shift and scale."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32), layers_per_block=1,
                         latent_channels=16, norm_num_groups=8, sample_size=32, shift_factor=shift,
                         scaling_factor=scale, use_quant_conv=False, use_post_quant_conv=False)


def _tiny_t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=1, num_heads=4,
                                   pad_token_id=vocab_size - 1))


def build_tiny_sd3(folder: Path) -> Path:
    """A randomly initialised SD3 pipeline at test size (32 px): the real classes, with two small CLIP text
    encoders with projections, a small T5, the mini's generated tokenizer for all three, a two-block MMDiT
    (the last block context-pre-only, as SD3's) and a 16-channel VAE with SD3's shift and scale. Nothing is
    downloaded."""
    from dataclasses import replace

    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    from stylelora.mini.architecture import build_text_encoder
    from stylelora.mini.tokenizer import write_tokenizer
    from stylelora.mini.world import WORDS

    torch.manual_seed(0)
    tokenizers = [write_tokenizer(folder / name, WORDS, max_length=24) for name in ("tokenizer", "tokenizer_2", "tokenizer_3")]
    first = CLIPTextModelWithProjection(build_text_encoder(replace(TINY, text_layers=2), len(tokenizers[0])).config)
    t5 = _tiny_t5(len(tokenizers[2]))
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=2,
                                        attention_head_dim=16, num_attention_heads=4, joint_attention_dim=64,
                                        caption_projection_dim=64, pooled_projection_dim=64, out_channels=16,
                                        pos_embed_max_size=32)
    vae = _tiny_dit_vae(0.0609, 1.5305)  # SD3's shift and scale
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=first, tokenizer=tokenizers[0],
                                    text_encoder_2=CLIPTextModelWithProjection(first.config), tokenizer_2=tokenizers[1],
                                    text_encoder_3=t5, tokenizer_3=tokenizers[2])
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sd3_base(tmp_path_factory) -> Path:
    return build_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3"))


def build_tiny_flux(folder: Path) -> Path:
    """A randomly initialised Flux.1-dev-shaped pipeline at test size: a small CLIP-L and T5, one double and one
    single block with the guidance embedding, a 16-channel VAE with Flux's shift and scale, and the scheduler
    that shifts by image size. Nothing is downloaded."""
    from dataclasses import replace

    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from stylelora.mini.architecture import build_text_encoder
    from stylelora.mini.tokenizer import write_tokenizer
    from stylelora.mini.world import WORDS

    torch.manual_seed(0)
    tokenizers = [write_tokenizer(folder / name, WORDS, max_length=24) for name in ("tokenizer", "tokenizer_2")]
    t5 = _tiny_t5(len(tokenizers[1]))
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    vae = _tiny_dit_vae(0.1159, 0.3611)  # Flux's shift and scale
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, transformer=transformer, tokenizer=tokenizers[0],
                        text_encoder=build_text_encoder(replace(TINY, text_layers=2), len(tokenizers[0])),
                        text_encoder_2=t5, tokenizer_2=tokenizers[1])
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_flux_base(tmp_path_factory) -> Path:
    return build_tiny_flux(tmp_path_factory.mktemp("tiny-flux"))


@pytest.fixture(scope="session")
def mixed_aspect_folder(tmp_path_factory) -> Path:
    """Seven captioned images of three shapes: wide 96x48 (3), tall 48x96 (3) and one square 64x64."""
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(5)
    shapes = [(96, 48)] * 3 + [(48, 96)] * 3 + [(64, 64)]
    for index, (width, height) in enumerate(shapes):
        array = (rng.random((height, width, 3)) * 255).astype(np.uint8)
        Image.fromarray(array).save(folder / f"{index}.png")
        (folder / f"{index}.txt").write_text(["a red circle", "a blue square"][index % 2])
    return folder
