"""The adapter family: each method trains, writes the layout the loaders read, loads back, blends and resumes."""

import json
import subprocess
import sys

import pytest
import torch
from diffusers import StableDiffusionPipeline

from stylelora.adapters.base_weights import base_weights
from stylelora.adapters.formats import read_lora, to_kohya, write_lora
from stylelora.adapters.inspection import describe
from stylelora.adapters.merge import merge_svd
from stylelora.adapters.stack import StyleWeight
from stylelora.errors import ConfigError
from stylelora.files import read_safetensors, save_safetensors
from stylelora.methods import METHODS, TARGET_PRESETS, AdapterSpec
from stylelora.methods.attach import adapted_layers, attach, export
from stylelora.paint.merge_job import MergeConfig, merge
from stylelora.paint.styler import Styler
from stylelora.train.checkpoint import load_checkpoint
from stylelora.train.config import TrainConfig, validate
from stylelora.train.loop import train

QUIET = dict(progress_bar=False, log=lambda m: None)


def _unet_output(unet):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, unet.config.sample_size, unet.config.sample_size, generator=g)
    text = torch.randn(1, 24, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), text).sample.double()


def _close(a, b, tolerance=1e-5):
    return float((a - b).abs().max() / b.abs().max()) < tolerance


def _trained_in_memory(base, method, targets="all", seed=0, train_bias=False):
    """A pipeline with `method` attached (convolutions included) and every adapter tensor moved off its
    zero start, as training would: the in-memory adapter the file must reproduce."""
    pipe = StableDiffusionPipeline.from_pretrained(base)
    torch.manual_seed(seed)
    attach(pipe.unet, AdapterSpec(method, 4, 2.0, conv_rank=2, conv_alpha=1.0, train_bias=train_bias),
           TARGET_PRESETS[targets])
    with torch.no_grad():
        for p in pipe.unet.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
        if method == "adalora":  # as pruning leaves them: some singular values zero, one module all zero
            values = [p for name, p in pipe.unet.named_parameters() if "lora_E" in name]
            values[0].zero_()  # a module pruned away entirely
            for rank, e in zip((1, 2, 3), values[1:4]):
                e[rank:] = 0.0  # modules left at ranks 1, 2 and 3
    return pipe


@pytest.mark.parametrize("method", METHODS)
def test_each_method_file_loads_through_styler_with_the_in_memory_output(tiny_base, tmp_path, method):
    pipe = _trained_in_memory(tiny_base, method)
    path = save_safetensors(tmp_path / f"{method}.safetensors", to_kohya(export(pipe.unet, "unet")), {})
    styler = Styler(str(tiny_base))
    styler.set_weights({styler.load(path): 1.0})
    expected = _unet_output(pipe.unet)
    assert not _close(_unet_output(StableDiffusionPipeline.from_pretrained(tiny_base).unet), expected, 1e-3)
    assert _close(_unet_output(styler.pipe.unet), expected)
    styler.fuse()
    assert _close(_unet_output(styler.pipe.unet), expected)


