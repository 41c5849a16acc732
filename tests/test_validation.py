"""Knowing when to stop: the validation loss, early stopping, the best step kept, EMA and base-output
preservation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from stylelora.data.folder import scan_folder
from stylelora.data.split import split_examples
from stylelora.errors import ConfigError, DatasetError
from stylelora.files import read_safetensors
from stylelora.model.base import load_base
from stylelora.train import frozen_base, loop as training
from stylelora.train.checkpoint import latest_checkpoint
from stylelora.train.config import validate
from stylelora.train.inputs import prepare_inputs
from stylelora.train.loop import train
from stylelora.train.step_loss import StepLoss
from stylelora.train.validation import AdapterAverage, EarlyStopping, ValidationSet, Watch, fixed_timesteps

QUIET = dict(progress_bar=False, log=lambda m: None)


def _stages(config):
    """The training stages up to the step loss, as train() runs them."""
    accelerator = Accelerator(cpu=True)
    folder, held_out, _ = training.prepare_data(config, lambda m: None)
    model = frozen_base.prepare_model(config, accelerator.device, folder, lambda m: None)
    inputs = prepare_inputs(config, model, folder, held_out, accelerator, None, lambda m: None)
    frozen_base.prepare_denoiser(config, model, accelerator.device, lambda m: None)
    optimisation = training.prepare_adapters(config, model, len(folder.examples), accelerator, lambda m: None)
    adapted = [model.pipe.unet] + ([model.pipe.text_encoder] if config.train_text_encoder else [])
    return StepLoss(config, folder, model, inputs, model.pipe.unet, accelerator, adapted), optimisation, held_out


def _tensors(path):
    return read_safetensors(path).tensors


def _max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _metadata(path):
    return read_safetensors(path).metadata


def test_split_is_chosen_by_the_seed_and_keeps_at_least_one_image(image_folder):
    examples = scan_folder(image_folder).examples
    kept, held = split_examples(examples, 0.01, seed=5)
    assert len(held) == 1 and len(kept) == 5 and set(kept).isdisjoint(held)
    assert split_examples(examples, 0.34, seed=5) == split_examples(examples, 0.34, seed=5)
    assert len(split_examples(examples, 0.34, seed=5)[1]) == 2
    with pytest.raises(ConfigError, match=r"--validation-split = 0.95: it holds out 6 of the 6 images and leaves none"):
        split_examples(examples, 0.95, seed=5)


def test_fixed_timesteps_spread_over_the_schedule():
    assert fixed_timesteps(1000).tolist() == [62, 187, 312, 437, 562, 687, 812, 937]


def test_two_evaluations_of_the_same_weights_agree_and_training_changes_the_number(train_config):
    step_loss, optimisation, held_out = _stages(validate(train_config(validation_split=0.34, dropout=0.5)))
    validation = step_loss.inputs.validation
    assert len(validation) == 2 * 8 and len(held_out) == 2
    first = step_loss.validation_loss(validation)
    # Exactly, not just to 1e-6: LoRA dropout (0.5, in training mode) is off while validating.
    assert step_loss.validation_loss(validation) == first
    assert any(m.training for name, m in step_loss.unet.named_modules() if "lora_dropout" in name)
    modes = [m.training for m in step_loss.unet.modules()]
    step_loss.validation_loss(validation)
    assert [m.training for m in step_loss.unet.modules()] == modes
    training.optimizer_step(step_loss.config, optimisation, step_loss, step_loss.accelerator, 0)
    assert step_loss.validation_loss(validation) != first


def test_validation_noise_belongs_to_each_image_not_its_position():
    latents = [torch.zeros(4, 2, 2), torch.ones(4, 2, 2)]
    one = ValidationSet.build(latents, ["a", "b"], ["ka", "kb"], seed=0, num_train_timesteps=1000)
    swapped = ValidationSet.build(latents[::-1], ["b", "a"], ["kb", "ka"], seed=0, num_train_timesteps=1000)
    assert torch.equal(one.noise[:8], swapped.noise[8:]) and one.captions[:8] == ["a"] * 8


def test_held_out_images_never_appear_in_a_training_batch(train_config, monkeypatch):
    drawn = []
    real = StepLoss.latents
    monkeypatch.setattr(StepLoss, "latents", lambda self, examples, *a: drawn.extend(e.path for e in examples)
                        or real(self, examples, *a))
    config = train_config(validation_split=0.34, max_steps=9, batch_size=2, flip=True)
    _, held = split_examples(scan_folder(config.data).examples, 0.34, config.seed)
    train(config, **QUIET)
    assert len(drawn) == 18 and set(drawn).isdisjoint(e.path for e in held)
    assert len(set(drawn)) == 4  # every other image was drawn


def test_early_stopping_on_a_scripted_sequence():
    stopping = EarlyStopping(patience=3, min_delta=0.05)
    results = [stopping.update(step, loss) for step, loss in zip(range(10, 80, 10), [1.0, 0.9, 0.86, 0.87, 0.84, 0.7, 0.9])]
    assert results == [True, True, False, False, True, True, False]
    assert (stopping.best_step, stopping.best_loss, stopping.should_stop) == (60, 0.7, False)
    stopping.update(80, 0.66)  # 0.04 lower: not by more than min_delta
    assert not stopping.should_stop
    stopping.update(90, 0.6)
    assert stopping.since_best == 0
    for step in (100, 110, 120):
        stopping.update(step, 0.7)
    assert stopping.should_stop and stopping.best_step == 90
    assert not EarlyStopping(patience=0).should_stop


def _scripted(monkeypatch, losses_by_step):
    """Make the validation loss a function of the step just trained (1.0 where the script is silent)."""
    calls = []

    def scripted(self, validation):
        calls.append(1)
        return losses_by_step.get(scripted.step, 1.0)

    real = Watch.after_step
    scripted.step = 0  # the base's own loss, measured before the first step

    def after_step(self, step):
        scripted.step = step
        return real(self, step)

    monkeypatch.setattr(StepLoss, "validation_loss", scripted)
    monkeypatch.setattr(Watch, "after_step", after_step)
    return calls


def test_training_stops_at_the_right_validation_and_keeps_the_best_step(train_config, monkeypatch, tmp_path):
    calls = _scripted(monkeypatch, {2: 0.5, 4: 0.3, 6: 0.31, 8: 0.35, 10: 0.29, 12: 0.2})
    result = train(train_config(validation_split=0.2, max_steps=12, validate_every=2, early_stop=2, select_by="loss"),
                   **QUIET)
    assert (result.steps, result.kept_step, result.validation_loss, len(calls)) == (8, 4, 0.3, 5)
    meta = _metadata(result.adapter_path)
    assert meta["stylelora.kept_step"] == "4" and meta["stylelora.trained_steps"] == "8"
    assert float(meta["stylelora.validation_loss"]) == 0.3 and meta["stylelora.keep"] == "best"
    assert meta["stylelora.stop_reason"].startswith("early stop at step 8: the validation loss did not improve")
    assert meta["stylelora.steps"] == "4"
    # The best step's weights: the same as a run of 4 steps (constant learning rate, same draws).
    four = train(train_config(out=tmp_path / "four", validation_split=0.2, max_steps=4, keep="last"), **QUIET)
    assert _max_difference(_tensors(result.adapter_path), _tensors(four.adapter_path)) <= 1e-6
    rows = [json.loads(line) for line in (result.adapter_path.parent / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["validation_loss"]) for r in rows if "validation_loss" in r] == [
        (0, 1.0), (2, 0.5), (4, 0.3), (6, 0.31), (8, 0.35)]
    assert float(meta["stylelora.base_validation_loss"]) == 1.0


def test_keep_last_writes_the_last_step(train_config, monkeypatch, tmp_path):
    _scripted(monkeypatch, {3: 0.1, 6: 0.2})
    result = train(train_config(validation_split=0.2, max_steps=6, validate_every=3, keep="last"), **QUIET)
    assert (result.kept_step, result.validation_loss) == (6, 0.2)
    assert _metadata(result.adapter_path)["stylelora.stop_reason"] == "reached the last step, 6"


def _stop_after(steps: int):
    done: list[int] = []
    return dict(on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= steps)


@pytest.mark.parametrize("extra", [dict(ema_decay=0.0), dict(ema_decay=0.8, preserve=True)], ids=["plain", "ema-preserve"])
def test_resume_reaches_the_same_best_step_and_file(train_config, tmp_path, extra):
    if extra.pop("preserve", False):
        extra["preserve_prompts"] = tmp_path / "keep.txt"
        extra["preserve_prompts"].write_text("a blue square\na green triangle\n")
    settings = dict(validation_split=0.2, max_steps=10, validate_every=2, early_stop=2, save_every=2,
                    learning_rate=5e-2, dropout=0.2, **extra)
    straight = train(train_config(out=tmp_path / "straight", **settings), **QUIET)
    stopped = train_config(out=tmp_path / "resumed", **settings)
    with pytest.raises(training.TrainingInterrupted):
        train(stopped, **_stop_after(5), progress_bar=False, log=lambda m: None)
    assert latest_checkpoint(stopped.out).name == "step-000005"
    stopped.resume = True
    resumed = train(stopped, **QUIET)
    assert (resumed.kept_step, resumed.steps, resumed.stop_reason) == (straight.kept_step, straight.steps, straight.stop_reason)
    assert abs(resumed.validation_loss - straight.validation_loss) <= 1e-6
    assert _max_difference(_tensors(straight.adapter_path), _tensors(resumed.adapter_path)) <= 1e-6


def test_the_ema_is_diffusers_average_with_warmup_and_is_what_is_saved(train_config, tmp_path):
    parameter = torch.nn.Parameter(torch.zeros(3))
    average = AdapterAverage([parameter], decay=0.5)
    expected = torch.zeros(3)
    for n in range(1, 5):
        parameter.data += 1.0
        average.update()
        decay = 0.0 if n == 1 else min(0.5, n / (9 + n))
        expected = decay * expected + (1 - decay) * parameter.data
    with average.applied():
        assert torch.allclose(parameter.data, expected)
    assert torch.equal(parameter.data, torch.full((3,), 4.0))  # the trained weights come back
    # A run with EMA saves the average: not the weights it trained, which its checkpoint holds.
    plain = train(train_config(out=tmp_path / "plain", max_steps=4), **QUIET)
    averaged = train(train_config(out=tmp_path / "ema", max_steps=4, ema_decay=0.9, save_every=2), **QUIET)
    assert _max_difference(_tensors(plain.adapter_path), _tensors(averaged.adapter_path)) > 1e-4


def test_preservation_target_is_the_base_prediction(train_config, tiny_base, tmp_path):
    prompts = tmp_path / "keep.txt"
    prompts.write_text("# shapes the style must leave alone\na blue square\n\na green triangle\n")
    step_loss, _, _ = _stages(validate(train_config(preserve_prompts=prompts, train_bias=True)))
    assert step_loss.inputs.preserve_prompts == ["a blue square", "a green triangle"]
    unet = step_loss.unet
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # an adapter that changes the output
    flags = {name: p.requires_grad for name, p in unet.named_parameters()}
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 4, unet.config.sample_size, unet.config.sample_size, generator=g)
    timesteps = torch.tensor([100, 700])
    target = step_loss.base_prediction(noisy, timesteps, ["a blue square", "a green triangle"])
    assert {name: p.requires_grad for name, p in unet.named_parameters()} == flags
    base = load_base(str(tiny_base), dtype=torch.float32, device=torch.device("cpu"))
    embeddings = torch.stack([step_loss.inputs.text_cache.memory[p].context for p in ("a blue square", "a green triangle")])
    with torch.no_grad():
        expected = base.unet(noisy, timesteps, embeddings).sample
        adapted = unet(noisy, timesteps, embeddings).sample
    assert torch.allclose(target, expected, atol=1e-6)
    assert (adapted - expected).abs().max() > 1e-3  # the adapter is on again afterwards


def test_preservation_trains_and_reports_the_style_loss(train_config, tmp_path, monkeypatch):
    prompts = tmp_path / "keep.txt"
    prompts.write_text("a blue square\n")
    seen = []
    real = StepLoss.preservation_loss
    monkeypatch.setattr(StepLoss, "preservation_loss", lambda self, *a: seen.append(a[2]) or real(self, *a))
    with_preservation = train(train_config(out=tmp_path / "p", preserve_prompts=prompts, preserve_weight=2.0), **QUIET)
    without = train(train_config(out=tmp_path / "n"), **QUIET)
    assert seen == [["a blue square"] * 2] * 4
    assert _max_difference(_tensors(with_preservation.adapter_path), _tensors(without.adapter_path)) > 1e-5


def _rows(out: Path, key: str) -> list[dict]:
    return [row for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if key in row]


def test_selected_by_score_the_kept_step_is_the_best_scored_and_its_scores_are_in_the_file(train_config, tmp_path):
    config = train_config(out=tmp_path / "scored", validation_split=0.2, max_steps=6, validate_every=2,
                          learning_rate=5e-2)  # validation on: selection by score is the default
    assert config.selection == "score" and train_config().selection == "loss"
    result = train(config, **QUIET)
    scored = _rows(config.out, "score")
    assert [row["step"] for row in scored] == [2, 4, 6]
    for row in scored:
        assert row["score"] == pytest.approx(row["style_score"] * row["prompt_score"], rel=1e-12)
        assert 0 < row["style_score"] <= 1 and 0 <= row["prompt_score"] <= 1
    best = max(scored, key=lambda row: row["score"])  # the first of equals: a later step must do better
    assert result.kept_step == best["step"] and result.validation_loss == best["validation_loss"]
    metadata = _metadata(result.adapter_path)
    assert float(metadata["stylelora.style_score"]) == pytest.approx(best["style_score"], rel=1e-12)
    assert float(metadata["stylelora.prompt_score"]) == pytest.approx(best["prompt_score"], rel=1e-12)
    previews = sorted(p.name for p in (config.out / "scored").glob("*.png"))
    assert previews[:2] == ["step-000002-0.png", "step-000002-1.png"] and len(previews) % 3 == 0


def test_with_previews_and_no_validation_the_best_scored_preview_step_is_kept_and_the_previews_painted_once(
        train_config, tmp_path):
    config = train_config(out=tmp_path / "previews", max_steps=5, sample_every=2, learning_rate=5e-2)
    assert (config.selection, config.keep_step) == ("score", "best")  # previews on: scored, the best kept
    progress = []
    result = train(config, on_progress=progress.append, progress_bar=False, log=lambda m: None)
    scored = _rows(config.out, "score")
    assert [row["step"] for row in scored] == [2, 4, 5] and not _rows(config.out, "validation_loss")
    best = max(scored, key=lambda row: row["score"])
    assert (result.kept_step, result.validation_loss) == (best["step"], None) and result.measured
    assert result.scores.quality == pytest.approx(best["score"], rel=1e-12)
    assert f"preview score {best['score']:.3f}" in result.kept_measures()
    assert _metadata(result.adapter_path)["stylelora.kept_step"] == str(best["step"])
    # the scored previews are the samples: painted once a preview step, not again by --sample-every
    assert not (config.out / "samples").exists()
    shown = {p.step: [path.name for path in p.samples] for p in progress if p.samples}
    # the folder's first 2 captions (--sample-every's own choice), 2 previews each, with their prompts
    assert shown[2] == [f"step-000002-{index}.png" for index in range(4)] and set(shown) == {2, 4, 5}
    from PIL import Image

    prompts = [Image.open(config.out / "scored" / name).text["prompt"] for name in shown[2]]
    assert prompts[0] == prompts[1] != prompts[2] == prompts[3]
    assert all(p.validation_loss is None for p in progress)


def test_selection_by_score_resumes_to_the_same_kept_step_and_file(train_config, tmp_path):
    settings = dict(validation_split=0.2, max_steps=8, validate_every=2, early_stop=2, save_every=2,
                    learning_rate=5e-2, select_by="score", min_delta=0.0)
    straight = train(train_config(out=tmp_path / "straight", **settings), **QUIET)
    stopped = train_config(out=tmp_path / "resumed", **settings)
    with pytest.raises(training.TrainingInterrupted):
        train(stopped, **_stop_after(5), progress_bar=False, log=lambda m: None)
    stopped.resume = True
    resumed = train(stopped, **QUIET)
    assert (resumed.kept_step, resumed.steps, resumed.stop_reason) == (straight.kept_step, straight.steps, straight.stop_reason)
    assert resumed.scores == straight.scores  # the same checkpoint paints the same previews: the same scores
    assert _max_difference(_tensors(straight.adapter_path), _tensors(resumed.adapter_path)) <= 1e-6


@pytest.mark.parametrize("settings, message", [
    (dict(select_by="score"), r"^--select-by = 'score': the scored previews are painted from the held-out captions"),
    (dict(select_by="eye"), r"^--select-by = 'eye': choose one of loss, score"),
    (dict(early_stop=3), r"^--early-stop = 3: early stopping watches the validations or the scored previews: add "
                         r"--validation-split 0.2 or --validation-data DIR, or --sample-every N to score previews$"),
    (dict(keep="best"), r"^--keep = 'best': the best step is the best validation.s or the best-scored previews'"),
    (dict(select_by="loss", sample_every=2), r"^--select-by = 'loss': the loss is the held-out images': add "
                                             r"--validation-split"),
    (dict(sample_every=2, select_by="loss", keep="best"), r"^--keep = 'best': the best step"),
    (dict(validate_every=5), r"^--validate-every = 5: there is nothing to validate on"),
    (dict(validation_split=1.5), r"^--validation-split = 1.5: hold out a fraction in \[0, 1\)"),
    (dict(ema_decay=1.0), r"^--ema-decay = 1.0: the EMA decay is in \[0, 1\)"),
])
def test_bad_settings_are_one_line_errors_naming_the_flag(train_config, settings, message):
    with pytest.raises(ConfigError, match=message):
        validate(train_config(**settings))


def test_missing_files_are_one_line_errors(train_config, tmp_path):
    with pytest.raises(DatasetError, match=r"^--preserve-prompts .*nope.txt: no such file"):
        train(train_config(preserve_prompts=tmp_path / "nope.txt"), **QUIET)
    with pytest.raises(DatasetError, match=r"^--validation-data: .*absent: no such folder"):
        train(train_config(validation_data=tmp_path / "absent"), **QUIET)


def test_cli_validation_flags_and_a_split_with_no_training_image(tmp_path, tiny_base, image_folder):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "stylelora", "train", str(image_folder), "--base", str(tiny_base),
                               "--max-steps", "4", "--batch-size", "2", "--quiet", *args], capture_output=True,
                              text=True, cwd=tmp_path)

    refused = run("--validation-split", "0.95")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        "stylelora: error: --validation-split = 0.95: it holds out 6 of the 6 images and leaves none to train on; "
        "lower it or add images")
    done = run("--validation-data", str(image_folder), "--validate-every", "2", "--ema-decay", "0.5", "--out", "v")
    assert done.returncode == 0, done.stderr
    assert "Kept step" in done.stdout and "Validation: 6 images from" in done.stderr


def test_toml_config_carries_the_stopping_settings(tmp_path, tiny_base, image_folder):
    from stylelora.train.settings import from_dict, load_toml

    prompts = tmp_path / "keep.txt"
    prompts.write_text("a blue square\n")
    toml = tmp_path / "style.toml"
    toml.write_text(f'validation-split = 0.34\nvalidate-every = 2\nearly-stop = 3\nmin-delta = 0.001\nkeep = "last"\n'
                    f'ema-decay = 0.9\npreserve-prompts = "{prompts}"\npreserve-weight = 0.5\n'
                    f'validation-data = "{image_folder}"\n')
    values = load_toml(toml)
    with pytest.raises(ConfigError, match="^--validation-data = .*not both"):
        validate(from_dict({"data": image_folder} | values))
    del values["validation-data"]
    config = validate(from_dict({"data": image_folder} | values))
    assert (config.validation_split, config.validate_every, config.early_stop, config.min_delta, config.keep,
            config.ema_decay, config.preserve_prompts, config.preserve_weight) == (0.34, 2, 3, 0.001, "last", 0.9, prompts, 0.5)


def test_validation_and_preservation_with_the_text_encoder_trained(train_config, tmp_path):
    prompts = tmp_path / "keep.txt"
    prompts.write_text("a blue square\n")
    config = validate(train_config(validation_split=0.34, preserve_prompts=prompts, train_text_encoder=True))
    step_loss, optimisation, _ = _stages(config)
    assert step_loss.inputs.text_cache is None  # the encoder trains: every caption is encoded afresh
    first = step_loss.validation_loss(step_loss.inputs.validation)
    assert step_loss.validation_loss(step_loss.inputs.validation) == first
    with torch.no_grad():
        for name, p in step_loss.adapted[1].named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # only the text encoder's adapter changes anything
    assert step_loss.validation_loss(step_loss.inputs.validation) != first
    size = step_loss.unet.config.sample_size
    noisy, timesteps = torch.randn(1, 4, size, size), torch.tensor([500])
    base = step_loss.base_prediction(noisy, timesteps, ["a blue square"])
    adapted = step_loss.unet(noisy, timesteps, step_loss.text(["a blue square"]).context).sample
    assert (base - adapted).abs().max() > 1e-4  # the base target switches the encoder's adapter off too
    result = train(validate(train_config(out=tmp_path / "te", validation_split=0.34, preserve_prompts=prompts,
                                         train_text_encoder=True)), **QUIET)
    assert result.validation_loss is not None and any(k.startswith("lora_te_") for k in _tensors(result.adapter_path))


def test_the_ui_stopping_row_sends_what_was_typed(tmp_path):
    from stylelora.ui.train_fields import STOPPING_FIELDS, stopping_settings

    typed = dict(validation_split=0.25, validation_data="", validate_every=3.0, early_stop=0, min_delta=0, keep="",
                 select_by="score", scorer="", ema_decay=0.5, preserve_prompts="a blue square\n", preserve_weight=0, reg_data=" reg ", reg_weight=0.5)
    settings = stopping_settings(tmp_path, "my style", [typed[name] for name in STOPPING_FIELDS])
    assert settings == {"validation_split": 0.25, "validate_every": 3, "select_by": "score", "ema_decay": 0.5,
                        "preserve_weight": 0,
                        "preserve_prompts": tmp_path / "prompts" / "my style-preserve.txt", "reg_data": Path("reg"),
                        "reg_weight": 0.5}
    assert settings["preserve_prompts"].read_text() == "a blue square\n"
