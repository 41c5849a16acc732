"""SD3.x on a tiny random SD3 pipeline built here (nothing downloaded): the family is read off the base, training
runs by flow matching and resumes exactly, the file is one diffusers' own SD3 loader applies, and the painter
paints what that loader paints, alone and in mixed batches."""

import subprocess
import sys

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from dit_helpers import assert_served_is_generated, assert_resume_is_exact, dit_config_maker
from stylelora.adapters.stack import StyleWeight
from stylelora.errors import AdapterFileError
from stylelora.families import SD3
from stylelora.files import read_safetensors
from stylelora.model.base import base_family, load_base, native_resolution
from stylelora.paint.engine import Engine, PaintJob
from stylelora.paint.request import GenerateConfig
from stylelora.paint.styler import Styler
from stylelora.train.loop import train
from stylelora.train.objective import FlowMatching

QUIET = dict(progress_bar=False, log=lambda message: None)


@pytest.fixture(scope="module")
def sd3_config(tiny_sd3_base, image_folder, tmp_path_factory):
    return dit_config_maker(tiny_sd3_base, image_folder, tmp_path_factory)


@pytest.fixture(scope="module")
def sd3_adapters(sd3_config):
    """Two adapters trained on the tiny SD3: one on the transformer alone, one with both CLIP encoders."""
    return (train(sd3_config(seed=1), **QUIET).adapter_path,
            train(sd3_config(seed=2, train_text_encoder=True), **QUIET).adapter_path)


def test_the_family_is_read_off_the_base(tiny_sd3_base):
    assert base_family(str(tiny_sd3_base)) is SD3
    assert native_resolution(str(tiny_sd3_base)) == 32
    pipe = load_base(str(tiny_sd3_base))
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and SD3.denoiser_of(pipe) is pipe.transformer


def test_training_is_flow_matching_over_both_streams_and_writes_diffusers_sd3_file(sd3_config, sd3_adapters, monkeypatch):
    from stylelora.train import step_loss

    seen = []
    real = step_loss.objective_for
    monkeypatch.setattr(step_loss, "objective_for", lambda *a: seen.append(real(*a)) or seen[-1])
    train(sd3_config(max_steps=1), **QUIET)
    assert isinstance(seen[0], FlowMatching) and seen[0].sampling.kind == "logit-normal"
    adapter = read_safetensors(sd3_adapters[1])
    keys = set(adapter.tensors)
    assert all(k.startswith(("transformer.", "text_encoder.", "text_encoder_2.")) for k in keys)
    assert not any(k.endswith(".alpha") for k in keys)  # diffusers' SD3 loader refuses alpha keys
    # both streams' attention, the caption stream's included
    assert "transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight" in keys
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in keys
    assert {k.split(".")[0] for k in keys} == {"transformer", "text_encoder", "text_encoder_2"}
    meta = adapter.metadata
    assert (meta["modelspec.architecture"], meta["ss_base_model_version"], meta["stylelora.architecture"]) == \
        ("stable-diffusion-3/lora", "sd3", "sd3")


def test_resume_equals_an_uninterrupted_run(sd3_config, tmp_path):
    assert_resume_is_exact(sd3_config, tmp_path)


def _latents(pipe, steps=3):
    return pipe("a red circle", num_inference_steps=steps, height=32, width=32, guidance_scale=4.0, output_type="latent",
                generator=torch.Generator().manual_seed(0), max_sequence_length=24).images


def test_diffusers_own_sd3_loader_paints_what_stylelora_paints(tiny_sd3_base, sd3_adapters):
    for path in sd3_adapters:
        theirs = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_base)
        theirs.set_progress_bar_config(disable=True)
        theirs.load_lora_weights(str(path), adapter_name="style")
        engine = Engine(str(tiny_sd3_base), folder=None)
        engine.add("style", path)
        config = GenerateConfig(prompt="a red circle", count=1, steps=3, cfg=4.0, seed=0, scheduler="euler")
        ours = engine.paint([PaintJob(config, (("style", StyleWeight(1.0, 1.0)),))], output_type="latent")[0][0]
        plain = _latents(load_base(str(tiny_sd3_base)))[0]
        assert (ours - _latents(theirs)[0]).abs().max().item() < 1e-4
        assert (ours - plain).abs().max().item() > 1e-3  # the adapter does change the picture