def test_dora_file_applied_by_the_loaders_formula_gives_the_in_memory_output(tiny_base, tmp_path):
    """ComfyUI's weight_decompose (comfy/weight_adapter/base.py), written out: W + s * (m * (W + alpha/r * up @ down)
    / ||.||_column - W), the norm taken per input column. AUTOMATIC1111 applies alpha/r after the norm instead,
    which agrees only at alpha = rank: the file stores exactly that."""
    pipe = _trained_in_memory(tiny_base, "dora")
    tensors = to_kohya(export(pipe.unet, "unet"))
    scales = {k: t for k, t in tensors.items() if k.endswith(".dora_scale")}
    assert scales and all(t.shape[0] == 1 and t.shape[1] > 1 for t in scales.values())
    assert all(tensors[k.replace("dora_scale", "alpha")].item() == tensors[k.replace("dora_scale", "lora_down.weight")].shape[0]
               for k in scales)
    loaded = StableDiffusionPipeline.from_pretrained(tiny_base)
    for name, module in loaded.unet.named_modules():
        key = "lora_unet_" + name.replace(".", "_")
        if f"{key}.dora_scale" not in tensors:
            continue
        weight = module.weight.data.double()
        down, up = tensors[f"{key}.lora_down.weight"].double(), tensors[f"{key}.lora_up.weight"].double()
        alpha = tensors[f"{key}.alpha"].item() / down.shape[0]
        calc = weight + (alpha * (up.flatten(1) @ down.flatten(1))).reshape(weight.shape)
        norm = calc.transpose(0, 1).reshape(calc.shape[1], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(calc.shape[1], *[1] * (calc.dim() - 1)).transpose(0, 1)
        strength = 1.0
        module.weight.data = (weight + strength * (calc * (tensors[f"{key}.dora_scale"].double() / norm) - weight)).float()
    assert len(scales) == len(list(adapted_layers(pipe.unet))) == 80  # attention, feed-forward, linear, convolutions
    assert _close(_unet_output(loaded.unet), _unet_output(pipe.unet))


def test_loha_and_lokr_deltas_by_the_lycoris_formulas_equal_the_in_memory_ones(tiny_base):
    for method in ("loha", "lokr"):
        pipe = _trained_in_memory(tiny_base, method)
        tensors = to_kohya(export(pipe.unet, "unet"))
        for name, layer in adapted_layers(pipe.unet):
            key = "lora_unet_" + name.replace(".", "_")
            get = lambda suffix: tensors.get(f"{key}.{suffix}")  # noqa: E731
            if method == "loha":  # LyCORIS / ComfyUI loha.py: (w1a @ w1b) * (w2a @ w2b) * alpha / rank
                delta = (get("hada_w1_a") @ get("hada_w1_b")) * (get("hada_w2_a") @ get("hada_w2_b"))
                delta = delta * get("alpha").item() / get("hada_w1_b").shape[0]
            else:  # ComfyUI lokr.py: kron(w1, w2) * alpha / dim, dim from the last factor stored as a pair, else 1
                w1 = get("lokr_w1") if get("lokr_w1") is not None else get("lokr_w1_a") @ get("lokr_w1_b")
                w2 = get("lokr_w2") if get("lokr_w2") is not None else get("lokr_w2_a") @ get("lokr_w2_b")
                dim = (get("lokr_w2_b") if get("lokr_w2_b") is not None else get("lokr_w1_b"))
                scale = get("alpha").item() / dim.shape[0] if dim is not None else 1.0
                if w2.ndim == 4:
                    w1 = w1[:, :, None, None]
                delta = torch.kron(w1, w2) * scale
            expected = layer.get_delta_weight("default")
            assert torch.allclose(delta.reshape(expected.shape), expected, atol=1e-6), (method, name)


def test_a_loha_a_dora_and_a_lora_blend_in_one_stack_fused_equals_unfused(tiny_base, tmp_path):
    paths = []
    for seed, method in enumerate(("loha", "dora", "lora")):
        pipe = _trained_in_memory(tiny_base, method, targets="attn-mlp", seed=seed)
        paths.append(save_safetensors(tmp_path / f"{method}.safetensors", to_kohya(export(pipe.unet, "unet")), {}))
    styler = Styler(str(tiny_base))
    names = [styler.load(path) for path in paths]
    styler.set_weights(dict(zip(names, (0.5, 0.7, -0.3))))
    unfused = _unet_output(styler.pipe.unet)
    styler.fuse()
    assert styler.fused and _close(_unet_output(styler.pipe.unet), unfused)
    styler.set_weights({names[0]: 1.0})
    alone = _unet_output(styler.pipe.unet)
    assert not _close(alone, unfused, 1e-3)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_resumes_exactly(train_config, method):
    extra = dict(targets="all", conv_rank=2) if method in ("lora", "loha", "dylora") else dict(targets="attn-mlp")
    straight = train_config(method=method, max_steps=4, out=train_config().out.parent / "straight", **extra)
    train(straight, **QUIET)
    halves = train_config(method=method, max_steps=4, save_every=2, out=train_config().out.parent / "halves", **extra)
    train(halves, **QUIET)  # one checkpoint, at step 2 (the last step writes only the adapter)
    assert [p.name for p in (halves.out_dir / "checkpoints").iterdir()] == ["step-000002"]
    halves.adapter_path.unlink()
    resumed = train_config(method=method, max_steps=4, save_every=2, resume=True, out=halves.out, **extra)
    train(resumed, **QUIET)
    a, b = read_safetensors(straight.adapter_path), read_safetensors(resumed.adapter_path)
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.allclose(a.tensors[k], b.tensors[k], atol=1e-6) for k in a.tensors)
    assert a.metadata["stylelora.method"] == method
    if method in ("adalora", "dylora"):
        assert describe(straight.adapter_path)["method"] == f"LoRA (trained as {'AdaLoRA' if method == 'adalora' else 'DyLoRA'})"
    weights, _, _ = read_lora(straight.adapter_path)
    assert {m.kind for m in weights.values()} == {"lora" if method in ("adalora", "dylora") else method}
    if "conv_rank" in extra:
        assert any("resnets" in module and module.endswith("conv1") for _, module in weights)
        convs = [m for (_, module), m in weights.items() if module.endswith("conv1")]
        assert all(m.rank == 2 for m in convs)


