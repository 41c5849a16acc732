"""The training loop: outputs, exact resume, clipping, NaN handling, v-prediction, and the CLI."""

import json
import subprocess
import sys

import pytest
import torch

from stylelora.errors import TrainingError
from stylelora.families import FAMILIES
from stylelora.files import read_safetensors
from stylelora.train import frozen_base, loop as training, objective, step_loss
from stylelora.train.checkpoint import latest_checkpoint
from stylelora.train.loop import train

QUIET = dict(progress_bar=False, log=lambda m: None)


def test_train_writes_one_adapter_with_metadata_and_metrics(train_config):
    config = train_config(max_steps=3, trigger="zxq", sample_every=3, sample_prompts=("a red circle",), keep="last")
    said: list[str] = []
    result = train(config, progress_bar=False, log=said.append)
    assert result.adapter_path == config.out / "run.safetensors"
    assert [p.name for p in config.out.glob("*.safetensors")] == ["run.safetensors"]
    meta = read_safetensors(result.adapter_path).metadata
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "4.0"
    assert json.loads(meta["stylelora.target_modules"]) == ["to_q", "to_k", "to_v", "to_out.0"]
    assert json.loads(meta["stylelora.trigger_words"]) == ["zxq"]
    assert meta["stylelora.image_count"] == "6" and len(meta["stylelora.dataset_hash"]) == 64
    assert meta["modelspec.architecture"] == "stylelora-mini/lora" and meta["ss_output_name"] == "run"
    assert json.loads(meta["stylelora.config"])["max_steps"] == 3
    *rows, phases = [json.loads(line) for line in (config.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] > 0 for r in rows)
    # Where the time went, last, and said at the end of the run
    assert phases["step"] == 3 and {"load", "cache", "steps", "save"} <= set(phases["phases"])
    assert all(seconds >= 0 for seconds in phases["phases"].values())
    assert said[-1].startswith("Took ") and "loading" in said[-1] and "3 steps" in said[-1] and "saving" in said[-1]
    assert (config.out / "samples" / "step-000003-0.png").is_file()


def test_previews_without_a_prompt_show_the_folders_first_captions(train_config):
    config = train_config(max_steps=2, trigger="zxq", sample_every=2, keep="last")  # plain previews, not scored
    train(config, **QUIET)
    from PIL import Image
    from stylelora.data.folder import scan_folder

    captions = list(dict.fromkeys(e.caption for e in scan_folder(config.data, trigger="zxq").examples))[:2]
    drawn = [Image.open(config.out / "samples" / f"step-000002-{i}.png").text["prompt"] for i in range(2)]
    assert drawn == captions and all(c.startswith("zxq") for c in drawn)
    assert not (config.out / "scored").exists()  # --keep last: nothing chosen, so nothing scored
    meta = read_safetensors(config.out / "run.safetensors").metadata
    assert json.loads(meta["stylelora.config"])["sample_prompts"] == captions


def test_the_denoiser_is_read_once_the_caches_are_made_and_the_encoders_freed(train_config, tmp_path, monkeypatch):
    """Training reads the denoiser last, so it never shares memory with the encoders and VAE; through diffusers'
    own loading (a base the streaming reader refuses) the adapter is the same, bit for bit."""
    import stylelora.model.base as base_module
    from stylelora.model.base import is_unread

    said, real_inputs, real_denoiser = [], frozen_base.prepare_inputs, frozen_base.load_denoiser

    def inputs(config, model, *args, **kwargs):
        said.append(("denoiser unread while caching", is_unread(model.pipe.unet)))
        made = real_inputs(config, model, *args, **kwargs)
        said.append(("encoders and VAE freed", model.pipe.text_encoder is None and model.pipe.vae is None))
        return made

    monkeypatch.setattr(frozen_base, "prepare_inputs", inputs)
    monkeypatch.setattr(frozen_base, "load_denoiser", lambda *a, **k: said.append(("read", True)) or real_denoiser(*a, **k))
    streamed = train(train_config(out=tmp_path / "streamed", max_steps=2), **QUIET)
    assert said == [("denoiser unread while caching", True), ("encoders and VAE freed", True), ("read", True)]
    monkeypatch.setattr(base_module, "stream_denoiser", lambda *args, **kwargs: None)
    loaded = train(train_config(out=tmp_path / "from_pretrained", max_steps=2), **QUIET)
    first, second = _lora_tensors(streamed.adapter_path), _lora_tensors(loaded.adapter_path)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert read_safetensors(streamed.adapter_path).metadata["stylelora.base_hash"] == \
        read_safetensors(loaded.adapter_path).metadata["stylelora.base_hash"]


