"""Flux.1 on a tiny random Flux pipeline built here (nothing downloaded): packed latents, the guidance input and
the size-dependent shift in training, exact resume, kohya's fused layout and diffusers', the files diffusers' own
Flux loader applies, and the painter painting what that loader paints, alone and in mixed batches."""

import pytest
import torch
from diffusers import FluxPipeline

from dit_helpers import assert_resume_is_exact, assert_served_is_generated, dit_config_maker
from stylelora.adapters.formats import read_lora, write_lora
from stylelora.adapters.stack import StyleWeight
from stylelora.errors import AdapterFileError, ConfigError
from stylelora.families import FLUX
from stylelora.files import read_safetensors
from stylelora.methods.layouts import LoraModule
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


def test_the_file_is_in_kohyas_fused_layout_and_reads_back_exactly(tiny_flux_base, flux_adapters, tmp_path):
    assert base_family(str(tiny_flux_base)) is FLUX
    adapter = read_safetensors(flux_adapters[1])
    tensors, rank = adapter.tensors, 4
    assert {k.split(".")[0] for k in tensors} == {
        "lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_0_img_attn_proj",
        "lora_unet_double_blocks_0_txt_attn_qkv", "lora_unet_double_blocks_0_txt_attn_proj",
        "lora_unet_single_blocks_0_linear1"} | {f"lora_te1_text_model_encoder_layers_{i}_self_attn_{p}"
                                                for i in (0, 1) for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
    # linear1 fuses q, k, v and the MLP input (left out of the attention preset: a zero block), 1:1:1:4 rows
    down, up = tensors["lora_unet_single_blocks_0_linear1.lora_down.weight"], tensors["lora_unet_single_blocks_0_linear1.lora_up.weight"]
    assert down.shape == (4 * rank, 32) and up.shape == (7 * 32, 4 * rank)
    assert tensors["lora_unet_single_blocks_0_linear1.alpha"].item() == 4 * rank  # the scale folded into up
    assert not up[:32, rank:].any() and not up[96:].any() and not down[3 * rank:].any()  # block-diagonal, MLP zero
    assert (adapter.metadata["modelspec.architecture"], adapter.metadata["ss_base_model_version"]) == ("flux-1/lora", "flux1")
    # Read back, each module is a diffusers path again, with the trained change exactly
    fused, _, _ = read_lora(flux_adapters[1])
    plain = read_lora(write_lora(fused, "diffusers", tmp_path / "d.safetensors", adapter.metadata))[0]
    assert ("unet", "single_transformer_blocks.0.attn.to_q") in fused and ("unet", "single_transformer_blocks.0.proj_mlp") not in fused
    assert fused.keys() == plain.keys() and all(fused[k].rank == rank for k in fused)
    assert max((fused[k].delta() - plain[k].delta()).abs().max().item() for k in fused) < 1e-7
    again = read_safetensors(write_lora(plain, "kohya", tmp_path / "k.safetensors", adapter.metadata)).tensors
    assert again.keys() == tensors.keys() and all(torch.equal(again[k], tensors[k]) for k in tensors)


def test_format_diffusers_writes_transformer_keys_and_the_fused_layout_refuses_what_it_cannot_hold(flux_config):
    adapter = read_safetensors(train(flux_config(format="diffusers", max_steps=1), **QUIET).adapter_path)
    assert "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight" in adapter.tensors
    assert not any(key.endswith(".alpha") for key in adapter.tensors)  # the scale folded into lora_B
    with pytest.raises(ConfigError, match=r"^--method = 'dora': Flux.1 adapters are written in kohya's layout with "
                                          r"fused q/k/v, which holds plain LoRA"):
        train(flux_config(method="dora"), **QUIET)


def test_diffusers_splits_the_fused_double_blocks_as_stylelora_does(flux_adapters):
    """diffusers' own converter on the file's double blocks (its single-block split is fixed at 3072 wide: the
    full-width test below runs that part through its pipeline)."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    tensors = read_safetensors(flux_adapters[0]).tensors
    double = {k: t for k, t in tensors.items() if "double_blocks" in k}
    theirs = _convert_kohya_flux_lora_to_diffusers(dict(double))
    ours = read_lora(flux_adapters[0])[0]
    for (part, module), lora in ours.items():
        if module.startswith("transformer_blocks."):
            down, up = theirs[f"transformer.{module}.lora_A.weight"], theirs[f"transformer.{module}.lora_B.weight"]
            assert (up @ down - lora.delta()).abs().max().item() < 1e-7
    assert len(theirs) == 2 * sum(module.startswith("transformer_blocks.") for _, module in ours)


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


def _assert_diffusers_paints_what_stylelora_paints(base, adapter) -> None:
    theirs = FluxPipeline.from_pretrained(base)
    theirs.set_progress_bar_config(disable=True)
    theirs.load_lora_weights(str(adapter), adapter_name="style")
    latents = theirs("a red circle", num_inference_steps=3, height=32, width=32, guidance_scale=3.5, output_type="latent",
                     generator=torch.Generator().manual_seed(0), max_sequence_length=24).images[0]
    engine = Engine(str(base), folder=None)
    engine.add("style", adapter)
    ours = engine.paint([_job((("style", StyleWeight(1.0, 1.0)),))], output_type="latent")[0][0]
    bare = engine.paint([_job(())], output_type="latent")[0][0]
    assert (ours - latents).abs().max().item() < 1e-4 and (ours - bare).abs().max().item() > 1e-3


def test_diffusers_own_flux_loader_paints_the_diffusers_layout_as_stylelora_does(tiny_flux_base, flux_adapters, tmp_path):
    weights, metadata, _ = read_lora(flux_adapters[0])
    _assert_diffusers_paints_what_stylelora_paints(tiny_flux_base, write_lora(weights, "diffusers", tmp_path / "d.safetensors", metadata))


@pytest.mark.slow
def test_at_flux_width_diffusers_own_loader_paints_the_kohya_file_as_stylelora_does(tiny_flux_base, tmp_path):
    """diffusers splits a single block's linear1 only at Flux's own width (3072, the MLP 4x): a pipeline that
    wide, one single block, random weights, and a random adapter on every module its layout names there."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    torch.manual_seed(0)
    pipe = FluxPipeline.from_pretrained(tiny_flux_base)
    pipe.transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=0, num_single_layers=1,
                                              attention_head_dim=128, num_attention_heads=24, joint_attention_dim=64,
                                              pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    pipe.save_pretrained(tmp_path / "wide")
    single = ["single_transformer_blocks.0." + m for m in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out")]
    final = ["norm_out.linear", "proj_out"]  # kohya's final_layer_adaLN_modulation_1 (its halves swapped), final_layer_linear
    weights = {}
    for path in single + final:
        layer = pipe.transformer.get_submodule(path)
        weights[("unet", path)] = LoraModule(torch.randn(4, layer.in_features) * 0.02,
                                             torch.randn(layer.out_features, 4) * 0.02, 8.0)
    metadata = {"stylelora.architecture": "flux"}
    tensors = read_safetensors(write_lora(weights, None, tmp_path / "all.safetensors", metadata)).tensors
    # diffusers' converter reads every module as it was trained; its pipeline then drops the final layer's (the
    # converter names them without `transformer.`), which ComfyUI applies: the painting compares the blocks'.
    converted = _convert_kohya_flux_lora_to_diffusers(dict(tensors))
    for (_, path), lora in weights.items():
        key = f"transformer.{path}" if path in single else path
        product = converted[f"{key}.lora_B.weight"] @ converted[f"{key}.lora_A.weight"]
        assert (product - lora.delta()).abs().max().item() < 1e-7, path
    blocks = {key: lora for key, lora in weights.items() if key[1] in single}
    adapter = write_lora(blocks, None, tmp_path / "blocks.safetensors", metadata)
    assert "lora_unet_single_blocks_0_linear1.lora_down.weight" in read_safetensors(adapter).tensors
    _assert_diffusers_paints_what_stylelora_paints(tmp_path / "wide", adapter)


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


def test_selection_by_score_paints_and_scores_on_flux(flux_config, tmp_path):
    result = train(flux_config(out=tmp_path / "s", max_steps=2, validation_split=0.34, validate_every=1,
                               select_by="score"), **QUIET)
    assert result.scores is not None and 0 < result.scores.style <= 1 and 0 <= result.scores.prompt <= 1


def test_the_server_serves_a_flux_base_and_a_request_is_what_generate_paints(tiny_flux_base, flux_adapters, tmp_path):
    assert_served_is_generated(tiny_flux_base, flux_adapters[1], tmp_path)


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