def test_the_metadata_names_the_method_for_kohya_tools(train_config):
    config = train_config(method="dora", targets="all", conv_rank=2, conv_alpha=1.0, max_steps=1)
    train(config, **QUIET)
    metadata = read_safetensors(config.adapter_path).metadata
    assert metadata["ss_network_module"] == "lycoris.kohya"
    assert json.loads(metadata["ss_network_args"]) == {"algo": "lora", "dora_wd": "True", "conv_dim": "2", "conv_alpha": "1"}
    assert metadata["ss_network_alpha"] == "4.0" and metadata["stylelora.method"] == "dora"
    info = describe(config.adapter_path)
    assert info["method"] == "DoRA" and {g["method"] for g in info["groups"]} == {"DoRA"}
    plain = train_config(max_steps=1, out=config.out.parent / "plain")
    train(plain, **QUIET)
    assert "ss_network_args" not in read_safetensors(plain.adapter_path).metadata


def test_convert_refuses_non_lora_layouts_and_merge_svd_works_on_deltas(tiny_base, tmp_path):
    loha = _trained_in_memory(tiny_base, "loha", targets="attn")
    path = save_safetensors(tmp_path / "loha.safetensors", to_kohya(export(loha.unet, "unet")), {})
    weights, _, _ = read_lora(path)
    with pytest.raises(Exception, match="LoHa modules.*keep it in the kohya layout"):
        write_lora(weights, "diffusers", tmp_path / "x.safetensors")
    with pytest.raises(ConfigError, match="--method svd --rank R"):
        merge(MergeConfig((str(path),), tmp_path / "cat.safetensors", base=str(tiny_base)))
    result = merge(MergeConfig((f"{path}:0.5",), tmp_path / "svd.safetensors", method="svd", rank=16, base=str(tiny_base)))
    merged, _, _ = read_lora(result.path)
    assert result.relative_error < 1e-6  # rank 16 holds a rank-4 x rank-4 Hadamard product exactly
    for key, module in weights.items():
        assert torch.allclose(merged[key].delta(), 0.5 * module.delta(), atol=1e-6)
    items = [(weights, StyleWeight(1, 1))]
    with pytest.raises(ConfigError, match="LoHa merges read the base model's weights"):
        merge_svd(items, 2)
    _, error = merge_svd(items, 2, base_weights(str(tiny_base), items))
    assert 0 < error < 1


@pytest.mark.parametrize("overrides, message", [
    (dict(method="ia3"), "--method = 'ia3': choose one of lora, dora, loha, lokr, adalora, dylora"),
    (dict(target_rank=2), "--target-rank = 2: only --method adalora"),
    (dict(method="adalora", target_rank=8), "--target-rank = 8: AdaLoRA prunes from --rank 4 down to a target between 1 and 4"),
    (dict(method="adalora", targets="all", conv_rank=2), "--conv-rank = 2: AdaLoRA allocates every module's rank itself"),
    (dict(export_rank=2), "--export-rank = 2: only --method dylora"),
    (dict(method="dylora", export_rank=5), "--export-rank = 5: DyLoRA trains ranks 1 to --rank 4"),
    (dict(targets="everything"), "--targets = 'everything': choose one of attn, attn-mlp, all-linear, all"),
    (dict(targets="attn-mlp", target_modules=("to_q",)), "not both"),
    (dict(conv_rank=4), "--conv-rank = 4: only --targets all adapts the 3x3 convolutions"),
    (dict(targets="attn", conv_alpha=2.0), "--conv-alpha = 2.0: only --targets all"),
    (dict(method="loha", rslora=True), "--rslora = True: rsLoRA scales LoRA and DoRA"),
    (dict(method="lokr", loraplus_ratio=16.0), "--loraplus-ratio = 16.0: LoRA+"),
    (dict(method="loha", dropout=0.1), "--dropout = 0.1"),
])
def test_method_flags_that_do_not_fit_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        validate(TrainConfig(data="x", **overrides))


