"""Read a diffusers folder's denoiser (a UNet or a transformer) one tensor at a time, straight into the run's
dtype, each layer quantized as soon as its weights are in.

diffusers' from_pretrained maps the whole safetensors file and casts it: loading a float16 or float32 file into
bfloat16 holds the file's pages and the cast copy at once, 1.6 GiB above the model itself for an SD1.5 UNet
(measured: 3.6 GiB at the peak for a 2.0 GiB result), and a quantized base would peak at the unquantized size:
for Flux.1's 12-billion-parameter transformer, 24 GB in bfloat16 before NF4 holds it in 6.5. Here each tensor is
read with plain file reads (no mapping whose pages stay resident), cast, and placed, so the peak is the model as
it will be held plus one tensor. The weights are one file or shards listed by diffusers' index file, as the hub's
Flux and SD3.5 folders hold them. Anything this reader does not know (a variant file, keys that differ from the
model's, a model class that keeps some layers in float32) returns None, and diffusers loads as usual.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
from pathlib import Path

import torch

from .allocator import remember_mmap_threshold
from .quantize import mark_quantized, quantize_layer, skipped_for

SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SHARDS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"  # diffusers' name for sharded weights
# Each tensor's read buffer is freed once it is cast, and quantizing frees each layer's float weight, but glibc keeps
# freed pages of its heap for reuse: an SD1.5 UNet quantized to NF4 then peaked 0.5 GiB above the unquantized load,
# and an SDXL-shaped UNet read into bfloat16 peaked at 7.4 GiB for 5.4 GiB held. Trimming every few layers gives
# them back.
TRIM_EVERY = 16


def tensor_index(path: Path) -> dict[str, tuple[torch.dtype, list[int], int, int]] | None:
    """Each tensor's dtype, shape and byte range in a safetensors file, from its header; None if unreadable."""
    try:
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length))
    except (OSError, ValueError):
        return None
    start = 8 + length
    header.pop("__metadata__", None)
    index = {}
    for key, entry in header.items():
        if entry.get("dtype") not in SAFETENSORS_DTYPES:
            return None
        begin, end = entry["data_offsets"]
        index[key] = (SAFETENSORS_DTYPES[entry["dtype"]], entry["shape"], start + begin, start + end)
    return index


def read_tensor(descriptor: int, entry: tuple[torch.dtype, list[int], int, int]) -> torch.Tensor:
    """One tensor read straight into its own memory (one copy: no bytes object in between)."""
    dtype, shape, begin, end = entry
    data = torch.empty(end - begin, dtype=torch.uint8)
    view, done = memoryview(data.numpy()), 0
    while done < end - begin:  # a read returns at most about 2 GiB
        count = os.preadv(descriptor, [view[done:]], begin + done)
        if count == 0:
            raise OSError(f"unexpected end of file at byte {begin + done}")
        done += count
    return data.view(dtype).reshape(shape)


def weights_index(folder: Path) -> dict[str, tuple[Path, tuple[torch.dtype, list[int], int, int]]] | None:
    """Each tensor of a model folder's weights, with the file that holds it: one safetensors file, or the shards
    its index file lists; None where there is neither or one is unreadable."""
    if (folder / WEIGHTS_NAME).is_file():
        files = [folder / WEIGHTS_NAME]
    elif (folder / SHARDS_INDEX_NAME).is_file():
        try:
            files = [folder / name for name in sorted(set(json.loads((folder / SHARDS_INDEX_NAME).read_text())["weight_map"].values()))]
        except (OSError, ValueError, KeyError, AttributeError):
            return None
    else:
        return None
    found = {}
    for path in files:
        index = tensor_index(path)
        if index is None:
            return None
        found.update({key: (path, entry) for key, entry in index.items()})
    return found


def stream_denoiser(folder: Path, subfolder: str, dtype: torch.dtype, quantize: str = "none"):
    """The denoiser in `folder/subfolder` (the class its config names) in `dtype`, quantized as `quantize` says,
    layer by layer as it is read; None where this reader cannot load it exactly as diffusers would."""
    import diffusers
    from accelerate import init_empty_weights

    try:
        config = json.loads((folder / subfolder / "config.json").read_text())
        model_class = getattr(diffusers, config["_class_name"])
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None
    index = weights_index(folder / subfolder)
    if index is None or getattr(model_class, "_keep_in_fp32_modules", None):
        return None
    with init_empty_weights():
        model = model_class.from_config(config)
    if set(model.state_dict()) != set(index):  # its parameters and persistent buffers
        return None
    descriptors = {path: os.open(path, os.O_RDONLY) for path in {path for path, _ in index.values()}}
    try:
        _fill(model, index, descriptors, dtype, quantize)
    finally:
        for descriptor in descriptors.values():
            os.close(descriptor)
    release_freed_memory()
    mark_quantized(model, quantize)
    return model.eval()


def _fill(model: torch.nn.Module, index: dict, descriptors: dict[Path, int], dtype: torch.dtype, quantize: str) -> None:
    """Read each layer's weights into `model` (its parameters built on the meta device) and quantize the layer
    once it is in; buffers are cast to `dtype` as diffusers' loading casts them."""
    filled = 0
    # By name, not over a list of the modules: such a list would keep every replaced float layer, and so the
    # whole float model, alive until the end (measured: a Flux-shaped transformer peaked at 4.2 GiB for 1.1 GiB held).
    for module_name in [name for name, _ in model.named_modules()]:
        module = model.get_submodule(module_name)
        own = [name for name, _ in module.named_parameters(recurse=False)]
        for name in own:
            path, entry = index[f"{module_name}.{name}" if module_name else name]
            module._parameters[name] = torch.nn.Parameter(read_tensor(descriptors[path], entry).to(dtype), requires_grad=False)
        for name, buffer in list(module.named_buffers(recurse=False)):
            key = f"{module_name}.{name}" if module_name else name
            value = read_tensor(descriptors[index[key][0]], index[key][1]) if key in index else buffer
            module._buffers[name] = value.to(dtype) if value.is_floating_point() else value
        if own and module_name and not list(module.children()) and not skipped_for(module_name, quantize):
            parent_name, _, name = module_name.rpartition(".")
            quantize_layer(model.get_submodule(parent_name), name, module, quantize, dtype)
        filled += bool(own)
        if own and filled % TRIM_EVERY == 0:
            trim_heap()


M_MMAP_THRESHOLD, M_TRIM_THRESHOLD = -3, -1  # glibc's mallopt parameters
MMAP_THRESHOLD, TRIM_THRESHOLD = 4 << 20, 64 << 20


def fix_mmap_threshold() -> None:
    """Serve allocations of 4 MiB and more from their own mappings, which go back to the system when freed.
    glibc raises its mmap threshold each time such a block is freed (up to 32 MiB), after which a step's
    dequantized weights and activations come from the heap, whose freed pages it keeps: an NF4 SD1.5-shaped run
    peaked at 2.75-2.79 GiB, 0.6 GiB above what it holds, and at 2.19-2.23 GiB with this. It costs time (fresh
    mappings are zeroed pages): that run's step took 11-22% longer, and a float run's up to 39%, so only quantized
    runs, whose point is memory, call this. The glibc default fixed at 128 KiB made a step 60% slower."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        remember_mmap_threshold(MMAP_THRESHOLD)
    except (OSError, AttributeError):  # not glibc
        pass


def trim_heap() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing to do)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        pass


def release_freed_memory() -> None:
    """Hand memory that was freed back to the system. glibc keeps freed heap pages for reuse, so after
    encoding a folder the process stays that much bigger while it trains; malloc_trim returns them."""
    gc.collect()
    trim_heap()
