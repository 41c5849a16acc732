"""LoRA (Hu et al. 2021): peft's LoraConfig, rsLoRA through `use_rslora`, trained biases through `lora_bias`.
Written in the kohya layout (layouts.LoraModule), which every loader reads: plain LoRA is `Method`'s defaults."""

from __future__ import annotations

from .method import Method

LORA = Method("lora", "LoRA", trains_bias=True, rslora=True)
