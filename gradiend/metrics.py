"""Small numeric metrics shared by training and evaluation (NumPy only, no model imports)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; 0.0 when fewer than two rows or either side is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def mean_by_group(values: Sequence[float], groups: Sequence[str]) -> dict[str, float]:
    """Mean of `values` per group label, groups in sorted order (NaN-free: empty groups do not appear)."""
    values, groups = np.asarray(values, dtype=float), np.asarray(groups, dtype=str)
    return {str(g): float(values[groups == g].mean()) for g in sorted(set(groups.tolist()))}


def count_by_group(groups: Sequence[str]) -> dict[str, int]:
    """Rows per group label, in sorted order."""
    labels, counts = np.unique(np.asarray(groups, dtype=str), return_counts=True)
    return {str(g): int(n) for g, n in zip(labels, counts, strict=True)}
