"""LoKr (LyCORIS): peft's LoKrConfig; written as lokr_w1/lokr_w2 (layouts.LokrModule), which AUTOMATIC1111 and
ComfyUI apply natively."""

from __future__ import annotations

from typing import Any

from .method import Method


class LokrMethod(Method):
    def peft_config(self, spec, common: dict, total_steps: int):
        from peft import LoKrConfig

        return LoKrConfig(alpha=spec.alpha, init_weights=True, use_effective_conv2d=False, **common)

    def network_args(self, config: Any) -> dict[str, str]:
        return {"algo": self.name}


# As LoHa: peft's LoKr layers cannot read a Linear4bit's packed weight.
LOKR = LokrMethod("lokr", "LoKr", network_module="lycoris.kohya", lora_pair=False, quantized_bases=("int8", "fp8"))
