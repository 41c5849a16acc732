"""Adapter methods, one module each (lora, dora, loha, lokr, adalora, dylora), and the registry that maps a
--method name to its `Method` (method.py says what a method answers). Module choice lives here too:
`TARGET_PRESETS`, with 3x3 convolutions ("LoCon") at their own rank and alpha. How a method attaches to a model is
attach.py; the file layout its trained weights take is layouts.py.

A new method is one module holding a `Method` and a `register` line below; nothing outside methods/ names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .adalora import ADALORA
from .dora import DORA
from .dylora import DYLORA
from .loha import LOHA
from .lokr import LOKR
from .lora import LORA
from .method import QUANTIZED_BASES, Method, MethodFacts

# Light on purpose (no torch, no peft): the config imports these, and `stylelora --help` and config
# errors must stay fast. attach.py holds the code that touches models.
REGISTRY: dict[str, Method] = {}
METHODS = REGISTRY.keys()  # the --method choices, in registration order (a live view)
KINDS: dict[str, str] = {}  # name -> label ("LoRA"), for methods and for the module kinds files hold
NETWORK_MODULES: dict[str, str] = {}  # name -> kohya's ss_network_module

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


def register(method: Method) -> Method:
    """Make `method` a --method choice (a test can register its own)."""
    REGISTRY[method.name] = method
    KINDS[method.name] = method.label
    NETWORK_MODULES[method.name] = method.network_module
    return method


for _method in (LORA, DORA, LOHA, LOKR, ADALORA, DYLORA):
    register(_method)


def method_of(name: str) -> Method:
    """The registered method of that name; a ConfigError naming the choices for any other."""
    if name not in REGISTRY:
        raise ConfigError(f"--method = {name!r}: choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def target_checks(config: Any, default_modules: tuple[str, ...]) -> list[tuple[bool, str, str]]:
    """The checks of which modules are adapted: a TARGET_PRESETS name or the user's own list (`default_modules`
    when not given), and the convolutions' own rank and alpha."""
    c = config
    return [
        (c.targets is None or c.targets in TARGET_PRESETS, "targets", f"choose one of {', '.join(TARGET_PRESETS)}"),
        (c.targets is None or c.target_modules == default_modules, "targets",
         "give --targets (a preset) or --target-modules (your own list), not both"),
        (bool(c.target_modules), "target_modules", "name at least one module, e.g. to_q,to_k,to_v,to_out.0"),
        (c.conv_rank is None or c.conv_rank >= 1, "conv_rank", "the conv rank must be a whole number of at least 1"),
        (c.conv_alpha is None or c.conv_alpha > 0, "conv_alpha", "the conv alpha must be above 0"),
        (c.targets == "all" or (c.conv_rank is None and c.conv_alpha is None), "conv_rank" if c.conv_rank else "conv_alpha",
         "only --targets all adapts the 3x3 convolutions; add --targets all, or leave out --conv-rank/--conv-alpha"),
    ]


def method_checks(config: Any) -> list[tuple[bool, str, str]]:
    """The chosen method's option checks (train.config.validate runs them in its one list)."""
    return REGISTRY[config.method].checks(config, MethodFacts(REGISTRY)) if config.method in REGISTRY else []


def layout_checks(config: Any, plain_layout: str, base_label: str) -> list[tuple[bool, str, str]]:
    """What a base whose files are written in a `plain_layout` (one that holds plain LoRA: down, up, alpha, and no
    trained biases) refuses; nothing where it is ""."""
    if not plain_layout:
        return []
    plain = MethodFacts(REGISTRY).names("plain_file", " or ")
    return [(method_of(config.method).plain_file, "method",
             f"{base_label} adapters are written in {plain_layout}, which holds plain LoRA; use --method {plain}"),
            (not config.train_bias, "train_bias",
             f"{base_label} adapters are written in {plain_layout}, which holds no trained biases; leave out "
             "--train-bias")]


def own_fields(method: str, targets: str | None) -> frozenset[str]:
    """Which of METHOD_FIELDS apply to `method` with the `targets` preset; the UI shows only these."""
    return method_of(method).fields(targets)


def methods_over(mode: str) -> tuple[str, ...] | None:
    """The methods that train over a `--quantize-base mode` base (None: not quantized, so every one)."""
    return tuple(m.name for m in REGISTRY.values() if mode in m.quantized_bases) if mode in QUANTIZED_BASES else None


def file_metadata(config: Any, spec: AdapterSpec) -> dict[str, Any]:
    """The method-owned stylelora.* keys of a trained file: every method's own option (null where another
    method trained it), then the method's own values."""
    empty = {f"stylelora.{m.own_option}": None for m in REGISTRY.values() if m.own_option}
    return empty | REGISTRY[config.method].metadata(config, spec)
