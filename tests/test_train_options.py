"""Options around the loop: caches, progress reports, schedules, precision, small images."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from stylelora.training import Progress, total_steps, train
from stylelora.config import TrainConfig


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
    lrs = [json.loads(line)["lr"] for line in (config.out / "metrics.jsonl").read_text().splitlines()]
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