def test_cli_trains_a_lokr_and_inspect_names_it(tiny_base, image_folder, tmp_path):
    out = tmp_path / "k.safetensors"
    run = subprocess.run([sys.executable, "-m", "stylelora", "train", str(image_folder), "--base", str(tiny_base),
                          "--out", str(out), "--max-steps", "1", "--batch-size", "2", "--method", "lokr",
                          "--targets", "attn-mlp", "--quiet"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "Training" in run.stderr and "LoKr tensors" in run.stderr
    run = subprocess.run([sys.executable, "-m", "stylelora", "inspect", str(out)], capture_output=True, text=True)
    assert run.returncode == 0 and "method:        LoKr" in run.stdout
    assert "ff.net.0.proj" in run.stdout or "proj" in run.stdout


def test_a_toml_config_chooses_the_method_and_modules(tmp_path):
    from stylelora.train.settings import from_dict, load_toml

    (tmp_path / "style.toml").write_text('method = "loha"\ntargets = "all"\nconv-rank = 2\nconv-alpha = 1.5\n')
    config = validate(from_dict(load_toml(tmp_path / "style.toml") | {"data": "x"}))
    spec = config.adapter_spec()
    assert (spec.method, spec.conv_rank, spec.conv_alpha) == ("loha", 2, 1.5)
    assert config.unet_targets == TARGET_PRESETS["all"] and "conv1" in config.unet_targets


@pytest.mark.bf16
@pytest.mark.parametrize("method", ("dora", "loha", "lokr"))
def test_each_method_trains_over_a_bf16_base(train_config, method):
    config = train_config(method=method, targets="all-linear", max_steps=2, precision="bf16")
    result = train(config, **QUIET)
    weights, _, _ = read_lora(result.adapter_path)
    assert {m.kind for m in weights.values()} == {method} and result.loss == result.loss
    assert all(t.dtype == torch.float32 for t in read_safetensors(result.adapter_path).tensors.values())


def test_adalora_prunes_resumes_exactly_through_its_rank_schedule_and_exports_each_modules_rank(train_config):
    """24 steps: the budget is pruned at step 10, fixed at step 20 (total - tfinal); resuming from step 22
    needs the importance scores and the final rank pattern."""
    options = dict(method="adalora", rank=4, target_rank=1, targets="attn-mlp", max_steps=24, learning_rate=5e-2)
    straight = train_config(out=train_config().out.parent / "straight", **options)
    train(straight, **QUIET)
    halves = train_config(out=train_config().out.parent / "halves", save_every=11, **options)
    train(halves, **QUIET)
    halves.adapter_path.unlink()
    import shutil
    shutil.rmtree(halves.out_dir / "checkpoints" / "step-000011")  # resume from step 22, after the final mask
    train(train_config(out=halves.out, save_every=11, resume=True, **options), **QUIET)
    a, b = read_safetensors(straight.adapter_path), read_safetensors(halves.adapter_path)
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.allclose(a.tensors[k], b.tensors[k], atol=1e-6) for k in a.tensors)
    weights, _, _ = read_lora(straight.adapter_path)
    ranks = [m.rank for m in weights.values()]
    trainable = load_checkpoint(halves.out_dir / "checkpoints" / "step-000022")[2]
    adapted = sum(1 for key in trainable if "lora_E" in key)
    # The budget is target rank x modules, spent unevenly: some keep 4, some are pruned away entirely.
    assert sum(ranks) <= adapted * 1 and len(set(ranks)) > 1 and len(ranks) <= adapted, (ranks, adapted)
    styler = Styler(train_config().base)
    styler.set_weights({styler.load(straight.adapter_path): 1.0})  # every module at its own rank loads


def test_each_dylora_truncation_equals_the_file_exported_at_that_rank(tiny_base, tmp_path):
    from stylelora.methods.dylora_layer import set_dylora_rank
    from stylelora.adapters.resize import ResizeConfig, resize

    pipe = _trained_in_memory(tiny_base, "dylora")
    pipe.unet.eval()
    full = save_safetensors(tmp_path / "full.safetensors", to_kohya(export(pipe.unet, "unet")),
                            {"stylelora.method": "dylora"})
    outputs = []
    for k in (1, 2, 3, 4):
        set_dylora_rank(pipe.unet, k)
        expected = _unet_output(pipe.unet)
        outputs.append(expected)
        exported = save_safetensors(tmp_path / f"r{k}.safetensors", to_kohya(export(pipe.unet, "unet", export_rank=k)), {})
        resized = resize(ResizeConfig(full, tmp_path / f"resized{k}.safetensors", rank=k))
        assert resized.method == "dylora truncation"
        for path in (exported, resized.path):
            styler = Styler(str(tiny_base))
            styler.set_weights({styler.load(path): 1.0})
            assert _close(_unet_output(styler.pipe.unet), expected), (k, path)
    assert not _close(outputs[0], outputs[3], 1e-3)


def test_resize_by_svd_to_a_rank_or_a_share_of_the_norm(two_adapters, tmp_path):
    from stylelora.adapters.resize import ResizeConfig, resize

    exact = resize(ResizeConfig(two_adapters[0], tmp_path / "same.safetensors", dynamic="fro=1.0"))
    assert exact.relative_error < 1e-6 and exact.ranks == {2: 32}
    one = resize(ResizeConfig(two_adapters[0], tmp_path / "one.safetensors", rank=1))
    assert one.ranks == {1: 32} and 0 < one.relative_error < 1
    share = resize(ResizeConfig(two_adapters[0], tmp_path / "share.safetensors", dynamic="fro=0.8"))
    assert set(share.ranks) <= {1, 2} and share.relative_error <= (1 - 0.8 ** 2) ** 0.5 + 1e-6
    for bad, message in ((dict(dynamic="fro=2"), "--dynamic = 'fro=2'"), (dict(), "give --rank R"),
                         (dict(rank=0), "--rank = 0")):
        with pytest.raises(ConfigError, match=message):
            resize(ResizeConfig(two_adapters[0], tmp_path / "x.safetensors", **bad))
    run = subprocess.run([sys.executable, "-m", "stylelora", "resize", str(two_adapters[0]), "-o",
                          str(tmp_path / "cli.safetensors"), "--dynamic", "ratio=1000"], capture_output=True, text=True)
    assert run.returncode == 0 and "svd: relative error" in run.stdout and "32 at rank" in run.stdout, run.stderr


@pytest.mark.parametrize("method", ("lora", "dora"))
def test_trained_biases_travel_as_diff_b_and_load_back_fused_and_unfused(tiny_base, tmp_path, method):
    pipe = _trained_in_memory(tiny_base, method, targets="all-linear", train_bias=True)
    tensors = to_kohya(export(pipe.unet, "unet"))
    with_bias = {name: module for name, module in pipe.unet.named_modules()
                 if "lora_unet_" + name.replace(".", "_") + ".lora_down.weight" in tensors}
    biased = {k for k in tensors if k.endswith(".diff_b")}
    # Exactly the adapted layers that have a bias of their own carry one (to_q/k/v have none).
    assert biased == {"lora_unet_" + n.replace(".", "_") + ".diff_b" for n, m in with_bias.items()
                      if m.get_base_layer().bias is not None} and biased
    assert not any(k.startswith("lora_unet_") and "to_q" in k for k in biased)
    path = save_safetensors(tmp_path / "b.safetensors", tensors, {})
    expected = _unet_output(pipe.unet)
    styler = Styler(str(tiny_base))
    name = styler.load(path)
    styler.set_weights({name: 1.0})
    assert _close(_unet_output(styler.pipe.unet), expected)
    styler.fuse()
    assert _close(_unet_output(styler.pipe.unet), expected)
    styler.set_weights({name: 0.5})
    half = _unet_output(styler.pipe.unet)
    styler.set_weights({name: 0.0})
    base = _unet_output(styler.pipe.unet)
    styler.set_weights({name: 1.0})
    assert not _close(half, base, 1e-3) and not _close(half, expected, 1e-3)
    if method == "lora":  # ComfyUI's patches, written out: weight += s * up @ down * alpha / r; bias += s * diff_b
        loaded = StableDiffusionPipeline.from_pretrained(tiny_base)
        for layer_name, module in loaded.unet.named_modules():
            key = "lora_unet_" + layer_name.replace(".", "_")
            if f"{key}.lora_down.weight" not in tensors:
                continue
            down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
            scale = tensors[f"{key}.alpha"].item() / down.shape[0]
            module.weight.data += (scale * (up.flatten(1) @ down.flatten(1))).reshape(module.weight.shape)
            if f"{key}.diff_b" in tensors:
                module.bias.data += tensors[f"{key}.diff_b"]
        assert _close(_unet_output(loaded.unet), expected)


def test_train_bias_trains_resumes_and_is_refused_where_it_cannot_be_carried(train_config):
    options = dict(train_bias=True, targets="attn-mlp", max_steps=4)
    straight = train_config(out=train_config().out.parent / "straight", **options)
    train(straight, **QUIET)
    halves = train_config(out=train_config().out.parent / "halves", save_every=2, **options)
    train(halves, **QUIET)
    halves.adapter_path.unlink()
    train(train_config(out=halves.out, save_every=2, resume=True, **options), **QUIET)
    a, b = read_safetensors(straight.adapter_path), read_safetensors(halves.adapter_path)
    assert any(k.endswith(".diff_b") and t.abs().max() > 0 for k, t in a.tensors.items())
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.allclose(a.tensors[k], b.tensors[k], atol=1e-6) for k in a.tensors)
    assert describe(straight.adapter_path)["trained_biases"] > 0
    with pytest.raises(ConfigError, match="--train-bias = True: --method loha cannot carry trained biases"):
        validate(TrainConfig(data="x", method="loha", train_bias=True))
    with pytest.raises(Exception, match="trained biases .diff_b., which only the kohya layout holds"):
        write_lora(read_lora(straight.adapter_path)[0], "diffusers", straight.out_dir / "x.safetensors")


