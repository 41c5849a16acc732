"""--optimizer: each optimizer trains, resumes exactly and is named in the file; the schedule-free ones save their
average; --optimizer-args reach the optimizer."""

import pytest

from stylelora.adapters.formats import read_lora
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


def test_optimizer_args_reach_the_optimizer_and_win(train_config, monkeypatch):
    from stylelora.train import loop

    built = []
    real = loop.build_optimizer
    monkeypatch.setattr(loop, "build_optimizer", lambda *a: built.append(real(*a)) or built[-1])
    train(train_config(max_steps=1, learning_rate=None, optimizer="prodigy",
                       optimizer_args="d_coef=2, use_bias_correction=false"), **QUIET)
    group = built[0].param_groups[0]
    assert (group["d_coef"], group["use_bias_correction"], group["lr"]) == (2, False, 1.0)
    assert f"{type(built[0]).__module__}.{type(built[0]).__name__}" == OPTIMIZERS["prodigy"].class_path


def test_the_default_rates_follow_the_optimizer(train_config):
    assert train_config(learning_rate=None, optimizer="prodigy").effective_learning_rate == 1.0
    assert train_config(learning_rate=None, optimizer="prodigy").effective_text_encoder_lr == 0.5
    assert train_config(learning_rate=None, optimizer="lion", base="mini").effective_learning_rate == pytest.approx(3e-3 / 3)
    assert train_config(learning_rate=None).effective_text_encoder_lr == 5e-5
    assert train_config(learning_rate=3e-4, optimizer="prodigy").effective_learning_rate == 3e-4  # --lr wins


@pytest.mark.parametrize("name", ["adamw-schedulefree", "prodigy-schedulefree"])
def test_a_schedule_free_file_holds_the_eval_mode_weights(train_config, monkeypatch, name):
    """The optimizer's average (its eval mode) is what is exported, not the point it steps from (train mode)."""
    from stylelora.train import outputs, validation

    seen = {}
    real_export, real_applied = outputs.export, validation.AdapterAverage.applied

    def applied(self):
        seen["average"], seen["trained"] = self, [p.detach().clone() for p in self.parameters]
        return real_applied(self)

    def export(model, part, **options):
        seen["evaluated"] = [p.detach().clone() for p in seen["average"].parameters]
        return real_export(model, part, **options)

    monkeypatch.setattr(validation.AdapterAverage, "applied", applied)
    monkeypatch.setattr(outputs, "export", export)
    # Prodigy's step size starts at d0 = 1e-6, too small to move in 3 steps: started at 1e-2 here
    rate, arguments = (1e-2, "") if name.startswith("adamw") else (None, "d0=0.01")
    result = train(train_config(max_steps=3, rank=4, alpha=4.0, optimizer=name, learning_rate=rate,
                                optimizer_args=arguments), **QUIET)
    ups = [module.up for module in read_lora(result.adapter_path)[0].values()]  # alpha = rank: scale 1

    def held(up, parameters):
        return any(p.shape == up.shape and (p - up).abs().max().item() < 1e-6 for p in parameters)

    assert ups and all(held(up, seen["evaluated"]) for up in ups)
    assert not all(held(up, seen["trained"]) for up in ups)  # the stepped point differs from the saved average


@pytest.mark.parametrize("overrides, words", [
    (dict(optimizer="adamw-schedulefree", lr_schedule="cosine"),
     "--lr-schedule = 'cosine': adamw-schedulefree replaces the schedule"),
    (dict(optimizer="prodigy-schedulefree", ema_decay=0.99), "--ema-decay = 0.99: prodigy-schedulefree saves its own"),
    (dict(optimizer="prodigy-schedulefree", warmup_steps=10), "--warmup-steps = 10: prodigy-schedulefree warms up itself"),
    (dict(optimizer="sgd"), "--optimizer = 'sgd': choose one of adamw, adamw8bit, prodigy"),
    (dict(optimizer_args="d_coef"), "--optimizer-args = 'd_coef': write key=value pairs"),
    (dict(optimizer="prodigy", optimizer_args="no_such_thing=1"), "--optimizer-args = 'no_such_thing=1': prodigy refuses it"),
])
def test_what_an_optimizer_cannot_do_is_refused_in_one_line(train_config, overrides, words):
    with pytest.raises(ConfigError) as caught:
        train(train_config(**overrides), **QUIET)
    assert str(caught.value).startswith(words) and "\n" not in str(caught.value)


def test_a_missing_optimizer_package_says_what_to_install(train_config, monkeypatch):
    import sys

    for name in ("prodigyopt", "prodigyopt.prodigy"):  # what an import meets where the package is not installed
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ConfigError, match=r"^--optimizer prodigy needs the prodigyopt package: pip install prodigyopt$"):
        train(train_config(optimizer="prodigy", max_steps=1), **QUIET)


def test_auto_gives_each_optimizer_the_suggested_rate_at_its_own_multiple(train_config):
    from stylelora.train.suggest import fill_unset

    said = []
    adamw = fill_unset(train_config(learning_rate=None, auto=True), said.append).learning_rate
    assert fill_unset(train_config(learning_rate=None, optimizer="prodigy"), said.append).learning_rate == 1.0
    assert fill_unset(train_config(learning_rate=None, optimizer="lion"), said.append).learning_rate == pytest.approx(adamw / 3)
    assert said[-1].endswith(f"; the rate as --optimizer lion runs it: {adamw / 3:g}")


def test_block_rates_give_each_unet_block_its_multiple_and_resume_exactly(train_config, tmp_path, monkeypatch):
    from stylelora.train import loop

    seen = []
    real = loop.parameter_groups
    monkeypatch.setattr(loop, "parameter_groups", lambda model, *a: seen.append((model, real(model, *a))) or seen[-1][1])
    train(train_config(max_steps=1, learning_rate=1e-2, block_lr="down=0.5,down.0=3,mid=0", loraplus_ratio=4), **QUIET)
    model, groups = seen[0]
    rate_of = {id(p): group["lr"] for group in groups for p in group["params"]}
    expected = {"down_blocks.0": 3.0, "mid_block": 0.0, "up_blocks": 1.0}  # the tiny UNet's attention blocks
    checked = set()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            block = next(b for b in expected if name.startswith(b))
            factor = expected[block] * (4 if ".lora_B." in name else 1)
            assert rate_of[id(parameter)] == pytest.approx(1e-2 * factor), name
            checked.add(block)
    assert checked == set(expected)
    a, b = _resumed(train_config, tmp_path, block_lr="down=0.5,up.1=2")
    assert max((a.tensors[k] - b.tensors[k]).abs().max().item() for k in a.tensors) <= 1e-6


@pytest.mark.parametrize("block_lr, words", [
    ("side=1", "--block-lr = 'side=1': name down, mid, up or down.0 to up.3"),
    ("down=-1", "--block-lr = 'down=-1': name down, mid, up"),
    ("down.1=2", "--block-lr down.1: no adapted layer of this base lies in that block (adapted: down.0, mid, up.1)"),
])
def test_bad_block_rates_are_one_line_errors(train_config, block_lr, words):
    with pytest.raises(ConfigError) as caught:
        train(train_config(max_steps=1, block_lr=block_lr), **QUIET)
    assert str(caught.value).startswith(words) and "\n" not in str(caught.value)
