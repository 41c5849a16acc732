"""Styler and `stylelora generate`: weighted stacks of adapters, exact scales, reproducible PNGs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from stylelora.adapters.stack import StyleWeight, parse_lora_spec
from stylelora.errors import AdapterFileError, ConfigError
from stylelora.files import read_safetensors
from stylelora.paint.generate import generate
from stylelora.paint.request import GenerateConfig
from stylelora.paint.styler import Styler


def _manual_delta(path, module_key):
    tensors = read_safetensors(path).tensors
    down, up = tensors[f"{module_key}.lora_down.weight"], tensors[f"{module_key}.lora_up.weight"]
    return tensors[f"{module_key}.alpha"].item() / down.shape[0] * up @ down


def test_weights_set_exact_scales_and_zero_is_the_base(tiny_base, two_adapters, unet_probe):
    styler = Styler(str(tiny_base))
    base_out = unet_probe(styler)
    a, b = (styler.load(p) for p in two_adapters)
    styler.set_weights({})
    assert torch.equal(unet_probe(styler), base_out)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    layer = styler.pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        for wa, wb in ((0.7, 0.0), (0.7, -0.4), (0.0, 1.5)):
            styler.set_weights({a: wa, b: wb})
            expected = x @ (layer.base_layer.weight + wa * _manual_delta(two_adapters[0], key)
                            + wb * _manual_delta(two_adapters[1], key)).T
            assert torch.allclose(layer(x), expected, atol=1e-5)
    styler.set_weights({a: 0.0, b: 0.0})
    assert torch.equal(unet_probe(styler), base_out)  # reversible: back to the base exactly


def test_unknown_adapter_names_and_bad_weights_are_errors(tiny_base, two_adapters, tmp_path):
    styler = Styler(str(tiny_base))
    with pytest.raises(ConfigError, match="no adapter named 'nope'"):
        styler.set_weights({"nope": 1.0})
    with pytest.raises(ConfigError, match="'abc'"):
        parse_lora_spec("x.safetensors:abc")
    assert parse_lora_spec("a/b.safetensors:unet=0.8,te=0.5")[1] == StyleWeight(0.8, 0.5)
    assert parse_lora_spec("b.safetensors")[1] == StyleWeight(1.0, 1.0)
    assert parse_lora_spec("b.safetensors:-0.5")[1] == StyleWeight(-0.5, -0.5)
    (tmp_path / "evil.ckpt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(AdapterFileError, match="pickle"):
        styler.load(tmp_path / "evil.ckpt")


def test_generate_writes_reproducible_pngs_with_settings(tiny_base, two_adapters, tmp_path):
    loras = (f"{two_adapters[0]}:0.8", f"{two_adapters[1]}:unet=0.3,te=1")
    config = GenerateConfig(prompt="a red circle", loras=loras, base=str(tiny_base), count=2, steps=3, seed=5,
                            out=tmp_path / "a")
    paths = generate(config)
    assert [p.name for p in paths] == ["a-red-circle-5.png", "a-red-circle-6.png"]
    settings = json.loads(Image.open(paths[1]).text["stylelora"])
    assert settings["seed"] == 6 and settings["prompt"] == "a red circle"
    assert settings["loras"][1] == {"file": str(two_adapters[1]), "unet": 0.3, "te": 1.0}
    # Image 2 alone, from its own seed, is the same picture.
    again = generate(GenerateConfig(prompt="a red circle", loras=loras, base=str(tiny_base), count=1, steps=3,
                                    seed=6, out=tmp_path / "b"))
    assert np.array_equal(np.asarray(Image.open(again[0])), np.asarray(Image.open(paths[1])))


def test_fusing_is_exact_and_unfusing_restores_the_base_bit_for_bit(tiny_base, two_adapters, unet_probe):
    styler = Styler(str(tiny_base))
    base_out = unet_probe(styler)
    a, b = (styler.load(p) for p in two_adapters)
    styler.set_weights({a: 0.8, b: -0.3})
    unfused = unet_probe(styler)
    styler.fuse()
    assert styler.fused and torch.allclose(unet_probe(styler), unfused, atol=1e-5)
    styler.set_weights({a: 0.8, b: -0.3})  # unchanged weights keep the fused state
    assert styler.fused
    styler.set_weights({a: 0.0, b: 0.0})
    assert not styler.fused and torch.equal(unet_probe(styler), base_out)


def test_per_block_weights_reach_only_their_blocks(tiny_base, two_adapters):
    weight = StyleWeight.parse("down=0,mid=1,up=0.5")
    assert weight.for_module("unet", "down_blocks.0.attentions.0.x") == 0
    assert weight.for_module("unet", "mid_block.attentions.0.x") == 1
    assert weight.for_module("unet", "up_blocks.1.attentions.0.x") == 0.5
    styler = Styler(str(tiny_base))
    a = styler.load(two_adapters[0])
    styler.set_weights({a: weight})
    down = styler.pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    up = styler.pipe.unet.up_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    from stylelora.adapters.formats import read_lora

    in_file = read_lora(two_adapters[0])[0][("unet", "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")]
    assert down.scaling[a] == 0
    assert torch.allclose(up.get_delta_weight(a).double(), 0.5 * in_file.delta(), atol=1e-7)


def test_cli_generate_and_grid(tiny_base, two_adapters, tmp_path):
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "stylelora", *args], capture_output=True, text=True)

    run = cli("generate", "a blue square", "--lora", f"{two_adapters[0]}:0.7", "--lora", f"{two_adapters[1]}:-0.5",
              "--base", str(tiny_base), "-n", "2", "--steps", "2", "--out", str(tmp_path / "g"))
    assert run.returncode == 0, run.stderr
    assert "Warning" not in run.stderr, run.stderr  # two adapters at once is the normal case: no peft noise
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["a-blue-square-1.png", "a-blue-square-2.png"]
    grid = tmp_path / "grid.png"
    run = cli("grid", "a red circle", "a blue square", "--lora", str(two_adapters[0]), "--weights", "0,1,2",
              "--base", str(tiny_base), "--steps", "2", "-o", str(grid))
    assert run.returncode == 0, run.stderr
    image = Image.open(grid)
    assert image.width > 3 * 128 and image.height == 18 + 2 * 128
    assert json.loads(image.text["stylelora"])["weights"] == [0.0, 1.0, 2.0]
    run = cli("grid", "x", "--lora", str(two_adapters[0]), "--weights", "a,b", "--base", str(tiny_base))
    assert run.returncode == 2 and "--weights 'a,b'" in run.stderr


def _kohya_file(path, modules, rank, alpha, in_width=32, out_width=32, seed=0):
    """A kohya-layout file made here from known matrices."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for module in modules:
        name = "lora_unet_" + module.replace(".", "_")
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, in_width, generator=g)
        tensors[f"{name}.lora_up.weight"] = torch.randn(out_width, rank, generator=g)
        if alpha is not None:
            tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    save_file(tensors, str(path))
    return tensors


