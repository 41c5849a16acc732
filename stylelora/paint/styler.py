"""Styler: one loaded base pipeline, any number of named style adapters, each at its own weight.

Adapters are loaded once and kept; switching or reweighting only sets peft's adapter scales
(weight x alpha / rank per module), which is exact and reversible, and never reloads the base.
Adapters that are not in the active set are left out of the forward pass.
"""

from __future__ import annotations

import itertools
import re
import warnings
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from PIL import Image

from ..adapters.formats import LoraWeights, to_kohya
from ..adapters.stack import StyleWeight, find_layer
from ..errors import AdapterFileError, ConfigError
from ..families import family_of_pipe
from ..model.base import load_base
from .pipeline import (average_outputs, blend_passes, check_sampler_and_blend, generators, image_size,
                       painting_device, read_for_base, use_scheduler)


def adapter_name_for(path: Path, taken: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", path.stem) or "style"
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


class Styler:
    """Paint with a base model and a weighted stack of style adapters.

    While the weights stay the same, the blend is fused into the base weights (as AUTOMATIC1111
    and ComfyUI do), so each denoising step costs what the bare base costs. Changing the
    weights first restores the base weights from a copy, so unfusing is exact, not a subtraction.
    """

    def __init__(self, base: str = "mini", device: str | None = None, dtype: torch.dtype | None = None,
                 quantize: str = "none"):
        device, dtype = painting_device(device, dtype)
        self.base = base
        self.quantize = quantize
        self.pipe = load_base(base, dtype=dtype, device=device, quantize=quantize)
        self.family = family_of_pipe(self.pipe)
        self.paths: dict[str, Path] = {}
        self.weights: dict[str, StyleWeight] = {}
        # base weight and bias of fused layers
        self._originals: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def load(self, path: Path, name: str | None = None) -> str:
        """Load an adapter file under `name` (default: from its file name), at weight 0, and return the name."""
        path = Path(path)
        for loaded_name, loaded_path in self.paths.items():
            if loaded_path.resolve() == path.resolve() and name in (None, loaded_name):
                return loaded_name  # already loaded: reuse it, never load a second copy
        name = name or adapter_name_for(path, set(self.paths))
        self.unfuse()
        try:
            with warnings.catch_warnings():
                # peft warns on every adapter after the first; several adapters at once is what we are for
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                read = read_for_base(path, self.base, self.family, self.family.models(self.pipe))
                plain, made_for = read.plain, read.made_for
                # No alphas (scale 1 throughout, see plain_lora); biases go in by _load_biases.
                tensors = {k: t for k, t in to_kohya(plain).items() if not k.endswith((".alpha", ".diff_b"))}
                self.pipe.load_lora_weights(tensors, adapter_name=name)
        except (ValueError, KeyError, RuntimeError, TypeError) as error:
            raise AdapterFileError(f"{path}: does not fit: {made_for} ({str(error).splitlines()[0][:160]})") from None
        matched = sum(name in getattr(m, "lora_A", {}) for model in self.family.models(self.pipe).values()
                      for m in model.modules() if isinstance(m, LoraLayer))
        if matched < read.modules:
            # A partial match would paint a quietly different style: refuse it and say so.
            self.pipe.delete_adapters([name])
            self._apply()
            raise AdapterFileError(f"{path}: only {matched} of its {read.modules} modules exist in this base; {made_for}")
        self._load_biases(plain, name)
        self.paths[name] = path
        self.weights[name] = StyleWeight(0.0, 0.0)
        self._apply()
        return name

    @torch.no_grad()
    def _load_biases(self, plain: LoraWeights, name: str) -> None:
        """Trained biases (`diff_b`), which diffusers' loader refuses (so it is handed the weights alone): put each
        in the adapter's lora_B,
        where peft adds it inside the scaled LoRA path, so weights, blends and fusing apply it like the rest."""
        models = self.family.models(self.pipe)
        for (part, module), adapter in plain.items():
            if adapter.bias is None:
                continue
            layer = find_layer(models[part], module)
            up = layer.lora_B[name]  # a Linear or 1x1 Conv2d; both add a bias once they have one
            # peft multiplies the LoRA path, bias included, by weight x alpha / rank (1 here)
            up.bias = torch.nn.Parameter(adapter.bias.to(up.weight), requires_grad=False)

    def unload(self, name: str) -> None:
        self.unfuse()
        self.pipe.delete_adapters([name])
        self.paths.pop(name)
        self.weights.pop(name)
        self._apply()

    def set_weights(self, weights: dict[str, StyleWeight | float]) -> None:
        """Set every named adapter's weight; adapters not named are switched off (weight 0)."""
        unknown = set(weights) - set(self.paths)
        if unknown:
            raise ConfigError(f"no adapter named {sorted(unknown)[0]!r} is loaded; loaded: {sorted(self.paths)}")
        new = {name: StyleWeight(0.0, 0.0) for name in self.paths}
        for name, weight in weights.items():
            new[name] = weight if isinstance(weight, StyleWeight) else StyleWeight(float(weight), float(weight))
        if new == self.weights:
            return  # unchanged: stay fused
        self.unfuse()
        self.weights = new
        self._apply()

    def _apply(self) -> None:
        active = {n: w for n, w in self.weights.items() if not w.is_off}
        if not active:
            if self.paths:
                self.pipe.disable_lora()
            return
        self.pipe.enable_lora()
        parts = self.pipe.get_list_adapters()
        encoders = [encoder.part for encoder in self.family.text_encoders]
        weights = [{"unet": w.unet_setting()} | {part: w.text_encoder for part in encoders if n in parts.get(part, [])}
                   for n, w in active.items()]
        # Only the active adapters run: loaded but inactive ones cost nothing per step.
        self.pipe.set_adapters(list(active), weights)

    def _lora_layers(self):
        for model in self.family.models(self.pipe).values():
            for module in model.modules():
                if isinstance(module, LoraLayer) and not module.disable_adapters:
                    yield module

    @torch.no_grad()
    def fuse(self) -> None:
        """Add the active blend into the base weights (and biases) and switch the adapter paths off. Over a
        quantized base nothing is fused: adding a change to NF4, int8 or fp8 weights rounds it away (and
        requantizing would round the base too), so the adapters stay as separate float32 paths."""
        if self._originals or self.quantize != "none":
            return
        for layer in list(self._lora_layers()):
            active = [n for n in layer.active_adapters if n in layer.lora_A]
            if not active:
                continue
            weight, bias = layer.base_layer.weight, layer.base_layer.bias
            self._originals[layer] = (weight.data.clone(), bias.data.clone() if bias is not None else None)
            delta = sum(layer.get_delta_weight(n).float() for n in active)
            weight.data = (weight.data.float() + delta).to(weight.dtype)
            biases = [layer.lora_B[n].bias * layer.scaling[n] for n in active if layer.lora_B[n].bias is not None]
            if biases and bias is not None:
                bias.data = (bias.data.float() + sum(b.float() for b in biases)).to(bias.dtype)
            layer.enable_adapters(False)

    @torch.no_grad()
    def unfuse(self) -> None:
        """Put the base weights back exactly (copied, not subtracted) and switch the adapters back on."""
        for layer, (weight, bias) in self._originals.items():
            layer.base_layer.weight.data = weight
            if bias is not None:
                layer.base_layer.bias.data = bias
            layer.enable_adapters(True)
        self._originals.clear()

    @property
    def fused(self) -> bool:
        return bool(self._originals)

    @torch.no_grad()
    def generate(self, prompt: str, negative: str = "", count: int = 1, steps: int = 30, cfg: float = 7.5,
                 seed: int = 0, size: int | None = None, scheduler: str = "dpm++",
                 blend: str = "merge", width: int | None = None, height: int | None = None) -> list[Image.Image]:
        """Paint `count` images. blend: 'merge' (the weighted sum, fused: 1x UNet cost), 'switch' (one adapter
        per denoising step, in turn: 1x) or 'composite' (each adapter's prediction, averaged: N x). `size` is
        a square side; `width` and `height` override it (each defaults to the base's native size)."""
        check_sampler_and_blend(scheduler, blend)
        use_scheduler(self.pipe, scheduler)
        width, height = image_size(width, height, size, self.native_size)
        active = {n: w for n, w in self.weights.items() if not w.is_off}
        if blend == "merge" or len(active) < 2:
            self.fuse()
            unet_forward = None
        else:
            self.unfuse()
            unet_forward = self._per_adapter_forward(active, blend)
        try:
            if unet_forward is not None:
                self.pipe.unet.forward = unet_forward
            return self.pipe(prompt, negative_prompt=negative or None, num_images_per_prompt=count,
                             num_inference_steps=steps, guidance_scale=cfg, generator=generators(seed, count),
                             height=height, width=width).images
        finally:
            if unet_forward is not None:
                del self.pipe.unet.forward  # back to the class's own forward
                self._apply()

    def _per_adapter_forward(self, active: dict[str, StyleWeight], blend: str):
        """A UNet forward for 'switch' and 'composite': each pass runs the adapters pipeline.blend_passes gives it
        (one in turn per step, or each of them, averaged), as the engine does for its rows."""
        unet, original = self.pipe.unet, type(self.pipe.unet).forward
        stack = tuple(active.items())
        calls = itertools.count()

        def forward(*args, **kwargs):
            rows = (args[0] if args else kwargs["sample"]).shape[0]
            passes, counts = blend_passes([stack], blend, next(calls))
            outputs = []
            for (adapters,) in passes:
                unet.set_adapters([name for name, _ in adapters], [weight.unet_setting() for _, weight in adapters])
                outputs.append(original(unet, *args, **kwargs))
            return outputs[0] if len(outputs) == 1 else average_outputs(outputs, counts * rows)

        return forward

    @property
    def architecture(self) -> str:
        return self.family.label

    @property
    def native_size(self) -> int:
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