def test_a_mixed_batch_equals_each_request_painted_alone(tiny_sd3_base, sd3_adapters):
    engine = Engine(str(tiny_sd3_base), folder=None)
    engine.add("a", sd3_adapters[0])
    engine.add("b", sd3_adapters[1])
    stacks = [(("a", StyleWeight(0.8, 0.8)),), (("a", StyleWeight(0.5, 0.5)), ("b", StyleWeight(0.7, 0.7)))]
    jobs = [PaintJob(GenerateConfig(prompt=p, count=1, steps=2, cfg=4.0, seed=3, scheduler="euler"), stack)
            for p, stack in zip(("a red circle", "a blue square"), stacks)]
    together = engine.paint(jobs, output_type="latent")
    assert engine.lora.fused_stack is None  # the per-row path
    for job, latents in zip(jobs, together):
        alone = engine.paint([job], output_type="latent")[0]
        assert (latents[0] - alone[0]).abs().max().item() < 1e-5


def test_styler_blends_and_samplers_and_the_refusals(tiny_sd3_base, sd3_adapters, train_config):
    styler = Styler(str(tiny_sd3_base))
    a, b = (styler.load(path) for path in sd3_adapters)
    styler.set_weights({a: 0.6, b: StyleWeight(0.5, 0.0)})
    for blend in ("merge", "switch", "composite"):
        for scheduler in ("euler", "dpm++"):
            assert styler.generate("a red circle", count=1, steps=2, scheduler=scheduler, blend=blend)[0].size == (32, 32)
    from stylelora.errors import ConfigError

    with pytest.raises(ConfigError, match="--scheduler 'ddim' has no flow-matching form"):
        styler.generate("a red circle", steps=2, scheduler="ddim")
    mini_adapter = train(train_config(max_steps=1), **QUIET).adapter_path
    with pytest.raises(AdapterFileError, match=r"made for stylelora mini, but base .* is SD3\.x"):
        styler.load(mini_adapter)
    with pytest.raises(AdapterFileError, match=r"made for SD3\.x, but base .* is stylelora mini"):
        Styler(train_config().base).load(sd3_adapters[0])


def test_the_command_line_trains_inspects_and_paints_on_sd3(tiny_sd3_base, image_folder, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "stylelora", *args], capture_output=True, text=True)

    run = cli("train", str(image_folder), "--base", str(tiny_sd3_base), "--max-steps", "2", "--batch-size", "2",
              "--resolution", "32", "--out", str(tmp_path / "run"), "--quiet")
    assert run.returncode == 0, run.stderr
    adapter = next((tmp_path / "run").glob("*.safetensors"))
    shown = cli("inspect", str(adapter))
    assert shown.returncode == 0 and "SD3.x" in shown.stdout, shown.stdout + shown.stderr
    painted = cli("generate", "a red circle", "--lora", f"{adapter}:0.8", "--base", str(tiny_sd3_base), "-n", "1",
                  "--steps", "2", "--scheduler", "euler", "--out", str(tmp_path / "pictures"))
    assert painted.returncode == 0, painted.stderr
    assert [p.name for p in (tmp_path / "pictures").iterdir()] == ["a-red-circle-1.png"]


@pytest.mark.parametrize("overrides, words", [
    (dict(method="loha"), "--method = 'loha': SD3.x adapters are written in diffusers' layout, which holds plain LoRA; "
                          "use --method lora, adalora or dylora"),
    (dict(train_bias=True), "--train-bias = True: SD3.x adapters are written in diffusers' layout, which holds no "
                            "trained biases"),
    (dict(targets="all", conv_rank=2), "--conv-rank = 2: SD3.x has no convolutions to adapt"),
    (dict(block_lr="down=0.5"), "--block-lr = 'down=0.5': SD3.x has no down/mid/up blocks; leave out --block-lr"),
    (dict(format="kohya"), "--format = 'kohya': SD3.x files have no kohya layout that diffusers reads; leave out "
                           "--format"),
])
def test_what_the_sd3_file_layout_cannot_hold_is_refused_before_training(sd3_config, overrides, words):
    from stylelora.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        train(sd3_config(**overrides), **QUIET)
    assert str(caught.value).startswith(words)


