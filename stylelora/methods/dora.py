"""DoRA (Liu et al. 2024) with the magnitude per input column, as AUTOMATIC1111, ComfyUI and LyCORIS apply it
(dora_layer.py holds the layer and says why not peft's own `use_dora`).

Written with alpha = rank and the scale folded into up: A1111 scales DoRA after the norm, ComfyUI before, and
the two agree only at scale 1 (layouts.py)."""

from __future__ import annotations

from typing import Any

from .method import Method


class DoraMethod(Method):
    def file_alpha(self, config: Any) -> float:
        return float(config.rank)

    def network_args(self, config: Any) -> dict[str, str]:
        return {"algo": "lora", "dora_wd": "True"}  # LyCORIS's kohya network: a LoRA with weight decomposition

    def after_attach(self, model, adapter_name: str) -> None:
        from .dora_layer import make_column_dora

        make_column_dora(model, adapter_name)


# Our DoRA reads and rescales the base weight itself, which no quantized layer holds as floats.
DORA = DoraMethod("dora", "DoRA", network_module="lycoris.kohya", trains_bias=True, rslora=True, quantized_bases=(),
                   plain_file=False)
