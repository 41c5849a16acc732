"""LoHa (LyCORIS): peft's LoHaConfig, whose parameters carry LyCORIS's names and formula; written as
hada_w1_a/… (layouts.LohaModule), which AUTOMATIC1111 and ComfyUI apply natively."""

from __future__ import annotations

from typing import Any

from .method import Method


class LohaMethod(Method):
    def peft_config(self, spec, common: dict, total_steps: int):
        from peft import LoHaConfig

        return LoHaConfig(alpha=spec.alpha, init_weights=True, use_effective_conv2d=False, **common)

    def network_args(self, config: Any) -> dict[str, str]:
        return {"algo": self.name}


# peft's LoHa layers read a Linear4bit's packed weight as if it were floats and fail: no nf4.
LOHA = LohaMethod("loha", "LoHa", network_module="lycoris.kohya", lora_pair=False, quantized_bases=("int8", "fp8"))
