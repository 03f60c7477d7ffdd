"""Reductions over vectors longer than 2³¹ entries.

`torch.dot` on CUDA refuses vectors of 2³¹ or more entries (its BLAS takes 32-bit lengths); a GRADIEND
over a full 3B/8B backbone has that many inputs. `dot` splits such vectors into pieces and sums the
partial products on the device, in the inputs' dtype (no float64: MPS has none).
"""

from __future__ import annotations

import torch

MAX_BLAS_NUMEL = 2**31
"""Vectors of at least this many entries are reduced in pieces."""


def dot(a: torch.Tensor, b: torch.Tensor, max_numel: int = MAX_BLAS_NUMEL) -> torch.Tensor:
    """`torch.dot(a, b)` for 1-D tensors of any length: pieces of `max_numel // 2` entries past `max_numel`.

    Below the threshold this is `torch.dot` itself (same result, same speed); `max_numel` is a parameter
    so tests can exercise the split on small tensors.
    """
    if a.dim() != 1 or b.dim() != 1:
        raise ValueError(f"dot takes 1-D tensors, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() != b.numel():
        raise ValueError(f"dot needs the same number of entries, got {a.numel()} and {b.numel()}")
    if max_numel < 2:
        raise ValueError(f"max_numel must be at least 2, got {max_numel}")
    n = a.numel()
    if n < max_numel:
        return torch.dot(a, b)
    piece = max_numel // 2
    partial = torch.stack([torch.dot(a[s:s + piece], b[s:s + piece]) for s in range(0, n, piece)])
    return partial.sum()
