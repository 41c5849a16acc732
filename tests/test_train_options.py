"""Options around the loop: caches, progress reports, schedules, precision, small images."""

import json

import numpy as np
import pytest
from PIL import Image

from stylelora.train.config import TrainConfig
from stylelora.train.loop import Progress, total_steps, train


def test_latent_cache_is_reused_from_the_output_folder(train_config, image_folder):
    logs = []
    config = train_config(max_steps=1)
    train(config, progress_bar=False, log=logs.append)
    assert "Latent cache: 0 read from disk, 6 encoded." in logs
    cached = list((config.out / "cache" / "latents").glob("*.safetensors"))
    assert len(cached) == 6
    assert not any(p.suffix == ".safetensors" for p in image_folder.rglob("*"))
    logs.clear()
    train(config, progress_bar=False, log=logs.append)
    assert "Latent cache: 6 read from disk, 0 encoded." in logs


def test_flip_caches_both_variants_and_random_crop_says_it_does_not_cache(train_config):
    logs = []
    config = train_config(max_steps=1, flip=True)
    train(config, progress_bar=False, log=logs.append)
    assert len(list((config.out / "cache" / "latents").glob("*.safetensors"))) == 12
    logs.clear()
    train(train_config(max_steps=1, random_crop=True), progress_bar=False, log=logs.append)
    assert any("no cache" in line for line in logs)


def test_progress_reports_every_step_with_time_left(train_config):
    reports: list[Progress] = []
    train(train_config(max_steps=3), on_progress=reports.append, progress_bar=False, log=lambda m: None)
    assert [r.step for r in reports] == [1, 2, 3] and all(r.total_steps == 3 for r in reports)
    assert all(r.loss > 0 and r.steps_per_second > 0 for r in reports) and reports[-1].seconds_left == 0


def test_warmup_and_cosine_schedule_reach_the_metrics(train_config):
    config = train_config(max_steps=4, warmup_steps=2, lr_schedule="cosine", learning_rate=1e-3)
    train(config, progress_bar=False, log=lambda m: None)
    lrs = [json.loads(line)["lr"] for line in (config.out / "metrics.jsonl").read_text().splitlines() if '"lr"' in line]
    assert lrs[0] == 5e-4 and lrs[1] == 1e-3 and lrs[2] < 1e-3 and lrs[3] < lrs[2]


def test_epochs_set_the_number_of_steps():
    config = TrainConfig(data="x", epochs=3, batch_size=2, grad_accumulation=2)
    assert total_steps(config, examples=10, world_size=1) == 8  # ceil(3 * 10 / 4)
    assert total_steps(TrainConfig(data="x", max_steps=7), 10, 1) == 7


@pytest.mark.bf16
def test_bf16_gradient_checkpointing_and_text_encoder_options_run(train_config):
    result = train(train_config(max_steps=2, precision="bf16", gradient_checkpointing=True, train_text_encoder=True,
                                shuffle_tags=True, min_snr_gamma=5.0, noise_offset=0.05, grad_accumulation=2),
                   progress_bar=False, log=lambda m: None)
    assert result.steps == 2 and np.isfinite(result.loss)


def test_small_images_are_upscaled_with_a_warning(train_config, tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(folder / "tiny.png")
    logs = []
    train(train_config(data=folder, max_steps=1), progress_bar=False, log=logs.append)
    assert any("tiny.png is 8x8, smaller than 32; upscaling it" in line for line in logs)
    assert any("WARNING: no caption found" in line for line in logs)


def test_loraplus_gives_the_up_matrices_ratio_times_the_learning_rate(train_config, monkeypatch):
    from stylelora.train import loop as training

    seen = {}
    real = training.run_loop

    def spy(config, model, optimisation, *args):
        seen["groups"] = [(len(g["params"]), g["lr"]) for g in optimisation.optimizer.param_groups]
        seen["names"] = [
            [name for name, p in model.pipe.unet.named_parameters() if any(p is q for q in g["params"])]
            for g in optimisation.groups[:2]]
        return real(config, model, optimisation, *args)

    monkeypatch.setattr(training, "run_loop", spy)
    train(train_config(max_steps=1, loraplus_ratio=16.0, learning_rate=1e-3, train_text_encoder=True,
                       text_encoder_lr=5e-5), progress_bar=False, log=lambda m: None)
    unet_a, unet_b, te_a, te_b = seen["groups"]
    assert unet_a[1] == 1e-3 and unet_b[1] == 16.0 * 1e-3 and te_a[1] == 5e-5 and te_b[1] == 16.0 * 5e-5
    assert unet_a[0] == unet_b[0] and te_a[0] == te_b[0]  # one A and one B per adapted layer
    a_names, b_names = seen["names"]
    assert all(".lora_A." in n for n in a_names) and all(".lora_B." in n for n in b_names)


def test_resume_is_exact_with_rslora_and_loraplus_and_refuses_a_changed_ratio(train_config, tmp_path):
    from stylelora.errors import TrainingError
    from stylelora.files import read_safetensors
    from stylelora.errors import TrainingInterrupted

    options = dict(max_steps=6, save_every=2, rslora=True, loraplus_ratio=4.0)
    straight = train(train_config(out=tmp_path / "straight", **options), progress_bar=False, log=lambda m: None)
    stopped = train_config(out=tmp_path / "resumed", **options)
    done: list[int] = []
    with pytest.raises(TrainingInterrupted):
        train(stopped, on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 4,
              progress_bar=False, log=lambda m: None)
    with pytest.raises(TrainingError, match=r"loraplus_ratio: 4.0 -> 8.0"):
        train(train_config(out=tmp_path / "resumed", resume=True, **(options | {"loraplus_ratio": 8.0})),
              progress_bar=False, log=lambda m: None)
    resumed = train(train_config(out=tmp_path / "resumed", resume=True, **options), progress_bar=False,
                    log=lambda m: None)
    a, b = read_safetensors(straight.adapter_path).tensors, read_safetensors(resumed.adapter_path).tensors
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_a_negative_loraplus_ratio_names_the_flag(train_config):
    from stylelora.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--loraplus-ratio = -1.0: the LoRA\+ ratio must be 0 \(off\) or more"):
        train(train_config(loraplus_ratio=-1.0), progress_bar=False, log=lambda m: None)


def test_format_diffusers_writes_the_diffusers_layout_that_diffusers_loads_and_refuses_dora(train_config, tiny_base):
    from diffusers import StableDiffusionPipeline

    from stylelora.errors import ConfigError
    from stylelora.files import read_safetensors

    path = train(train_config(max_steps=1, format="diffusers"), progress_bar=False, log=lambda m: None).adapter_path
    adapter = read_safetensors(path)
    assert adapter.tensors and all(key.startswith("unet.") for key in adapter.tensors)
    assert "lora_adapter_metadata" in adapter.metadata  # each module's rank and alpha, as diffusers reads them
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base)
    pipe.load_lora_weights(str(path))
    assert any("lora_A" in name for name, _ in pipe.unet.named_parameters())
    with pytest.raises(ConfigError, match=r"^--method = 'dora': stylelora mini adapters are written in diffusers' layout"):
        train(train_config(method="dora", format="diffusers"), progress_bar=False, log=lambda m: None)
