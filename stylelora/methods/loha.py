"""LoHa (LyCORIS): peft's LoHaConfig, whose parameters carry LyCORIS's names and formula; written as
hada_w1_a/… (layouts.LohaModule), which AUTOMATIC1111 and ComfyUI apply natively."""

from __future__ import annotations

from .method import LycorisMethod

# peft's LoHa layers read a Linear4bit's packed weight as if it were floats and fail: no nf4.
LOHA = LycorisMethod("loha", "LoHa", network_module="lycoris.kohya", lora_pair=False, plain_file=False, quantized_bases=("int8", "fp8"),
                     peft_config_class="LoHaConfig")