def test_a_file_whose_modules_differ_in_alpha_paints_each_at_its_own_scale(two_adapters, tiny_base, tmp_path):
    """resize --dynamic gives modules different ranks and alphas. The Styler must apply each module's own
    alpha/rank (diffusers 0.42, handed the kohya alphas, used the most common alpha on attention layers)."""
    from stylelora.adapters.resize import ResizeConfig, resize

    result = resize(ResizeConfig(two_adapters[0], tmp_path / "dynamic.safetensors", dynamic="fro=0.9"))
    assert len(result.ranks) > 1, result.ranks
    # Our writer now puts every module at one alpha (formats.one_alpha); a file from another tool may not.
    _give_each_module_its_own_alpha(result.path)
    weights, _, _ = read_lora(result.path)
    assert len({m.alpha for m in weights.values()}) > 1
    expected = StableDiffusionPipeline.from_pretrained(tiny_base)
    with torch.no_grad():
        for (_, module), lora in weights.items():
            layer = expected.unet.get_submodule(module)
            layer.weight += lora.delta().reshape(layer.weight.shape).float()
    styler = Styler(str(tiny_base))
    styler.set_weights({styler.load(result.path): 1.0})
    assert _close(_unet_output(styler.pipe.unet), _unet_output(expected.unet))