def _lora_tensors(path):
    return {k: v for k, v in read_safetensors(path).tensors.items()}


def test_resume_equals_an_uninterrupted_run(train_config, tmp_path):
    straight = train_config(out=tmp_path / "straight", max_steps=6, save_every=2, flip=True, caption_dropout=0.3)
    train(straight, **QUIET)
    # Stop after 4 of 6 steps (keeping the checkpoint at step 4), then resume.
    stopped = train_config(out=tmp_path / "resumed", max_steps=6, save_every=2, flip=True, caption_dropout=0.3)
    done: list[int] = []  # should_stop is polled while caching too: count finished steps, not polls
    with pytest.raises(training.TrainingInterrupted, match="--resume"):
        train(stopped, on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 4, **QUIET)
    assert latest_checkpoint(stopped.out).name == "step-000004"
    stopped.resume = True
    train(stopped, **QUIET)
    a, b = _lora_tensors(straight.adapter_path), _lora_tensors(stopped.adapter_path)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_resume_with_a_changed_rank_is_refused(train_config):
    train(train_config(max_steps=2, save_every=1), **QUIET)
    with pytest.raises(TrainingError, match=r"rank: 4 -> 8"):
        train(train_config(max_steps=4, rank=8, resume=True), **QUIET)
    # More steps is a compatible change.
    assert train(train_config(max_steps=3, resume=True), **QUIET).steps == 3


def test_clipping_really_clips(train_config, monkeypatch):
    norms = []
    real = training.clip_gradients

    def spy(accelerator, parameters, max_norm):
        before = real(accelerator, parameters, max_norm)
        after = torch.stack([p.grad.norm() for p in parameters if p.grad is not None]).norm().item()
        norms.append((before, after))
        return before

    monkeypatch.setattr(training, "clip_gradients", spy)
    train(train_config(max_steps=2, max_grad_norm=1e-4), **QUIET)
    assert len(norms) == 2
    for before, after in norms:
        assert before > 1e-3 and after == pytest.approx(1e-4, rel=1e-3)


def test_nan_loss_stops_with_a_message_and_keeps_the_checkpoint(train_config, monkeypatch):
    real = step_loss.ddpm_loss
    count = iter(range(100))
    monkeypatch.setattr(step_loss, "ddpm_loss", lambda *a: real(*a) * (float("nan") if next(count) >= 2 else 1))
    config = train_config(max_steps=5, save_every=1)
    with pytest.raises(TrainingError, match="the loss became nan at step 3"):
        train(config, **QUIET)
    assert latest_checkpoint(config.out).name == "step-000002"
    assert not config.adapter_path.exists()


def test_v_prediction_base_trains_against_velocity(train_config, tiny_vpred_base, monkeypatch):
    seen = []
    real = objective.noise_target
    monkeypatch.setattr(objective, "noise_target", lambda kind, *a: seen.append(kind) or real(kind, *a))
    result = train(train_config(base=str(tiny_vpred_base), max_steps=2), **QUIET)
    assert seen == ["v_prediction", "v_prediction"]
    assert read_safetensors(result.adapter_path).metadata["modelspec.prediction_type"] == "v"


