"""Attach an adapter method to a model with peft, and read its trained layers back as file modules."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from ..errors import ConfigError
from . import AdapterSpec, method_of
from .dylora_layer import dylora_scale
from .layouts import DoraModule, LohaModule, LokrModule, LoraModule, ModuleAdapter


def _is_spatial_conv(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Conv2d) and module.kernel_size != (1, 1)


def _targeted(name: str, targets: tuple[str, ...]) -> bool:
    """Whether a module path ends in one of `targets` at a dot, as peft matches a list of target modules."""
    return any(name == t or name.endswith("." + t) for t in targets)


def _peft_config(spec: AdapterSpec, targets: tuple[str, ...], model: torch.nn.Module, total_steps: int):
    """The peft config of `spec`, with 3x3 convolutions at the conv rank and alpha (full module paths, so
    peft's pattern matching cannot catch a neighbour)."""
    wanted = [name for name, module in model.named_modules() if _is_spatial_conv(module) and _targeted(name, targets)]
    ranks = {name: spec.conv_rank for name in wanted} if spec.conv_rank else {}
    alphas = {name: spec.conv_alpha for name in wanted} if spec.conv_alpha else {}
    common = dict(r=spec.rank, target_modules=list(targets), rank_pattern=ranks, alpha_pattern=alphas)
    return method_of(spec.method).peft_config(spec, common, total_steps)


def attach(model: torch.nn.Module, spec: AdapterSpec, targets: tuple[str, ...], flag: str = "--target-modules",
           adapter_name: str = "default", total_steps: int = 1) -> list[str]:
    """Add a trainable adapter of `spec.method` to every module whose path ends in one of `targets`; return
    their paths. Every method starts as a zero change (peft's default inits, a DoRA magnitude equal to the
    base's column norms), so the model's output is unchanged until training moves it. `total_steps` sets
    AdaLoRA's pruning schedule."""
    method = method_of(spec.method)
    config = _peft_config(spec, targets, model, total_steps)
    _unquantize_adapted_convolutions(model, targets)
    try:
        with warnings.catch_warnings():
            # lora_bias on a layer without a bias: handled below (that bias stays frozen at zero)
            warnings.filterwarnings("ignore", message="`lora_bias=True` was passed")
            method.add_to(model, config, adapter_name)
    except ValueError as error:
        if "not found" in str(error) or "Target modules" in str(error):
            raise ConfigError(f"{flag} = {','.join(targets)}: no module of the {type(model).__name__} matches; "
                              "give module-name suffixes such as to_q,to_k,to_v,to_out.0") from None
        raise
    method.after_attach(model, adapter_name)
    if spec.train_bias:
        _freeze_bias_where_the_layer_has_none(model, adapter_name)
    return sorted(name for name, _ in adapted_layers(model, adapter_name))


def _unquantize_adapted_convolutions(model: torch.nn.Module, targets: tuple[str, ...]) -> None:
    """Put the convolutions an adapter will wrap back in floats, where a quantized base holds them in torchao's int8
    (model/quantize.py): peft 0.21 wraps every layer whose weight is a torchao tensor in its LoRA layer for a
    torchao Linear, which then fails on a convolution's shape. The rest of the base stays quantized."""
    from ..model.quantize import unquantize_layer

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d) and _targeted(name, targets):
            unquantize_layer(module)


def _freeze_bias_where_the_layer_has_none(model: torch.nn.Module, adapter_name: str) -> None:
    """peft's lora_bias gives every adapted layer a trainable bias; only layers that have a bias of their own
    keep it trainable (to_q/k/v have none, and no loader could put a bias change there)."""
    for _, layer in adapted_layers(model, adapter_name):
        if layer.get_base_layer().bias is None:
            layer.lora_B[adapter_name].bias.requires_grad_(False)


def _trained_bias(layer, adapter_name: str, scaling: float) -> torch.Tensor | None:
    """The layer's bias change at weight 1: peft adds lora_B's bias inside the scaled LoRA path."""
    bias = layer.lora_B[adapter_name].bias
    if bias is None or layer.get_base_layer().bias is None:
        return None
    return _cpu(bias) * scaling


def adapted_layers(model: torch.nn.Module, adapter_name: str = "default"):
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and adapter_name in _parameter_dict(module):
            yield name, module


