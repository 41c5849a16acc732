"""The adapter: zero effect at step 0, kohya key layout, and loading in stock diffusers."""

import torch
from diffusers import StableDiffusionPipeline

from stylelora.adapters.formats import from_kohya, to_kohya
from stylelora.adapters.in_model import attach_lora, load_into, lora_weights
from stylelora.errors import ConfigError
from stylelora.files import read_safetensors
from stylelora.train.config import TEXT_ENCODER_TARGETS, UNET_TARGETS
from stylelora.train.loop import train


def _unet_output(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    x = torch.randn(2, 4, size, size, generator=g)
    text = torch.randn(2, 24, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 700]), text).sample


def test_step_zero_equals_the_base(tiny_base):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base)
    before = _unet_output(pipe.unet)
    modules = attach_lora(pipe.unet, UNET_TARGETS, rank=4, alpha=8, dropout=0.0)
    attention_blocks = sum(type(m).__name__ == "Attention" for m in pipe.unet.modules())
    assert attention_blocks > 0 and len(modules) == 4 * attention_blocks
    assert all(m.endswith(("to_q", "to_k", "to_v", "to_out.0")) for m in modules)
    assert torch.equal(_unet_output(pipe.unet), before)
    # ...and the adapter is live: moving B changes the output.
    for name, p in pipe.unet.named_parameters():
        if "lora_B" in name:
            p.data.fill_(0.01)
    assert not torch.allclose(_unet_output(pipe.unet), before)


def test_unmatched_targets_name_the_flag(tiny_base):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base)
    try:
        attach_lora(pipe.unet, ("no_such_layer",), 4, 4, 0.0)
    except ConfigError as error:
        assert "--target-modules" in str(error) and "no_such_layer" in str(error)
    else:
        raise AssertionError("no error")


def test_kohya_keys_round_trip_with_alpha(tiny_base):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base)
    attach_lora(pipe.text_encoder, TEXT_ENCODER_TARGETS, rank=2, alpha=3.0, dropout=0.0)
    tensors = to_kohya(lora_weights(pipe.text_encoder, "text_encoder"))
    name = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= set(tensors)
    assert tensors[f"{name}.alpha"].item() == 3.0
    back = from_kohya(tensors, source="x")
    assert back.keys() == lora_weights(pipe.text_encoder, "text_encoder").keys()
    assert {lora.alpha for lora in back.values()} == {3.0}
    # ...and the weights go back into a model exactly.
    fresh = StableDiffusionPipeline.from_pretrained(tiny_base)
    attach_lora(fresh.text_encoder, TEXT_ENCODER_TARGETS, rank=2, alpha=3.0, dropout=0.0)
    load_into(fresh.text_encoder, tensors, "text_encoder", source="x")
    loaded = lora_weights(fresh.text_encoder, "text_encoder")
    assert all(torch.equal(loaded[k].down, back[k].down) and torch.equal(loaded[k].up, back[k].up) for k in back)


def test_trained_file_loads_in_stock_diffusers_with_the_same_output(train_config):
    config = train_config(max_steps=3, rank=4, alpha=2.0, train_text_encoder=True, text_encoder_lr=1e-2)
    result = train(config, progress_bar=False, log=lambda m: None)
    adapter = read_safetensors(result.adapter_path)
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in adapter.tensors)
    assert any(k.startswith("lora_te_text_model_") for k in adapter.tensors)
    assert {t.item() for k, t in adapter.tensors.items() if k.endswith(".alpha")} == {2.0}

    base = StableDiffusionPipeline.from_pretrained(config.base)
    reference = _unet_output(base.unet)
    # Ours: attach the same LoRA and copy the file's weights in.
    ours = StableDiffusionPipeline.from_pretrained(config.base)
    attach_lora(ours.unet, UNET_TARGETS, rank=4, alpha=2.0, dropout=0.0)
    load_into(ours.unet, adapter.tensors, "unet", result.adapter_path)
    # Theirs: diffusers' own loader reading the kohya layout.
    theirs = StableDiffusionPipeline.from_pretrained(config.base)
    theirs.load_lora_weights(str(result.adapter_path))
    ours_out, theirs_out = _unet_output(ours.unet), _unet_output(theirs.unet)
    assert not torch.allclose(ours_out, reference, atol=1e-5), "the adapter must change the output"
    assert torch.allclose(ours_out, theirs_out, atol=1e-5)
    # The text-encoder half loads too and changes the prompt embedding.
    ids = base.tokenizer(["a red circle"], padding="max_length", max_length=24, return_tensors="pt").input_ids
    with torch.no_grad():
        assert not torch.allclose(theirs.text_encoder(ids)[0], base.text_encoder(ids)[0], atol=1e-6)


def test_an_rslora_file_gives_stock_diffusers_the_same_output_as_the_trained_model(train_config):
    import math

    config = train_config(max_steps=3, rank=4, alpha=2.0, rslora=True)
    result = train(config, progress_bar=False, log=lambda m: None)
    adapter = read_safetensors(result.adapter_path)
    file_alpha = 2.0 * math.sqrt(4)  # loaders scale by alpha/rank; rsLoRA trained at alpha/sqrt(rank)
    assert {t.item() for k, t in adapter.tensors.items() if k.endswith(".alpha")} == {file_alpha}
    assert adapter.metadata["ss_network_alpha"] == "4.0" and adapter.metadata["stylelora.rslora"] == "true"
    # Ours: peft's rsLoRA (scale alpha/sqrt(rank) = 1.0) with the trained weights copied in.
    ours = StableDiffusionPipeline.from_pretrained(config.base)
    attach_lora(ours.unet, UNET_TARGETS, rank=4, alpha=2.0, dropout=0.0, rslora=True)
    load_into(ours.unet, adapter.tensors, "unet", result.adapter_path)
    scales = {m.scaling["default"] for m in ours.unet.modules() if hasattr(m, "scaling") and "default" in m.scaling}
    assert scales == {2.0 / math.sqrt(4)}
    theirs = StableDiffusionPipeline.from_pretrained(config.base)
    theirs.load_lora_weights(str(result.adapter_path))
    base = _unet_output(StableDiffusionPipeline.from_pretrained(config.base).unet)
    assert not torch.allclose(_unet_output(ours.unet), base, atol=1e-5)
    assert torch.allclose(_unet_output(ours.unet), _unet_output(theirs.unet), atol=1e-5)
