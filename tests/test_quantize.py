"""--quantize-base: the streamed loader, each mode's error bound, training (loss, resume, the file on a float base),
painting with a stack of adapters over NF4, and the one-line refusals."""

import importlib.util
import json

import pytest
import torch

from stylelora.cli import main as cli
from stylelora.errors import ConfigError, TrainingInterrupted
from stylelora.files import read_safetensors
from stylelora.model.base import load_base
from stylelora.model.loading import stream_denoiser
from stylelora.methods import methods_over
from stylelora.model import quantize
from stylelora.model.frozen_convolution import dequantized
from stylelora.model.quantize import float_weight, is_quantized_layer, quantized_share
from stylelora.paint.styler import Styler
from stylelora.train.loop import train

QUIET = dict(progress_bar=False, log=lambda m: None)
# The UNet's output over each quantized base, as a relative L2 error against the float base (measured on the
# tiny base: nf4 0.035, int8 0.0125, fp8 0.082; on the miniature base 0.017, 0.0043 and 0.021). With the
# convolutions left in floats (no torchao), nf4 and int8 were 0.033 and 0.0034 on the tiny base.
TOLERANCE = {"nf4": 0.05, "int8": 0.02, "fp8": 0.12}


def _unet_output(unet, generator_seed=0):
    g = torch.Generator().manual_seed(generator_seed)
    x = torch.randn(2, 4, unet.config.sample_size, unet.config.sample_size, generator=g)
    text = torch.randn(2, 12, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x.to(unet.dtype), torch.tensor([20, 700]), text.to(unet.dtype)).sample.float()


