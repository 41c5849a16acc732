"""Flux.1 on a tiny random Flux pipeline built here (nothing downloaded): packed latents, the guidance input and
the size-dependent shift in training, exact resume, the file diffusers' own Flux loader applies, and the painter
painting what that loader paints, alone and in mixed batches."""

import pytest
import torch
from diffusers import FluxPipeline

from dit_helpers import assert_resume_is_exact, dit_config_maker
from stylelora.adapters.stack import StyleWeight
from stylelora.errors import AdapterFileError, ConfigError
from stylelora.families import FLUX
from stylelora.files import read_safetensors
from stylelora.model.base import base_family, load_base
from stylelora.paint.engine import Engine, PaintJob
from stylelora.paint.request import GenerateConfig
from stylelora.paint.styler import Styler
from stylelora.train.loop import train

QUIET = dict(progress_bar=False, log=lambda message: None)


@pytest.fixture(scope="module")
def flux_config(tiny_flux_base, image_folder, tmp_path_factory):
    return dit_config_maker(tiny_flux_base, image_folder, tmp_path_factory)


@pytest.fixture(scope="module")
def flux_adapters(flux_config):
    """An adapter on the transformer alone, and one with CLIP-L too."""
    return (train(flux_config(seed=1), **QUIET).adapter_path,
            train(flux_config(seed=2, train_text_encoder=True), **QUIET).adapter_path)


def test_the_family_and_the_file(tiny_flux_base, flux_adapters):
    assert base_family(str(tiny_flux_base)) is FLUX
    adapter = read_safetensors(flux_adapters[1])
    keys = set(adapter.tensors)
    assert {k.split(".")[0] for k in keys} == {"transformer", "text_encoder"} and not any(k.endswith(".alpha") for k in keys)
    assert "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight" in keys  # the single blocks too
    assert "transformer.transformer_blocks.0.attn.add_k_proj.lora_A.weight" in keys
    assert (adapter.metadata["modelspec.architecture"], adapter.metadata["ss_base_model_version"]) == ("flux-1/lora", "flux1")


def test_training_feeds_packed_latents_the_guidance_and_the_size_shift(flux_config, monkeypatch):
    seen = {}
    real = FLUX.predict.__func__

    def spy(self, denoiser, noisy, timesteps, inputs):
        seen.update(shape=tuple(noisy.shape), timesteps=timesteps.clone())
        return real(self, denoiser, noisy, timesteps, inputs)

    monkeypatch.setattr(type(FLUX), "predict", spy)
    train(flux_config(max_steps=1), **QUIET)
    assert seen["shape"] == (2, 16, 16, 16)  # 32 px through a 2x VAE; packed 2x2 inside predict
    assert ((seen["timesteps"] > 0) & (seen["timesteps"] <= 1000)).all()


def test_resume_equals_an_uninterrupted_run(flux_config, tmp_path):
    assert_resume_is_exact(flux_config, tmp_path)


def _job(stack, prompt="a red circle", steps=3):
    config = GenerateConfig(prompt=prompt, count=1, steps=steps, cfg=3.5, seed=0, scheduler="euler", width=32, height=32)
    return PaintJob(config, stack)


def test_diffusers_own_flux_loader_paints_what_stylelora_paints(tiny_flux_base, flux_adapters):
    theirs = FluxPipeline.from_pretrained(tiny_flux_base)
    theirs.set_progress_bar_config(disable=True)
    theirs.load_lora_weights(str(flux_adapters[0]), adapter_name="style")
    latents = theirs("a red circle", num_inference_steps=3, height=32, width=32, guidance_scale=3.5, output_type="latent",
                     generator=torch.Generator().manual_seed(0), max_sequence_length=24).images[0]
    engine = Engine(str(tiny_flux_base), folder=None)
    engine.add("style", flux_adapters[0])
    ours = engine.paint([_job((("style", StyleWeight(1.0, 1.0)),))], output_type="latent")[0][0]
    bare = engine.paint([_job(())], output_type="latent")[0][0]
    assert (ours - latents).abs().max().item() < 1e-4 and (ours - bare).abs().max().item() > 1e-3


def test_a_mixed_batch_equals_each_request_alone_and_the_styler_blends(tiny_flux_base, flux_adapters):
    engine = Engine(str(tiny_flux_base), folder=None)
    engine.add("a", flux_adapters[0])
    engine.add("b", flux_adapters[1])
    jobs = [_job((("a", StyleWeight(0.8, 0.8)),), "a red circle", 2),
            _job((("a", StyleWeight(0.5, 0.5)), ("b", StyleWeight(0.7, 0.7))), "a blue square", 2)]
    together = engine.paint(jobs, output_type="latent")
    for job, latents in zip(jobs, together):
        assert (latents[0] - engine.paint([job], output_type="latent")[0][0]).abs().max().item() < 1e-5
    styler = Styler(str(tiny_flux_base))
    a, b = (styler.load(path) for path in flux_adapters)
    styler.set_weights({a: 0.6, b: 0.5})
    for blend in ("merge", "switch", "composite"):
        assert styler.generate("a red circle", steps=2, cfg=3.5, size=32, scheduler="euler", blend=blend)[0].size == (32, 32)
    with pytest.raises(ConfigError, match="--negative: Flux.1 paints with distilled guidance"):
        styler.generate("a red circle", negative="blurry", steps=2, size=32, scheduler="euler")


def test_unet_adapters_are_refused_and_inspect_names_the_family(tiny_flux_base, flux_adapters, train_config):
    """(The command line's train, inspect and generate run on a DiT base in test_sd3.py.)"""
    from stylelora.adapters.inspection import as_text, describe

    mini_adapter = train(train_config(max_steps=1), **QUIET).adapter_path
    with pytest.raises(AdapterFileError, match=r"made for stylelora mini, but base .* is Flux\.1"):
        Styler(str(tiny_flux_base)).load(mini_adapter)
    assert "fits:          Flux.1" in as_text(describe(flux_adapters[0]))
    assert load_base(str(tiny_flux_base)).transformer.config.guidance_embeds


def test_a_single_file_checkpoint_is_read_as_sd3_or_flux_from_its_tensor_names(tmp_path):
    """diffusers' own checkpoint detection on the file's names and shapes; no weight is read (tiny tensors here)."""
    from safetensors.torch import save_file

    from stylelora.families import SD3

    flux = {"model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(4),
            "model.diffusion_model.guidance_in.in_layer.bias": torch.zeros(4),
            "model.diffusion_model.img_in.weight": torch.zeros(4, 64)}
    save_file(flux, str(tmp_path / "flux1-dev.safetensors"))
    save_file({"model.diffusion_model.joint_blocks.37.x_block.mlp.fc1.weight": torch.zeros(4, 4)},
              str(tmp_path / "sd35_large.safetensors"))
    assert base_family(str(tmp_path / "flux1-dev.safetensors")) is FLUX
    assert base_family(str(tmp_path / "sd35_large.safetensors")) is SD3