def test_each_method_shows_only_its_own_fields():
    from stylelora.methods import own_fields

    assert own_fields("lora", "attn") == {"rslora", "loraplus_ratio", "train_bias"}
    assert own_fields("lora", "all") == {"rslora", "loraplus_ratio", "train_bias", "conv_rank", "conv_alpha"}
    assert own_fields("adalora", "all") == {"target_rank"}
    assert own_fields("dylora", None) == {"loraplus_ratio", "export_rank"}
    assert own_fields("loha", "all") == {"conv_rank", "conv_alpha"}
    # Every field a method shows passes validation when set for that method.
    for method in METHODS:
        for name in own_fields(method, "all"):
            value = True if name in ("rslora", "train_bias") else 2
            validate(TrainConfig(data="x", method=method, targets="all", **{name: value}))


def test_base_hash_names_the_base_alone_whatever_the_method(train_config):
    """stylelora.base_hash identifies the base: the same for every method (it was once taken after the adapters were
    attached, which gave each method its own), and the fingerprint of the base's UNet files."""
    from stylelora.model.base import base_fingerprint

    hashes = set()
    for method in ("lora", "loha", "dylora"):
        config = train_config(method=method, max_steps=1, out=train_config().out.parent / method)
        train(config, **QUIET)
        hashes.add(read_safetensors(config.adapter_path).metadata["stylelora.base_hash"])
    assert hashes == {base_fingerprint(train_config().base, None)}


