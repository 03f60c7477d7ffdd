"""Cache of per-batch base-model gradients, reused across epochs and seeds.

The base model is frozen, so a training batch's source and target gradients never change: extra
epochs and extra seeds then cost GRADIEND steps, not base-model passes. Batches are keyed by their
content (texts and target tokens). Entries live in memory or in safetensors files on disk, up to a
byte limit (batches beyond it are simply recomputed); bfloat16 storage halves the footprint at the
cost of rounding the cached gradients.

Entries are stored block-sparse, losslessly: only the 64-value blocks holding a non-zero are kept.
A batch touches few rows of the embedding matrices, so parts of each gradient are exact zeros
(measured: entries 1.8x smaller on a 2-layer BERT, 1.4x on MiniLM, whose tied output head
makes the word-embedding gradient mostly dense).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gradiend.allocator import release_freed_memory
from gradiend.experiment import atomic_write_with

logger = logging.getLogger(__name__)

CACHE_MODES = ("off", "memory", "disk")
CACHE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BLOCK = 64


def kept_blocks(vector: torch.Tensor) -> torch.Tensor:
    """Indices of the 64-value blocks of a flat vector holding a non-zero (NaN included).

    One max-|x| reduction per block: n/64 values of temporary memory, not an n-sized mask.
    """
    full = vector.numel() // BLOCK * BLOCK
    peaks = torch.linalg.vector_norm(vector[:full].view(-1, BLOCK), ord=math.inf, dim=1)
    return peaks.ne(0).nonzero().view(-1)


def packed_nbytes(n: int, n_kept_blocks: int, dtype: torch.dtype) -> int:
    """Bytes of a `pack`ed vector of `n` entries with `n_kept_blocks` kept blocks (values, int32 indices, tail)."""
    return n_kept_blocks * (BLOCK * dtype.itemsize + 4) + n % BLOCK * dtype.itemsize


def pack(vector: torch.Tensor, dtype: torch.dtype, prefix: str, kept: torch.Tensor | None = None,
         pin: bool = False) -> dict[str, torch.Tensor]:
    """Block-sparse CPU copy of a flat vector: the blocks with a non-zero, their indices, the tail.

    `kept`: the `kept_blocks` of `vector` when already computed. `pin`: page-locked host tensors (faster,
    asynchronous copies back to a CUDA device; see `wants_pinned`).
    """
    full = vector.numel() // BLOCK * BLOCK
    kept = kept_blocks(vector) if kept is None else kept
    blocks = vector[:full].view(-1, BLOCK)
    return {f"{prefix}.values": _host_copy(blocks.index_select(0, kept), dtype, pin),
            f"{prefix}.blocks": _host_copy(kept, torch.int32, pin),
            f"{prefix}.tail": _host_copy(vector[full:], dtype, pin)}


def _host_copy(tensor: torch.Tensor, dtype: torch.dtype, pin: bool) -> torch.Tensor:
    if not pin:
        return tensor.to(device="cpu", dtype=dtype, copy=True)
    out = torch.empty(tensor.shape, dtype=dtype, pin_memory=True)
    out.copy_(tensor)  # blocking: the entry may be read on the host (saved) right away
    return out


def wants_pinned(source: torch.device, mode: str, requested: bool | None = None,
                 cuda_available: bool | None = None) -> bool:
    """Whether a new entry goes to pinned host memory: by default for an in-memory cache of gradients
    computed on a CUDA device.

    Page-locked buffers make the device→host copy at `put` and the host→device copy at `get` direct DMA
    transfers (the latter asynchronous). On the CPU, or for a disk cache (entries leave memory), it buys
    nothing. `requested` (the store's `pin_memory`) forces it off (False) or on (True, CUDA sources only).
    `cuda_available` (default: `torch.cuda.is_available()`) exists for tests of the choice.
    """
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if requested is False or mode != "memory" or not available:
        return False
    return source.type == "cuda"


def unpack(entry: dict[str, torch.Tensor], prefix: str, out: torch.Tensor) -> None:
    """Write a `pack`ed vector back into the flat buffer `out` (zeros outside the kept blocks)."""
    values, tail = entry[f"{prefix}.values"], entry[f"{prefix}.tail"]
    full = out.numel() - tail.numel()
    out.zero_()
    blocks = entry[f"{prefix}.blocks"].to(device=out.device, non_blocking=entry[f"{prefix}.blocks"].is_pinned())
    blocks = blocks.long()
    async_copy = values.is_pinned()  # pinned host memory: the copies to the device need not wait
    values = values.to(device=out.device, non_blocking=async_copy).to(out.dtype)
    out[:full].view(-1, BLOCK).index_copy_(0, blocks, values)
    out[full:].copy_(tail, non_blocking=async_copy)


def _nbytes(entry: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in entry.values())


def batch_key(texts: Sequence[str], factual: Sequence[str], alternative: Sequence[str]) -> str:
    """Content hash of one batch (order-sensitive, like the batch-mean gradient's float sum)."""
    digest = hashlib.sha256()
    for part in (*texts, "\x00", *factual, "\x00", *alternative):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x1f")
    return digest.hexdigest()[:32]


class GradientStore:
    """Gradients per batch key, in memory or on disk, bounded by `max_bytes`.

    `pin_memory` (None: automatic, see `wants_pinned`) keeps in-memory entries of CUDA gradients in
    page-locked host memory. torch's pinned-memory allocator rounds each block up to a power of two, so
    pinned entries may take up to twice their counted bytes of host memory; False turns pinning off.
    """

    def __init__(self, mode: str = "memory", max_bytes: int = 2 * 1024**3, dtype: str = "float32",
                 directory: str | Path | None = None, pin_memory: bool | None = None) -> None:
        if mode not in ("memory", "disk"):
            raise ValueError(f"GradientStore mode must be 'memory' or 'disk', got {mode!r}")
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"gradient cache dtype must be one of {sorted(CACHE_DTYPES)}, got {dtype!r}")
        if mode == "disk" and directory is None:
            raise ValueError("A disk gradient cache needs a directory")
        if pin_memory is True and not torch.cuda.is_available():
            raise ValueError("pin_memory=True needs CUDA (pinned host memory is for copies to a GPU); use None "
                             "(automatic) or False")
        self.mode = mode
        self.pin_memory = pin_memory
        self.max_bytes = int(max_bytes)
        self.dtype = CACHE_DTYPES[dtype]
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        self._on_disk: set[str] = set()
        self.bytes = 0
        self.dense_bytes = 0  # what the entries stored so far would take stored dense
        self.hits = 0
        self.misses = 0
        self.full = False
        self.shared = False  # set while a later run (seed) will use this store: every batch is worth keeping

    def get(self, key: str, out: dict[str, torch.Tensor], keep: bool = True) -> bool:
        """Copy the cached gradients of `key` into the buffers of `out`; False when not cached.

        `keep=False` drops the entry once served (a batch that will not come again)."""
        if key in self._memory:
            entry = self._memory[key]
        elif key in self._on_disk:
            entry = load_file(str(self.directory / f"{key}.safetensors"))
        else:
            self.misses += 1
            return False
        if any(f"{kind}.values" not in entry for kind in out):
            self.misses += 1
            return False
        for kind, buffer in out.items():
            unpack(entry, kind, buffer)
        self.hits += 1
        if not keep:
            self._drop(key, entry)
        return True

    def _drop(self, key: str, entry: dict[str, torch.Tensor]) -> None:
        self.bytes -= _nbytes(entry)
        if key in self._memory:
            del self._memory[key]
        else:
            self._on_disk.discard(key)
            (self.directory / f"{key}.safetensors").unlink(missing_ok=True)

    def put(self, key: str, grads: dict[str, torch.Tensor]) -> None:
        """Store copies of `grads` unless the byte limit would be exceeded."""
        if key in self._memory or key in self._on_disk or self.full:
            return
        flat = {kind: g.detach().reshape(-1) for kind, g in grads.items()}
        kept = {kind: kept_blocks(g) for kind, g in flat.items()}  # sized first: nothing copied for a refusal
        size = sum(packed_nbytes(g.numel(), kept[kind].numel(), self.dtype) for kind, g in flat.items())
        if self.bytes + size > self.max_bytes:
            logger.info("Gradient cache full (%.1f MB of %.1f MB); further batches are recomputed",
                        self.bytes / 1e6, self.max_bytes / 1e6)
            self.full = True
            return
        pin = any(wants_pinned(g.device, self.mode, self.pin_memory) for g in flat.values())
        entry: dict[str, torch.Tensor] = {}
        for kind, g in flat.items():
            entry.update(pack(g, self.dtype, kind, kept[kind], pin))
        self.dense_bytes += sum(g.numel() for g in grads.values()) * self.dtype.itemsize
        if self.mode == "memory":
            self._memory[key] = entry
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_with(self.directory / f"{key}.safetensors", lambda tmp: save_file(entry, tmp))
            self._on_disk.add(key)
        self.bytes += size

    def clear(self) -> None:
        """Drop every entry: the files this store wrote, then its directory if nothing else is left in it."""
        had_memory = bool(self._memory)
        self._memory.clear()
        if self.directory is not None:
            for key in self._on_disk:
                (self.directory / f"{key}.safetensors").unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # missing, or not empty: files we did not write stay
                self.directory.rmdir()
        self._on_disk.clear()
        self.bytes = self.dense_bytes = 0
        if had_memory:
            release_freed_memory()

    def summary(self) -> dict[str, Any]:
        return {"mode": self.mode, "entries": len(self._memory) + len(self._on_disk), "hits": self.hits,
                "misses": self.misses, "megabytes": self.bytes / 1e6,
                "dense_megabytes": self.dense_bytes / 1e6,
                "dtype": str(self.dtype).removeprefix("torch.")}