def test_merge_resize_and_convert_keep_the_sd3_layout_and_paint_as_the_blend(tiny_sd3_base, sd3_adapters, tmp_path):
    from stylelora.adapters.formats import read_lora, write_lora
    from stylelora.adapters.resize import ResizeConfig, resize
    from stylelora.paint.merge_job import MergeConfig, merge

    merged = merge(MergeConfig((f"{sd3_adapters[1]}:0.6", f"{sd3_adapters[0]}:0.4"), tmp_path / "ab.safetensors")).path
    assert all(k.startswith(("transformer.", "text_encoder")) for k in read_safetensors(merged).tensors)
    styler = Styler(str(tiny_sd3_base))
    a, b, ab = styler.load(sd3_adapters[1]), styler.load(sd3_adapters[0]), styler.load(merged)
    styler.set_weights({a: 0.6, b: 0.4})
    blend = _latents(styler.pipe)
    styler.set_weights({ab: 1.0})
    assert (_latents(styler.pipe) - blend).abs().max().item() < 1e-5
    small = resize(ResizeConfig(sd3_adapters[0], tmp_path / "r2.safetensors", rank=2, base=str(tiny_sd3_base))).path
    assert {m.rank for m in read_lora(small)[0].values()} == {2}
    assert next(iter(read_safetensors(small).tensors)).startswith("transformer.")
    weights, metadata, _ = read_lora(sd3_adapters[0])
    back = read_lora(write_lora(read_lora(write_lora(weights, "kohya", tmp_path / "k.safetensors", metadata))[0],
                                "diffusers", tmp_path / "d.safetensors", metadata))[0]
    assert all(torch.allclose(back[k].delta(), weights[k].delta(), atol=1e-6) for k in weights)


def test_per_block_weights_are_refused_on_a_base_without_unet_blocks(tiny_sd3_base, sd3_adapters):
    from stylelora.errors import ConfigError

    styler = Styler(str(tiny_sd3_base))
    name = styler.load(sd3_adapters[0])
    with pytest.raises(ConfigError, match="per-block weights .* SD3.x has none"):
        styler.set_weights({name: StyleWeight.parse("down=0,mid=1,up=0.5")})


def test_previews_validation_and_a_quantized_base_train_on_sd3(sd3_config, tmp_path):
    """Previews set the pipeline's scheduler to their own few steps; training draws from its own copy."""
    with_previews = train(sd3_config(out=tmp_path / "p", max_steps=3, sample_every=1, sample_prompts=("a red circle",),
                                     validation_split=0.34, validate_every=1), **QUIET)
    assert with_previews.steps == 3 and with_previews.validation_loss is not None
    assert len(list((tmp_path / "p" / "samples").glob("*.png"))) == 3
    over_nf4 = train(sd3_config(out=tmp_path / "q", max_steps=2, quantize_base="nf4"), **QUIET)
    assert read_safetensors(over_nf4.adapter_path).tensors.keys() == read_safetensors(with_previews.adapter_path).tensors.keys()


def test_selection_by_score_paints_and_scores_on_sd3(sd3_config, tmp_path):
    """The scorer asks the family, not the UNet: flow matching's noising, SD3's three text encoders."""
    result = train(sd3_config(out=tmp_path / "s", max_steps=2, validation_split=0.34, validate_every=1,
                              select_by="score"), **QUIET)
    assert result.scores is not None and 0 < result.scores.style <= 1 and 0 <= result.scores.prompt <= 1
    assert len(list((tmp_path / "s" / "scored").glob("step-000001-*.png"))) >= 2


def test_the_server_serves_an_sd3_base_and_a_request_is_what_generate_paints(tiny_sd3_base, sd3_adapters, tmp_path):
    assert_served_is_generated(tiny_sd3_base, sd3_adapters[1], tmp_path)


def test_t5_is_freed_with_the_clip_encoders_once_every_caption_is_cached(sd3_config, monkeypatch):
    from stylelora.train import loop

    seen = {}
    real = loop.run_loop

    def spy(config, model, *args, **kwargs):
        seen.update({part: getattr(model.pipe, part) for part in ("text_encoder", "text_encoder_2", "text_encoder_3")})
        return real(config, model, *args, **kwargs)

    monkeypatch.setattr(loop, "run_loop", spy)
    train(sd3_config(max_steps=1), **QUIET)
    assert seen == {"text_encoder": None, "text_encoder_2": None, "text_encoder_3": None}


def test_a_caption_longer_than_t5_reads_is_named(sd3_config, tmp_path):
    from PIL import Image

    folder = tmp_path / "long"
    folder.mkdir()
    for index in range(2):
        Image.new("RGB", (32, 32), "red").save(folder / f"{index}.png")
        (folder / f"{index}.txt").write_text("a red circle " * (12 if index else 1))
    said: list[str] = []
    train(sd3_config(data=folder, max_steps=1), progress_bar=False, log=said.append)
    warnings = [line for line in said if "longer than" in line]
    assert len(warnings) == 1 and "1.txt: the caption is longer than 24 tokens, T5's limit; the rest is cut" in warnings[0]
