"""Opt-in glibc malloc tuning while training: reuse freed large blocks instead of fresh pages.

Each base-model backward pass allocates and frees gradient tensors of tens of MB (MiniLM's tied
word-embedding gradient is 47 MB, several times per pass). glibc serves blocks above its mmap
threshold (at most 32 MB) with fresh mmap pages, which the kernel page-faults and zero-fills on
every pass. Raising the mmap and trim thresholds while training keeps such blocks in the heap for
reuse; afterwards free heap memory is returned to the OS.

Off by default, because the change is process-wide and cannot be undone exactly: glibc has no
getter for M_MMAP_THRESHOLD / M_TRIM_THRESHOLD, so the previous values cannot be restored. On
leaving the outermost tuned block the thresholds are set to glibc's dynamic-mode ceiling
(32 MB / 64 MB), and glibc's dynamic threshold adjustment stays off for the rest of the process.
Turn it on with `gradiend.allocator.enable()` (glibc only; a no-op elsewhere).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterator
from functools import cache

ENABLED = False  # opt in with enable(); see the module docstring
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRAINING_MMAP_THRESHOLD = 512 * 1024**2
TRAINING_TRIM_THRESHOLD = 1024**3
STEADY_MMAP_THRESHOLD = 32 * 1024**2  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
STEADY_TRIM_THRESHOLD = 2 * STEADY_MMAP_THRESHOLD


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - probe: glibc has it, musl and macOS do not
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc only; a no-op elsewhere)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def enable(on: bool = True) -> None:
    """Turn the malloc tuning of `reuse_large_blocks` on (or off again with `on=False`).

    Opting in trades a permanent process-wide change of glibc's thresholds (see the module
    docstring) for fewer page faults on gradient-sized allocations. A block already running keeps
    the setting it started with.
    """
    global ENABLED
    ENABLED = on


_depth = 0  # nesting level of reuse_large_blocks (only the outermost one switches)


@contextlib.contextmanager
def reuse_large_blocks() -> Iterator[None]:
    """Within the block, freed blocks up to 512 MB stay in the heap for reuse, if `enable()`d.

    A no-op unless the tuning is enabled (see the module docstring). Nests: an inner block (e.g.
    in-training evaluation) leaves the outer block's setting alone.
    """
    global _depth
    libc = _libc() if ENABLED else None
    if libc is None:
        yield
        return
    if _depth == 0:
        libc.mallopt(M_MMAP_THRESHOLD, TRAINING_MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, TRAINING_TRIM_THRESHOLD)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            libc.mallopt(M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, STEADY_TRIM_THRESHOLD)
            release_freed_memory()
