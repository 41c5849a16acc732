"""Styler: the friendly front over the one painter (engine.py) for one weighted stack at a time.

Adapters are loaded once and kept; switching or reweighting only changes the stack. Between paintings, the
model's own forward applies the stack at peft's exact, reversible scales (weight x alpha / rank per module), so
it can be probed and compared; painting fuses it (or adds it per row) in the engine, as a served request is painted.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from PIL import Image

from ..adapters.stack import StyleWeight
from ..errors import ConfigError
from .engine import Engine, PaintJob
from .multilora import Stack
from .pipeline import check_sampler_and_blend
from .request import GenerateConfig


def adapter_name_for(path: Path, taken: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", path.stem) or "style"
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


class Styler:
    """Paint with a base model and a weighted stack of style adapters.

    While the weights stay the same, the blend stays fused into the base weights (as AUTOMATIC1111 and ComfyUI
    do), so each denoising step costs what the bare base costs. Changing the weights first restores the base
    weights from a copy, so unfusing is exact, not a subtraction.
    """

    def __init__(self, base: str = "mini", device: str | None = None, dtype: torch.dtype | None = None,
                 quantize: str = "none"):
        self.engine = Engine(base, folder=None, device=device, dtype=dtype, quantize=quantize)
        self.base, self.quantize = base, quantize
        self.pipe, self.family = self.engine.pipe, self.engine.family
        self.paths: dict[str, Path] = {}
        self.weights: dict[str, StyleWeight] = {}

    def load(self, path: Path, name: str | None = None) -> str:
        """Load an adapter file under `name` (default: from its file name), at weight 0, and return the name."""
        path = Path(path)
        for loaded_name, loaded_path in self.paths.items():
            if loaded_path.resolve() == path.resolve() and name in (None, loaded_name):
                return loaded_name  # already loaded: reuse it, never load a second copy
        name = name or adapter_name_for(path, set(self.paths))
        self.engine.add(name, path)
        self.paths[name] = path
        self.weights[name] = StyleWeight(0.0, 0.0)
        self._apply()
        return name

    def unload(self, name: str) -> None:
        self.engine.remove(name)
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
        self.weights = new
        self._apply()

    @property
    def stack(self) -> Stack:
        """The adapters that are on, with their weights, in load order."""
        return tuple((name, weight) for name, weight in self.weights.items() if not weight.is_off)

    def _apply(self) -> None:
        self.engine.show(self.stack)

    def fuse(self) -> None:
        """Add the active blend into the base weights (never into a quantized base's: see Engine.fuse)."""
        self.engine.fuse(self.stack)

    def unfuse(self) -> None:
        """Put the base weights back exactly (copied, not subtracted); the model's forward adds the stack again."""
        self._apply()

    @property
    def fused(self) -> bool:
        return self.engine.fused

    @torch.no_grad()
    def generate(self, prompt: str, negative: str = "", count: int = 1, steps: int = 30, cfg: float = 7.5,
                 seed: int = 0, size: int | None = None, scheduler: str = "dpm++",
                 blend: str = "merge", width: int | None = None, height: int | None = None,
                 blend_density: float = 0.5) -> list[Image.Image]:
        """Paint `count` images. blend: 'merge' (the weighted sum, fused: 1x UNet cost), 'switch' (one adapter
        per denoising step, in turn: 1x), 'composite' (each adapter's prediction, averaged: N x), or a merge rule
        ('ties', 'dare-linear', 'dare-ties', 'magnitude-prune' at `blend_density`: merged once, cached, fused: 1x).
        `size` is a square side; `width` and `height` override it (each defaults to the base's native size)."""
        check_sampler_and_blend(scheduler, blend)
        config = GenerateConfig(prompt=prompt, negative=negative, count=count, steps=steps, cfg=cfg, seed=seed,
                                size=size, scheduler=scheduler, blend=blend, width=width, height=height,
                                blend_density=blend_density,
                                base=self.base, quantize_base=self.quantize)
        images = self.engine.paint([PaintJob(config, self.stack)])[0]
        if not self.engine.fused:
            self._apply()  # the model's own forward adds the stack again
        return images

    def _per_adapter_forward(self, active: dict[str, StyleWeight], blend: str):
        """The engine's UNet forward for 'switch' and 'composite' over this one stack."""
        stack = tuple(active.items())
        return self.engine.blend_forward([stack], blend, self.engine.adapters(stack))

    @property
    def architecture(self) -> str:
        return self.family.label

    @property
    def native_size(self) -> int:
        return self.family.native_size(self.pipe)