@contextmanager
def evaluation_mode(models: list[torch.nn.Module]) -> Iterator[None]:
    """Every module in eval mode (LoRA dropout off), then each back in the mode it was in."""
    modes = [(module, module.training) for model in models for module in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def adapters_disabled(models: list[torch.nn.Module]) -> Iterator[None]:
    """Every adapter of `models` switched off (peft's enable_adapters(False)), so they compute the base's
    own output. peft's disable_adapter() exists on PeftModel only, and its enable_adapters(True) makes every
    adapter tensor trainable again, the zero biases we keep frozen included: so each tensor's flag is put back."""
    layers = [module for model in models for module in model.modules() if isinstance(module, BaseTunerLayer)]
    trainable = [(p, p.requires_grad) for layer in layers for p in layer.parameters()]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for parameter, flag in trainable:
            parameter.requires_grad_(flag)


def _parameter_dict(layer) -> dict:
    for attribute in ("lora_A", "hada_w1_a", "lokr_w1", "lokr_w1_a"):
        found = getattr(layer, attribute, None)
        if found:
            return found
    return {}


def file_path(part: str, module: str) -> str:
    """A module's path as files name it. transformers 5 dropped CLIPTextModel's `text_model.`
    level, but every file in the wild (and AUTOMATIC1111, ComfyUI) still spells it out."""
    if part != "unet" and not module.startswith("text_model."):
        return "text_model." + module
    return module


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().float().cpu()


def export_layer(layer, adapter_name: str, export_rank: int | None = None) -> ModuleAdapter | None:
    """One trained layer as the module its file holds (layouts.py), with the scale the loaders apply; None
    for an AdaLoRA layer whose every singular value was pruned (it changes nothing)."""
    if adapter_name in getattr(layer, "lora_E", {}):
        return _export_adalora(layer, adapter_name)
    if hasattr(layer, "dylora_rank"):
        return _export_dylora(layer, adapter_name, export_rank)
    if adapter_name in getattr(layer, "hada_w1_a", {}):
        get = lambda key: _cpu(getattr(layer, key)[adapter_name])  # noqa: E731
        return LohaModule(get("hada_w1_a"), get("hada_w1_b"), get("hada_w2_a"), get("hada_w2_b"),
                          float(layer.alpha[adapter_name]))
    if adapter_name in getattr(layer, "lora_A", {}):
        down, up = _cpu(layer.lora_A[adapter_name].weight), _cpu(layer.lora_B[adapter_name].weight)
        rank, scaling = down.shape[0], float(layer.scaling[adapter_name])
        if adapter_name in layer.lora_magnitude_vector:
            # Written with alpha = rank and the scale folded into up: A1111 scales DoRA after the norm,
            # ComfyUI before, and the two agree only at scale 1 (layouts.py).
            magnitude = _cpu(layer.lora_magnitude_vector[adapter_name].weight)
            shape = (1, magnitude.numel(), *[1] * (down.ndim - 2))
            return DoraModule(down, up * scaling, float(rank), _trained_bias(layer, adapter_name, scaling),
                              magnitude.reshape(shape))
        # alpha: what loaders divide by the rank (rsLoRA included)
        return LoraModule(down, up, scaling * rank, _trained_bias(layer, adapter_name, scaling))
    return _export_lokr(layer, adapter_name)


def _export_adalora(layer, adapter_name: str) -> LoraModule | None:
    """AdaLoRA's B diag(E) A, with the pruned singular values (E = 0) left out: plain LoRA at this module's
    final rank, alpha chosen so alpha / rank is AdaLoRA's scale, alpha / (its initial rank)."""
    down, values, up = (_cpu(getattr(layer, key)[adapter_name]) for key in ("lora_A", "lora_E", "lora_B"))
    kept = values.flatten() != 0
    rank = int(kept.sum())
    if rank == 0:
        return None
    scale = float(layer.scaling[adapter_name]) / (float(layer.ranknum[adapter_name]) + 1e-5)
    down = (down * values)[kept]
    if down.ndim == 2 and isinstance(layer.get_base_layer(), torch.nn.Conv2d):
        base = layer.get_base_layer().weight
        down, up = down.reshape(rank, *base.shape[1:]), up[:, kept].reshape(base.shape[0], rank, 1, 1)
        return LoraModule(down, up, scale * rank)
    return LoraModule(down, up[:, kept], scale * rank)


def _export_dylora(layer, adapter_name: str, export_rank: int | None) -> LoraModule:
    """The first k components at DyLoRA's scale for rank k, as a plain LoRA (alpha = k * that scale)."""
    down, up = _cpu(layer.lora_A[adapter_name].weight), _cpu(layer.lora_B[adapter_name].weight)
    rank = down.shape[0]
    k = min(export_rank or rank, rank)
    return LoraModule(down[:k], up[:, :k], k * dylora_scale(float(layer.scaling[adapter_name]), rank, k))


def _export_lokr(layer, adapter_name: str) -> LokrModule:
    factors = []
    for label in ("w1", "w2"):
        whole = getattr(layer, f"lokr_{label}")
        if adapter_name in whole:
            factors.append(_cpu(whole[adapter_name]))
        else:
            factors.append((_cpu(getattr(layer, f"lokr_{label}_a")[adapter_name]),
                            _cpu(getattr(layer, f"lokr_{label}_b")[adapter_name])))
    alpha, rank = float(layer.alpha[adapter_name]), int(layer.r[adapter_name])
    module = LokrModule(factors[0], factors[1], alpha)
    if module.rank == 0:  # both factors whole: the loaders apply no scale, so fold peft's alpha/r in
        module.w2 = module.w2 * (alpha / rank)
        module.alpha = float(rank)
    return module


def export(model: torch.nn.Module, part: str, adapter_name: str = "default",
           export_rank: int | None = None) -> dict[tuple[str, str], ModuleAdapter]:
    """Every adapted layer of `model`, keyed (part, module path as files name it). `export_rank`: DyLoRA's rank."""
    modules = {(part, file_path(part, name)): export_layer(layer, adapter_name, export_rank)
               for name, layer in adapted_layers(model, adapter_name)}
    return {key: module for key, module in modules.items() if module is not None}