def test_a_hand_made_kohya_file_loads_with_scale_alpha_over_rank(tiny_base, tmp_path):
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    styler = Styler(str(tiny_base))

    def layer():  # looked up each time: loading an adapter wraps the Linear in a LoRA layer
        return styler.pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q

    x = torch.randn(2, 32)
    with torch.no_grad():
        plain = layer()(x)
    for alpha, expected_scale in ((1.0, 0.5), (None, 1.0)):  # no .alpha key: scale 1, as kohya and A1111 read it
        path = tmp_path / f"hand-{alpha}.safetensors"
        tensors = _kohya_file(path, [module], rank=2, alpha=alpha)
        name = styler.load(path)
        styler.set_weights({name: 1.0})
        down, up = tensors[f"lora_unet_{module.replace('.', '_')}.lora_down.weight"], \
            tensors[f"lora_unet_{module.replace('.', '_')}.lora_up.weight"]
        with torch.no_grad():
            assert torch.allclose(layer()(x), plain + expected_scale * x @ (up @ down).T, atol=1e-5)
        styler.unload(name)


def test_another_architecture_or_a_partial_match_is_refused_naming_both(tiny_base, tmp_path):
    styler = Styler(str(tiny_base))
    wide = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    _kohya_file(tmp_path / "sd2.safetensors", [wide], rank=4, alpha=4, in_width=1024)
    with pytest.raises(AdapterFileError, match=r"made for SD2\.x, but base .* is stylelora mini"):
        styler.load(tmp_path / "sd2.safetensors")
    _kohya_file(tmp_path / "partial.safetensors",
                ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "down_blocks.7.attentions.0.proj_in"],
                rank=2, alpha=2)
    with pytest.raises(AdapterFileError, match="only 1 of its 2 modules exist in this base"):
        styler.load(tmp_path / "partial.safetensors")
    assert styler.paths == {}


def test_damaged_and_nan_files_give_one_line_errors(tmp_path):
    from stylelora.adapters.formats import read_lora

    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    tensors = _kohya_file(tmp_path / "good.safetensors", [module], rank=2, alpha=2)
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match="cut.safetensors: not a valid .safetensors file") as caught:
        read_lora(tmp_path / "cut.safetensors")
    assert "\n" not in str(caught.value)
    from safetensors.torch import save_file

    tensors[f"lora_unet_{module.replace('.', '_')}.lora_up.weight"][0, 0] = float("nan")
    save_file(tensors, str(tmp_path / "nan.safetensors"))
    with pytest.raises(AdapterFileError, match="nan.safetensors: unet module .* holds NaN or infinite weights"):
        read_lora(tmp_path / "nan.safetensors")


