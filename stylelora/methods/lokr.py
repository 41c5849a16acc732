"""LoKr (LyCORIS): peft's LoKrConfig; written as lokr_w1/lokr_w2 (layouts.LokrModule), which AUTOMATIC1111 and
ComfyUI apply natively."""

from __future__ import annotations

from .method import LycorisMethod

# As LoHa: peft's LoKr layers cannot read a Linear4bit's packed weight.
LOKR = LycorisMethod("lokr", "LoKr", network_module="lycoris.kohya", lora_pair=False, plain_file=False, quantized_bases=("int8", "fp8"),
                     peft_config_class="LoKrConfig")
