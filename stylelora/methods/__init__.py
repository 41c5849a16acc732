"""Adapter methods: what each one is (here), how it attaches to a model (attach.py, dora.py), and the
file layout its trained weights take (layouts.py).

- lora: peft's LoraConfig (rsLoRA through `use_rslora`).
- dora: peft's LoRA with a column-wise DoRA variant (dora.py says why not peft's own `use_dora`).
- loha, lokr: peft's LoHaConfig and LoKrConfig, whose parameters carry LyCORIS's names and formulas.
- adalora: peft's AdaLoRA (steps.py runs its rank budget); written as plain LoRA, each module at its final rank.
- dylora: peft's LoRA with a DyLoRA variant (dylora.py); written as plain LoRA at the export rank.
The file layout of each is in layouts.py. Module choice: `TARGET_PRESETS`, with 3x3 convolutions
("LoCon") at their own rank and alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

# Light on purpose (no torch, no peft): the config imports these, and `stylelora --help` and config
# errors must stay fast. attach.py holds the code that touches models.
METHODS = ("lora", "dora", "loha", "lokr", "adalora", "dylora")
# Methods that train a LoRA pair (A, B): LoRA+ and LoRA's input dropout apply to them.
LORA_PAIR_METHODS = ("lora", "dora", "dylora")
# Methods that can train the adapted layers' biases (through peft's lora_bias; the file's `diff_b`).
BIAS_METHODS = ("lora", "dora")
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
FEED_FORWARD = ("ff.net.0.proj", "ff.net.2")
OTHER_LINEAR = ("proj_in", "proj_out", "time_emb_proj", "time_embedding.linear_1", "time_embedding.linear_2")
CONVOLUTIONS = ("conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv")
TARGET_PRESETS = {
    "attn": ATTENTION,
    "attn-mlp": ATTENTION + FEED_FORWARD,
    "all-linear": ATTENTION + FEED_FORWARD + OTHER_LINEAR,
    "all": ATTENTION + FEED_FORWARD + OTHER_LINEAR + CONVOLUTIONS,
}
# kohya's ss_network_module for each method: LyCORIS types are loaded by its kohya-compatible network.
NETWORK_MODULES = {"lora": "networks.lora", "dora": "lycoris.kohya", "loha": "lycoris.kohya", "lokr": "lycoris.kohya",
                   "adalora": "networks.lora", "dylora": "networks.dylora"}


@dataclass(frozen=True)
class AdapterSpec:
    """What to attach: the method and its sizes. `conv_rank` / `conv_alpha` apply to k x k convolutions (k > 1)."""

    method: str = "lora"
    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    rslora: bool = False
    conv_rank: int | None = None
    conv_alpha: float | None = None
    target_rank: int | None = None  # AdaLoRA: the average rank it prunes down to
    train_bias: bool = False  # LoRA, DoRA: the adapted layers' biases train too (where the layer has one)

    @property
    def scale(self) -> float:
        return self.alpha / (self.rank ** 0.5 if self.rslora else self.rank)


METHOD_FIELDS = ("rslora", "loraplus_ratio", "train_bias", "target_rank", "export_rank", "conv_rank", "conv_alpha")


def own_fields(method: str, targets: str | None) -> frozenset[str]:
    """Which of METHOD_FIELDS apply to `method` with the `targets` preset; the UI shows only these."""
    fields = {"rslora"} if method in ("lora", "dora") else set()
    fields |= {"loraplus_ratio"} if method in LORA_PAIR_METHODS else set()
    fields |= {"train_bias"} if method in BIAS_METHODS else set()
    fields |= {"target_rank"} if method == "adalora" else set()
    fields |= {"export_rank"} if method == "dylora" else set()
    fields |= {"conv_rank", "conv_alpha"} if targets == "all" and method != "adalora" else set()
    return frozenset(fields)


KINDS = {"lora": "LoRA", "dora": "DoRA", "loha": "LoHa", "lokr": "LoKr", "adalora": "AdaLoRA", "dylora": "DyLoRA"}