def _cli(*args, cwd=None):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "stylelora", *args], capture_output=True, text=True, cwd=cwd,
                          env=env | {k: v for k, v in __import__("os").environ.items() if k.startswith(("PYTHON", "HOME"))})


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, image_folder, tiny_base, capsys):
    """The first as a real process (its exit code and whole stderr); the rest through the same main, in process."""
    from stylelora.cli.main import main as cli

    run = _cli("train", str(tmp_path / "missing"), "--base", str(tiny_base))
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "no such folder" in run.stderr, run.stderr
    base = ["--base", str(tiny_base)]
    for args, expected in [
        (["train", str(tmp_path)], "no usable image"),
        (["train", str(image_folder), "--rank", "0"], "--rank = 0"),
        (["train", str(image_folder), "--resolution", "30"], "--resolution = 30"),
        (["train", str(image_folder), "--max-steps", "-1"], "--max-steps = -1"),
        (["train", str(image_folder), "--base", str(tmp_path / "model.ckpt")], "pickle"),
    ]:
        code = cli(args if "--base" in args else args + base)
        stderr = capsys.readouterr().err
        assert code == 2, (args, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in stderr, stderr


def test_cli_trains_with_toml_config_and_flags_winning(tmp_path, tiny_base, image_folder):
    toml = tmp_path / "style.toml"
    toml.write_text(f'base = "{tiny_base}"\nmax-steps = 5\nrank = 2\nbatch-size = 2\n')
    out = tmp_path / "cli.safetensors"
    run = _cli("train", str(image_folder), "--config", str(toml), "--max-steps", "2", "--out", str(out), "--quiet")
    assert run.returncode == 0, run.stderr
    assert f"Adapter written to {out}" in run.stdout and "2 steps" in run.stdout
    assert "Found 6 images" in run.stderr and "6 with captions" in run.stderr
    assert {t.shape[0] for k, t in read_safetensors(out).tensors.items() if k.endswith('lora_down.weight')} == {2}


# kohya's train_network.py builds these values, then writes `{k: str(v) for k, v in metadata.items()}`;
# here are the strings it would write for the same run (resolution is its (width, height) tuple).
KOHYA_STRINGS = {
    "ss_network_dim": "4", "ss_network_alpha": "4.0", "ss_network_dropout": "0.0", "ss_v2": "False",
    "ss_v_parameterization": "False", "ss_resolution": "(32, 32)", "ss_num_train_images": "6",
    "ss_max_train_steps": "3", "ss_learning_rate": "0.01", "ss_unet_lr": "0.01", "ss_text_encoder_lr": "None",
    "ss_lr_scheduler": "constant", "ss_lr_warmup_steps": "0", "ss_batch_size_per_device": "2",
    "ss_gradient_accumulation_steps": "1", "ss_max_grad_norm": "1.0", "ss_seed": "0", "ss_cache_latents": "True",
    "ss_flip_aug": "True", "ss_random_crop": "False", "ss_shuffle_caption": "False", "ss_keep_tokens": "0",
    "ss_caption_dropout_rate": "0.0", "ss_noise_offset": "0.0", "ss_min_snr_gamma": "0.0",
    "ss_network_module": "networks.lora",
}


def test_ss_metadata_strings_are_written_as_kohya_writes_them(train_config):
    meta = read_safetensors(train(train_config(max_steps=3, flip=True), **QUIET).adapter_path).metadata
    assert {key: meta[key] for key in KOHYA_STRINGS} == KOHYA_STRINGS


@pytest.mark.parametrize("architecture, prediction, version, is_sd2", [
    ("sd1", "epsilon", "SD1", "False"), ("sd2", "epsilon", "SD2", "True"), ("sd2", "v_prediction", "SD2", "True"),
    ("sdxl", "epsilon", "SDXL", "False"),
])
def test_automatic1111_files_sd2_adapters_under_sd2(train_config, architecture, prediction, version, is_sd2):
    from stylelora.data.folder import scan_folder
    from stylelora.train.outputs import adapter_metadata

    config = train_config()
    meta = adapter_metadata(config, scan_folder(config.data), 512, 10, "x", architecture, prediction)
    # AUTOMATIC1111's extensions-builtin/Lora/network.py, NetworkOnDisk.detect_version, on our metadata:
    detected = ("SDXL" if str(meta.get("ss_base_model_version", "")).startswith("sdxl_")
                else "SD2" if str(meta.get("ss_v2", "")) == "True" else "SD1")
    assert detected == version and meta["ss_v2"] == is_sd2
    assert meta["ss_v_parameterization"] == str(prediction == "v_prediction")


@pytest.mark.parametrize("architecture, targets, warned", [
    ("sd2", ("q_proj", "v_proj"), "k_proj,out_proj"), ("sd2", ("q_proj", "k_proj", "v_proj", "out_proj"), None),
    ("sd1", ("q_proj", "v_proj"), None), ("sdxl", ("q_proj", "v_proj"), "k_proj,out_proj"),
])
def test_an_sd2_run_adapting_part_of_the_text_attention_warns_about_automatic1111(train_config, architecture,
                                                                                 targets, warned):
    lines: list[str] = []
    config = train_config(train_text_encoder=True, text_encoder_targets=targets)
    frozen_base.warn_partial_openclip_text_encoder(config, FAMILIES[architecture], lines.append)
    encoder = "SD2" if architecture == "sd2" else "SDXL second"
    if warned is None:
        assert lines == []
    else:
        assert lines == [f"  warning: --text-encoder-targets lacks {warned}: AUTOMATIC1111 ignores an {encoder} "
                         "text-encoder LoRA unless q_proj,k_proj,v_proj,out_proj are all adapted (ComfyUI and "
                         "diffusers apply it); add them to load everywhere"]
