"""The method seam: a method registered from this file alone trains, resumes exactly, writes its file and metadata,
loads in the Styler, and has its option rules checked, with no change to any file outside this test."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from stylelora import methods
from stylelora.errors import ConfigError
from stylelora.files import read_safetensors
from stylelora.methods.method import Method, StepHooks
from stylelora.paint.styler import Styler
from stylelora.train.config import validate
from stylelora.train.loop import train

QUIET = dict(progress_bar=False, log=lambda m: None)


class ShrinkEveryThirdStep(StepHooks):
    """After every third optimizer step, halve the up matrices: a per-step rule whose state (the step count)
    must come back with a checkpoint, or a run resumed at step 2 of 4 skips the halving at step 3."""

    def __init__(self, models):
        self.models, self.seen = models, 0

    def after_optimizer_step(self, step: int) -> None:
        self.seen += 1
        if self.seen % 3:
            return
        with torch.no_grad():
            for model in self.models:
                for name, parameter in model.named_parameters():
                    if "lora_B" in name:
                        parameter.mul_(0.5)

    def state_dict(self) -> dict:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.seen = state.get("seen", 0)


@dataclass(frozen=True)
class ToyMethod(Method):
    def network_args(self, config) -> dict[str, str]:
        return {"algo": "toy"}

    def step_hooks(self, models: list, seed: int, rank: int) -> StepHooks:
        return ShrinkEveryThirdStep(models)


@pytest.fixture
def toy():
    """Registered for this test only: the registry's tables are put back afterwards."""
    saved = [dict(t) for t in (methods.REGISTRY, methods.KINDS, methods.NETWORK_MODULES)]
    yield methods.register(ToyMethod("toy", "ToyLoRA", quantized_bases=()))
    for table, before in zip((methods.REGISTRY, methods.KINDS, methods.NETWORK_MODULES), saved):
        table.clear()
        table.update(before)


def test_a_method_registered_from_a_test_trains_resumes_exports_and_paints(toy, train_config):
    assert "toy" in methods.METHODS
    straight = train_config(method="toy", out=train_config().out.parent / "straight")
    train(straight, **QUIET)
    halves = train_config(method="toy", save_every=2, out=train_config().out.parent / "halves")
    train(halves, **QUIET)
    halves.adapter_path.unlink()
    train(train_config(method="toy", save_every=2, resume=True, out=halves.out), **QUIET)
    a, b = read_safetensors(straight.adapter_path), read_safetensors(halves.adapter_path)
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.allclose(a.tensors[k], b.tensors[k], atol=1e-6) for k in a.tensors)
    assert a.metadata["stylelora.method"] == "toy"
    assert json.loads(a.metadata["ss_network_args"]) == {"algo": "toy"}

    styler = Styler(str(train_config().base))
    name = styler.load(straight.adapter_path)
    styler.set_weights({name: 1.0})
    painted = styler.generate("a red circle", count=1, steps=2, seed=1)[0]
    styler.set_weights({name: 0.0})
    plain = styler.generate("a red circle", count=1, steps=2, seed=1)[0]
    assert painted.tobytes() != plain.tobytes()


def test_the_toy_methods_rules_come_from_its_own_facts(toy, train_config):
    with pytest.raises(ConfigError, match="--method toy cannot carry trained biases; --train-bias works with "
                                          "--method lora or dora"):
        validate(train_config(method="toy", train_bias=True))
    with pytest.raises(ConfigError, match="--method toy cannot train over a nf4 base"):
        validate(train_config(method="toy", quantize_base="nf4"))
    assert methods.own_fields("toy", "attn") == {"loraplus_ratio"}
