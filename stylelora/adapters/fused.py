"""kohya's names for a denoiser whose original checkpoint fuses Linear layers that diffusers keeps apart.

Flux's original checkpoint (and so kohya's sd-scripts, Forge and ComfyUI) holds a double block's q, k and v as one
Linear (`img_attn.qkv`), and a single block's q, k, v and MLP input as one (`linear1`). A file in that layout
adapts the fused Linear: its down is the members' downs stacked, its up their ups set block-diagonally, so each
member's rows see only its own down, and the change is exactly the members' changes side by side. Every scale is
folded into the ups (alpha = rank), so any loader applies it as is. Reading splits a fused module back: a
block-diagonal up into each member's own rank, any other up (a file another trainer wrote) by rows, over the whole
down, which is exact too; this is what diffusers' `_convert_kohya_flux_lora_to_diffusers` does, without its fixed
3072-wide split, so a test-sized model reads its files as well. Written here because no maintained library writes
this layout from diffusers-named weights.
"""

from __future__ import annotations

import re

import torch

from ..errors import AdapterFileError
from ..families import FusedName
from ..methods.layouts import LoraModule


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{\}", r"(\d+)") + "$")


def fuse(modules: dict[str, LoraModule], names: tuple[FusedName, ...], source: str) -> dict[str, LoraModule]:
    """The denoiser's modules (diffusers paths) as kohya-named modules, fused where `names` fuse them."""
    located: dict[tuple[FusedName, str], dict[int, LoraModule]] = {}
    for path, module in modules.items():
        found = next(((name, match.group(1) if match.groups() else "", index) for name in names
                      for index, member in enumerate(name.members)
                      if (match := _pattern(member).match(path))), None)
        if found is None:
            raise AdapterFileError(f"{source}: module {path} has no name in kohya's layout for this base; "
                                   "write it with --format diffusers")
        if type(module) is not LoraModule or module.bias is not None:
            raise AdapterFileError(f"{source}: module {path} is not plain LoRA, which kohya's fused layout needs")
        name, block, index = found
        located.setdefault((name, block), {})[index] = module
    return {name.kohya.replace("{}", block): _fused(name, members) for (name, block), members in located.items()}


def _fused(name: FusedName, members: dict[int, LoraModule]) -> LoraModule:
    rank = max(m.rank for m in members.values())
    some_index, some = next(iter(members.items()))
    unit, width = some.up.shape[0] // name.shares[some_index], some.down.shape[1]
    downs, ups = [], []
    for index, share in enumerate(name.shares):
        member = members.get(index)
        down = torch.zeros(rank, width, dtype=some.down.dtype)
        up = torch.zeros(unit * share, rank, dtype=some.up.dtype)
        if member is not None:  # a member left out of training stays a zero block: no change to its rows
            down[: member.rank] = member.down
            up[:, : member.rank] = member.up * member.scale
        downs.append(down)
        ups.append(up)
    up = torch.block_diag(*ups)
    if name.swap_halves:
        up = _swapped(up)
    return LoraModule(torch.cat(downs).contiguous(), up.contiguous(), float(rank * len(name.shares)))


def _swapped(up: torch.Tensor) -> torch.Tensor:
    """The two halves of the output rows exchanged: the original checkpoint orders Flux's final modulation
    shift-then-scale, diffusers scale-then-shift."""
    half = up.shape[0] // 2
    return torch.cat([up[half:], up[:half]])


def split(kohya: str, module: LoraModule, names: tuple[FusedName, ...]) -> dict[str, LoraModule] | None:
    """The diffusers-named modules a kohya-named module holds (None: not a fused layout's name)."""
    found = next(((name, match) for name in names if (match := _pattern(name.kohya).match(kohya))), None)
    if found is None:
        return None
    name, match = found
    paths = [member.replace("{}", match.group(1)) if match.groups() else member for member in name.members]
    up = _swapped(module.up) * module.scale if name.swap_halves else module.up * module.scale
    rows = [up.shape[0] // sum(name.shares) * share for share in name.shares]
    if up.shape[0] != sum(rows):
        return None  # rows that do not split by its shares: kept whole, so the module-by-module check names it
    count, members = len(paths), {}
    diagonal = module.rank % count == 0 and _block_diagonal(up, rows, module.rank // count)
    for index, (path, ups) in enumerate(zip(paths, torch.split(up, rows))):
        if diagonal:
            share = module.rank // count
            down = module.down[index * share: (index + 1) * share]
            ups = ups[:, index * share: (index + 1) * share]
        else:
            down = module.down
        kept = (down.abs().sum(1) > 0) | (ups.abs().sum(0) > 0)  # the zero rank rows a narrower member was padded by
        if kept.any():
            members[path] = LoraModule(down[kept].contiguous(), ups[:, kept].contiguous(), float(kept.sum()))
    return members


def _block_diagonal(up: torch.Tensor, rows: list[int], share: int) -> bool:
    start = 0
    for index, count in enumerate(rows):
        block = up[start: start + count]
        if block[:, : index * share].any() or block[:, (index + 1) * share:].any():
            return False
        start += count
    return True