def test_switch_and_composite_blends(tiny_base, two_adapters, unet_probe):
    styler = Styler(str(tiny_base))
    a, b = (styler.load(p) for p in two_adapters)
    only_a, only_b = {a: 0.8}, {b: 0.5}
    outputs = {}
    for label, weights in (("a", only_a), ("b", only_b)):
        styler.set_weights(weights)
        outputs[label] = unet_probe(styler)
    styler.set_weights({a: 0.8, b: 0.5})
    forward = styler._per_adapter_forward({n: w for n, w in styler.weights.items()}, "composite")
    styler.pipe.unet.forward = forward
    try:
        composite = unet_probe(styler)
    finally:
        del styler.pipe.unet.forward
        styler._apply()
    assert torch.allclose(composite, (outputs["a"] + outputs["b"]) / 2, atol=1e-5)
    for blend in ("switch", "composite"):
        images = styler.generate("a red circle", count=1, steps=2, seed=3, blend=blend)
        assert images[0].size == (32, 32)
    assert torch.allclose(unet_probe(styler), unet_probe(styler))  # the normal forward is back
    with pytest.raises(ConfigError, match="--blend 'mix'"):
        styler.generate("x", blend="mix")


def test_painting_again_never_overwrites_the_last_pictures(tiny_base, two_adapters, tmp_path):
    """Issue 40: each paint of the same prompt and seed overwrote the last; a new picture now takes the next free
    name (a-red-circle-5~2.png), and the first ones stay as they were."""
    config = GenerateConfig(prompt="a red circle", loras=(str(two_adapters[0]),), base=str(tiny_base), count=1,
                            steps=2, seed=5, out=tmp_path)
    first = generate(config)
    before = first[0].read_bytes()
    second = generate(config)
    third = generate(config)
    assert [p.name for p in first + second + third] == ["a-red-circle-5.png", "a-red-circle-5~2.png",
                                                       "a-red-circle-5~3.png"]
    assert first[0].read_bytes() == before


def test_a_blend_grid_on_the_mini_carries_each_cell_s_verdict(tmp_path, image_folder, monkeypatch):
    """The blend explorer: adapter A's weight across, B's down, merged by a rule, each cell judged on the mini."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the merged blends are cached there
    from stylelora.cli.main import main
    from stylelora.paint.grid import verdict_words
    from stylelora.paint.styler import Styler
    from stylelora.train.config import TrainConfig
    from stylelora.train.loop import train

    paths = [train(TrainConfig(data=image_folder, out=tmp_path / f"{n}.safetensors", max_steps=2, seed=seed),
                   progress_bar=False, log=lambda m: None).adapter_path for n, seed in (("a", 1), ("b", 2))]
    grid = tmp_path / "grid.png"
    assert main(["grid", "a red circle", "--lora", str(paths[0]), "--weights", "0,1", "--lora-b", str(paths[1]),
                 "--weights-b", "0,1", "--blend", "ties", "--blend-density", "0.5", "--judge", "--steps", "3",
                 "-o", str(grid)]) == 0
    settings = json.loads(Image.open(grid).text["stylelora"])
    assert (settings["blend"], settings["blend_density"]) == ("ties", 0.5)
    bare = Styler("mini").generate("a red circle", count=1, steps=3, cfg=7.5, seed=settings["seed"])[0]
    assert len(settings["verdicts"]) == 2 and settings["verdicts"][0][0] == verdict_words(bare)  # A 0, B 0: the base
    assert Image.open(grid).height == 18 + 2 * (128 + 18)  # a line of words under each row of cells
    assert main(["grid", "x", "--lora", str(paths[0]), "--judge", "--base", str(tmp_path), "-o", str(grid)]) == 2


def test_an_adapter_whose_name_has_dots_or_spaces_paints_like_any_other(tiny_base, two_adapters, tmp_path, unet_probe):
    """peft refuses adapter names with a "." (module names); a file called `ink.v2.safetensors` is still one."""
    dotted = tmp_path / "ink.v2 final.safetensors"
    dotted.write_bytes(two_adapters[0].read_bytes())
    styler = Styler(str(tiny_base))
    plain = styler.load(two_adapters[0])
    styler.set_weights({plain: 0.8})
    expected = unet_probe(styler)
    assert styler.load(dotted) == "ink_v2_final"  # named from the file: made a plain name
    name = styler.load(dotted, "ink.v2 final")  # named by the caller (a bench, the server's library): kept
    assert name == "ink.v2 final"
    styler.set_weights({name: 0.8})
    assert torch.equal(unet_probe(styler), expected)
    styler.set_weights({name: 0.5, plain: 0.3})  # both at once, then the dotted one forgotten
    unet_probe(styler)
    styler.unload(name)
    styler.set_weights({plain: 0.8})
    assert torch.equal(unet_probe(styler), expected)


def test_painting_leaves_the_pipe_s_own_sampler_to_whatever_else_paints_with_it(tiny_base):
    """A generate call samples with its --scheduler, then puts the pipe's sampler back: a preview scorer painting
    through the same pipe afterwards (tune's confirmation, the benches) paints what it painted before."""
    styler = Styler(str(tiny_base))
    own = styler.pipe.scheduler

    def direct() -> np.ndarray:
        generator = torch.Generator().manual_seed(3)
        return np.asarray(styler.pipe("a red circle", num_inference_steps=3, height=64, width=64,
                                      generator=generator).images[0])

    before = direct()
    styler.generate("a red circle", count=1, steps=3, seed=1, scheduler="euler")
    assert styler.pipe.scheduler is own
    assert np.array_equal(direct(), before)
