"""--optimizer: each optimizer trains, resumes exactly and is named in the file; schedule-free saves its average."""

import pytest

from stylelora.errors import ConfigError
from stylelora.files import read_safetensors
from stylelora.train.loop import TrainingInterrupted, train
from stylelora.train.optimizers import OPTIMIZERS

QUIET = dict(progress_bar=False, log=lambda message: None)


def _resumed(train_config, tmp_path, **overrides):
    """4 steps straight, and 2 + a resume to 4: both adapters' tensors."""
    straight = train(train_config(out=tmp_path / "straight", max_steps=4, save_every=2, **overrides), **QUIET)
    stopped = train_config(out=tmp_path / "resumed", max_steps=4, save_every=2, **overrides)
    done: list[int] = []
    with pytest.raises(TrainingInterrupted):
        train(stopped, on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 2, **QUIET)
    stopped.resume = True
    return read_safetensors(straight.adapter_path), read_safetensors(train(stopped, **QUIET).adapter_path)


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n != "adamw"])
def test_each_optimizer_trains_resumes_exactly_and_is_named_in_the_file(train_config, tmp_path, name):
    a, b = _resumed(train_config, tmp_path, optimizer=name)
    assert a.tensors.keys() == b.tensors.keys()
    assert max((a.tensors[k] - b.tensors[k]).abs().max().item() for k in a.tensors) <= 1e-6
    assert a.metadata["ss_optimizer"] == f"{OPTIMIZERS[name].class_path}(weight_decay=0.01)"
    assert any(t.abs().max().item() > 0 for k, t in a.tensors.items() if "lora_up" in k)  # it trained


def test_the_default_rates_follow_the_optimizer(train_config):
    assert train_config(learning_rate=None, optimizer="prodigy").effective_learning_rate == 1.0
    assert train_config(learning_rate=None, optimizer="prodigy").effective_text_encoder_lr == 0.5
    assert train_config(learning_rate=None, optimizer="lion", base="mini").effective_learning_rate == pytest.approx(2e-3 / 3)
    assert train_config(learning_rate=None).effective_text_encoder_lr == 5e-5
    assert train_config(learning_rate=3e-4, optimizer="prodigy").effective_learning_rate == 3e-4  # --lr wins


def test_schedule_free_saves_its_average_not_the_point_it_steps(train_config, monkeypatch):
    """The file holds the optimizer's x (eval mode), which differs from the y it steps from after a few steps."""
    from stylelora.train import validation

    seen = {}
    real = validation.AdapterAverage.applied

    def spy(self):
        seen["stepped"] = [p.detach().clone() for p in self.parameters]
        return real(self)

    monkeypatch.setattr(validation.AdapterAverage, "applied", spy)
    result = train(train_config(max_steps=3, optimizer="schedule-free", learning_rate=1e-2), **QUIET)
    saved = read_safetensors(result.adapter_path).tensors
    ups = sorted((k for k in saved if k.endswith("lora_up.weight")))
    stepped_norm = sum(p.norm().item() ** 2 for p in seen["stepped"]) ** 0.5
    saved_norm = sum(t.norm().item() ** 2 for k, t in saved.items() if k.endswith(("lora_up.weight", "lora_down.weight"))) ** 0.5
    assert ups and abs(stepped_norm - saved_norm) > 1e-6


@pytest.mark.parametrize("overrides, words", [
    (dict(optimizer="schedule-free", lr_schedule="cosine"), "--lr-schedule = 'cosine': schedule-free replaces the schedule"),
    (dict(optimizer="schedule-free", ema_decay=0.99), "--ema-decay = 0.99: schedule-free saves its own average"),
    (dict(optimizer="sgd"), "--optimizer = 'sgd'"),
])
def test_what_an_optimizer_cannot_do_is_refused_in_one_line(train_config, overrides, words):
    with pytest.raises(ConfigError) as caught:
        train(train_config(**overrides), **QUIET)
    assert str(caught.value).startswith(words) and "\n" not in str(caught.value)


def test_a_missing_optimizer_package_says_what_to_install(train_config, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # what `import prodigyopt` meets where it is not installed
    with pytest.raises(ConfigError, match=r"^--optimizer prodigy needs the prodigyopt package: pip install prodigyopt$"):
        train(train_config(optimizer="prodigy", max_steps=1), **QUIET)


def test_auto_gives_each_optimizer_the_suggested_rate_at_its_own_multiple(train_config):
    from stylelora.train.suggest import fill_unset

    said = []
    adamw = fill_unset(train_config(learning_rate=None, auto=True), said.append).learning_rate
    assert fill_unset(train_config(learning_rate=None, optimizer="prodigy"), said.append).learning_rate == 1.0
    assert fill_unset(train_config(learning_rate=None, optimizer="lion"), said.append).learning_rate == pytest.approx(adamw / 3)
    assert said[-1].endswith(f"; the rate as --optimizer lion runs it: {adamw / 3:g}")
