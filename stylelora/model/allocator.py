"""glibc's malloc, set so that a step on the CPU does not give its memory back to the kernel only to fault it in
again on the next step.

By default glibc serves an allocation above a threshold with a fresh mmap, returns the top of its heap to the kernel
whenever more than twice that threshold is free there, and moves the threshold as it goes. A training step
allocates and frees the same activations every step, so the pages go back and forth: the quickstart's 400 steps
on the mini took 1.4-1.5 million page faults and 5-6 s of system time. With the settings below they took 0.14
million and 2 s, and the 400 steps took 42.4 and 42.5 s in two runs alone, against 46.7, 49.7 and 56.1 s in three
without (peak memory 0.58 GB in all). The sd15-style preset's two steps on the SD1.5-shaped base peaked at
3.74 GiB with and without them (bench/presets.py). PyTorch's CPU performance guide swaps in jemalloc or tcmalloc
for the same reason; these are glibc's own knobs (mallopt, as its MALLOC_*_ environment variables set them), so no
library is added.

- Allocations up to 32 MiB (glibc's own ceiling for its moving threshold) come from the heap; larger ones, a big
  base's weights, are still mapped and unmapped on their own.
- The heap keeps up to 256 MiB free at its top, and grows 64 MiB at a time.

Nothing changes where the C library is not glibc, or where the user set a MALLOC_* variable: theirs win.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 256 << 20, M_TOP_PAD: 64 << 20}

_applied: bool | None = None  # once per process
_mmap_threshold = SETTINGS[M_MMAP_THRESHOLD]  # what mapped_allocations restores (a quantized run sets it lower)


def keep_freed_memory() -> bool:
    """Apply SETTINGS to this process's malloc, once; whether they are in force."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if platform.libc_ver()[0] != "glibc" or any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in SETTINGS.items())


def remember_mmap_threshold(threshold: int) -> None:
    """Note the mmap threshold set for the rest of the run (loading.fix_mmap_threshold), for mapped_allocations."""
    global _mmap_threshold
    _mmap_threshold = threshold


@contextlib.contextmanager
def mapped_allocations(threshold: int = 1 << 20) -> Iterator[None]:
    """Within this block, serve allocations of `threshold` bytes and more from their own mappings, which go back to
    the kernel when freed, then restore the threshold in force for the run. Training loads its base and makes its
    caches within it, so that the heap a step's activations use is not left full of holes (train/frozen_base.py's
    prepare_base)."""
    libc = ctypes.CDLL("libc.so.6") if keep_freed_memory() else None
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, threshold)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(M_MMAP_THRESHOLD, _mmap_threshold)
