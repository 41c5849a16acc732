"""merge (cat exact, svd with reported error, into-base), convert between layouts, inspect."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from diffusers import StableDiffusionPipeline

from stylelora.adapters.formats import read_lora, write_lora
from stylelora.adapters.merge import blended_deltas, merge_cat, merge_svd
from stylelora.adapters.stack import StyleWeight
from stylelora.paint.merge_job import MergeConfig, merge
from stylelora.paint.styler import Styler



def test_cat_merge_equals_the_weighted_blend_exactly(two_adapters):
    items = [(read_lora(two_adapters[0])[0], StyleWeight(0.6, 0.6)), (read_lora(two_adapters[1])[0], StyleWeight(-0.4, 1))]
    merged = merge_cat(items)
    exact = blended_deltas(items)
    for key, lora in merged.items():
        assert lora.rank == 4 and lora.alpha == 4.0
        assert torch.allclose(lora.delta(), exact[key], atol=1e-6)


def test_svd_merge_reports_its_error(two_adapters):
    items = [(read_lora(p)[0], StyleWeight(0.5, 0.5)) for p in two_adapters]
    full, error_full = merge_svd(items, rank=4)
    assert error_full < 1e-6
    low, error_low = merge_svd(items, rank=1)
    assert 0 < error_low < 1
    exact = blended_deltas(items)
    num = sum(float((low[k].delta() - exact[k]).pow(2).sum()) for k in exact)
    den = sum(float(exact[k].pow(2).sum()) for k in exact)
    assert error_low == pytest.approx((num / den) ** 0.5, rel=1e-6)


def test_merged_file_paints_like_the_two_adapters(tiny_base, two_adapters, tmp_path, unet_probe):
    out = tmp_path / "ab.safetensors"
    merge(MergeConfig((f"{two_adapters[0]}:0.6", f"{two_adapters[1]}:0.4"), out))
    styler = Styler(str(tiny_base))
    a, b, ab = styler.load(two_adapters[0]), styler.load(two_adapters[1]), styler.load(out)
    styler.set_weights({a: 0.6, b: 0.4})
    blend = unet_probe(styler)
    styler.set_weights({ab: 1.0})
    assert torch.allclose(unet_probe(styler), blend, atol=1e-5)


def test_into_base_writes_a_model_with_the_blend_fused_in(tiny_base, two_adapters, tmp_path, unet_probe):
    out = tmp_path / "fused-model"
    merge(MergeConfig((f"{two_adapters[0]}:0.6", f"{two_adapters[1]}:0.4"), out, into_base=True, base=str(tiny_base)))
    styler = Styler(str(tiny_base))
    styler.set_weights({styler.load(two_adapters[0]): 0.6, styler.load(two_adapters[1]): 0.4})
    fused = Styler(str(out))
    assert torch.allclose(unet_probe(fused), unet_probe(styler), atol=1e-5)


def test_convert_round_trips_and_diffusers_layout_loads_in_diffusers(tiny_base, two_adapters, tmp_path, unet_probe):
    original, _, kind = read_lora(two_adapters[0])
    assert kind == "kohya" and {l.alpha for l in original.values()} == {4.0}  # rank 2, alpha 4: scale 2
    diffusers_file = write_lora(original, "diffusers", tmp_path / "d.safetensors")
    peft_folder = write_lora(read_lora(diffusers_file)[0], "peft", tmp_path / "peft")
    back = read_lora(write_lora(read_lora(peft_folder)[0], "kohya", tmp_path / "k.safetensors"))[0]
    assert back.keys() == original.keys()
    for key in original:
        assert torch.equal(back[key].down, original[key].down) and back[key].alpha == original[key].alpha
    reference = StableDiffusionPipeline.from_pretrained(tiny_base)
    reference.load_lora_weights(str(two_adapters[0]))
    converted = StableDiffusionPipeline.from_pretrained(tiny_base)
    converted.load_lora_weights(str(diffusers_file))
    assert torch.allclose(unet_probe(SimpleNamespace(pipe=converted)), unet_probe(SimpleNamespace(pipe=reference)),
                          atol=1e-5)


def test_cli_merge_convert_inspect(two_adapters, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "stylelora", *args], capture_output=True, text=True)

    out = tmp_path / "m.safetensors"
    run = cli("merge", f"{two_adapters[0]}:0.5", f"{two_adapters[1]}:0.5", "-o", str(out), "--method", "svd", "--rank", "1")
    assert run.returncode == 0, run.stderr
    assert "relative error of the merged deltas" in run.stdout
    run = cli("inspect", str(two_adapters[0]), "--json")
    info = json.loads(run.stdout)
    assert info["format"] == "kohya" and info["architecture"] == "stylelora mini" and not info["text_encoder"]
    assert info["method"] == "LoRA"
    assert info["groups"] == [{"part": "unet", "method": "LoRA", "rank": 2, "alpha": 4.0, "scale": 2.0, "modules": 32}]
    assert info["targets"] == ["to_k", "to_out.0", "to_q", "to_v"]
    run = cli("convert", str(two_adapters[0]), "--to", "diffusers", "-o", str(tmp_path / "c.safetensors"))
    assert run.returncode == 0 and "(kohya) to diffusers" in run.stdout
    run = cli("merge", f"{two_adapters[0]}:abc", "-o", str(tmp_path / "x.safetensors"))
    assert run.returncode == 2 and "'abc'" in run.stderr and "Traceback" not in run.stderr
