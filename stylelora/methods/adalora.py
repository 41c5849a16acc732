"""AdaLoRA (Zhang et al. 2023): peft's AdaLoRA, its rank budget run after each step (adalora_steps.py); written
as plain LoRA, each module at its final rank."""

from __future__ import annotations

from typing import Any

from .method import Method, StepHooks


class AdaloraMethod(Method):
    def metadata(self, config: Any, spec) -> dict[str, Any]:
        return {"stylelora.target_rank": spec.target_rank}

    def peft_config(self, spec, common: dict, total_steps: int):
        from .adalora_steps import adalora_config

        return adalora_config(spec.rank, spec.target_rank or max(1, spec.rank // 2), spec.alpha,
                              tuple(common["target_modules"]), total_steps)

    def add_to(self, model, config, adapter_name: str) -> None:
        from .adalora_steps import ADALORA_TUNERS, AdaLoraModel

        ADALORA_TUNERS[model] = AdaLoraModel(model, config, adapter_name)  # the tuner holds the rank budget

    def step_hooks(self, models: list, seed: int, rank: int) -> StepHooks:
        from .adalora_steps import AdaLoraSteps

        return AdaLoraSteps(models)


# The file's rank is the initial one (each module keeps its own final rank, at most this; `stylelora inspect`
# lists them).
ADALORA = AdaloraMethod("adalora", "AdaLoRA", lora_pair=False, convolutions=False, quantized_bases=("nf4", "int8", "fp8"),
                        own_option="target_rank", own_option_fix="only --method adalora prunes to a target rank",
                        own_option_range_fix="AdaLoRA prunes from --rank {rank} down to a target between 1 and {rank}")