def _give_each_module_its_own_alpha(path):
    """Rewrite a kohya file with module i at alpha (i + 1) / 2 and its up rescaled: the same change, the alphas
    differing, as other tools write them."""
    adapter = read_safetensors(path)
    tensors = dict(adapter.tensors)
    for index, key in enumerate(sorted(k for k in tensors if k.endswith(".alpha"))):
        old, new = tensors[key].item(), (index + 1) / 2
        name = key[: -len(".alpha")]
        tensors[key] = torch.tensor(new)
        tensors[f"{name}.lora_up.weight"] = tensors[f"{name}.lora_up.weight"] * (old / new)
    save_safetensors(path, tensors, adapter.metadata)


@pytest.mark.parametrize("source", ["adalora", "resize"])
def test_files_whose_modules_differ_in_alpha_load_exactly_in_diffusers(source, train_config, two_adapters, tmp_path):
    """An AdaLoRA file or a `resize --dynamic` one is written at one alpha, each module's scale folded into up, so
    diffusers' own loader (which applied the most common alpha where it could not key a module's own) applies each
    module's trained change: fused weights minus the base equal every module's change."""
    from stylelora.adapters.resize import ResizeConfig, resize

    if source == "adalora":
        config = train_config(method="adalora", rank=4, target_rank=2, max_steps=30, save_every=0)
        path = train(config, **QUIET).adapter_path
    else:
        path = resize(ResizeConfig(two_adapters[0], tmp_path / "dynamic.safetensors", dynamic="fro=0.9")).path
    tensors = read_safetensors(path).tensors
    assert len({t.item() for k, t in tensors.items() if k.endswith(".alpha")}) == 1
    weights, _, _ = read_lora(path)
    assert len({m.rank for m in weights.values()}) > 1, "the test needs modules of different ranks"
    base = StableDiffusionPipeline.from_pretrained(train_config().base)
    theirs = StableDiffusionPipeline.from_pretrained(train_config().base)
    theirs.load_lora_weights(str(path))
    theirs.fuse_lora(lora_scale=1.0)
    for (part, module), lora in weights.items():
        if part != "unet":
            continue
        before = base.unet.get_submodule(module).weight.detach()
        after = theirs.unet.get_submodule(module)
        after = getattr(after, "base_layer", after).weight.detach()
        change = lora.delta().reshape(before.shape)
        assert torch.allclose((after - before).double(), change.double(), atol=1e-6, rtol=1e-4), module


def test_a_file_with_trained_biases_is_refused_by_diffusers_and_convert_drop_biases_writes_one_it_loads(
        train_config, tmp_path):
    """diffusers 0.42's load_lora_weights refuses a file with diff_b whole; `convert --drop-biases` writes the weights
    alone (kohya or diffusers layout), which it loads, with the file's weight changes and nothing of the biases."""
    config = train_config(train_bias=True, targets="all-linear", max_steps=3)
    path = train(config, **QUIET).adapter_path
    with pytest.raises(ValueError, match="diff_b"):
        StableDiffusionPipeline.from_pretrained(config.base).load_lora_weights(str(path))
    weights, _, _ = read_lora(path)
    for layout in ("kohya", "diffusers"):
        out = tmp_path / f"{layout}.safetensors"
        ran = subprocess.run([sys.executable, "-m", "stylelora", "convert", str(path), "--to", layout, "--drop-biases",
                              "-o", str(out)], capture_output=True, text=True)
        assert ran.returncode == 0, ran.stderr
        dropped = sum(m.bias is not None for m in weights.values())
        assert dropped > 0 and f"Left out {dropped} trained biases (diff_b)" in ran.stdout
        assert not any(k.endswith("diff_b") for k in read_safetensors(out).tensors)
        base = StableDiffusionPipeline.from_pretrained(config.base)
        theirs = StableDiffusionPipeline.from_pretrained(config.base)
        theirs.load_lora_weights(str(out))
        theirs.fuse_lora(lora_scale=1.0)
        for (part, module), lora in weights.items():
            if part != "unet":
                continue
            before, after = base.unet.get_submodule(module), theirs.unet.get_submodule(module)
            after = getattr(after, "base_layer", after)
            change = lora.delta().reshape(before.weight.shape).double()
            assert torch.allclose((after.weight - before.weight).double(), change, atol=1e-6, rtol=1e-4), module
            if before.bias is not None:
                assert torch.equal(after.bias, before.bias), module
