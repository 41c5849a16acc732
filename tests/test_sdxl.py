"""SDXL through the family seam, on a tiny random SDXL pipeline built by the suite (conftest.build_tiny_sdxl):
detection, the conditioning diffusers' own pipeline computes, training with both text encoders, exact resume,
files that diffusers' StableDiffusionXLPipeline loads to the same output, blending, merge, convert, inspect,
and refusals across families."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from stylelora.adapters.formats import read_lora, write_lora
from stylelora.adapters.inspection import describe
from stylelora.errors import AdapterFileError, TrainingInterrupted
from stylelora.families import MINI, SDXL, Placement
from stylelora.files import read_safetensors
from stylelora.model.base import base_family, load_base
from stylelora.paint.generate import generate
from stylelora.paint.merge_job import MergeConfig, merge
from stylelora.paint.request import GenerateConfig
from stylelora.paint.styler import Styler
from stylelora.train.checkpoint import latest_checkpoint
from stylelora.train.config import TrainConfig
from stylelora.train.loop import train

QUIET = dict(progress_bar=False, log=lambda m: None)


def _config(base, data, out, **overrides) -> TrainConfig:
    values = dict(data=data, out=out, base=str(base), max_steps=3, batch_size=2, learning_rate=1e-2)
    return TrainConfig(**(values | overrides))


@pytest.fixture(scope="module")
def sdxl_adapter(tiny_sdxl_base, mixed_aspect_folder, tmp_path_factory):
    """An SDXL adapter with both text encoders adapted, trained on the mixed-aspect folder."""
    out = tmp_path_factory.mktemp("sdxl-run")
    return train(_config(tiny_sdxl_base, mixed_aspect_folder, out, train_text_encoder=True), **QUIET).adapter_path


def test_the_family_is_read_from_the_unet_config_not_the_name(tiny_sdxl_base, tiny_base, tmp_path):
    assert base_family(str(tiny_sdxl_base)) is SDXL and base_family(str(tiny_base)) is MINI
    renamed = tmp_path / "stable-diffusion-xl-base-1.0"
    renamed.symlink_to(tiny_base, target_is_directory=True)
    assert base_family(str(renamed)) is MINI
    assert type(load_base(str(tiny_sdxl_base))).__name__ == "StableDiffusionXLPipeline"


def test_conditioning_equals_what_diffusers_sdxl_pipeline_computes(tiny_sdxl_base):
    pipe = load_base(str(tiny_sdxl_base))
    prompts = ["a red circle", "a blue square on a green field"]
    ours = SDXL.encode(pipe, prompts, "cpu")
    context, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(ours.context, context) and torch.equal(ours.pooled, pooled)
    where = Placement(original=(48, 96), crop_top_left=(0, 4), target=(24, 40))
    inputs = SDXL.denoiser_inputs(ours, [where, where], torch.float32)
    expected = pipe._get_add_time_ids((48, 96), (0, 4), (24, 40), torch.float32,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    assert torch.equal(inputs["added_cond_kwargs"]["time_ids"], expected.repeat(2, 1))
    assert torch.equal(inputs["added_cond_kwargs"]["text_embeds"], pooled)


def test_an_sdxl_adapter_has_the_kohya_sdxl_layout_and_metadata(sdxl_adapter):
    adapter = read_safetensors(sdxl_adapter)
    prefixes = {key.split("_", 2)[1] for key in adapter.tensors}
    assert prefixes == {"unet", "te1", "te2"}
    assert any(k.startswith("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.") for k in adapter.tensors)
    meta = adapter.metadata
    assert (meta["ss_base_model_version"], meta["modelspec.architecture"], meta["stylelora.architecture"]) == (
        "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora", "sdxl")
    info = describe(sdxl_adapter)
    assert info["architecture"] == "SDXL" and info["text_encoder"]
    assert {g["part"] for g in info["groups"]} == {"unet", "text_encoder", "text_encoder_2"}


def test_sdxl_resume_equals_an_uninterrupted_run(tiny_sdxl_base, mixed_aspect_folder, tmp_path):
    options = dict(max_steps=6, save_every=2, flip=True, caption_dropout=0.3, train_text_encoder=True)
    straight = train(_config(tiny_sdxl_base, mixed_aspect_folder, tmp_path / "straight", **options), **QUIET)
    stopped = _config(tiny_sdxl_base, mixed_aspect_folder, tmp_path / "resumed", **options)
    done: list[int] = []
    with pytest.raises(TrainingInterrupted):
        train(stopped, on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 4, **QUIET)
    assert latest_checkpoint(stopped.out_dir).name == "step-000004"
    stopped.resume = True
    resumed = train(stopped, **QUIET)
    a, b = read_safetensors(straight.adapter_path).tensors, read_safetensors(resumed.adapter_path).tensors
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def _latents(pipe, prompt: str) -> torch.Tensor:
    return pipe(prompt, num_inference_steps=3, guidance_scale=5.0, height=32, width=48, output_type="latent",
                generator=torch.Generator().manual_seed(7)).images


# The diffusers layout spells text-encoder modules `text_model.encoder...`, as diffusers wrote them for years and
# ComfyUI maps them; diffusers 0.42 on transformers 5 no longer finds those in its own CLIP models, so that layout
# is checked on the UNet part. The kohya layout (what training writes) loads whole.
@pytest.mark.parametrize("layout, parts", [("kohya", {"unet", "text_encoder", "text_encoder_2"}), ("diffusers", {"unet"})])
def test_diffusers_sdxl_pipeline_loads_our_file_to_the_same_output_as_styler(sdxl_adapter, tiny_sdxl_base,
                                                                           layout, parts, tmp_path):
    weights, metadata, _ = read_lora(sdxl_adapter)
    weights = {key: module for key, module in weights.items() if key[0] in parts}
    path = write_lora(weights, layout, tmp_path / f"{layout}.safetensors", metadata)
    reference = load_base(str(tiny_sdxl_base))
    reference.load_lora_weights(str(path), adapter_name="style")
    styler = Styler(str(tiny_sdxl_base))
    styler.set_weights({styler.load(path): 1.0})
    styler.fuse()
    ours = _latents(styler.pipe, "a red circle")
    theirs = _latents(reference, "a red circle")
    plain = _latents(load_base(str(tiny_sdxl_base)), "a red circle")
    assert (ours - theirs).abs().max().item() < 1e-4
    assert (ours - plain).abs().max().item() > 1e-3  # the adapter does change the picture


def test_generate_blends_on_sdxl_at_a_given_width_and_height(sdxl_adapter, tiny_sdxl_base, tmp_path):
    config = GenerateConfig(prompt="a red circle", loras=(f"{sdxl_adapter}:0.7", f"{sdxl_adapter}:unet=0.5,te=0"),
                            base=str(tiny_sdxl_base), count=1, steps=2, width=48, height=32, out=tmp_path)
    paths = generate(config)
    from PIL import Image

    assert [Image.open(p).size for p in paths] == [(48, 32)]


def test_sd1_family_adapters_and_sdxl_bases_refuse_each_other(sdxl_adapter, tiny_sdxl_base, tiny_base,
                                                             train_config):
    with pytest.raises(AdapterFileError, match=r"made for SDXL, but base .* is stylelora mini; load it on a SDXL base"):
        Styler(str(tiny_base)).load(sdxl_adapter)
    mini_adapter = train(train_config(max_steps=1), **QUIET).adapter_path
    with pytest.raises(AdapterFileError, match=r"made for stylelora mini, but base .* is SDXL"):
        Styler(str(tiny_sdxl_base)).load(mini_adapter)
    shown = subprocess.run([sys.executable, "-m", "stylelora", "inspect", str(mini_adapter), "--base", str(tiny_sdxl_base)],
                           capture_output=True, text=True)
    assert shown.returncode != 0 and "made for stylelora mini, but base" in shown.stderr and "is SDXL" in shown.stderr
    assert "Traceback" not in shown.stderr
    with pytest.raises(AdapterFileError, match=r"cannot be merged"):
        merge(MergeConfig(adapters=(str(sdxl_adapter), str(mini_adapter)), out=mini_adapter.with_name("x.safetensors")))


def test_merge_and_convert_keep_an_sdxl_adapter_whole(sdxl_adapter, tmp_path):
    out = tmp_path / "merged.safetensors"
    merge(MergeConfig(adapters=(f"{sdxl_adapter}:0.5", f"{sdxl_adapter}:0.5"), out=out))
    merged = read_safetensors(out)
    assert merged.metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert {key.split("_", 2)[1] for key in merged.tensors} == {"unet", "te1", "te2"}
    weights, metadata, _ = read_lora(sdxl_adapter)
    for layout in ("diffusers", "peft"):
        converted = write_lora(weights, layout, tmp_path / (layout + (".safetensors" if layout == "diffusers" else "")),
                               metadata)
        back, _, _ = read_lora(converted)
        assert back.keys() == weights.keys()
        assert all(torch.equal(back[k].delta(), weights[k].delta()) for k in weights)
    assert (tmp_path / "peft" / "text_encoder_2" / "adapter_model.safetensors").is_file()


def test_cli_trains_and_inspects_on_an_sdxl_folder(tiny_sdxl_base, mixed_aspect_folder, tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run([sys.executable, "-m", "stylelora", "train", str(mixed_aspect_folder), "--base",
                          str(tiny_sdxl_base), "--max-steps", "2", "--out", str(out), "--quiet"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    shown = subprocess.run([sys.executable, "-m", "stylelora", "inspect", str(out / "cli.safetensors")],
                           capture_output=True, text=True)
    assert "fits:          SDXL" in shown.stdout
    assert (out / "buckets.json").is_file()


def test_a_single_file_checkpoint_is_read_as_sdxl_by_its_tensor_names(tmp_path):
    import safetensors.torch

    from stylelora.families import SD1

    names = {"sdxl.safetensors": "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
             "sd15.safetensors": "model.diffusion_model.output_blocks.11.0.skip_connection.weight"}
    for file, name in names.items():
        safetensors.torch.save_file({name: torch.zeros(2)}, str(tmp_path / file))
    assert base_family(str(tmp_path / "sdxl.safetensors")) is SDXL
    assert base_family(str(tmp_path / "sd15.safetensors")) is SD1
