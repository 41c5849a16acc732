"""The base's own weights, looked up by an adapter file's module keys: what a DoRA, LoHa or LoKr change and an
SVD merge or resize of them are computed against."""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import AdapterFileError
from ..families import Family, check_fits, family_of_pipe, family_of_weights
from ..methods.layouts import LoraModule
from ..model.base import load_base
from .stack import find_layer


def base_weights(base: str, items, made_for: Family | None = None) -> Callable[[tuple[str, str]], torch.Tensor] | None:
    """Lookups into the base's weights, loaded only when a DoRA, LoHa or LoKr module needs them."""
    if all(type(a) is LoraModule for weights, _ in items for a in weights.values()):
        return None
    pipe = load_base(base)
    family = family_of_pipe(pipe)
    check_fits("the adapter", made_for or family_of_weights(items[0][0], {}), base, family)
    models = family.models(pipe)

    def weight(key: tuple[str, str]) -> torch.Tensor:
        layer = find_layer(models[key[0]], key[1])
        if layer is None:
            raise AdapterFileError(f"module {key[1]} is not in base {base!r}; give the base the adapters were "
                                   "trained on with --base")
        return layer.weight.detach().float()

    return weight