def _same_model(ours, theirs, dtype) -> None:
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and not ours.training
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert all(a[k].dtype == dtype for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_streamed_unet_equals_diffusers_own_loading(tiny_base, dtype):
    from diffusers import UNet2DConditionModel

    ours = stream_denoiser(tiny_base, "unet", dtype)
    theirs = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet", torch_dtype=dtype)
    assert all(tensor.is_floating_point() for tensor in ours.state_dict().values())  # so each is held in `dtype`
    _same_model(ours, theirs, dtype)


def test_a_folder_the_streamed_loader_cannot_read_is_left_to_diffusers(tiny_base, tmp_path):
    import shutil

    copy = shutil.copytree(tiny_base, tmp_path / "base")
    (copy / "unet" / "diffusion_pytorch_model.safetensors").rename(copy / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    assert stream_denoiser(copy, "unet", torch.float32) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("base", ["tiny_sd3_base", "tiny_flux_base"])
def test_a_transformer_streams_from_one_file_or_from_shards_as_diffusers_loads_it(base, dtype, request, tmp_path):
    """SD3's and Flux's transformers stream too, from one file or from shards with diffusers' index (the hub's
    Flux and SD3.5 folders are sharded), so a quantized DiT never holds its float weights whole."""
    import shutil

    import diffusers

    folder = request.getfixturevalue(base)
    model_class = getattr(diffusers, json.loads((folder / "transformer" / "config.json").read_text())["_class_name"])
    theirs = model_class.from_pretrained(folder, subfolder="transformer", torch_dtype=dtype)
    _same_model(stream_denoiser(folder, "transformer", dtype), theirs, dtype)
    sharded = tmp_path / "sharded"
    shutil.copytree(folder, sharded)
    shutil.rmtree(sharded / "transformer")
    theirs.save_pretrained(sharded / "transformer", max_shard_size="40KB")
    assert len(list((sharded / "transformer").glob("*.safetensors"))) > 2
    _same_model(stream_denoiser(sharded, "transformer", dtype), theirs, dtype)


@pytest.mark.bf16
def test_a_hub_id_streams_its_denoiser_from_the_snapshot_diffusers_fetches(tiny_flux_base, monkeypatch):
    """A hub id (Flux.1-dev's, say) is fetched as diffusers fetches it, then read as a folder: its transformer
    streams in NF4 rather than loading whole in bf16 first."""
    import stylelora.model.base as base_module
    from diffusers import FluxPipeline

    fetched, streamed = [], []
    monkeypatch.setattr(FluxPipeline, "download", classmethod(lambda cls, spec, **kw: fetched.append(spec) or str(tiny_flux_base)))
    monkeypatch.setattr(base_module, "base_family", lambda spec: base_module.family_of_config(json.loads(
        (tiny_flux_base / "transformer" / "config.json").read_text())))
    real = base_module.stream_denoiser
    monkeypatch.setattr(base_module, "stream_denoiser", lambda *a, **k: streamed.append(real(*a, **k)) or streamed[-1])
    pipe = load_base("black-forest-labs/FLUX.1-dev", dtype=torch.bfloat16, quantize="nf4")
    assert fetched == ["black-forest-labs/FLUX.1-dev"] and streamed[0] is pipe.transformer and pipe.transformer.is_loaded_in_4bit


@pytest.mark.bf16
def test_a_transformer_quantized_as_it_streams_equals_one_quantized_after_loading(tiny_flux_base):
    from diffusers import FluxTransformer2DModel

    from stylelora.model.quantize import quantize_model

    ours = stream_denoiser(tiny_flux_base, "transformer", torch.bfloat16, "nf4")
    theirs = FluxTransformer2DModel.from_pretrained(tiny_flux_base, subfolder="transformer", torch_dtype=torch.bfloat16)
    quantize_model(theirs, "nf4", torch.bfloat16)
    assert quantized_share(ours, "transformer") == quantized_share(theirs, "transformer")
    assert quantized_share(ours, "transformer").quantized > 0 and ours.is_loaded_in_4bit
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 64, generator=g), encoder_hidden_states=torch.randn(1, 8, 64, generator=g),
                  pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
                  guidance=torch.tensor([3.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3))
    with torch.no_grad():
        outputs = [model(**{k: v.to(torch.bfloat16) for k, v in inputs.items()}).sample for model in (ours, theirs)]
    assert torch.equal(*outputs)


@pytest.mark.parametrize("mode", ["nf4", "int8", "fp8"])
def test_each_quantized_unet_stays_within_its_bound_and_holds_fewer_bytes(tiny_base, mode):
    float_pipe, quantized = load_base(str(tiny_base)), load_base(str(tiny_base), quantize=mode)
    reference, output = _unet_output(float_pipe.unet), _unet_output(quantized.unet)
    error = ((output - reference).norm() / reference.norm()).item()
    assert 0 < error < TOLERANCE[mode]
    plain, held = quantized_share(float_pipe.unet, "unet"), quantized_share(quantized.unet, "unet")
    assert held.parameters == plain.parameters and held.quantized > 0 and held.bytes < plain.bytes
    assert plain.quantized == 0 and plain.bytes == 4 * plain.parameters
    assert quantized_share(quantized.text_encoder, "text_encoder").quantized > 0


def _convolutions(unet) -> list[str]:
    return [name for name, module in unet.named_modules() if type(module) is torch.nn.Conv2d]


@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_convolutions_are_held_in_int8_within_half_a_rounding_step(tiny_base, mode, monkeypatch):
    float_unet, unet = load_base(str(tiny_base)).unet, load_base(str(tiny_base), quantize=mode).unet
    for name in _convolutions(float_unet):
        weight, held = float_unet.get_submodule(name).weight.flatten(1), unet.get_submodule(name)
        assert is_quantized_layer(held) and held.weight.qdata.dtype == torch.int8
        # symmetric int8 rounds each weight by at most half a step, and a step is at most its row's absmax / 127.5
        step = weight.abs().amax(1, keepdim=True) / 127.5
        assert ((float_weight(held).flatten(1) - weight).abs() <= step / 2 * 1.001 + 1e-8).all(), name
    # without torchao the convolutions stay as loaded, and the share held in fewer bytes is the Linear layers'
    monkeypatch.setattr(quantize, "convolutions_quantizable", lambda: False)
    linear_only = load_base(str(tiny_base), quantize=mode).unet
    assert not any(is_quantized_layer(linear_only.get_submodule(name)) for name in _convolutions(float_unet))
    assert quantized_share(linear_only, "unet").quantized < quantized_share(unet, "unet").quantized


@pytest.mark.bf16
def test_a_quantized_convolution_keeps_no_float_weight_for_the_backward_pass_and_gives_torchao_s_gradient(tiny_base):
    unet = load_base(str(tiny_base), dtype=torch.bfloat16, quantize="nf4").unet
    layer = unet.down_blocks[0].resnets[0].conv1
    inputs = torch.randn(2, layer.in_channels, 16, 16, dtype=torch.bfloat16, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        output = layer(inputs)
    assert saved == []  # torchao's own path keeps the dequantized weight (and the input) for the backward pass
    (ours,) = torch.autograd.grad(output.float().square().sum(), inputs)
    theirs_output = torch.nn.functional.conv2d(inputs, layer.weight.dequantize(), layer.bias, layer.stride, layer.padding)
    (theirs,) = torch.autograd.grad(theirs_output.float().square().sum(), inputs)
    assert torch.equal(output, theirs_output) and torch.allclose(ours.float(), theirs.float(), rtol=1e-2, atol=1e-3)
    assert torch.equal(dequantized(layer.weight), layer.weight.dequantize())  # ours, faster, equals torchao's


def test_an_adapter_on_the_convolutions_trains_over_int8_convolutions(train_config, tiny_base):
    from stylelora.methods import TARGET_PRESETS, AdapterSpec
    from stylelora.methods.attach import attach

    unet = load_base(str(tiny_base), quantize="int8").unet
    attach(unet, AdapterSpec("lora", 2, 2.0, conv_rank=2), TARGET_PRESETS["all"])
    # peft wraps the adapted convolutions, given back their weights as floats; the others stay in int8
    assert not is_quantized_layer(unet.down_blocks[0].resnets[0].conv1.base_layer)
    assert is_quantized_layer(unet.conv_in) and is_quantized_layer(unet.conv_out)
    result = train(train_config(max_steps=2, quantize_base="int8", targets="all", conv_rank=2), **QUIET)
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.loss))


