"""Cache of per-batch base-model gradients, reused across epochs and seeds.

The base model is frozen, so a training batch's source and target gradients never change: extra
epochs and extra seeds then cost GRADIEND steps, not base-model passes. Batches are keyed by their
content (texts and target tokens). Entries live in memory or in safetensors files on disk, up to a
byte limit (batches beyond it are simply recomputed); bfloat16 storage halves the footprint at the
cost of rounding the cached gradients.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gradiend.experiment import atomic_write_with

logger = logging.getLogger(__name__)

CACHE_MODES = ("off", "memory", "disk")
CACHE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc only; a no-op elsewhere).

    Cached gradients are large blocks; once freed, glibc keeps them in the process heap, so the
    resident size after a cached run would stay at its peak for the rest of the session.
    """
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)


def batch_key(texts: Sequence[str], factual: Sequence[str], alternative: Sequence[str]) -> str:
    """Content hash of one batch (order-sensitive, like the batch-mean gradient's float sum)."""
    digest = hashlib.sha256()
    for part in (*texts, "\x00", *factual, "\x00", *alternative):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x1f")
    return digest.hexdigest()[:32]


class GradientStore:
    """Gradients per batch key, in memory or on disk, bounded by `max_bytes`."""

    def __init__(self, mode: str = "memory", max_bytes: int = 2 * 1024**3, dtype: str = "float32",
                 directory: str | Path | None = None) -> None:
        if mode not in ("memory", "disk"):
            raise ValueError(f"GradientStore mode must be 'memory' or 'disk', got {mode!r}")
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"gradient cache dtype must be one of {sorted(CACHE_DTYPES)}, got {dtype!r}")
        if mode == "disk" and directory is None:
            raise ValueError("A disk gradient cache needs a directory")
        self.mode = mode
        self.max_bytes = int(max_bytes)
        self.dtype = CACHE_DTYPES[dtype]
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        self._on_disk: set[str] = set()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.full = False
        self.shared = False  # set when several runs (seeds) use this store: every batch is worth keeping

    def get(self, key: str, out: dict[str, torch.Tensor]) -> bool:
        """Copy the cached gradients of `key` into the buffers of `out`; False when not cached."""
        if key in self._memory:
            entry = self._memory[key]
        elif key in self._on_disk:
            entry = load_file(str(self.directory / f"{key}.safetensors"))
        else:
            self.misses += 1
            return False
        if set(out) - set(entry):
            self.misses += 1
            return False
        for kind, buffer in out.items():
            buffer.copy_(entry[kind])
        self.hits += 1
        return True

    def put(self, key: str, grads: dict[str, torch.Tensor]) -> None:
        """Store copies of `grads` unless the byte limit would be exceeded."""
        if key in self._memory or key in self._on_disk:
            return
        size = sum(g.numel() for g in grads.values()) * self.dtype.itemsize
        if self.bytes + size > self.max_bytes:
            if not self.full:
                logger.info("Gradient cache full (%.1f MB of %.1f MB); further batches are recomputed",
                            self.bytes / 1e6, self.max_bytes / 1e6)
                self.full = True
            return
        entry = {kind: g.detach().to(device="cpu", dtype=self.dtype, copy=True) for kind, g in grads.items()}
        if self.mode == "memory":
            self._memory[key] = entry
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_with(self.directory / f"{key}.safetensors", lambda tmp: save_file(entry, tmp))
            self._on_disk.add(key)
        self.bytes += size

    def clear(self) -> None:
        """Drop every entry (and the disk directory)."""
        had_memory = bool(self._memory)
        self._memory.clear()
        self._on_disk.clear()
        self.bytes = 0
        if had_memory:
            release_freed_memory()
        if self.mode == "disk" and self.directory is not None and self.directory.exists():
            shutil.rmtree(self.directory)

    def summary(self) -> dict[str, Any]:
        return {"mode": self.mode, "hits": self.hits, "misses": self.misses, "megabytes": self.bytes / 1e6,
                "dtype": str(self.dtype).removeprefix("torch.")}