def _losses(config):
    rows = [json.loads(line) for line in (config.out_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def test_training_over_nf4_learns_resumes_exactly_and_its_file_works_on_the_float_base(train_config, tmp_path,
                                                                                      tiny_base, unet_probe):
    straight = train_config(out=tmp_path / "straight", max_steps=6, save_every=2, quantize_base="nf4", flip=True)
    result = train(straight, **QUIET)
    stopped = train_config(out=tmp_path / "resumed", max_steps=6, save_every=2, quantize_base="nf4", flip=True)
    done: list[int] = []
    with pytest.raises(TrainingInterrupted):
        train(stopped, on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 4, **QUIET)
    stopped.resume = True
    train(stopped, **QUIET)
    a, b = read_safetensors(result.adapter_path).tensors, read_safetensors(stopped.adapter_path).tensors
    assert a.keys() == b.keys() and all(t.dtype == torch.float32 for t in a.values())
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    # The same keys as an adapter trained over the float base, and it loads and acts there.
    float_run = train(train_config(out=tmp_path / "float", max_steps=1), **QUIET)
    assert read_safetensors(float_run.adapter_path).tensors.keys() == a.keys()
    styler = Styler(str(tiny_base))
    bare = unet_probe(styler)
    styler.set_weights({styler.load(result.adapter_path): 1.0})
    assert (unet_probe(styler) - bare).abs().max() > 1e-4


def test_the_loss_falls_over_an_nf4_base(train_config):
    config = train_config(max_steps=40, quantize_base="nf4", learning_rate=2e-2, batch_size=6)
    train(config, **QUIET)
    losses = _losses(config)
    assert sum(losses[-8:]) / 8 < 0.9 * sum(losses[:8]) / 8, losses


def test_a_resume_with_another_quantization_is_refused(train_config):
    from stylelora.errors import TrainingError

    train(train_config(max_steps=2, save_every=1, quantize_base="nf4"), **QUIET)
    with pytest.raises(TrainingError, match=r"quantize_base: 'nf4' -> 'none'"):
        train(train_config(max_steps=3, resume=True), **QUIET)


def test_painting_over_nf4_with_two_adapters_keeps_them_unfused_and_near_the_float_base(two_adapters, tiny_base,
                                                                                       unet_probe):
    float_styler, styler = Styler(str(tiny_base)), Styler(str(tiny_base), quantize="nf4")
    weights = {}
    for path, weight in zip(two_adapters, (0.7, 0.5)):
        float_styler.load(path)
        weights[styler.load(path)] = weight
    float_styler.set_weights(weights)
    styler.set_weights(weights)
    bare_float = unet_probe(Styler(str(tiny_base)))
    packed = {name: p.detach().clone() for name, p in styler.pipe.unet.named_parameters() if p.dtype == torch.uint8}
    styler.fuse()  # over NF4 this must not write into the packed weights: it keeps the adapters as float paths
    assert not styler.fused
    assert all(torch.equal(p, packed[name]) for name, p in styler.pipe.unet.named_parameters() if name in packed)
    float_delta, quantized_delta = unet_probe(float_styler) - bare_float, unet_probe(styler) - unet_probe(
        Styler(str(tiny_base), quantize="nf4"))
    # The adapters' own change is computed in float32 beside the quantized base: it matches the float base's.
    assert ((quantized_delta - float_delta).norm() / float_delta.norm()).item() < 0.25
    images = styler.generate("a red circle", count=2, steps=3, blend="merge")
    assert len(images) == 2 and images[0].size == (32, 32)


def test_generate_from_the_cli_over_nf4(two_adapters, tiny_base, tmp_path, capsys):
    code = cli.main(["generate", "a red circle", "--base", str(tiny_base), "--lora", f"{two_adapters[0]}:0.8",
                     "--lora", f"{two_adapters[1]}:0.4", "--quantize-base", "nf4", "-n", "1", "--steps", "3",
                     "--out", str(tmp_path)])
    assert code == 0 and len(list(tmp_path.glob("*.png"))) == 1


def test_without_bitsandbytes_the_flag_says_which_extra_to_install(train_config, monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    config = train_config(quantize_base="nf4")
    code = cli.main(["train", str(config.data), "--base", config.base, "--out", str(tmp_path / "x"), "--max-steps", "1",
                     "--quantize-base", "nf4"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and error[-1].startswith("stylelora: error: --quantize-base nf4 needs bitsandbytes")
    assert '.[quant]' in error[-1]
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="bitsandbytes"):
        Styler(config.base, quantize="int8")
    assert Styler(config.base, quantize="fp8").quantize == "fp8"  # torch's own float8: no extra


@pytest.mark.parametrize("mode", ["nf4", "int8", "fp8"])
def test_a_method_that_cannot_run_over_a_quantized_base_is_a_one_line_error(train_config, mode, capsys, tmp_path):
    refused = [m for m in ("lora", "dora", "loha", "lokr", "adalora", "dylora") if m not in methods_over(mode)]
    assert "dora" in refused
    config = train_config()
    for method in refused:
        code = cli.main(["train", str(config.data), "--base", config.base, "--out", str(tmp_path / method),
                         "--method", method, "--quantize-base", mode])
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and line.startswith(f"stylelora: error: --quantize-base = '{mode}': --method {method} cannot")


@pytest.mark.parametrize("method", ["adalora", "dylora"])
def test_the_other_methods_peft_carries_train_over_nf4(train_config, method):
    result = train(train_config(max_steps=3, method=method, quantize_base="nf4"), **QUIET)
    assert result.steps == 3 and torch.isfinite(torch.tensor(result.loss))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: bitsandbytes' CUDA kernels")
def test_nf4_training_on_cuda(train_config):
    result = train(train_config(max_steps=3, quantize_base="nf4"), **QUIET)
    assert result.steps == 3 and torch.isfinite(torch.tensor(result.loss))


def test_the_toml_config_sets_the_quantized_base(tmp_path, image_folder):
    from stylelora.train.config import validate
    from stylelora.train.settings import from_dict, load_toml

    (tmp_path / "run.toml").write_text('[train]\nquantize-base = "int8"\nmethod = "loha"\n')
    config = validate(from_dict({"data": image_folder} | load_toml(tmp_path / "run.toml")))
    assert config.quantize_base == "int8" and config.method == "loha"
    (tmp_path / "bad.toml").write_text('quantize-base = "nf2"\n')
    with pytest.raises(ConfigError, match=r"--quantize-base = 'nf2': choose one of none, nf4, int8, fp8"):
        validate(from_dict({"data": image_folder} | load_toml(tmp_path / "bad.toml")))
