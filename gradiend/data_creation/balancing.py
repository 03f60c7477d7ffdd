"""Class sizes, balancing and train/validation/test splits of the matched rows (deterministic
given the random generators passed in)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gradiend.data_creation.config import TextFilterConfig
from gradiend.data_creation.matching import Row
from gradiend.data_sources import DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")

#: A seeded generator per key, e.g. rng("class", "3SG").
RngFactory = Callable[..., np.random.Generator]


@dataclass
class Selection:
    """The balanced rows of the classes kept, each with its split name, and the classes left out."""

    rows: dict[str, list[Row]]
    splits: dict[str, list[str]]
    incomplete: dict[str, list[Row]]


def check_ratios(train: float, val: float, test: float) -> dict[str, float]:
    """Validate split ratios (each in [0, 1], summing to 1, train > 0) as a dict split → ratio."""
    ratios = {"train": train, "validation": val, "test": test}
    for name, value in ratios.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise DataError(f"{name} ratio must be a number in [0, 1], got {value!r}")
    total = sum(ratios.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise DataError(f"train_ratio + val_ratio + test_ratio = {total:g}; they must sum to 1 (e.g. 0.8, 0.1, 0.1)")
    if ratios["train"] == 0:
        raise DataError("train_ratio must be positive: training needs rows")
    return {k: float(v) for k, v in ratios.items()}


def class_sizes(available: Mapping[str, int], weights: Mapping[str, float], max_size: int | None,
                balance: bool) -> dict[str, int]:
    """Rows per class: capped at `max_size`; with `balance` proportional to the weights
    (the heaviest class gets the most), as many as the scarcest class allows."""
    if not balance:
        return {c: min(n, max_size) if max_size is not None else n for c, n in available.items()}
    top = max(weights.values())
    base = min(available[c] * top / weights[c] for c in available)
    if max_size is not None:
        base = min(base, max_size)
    return {c: min(available[c], max(1, math.floor(base * weights[c] / top + 1e-9))) for c in available}


def even_allocation(capacities: Mapping[str, int], total: int) -> dict[str, int]:
    """Spread `total` over keys as evenly as their capacities allow (deterministic)."""
    alloc = dict.fromkeys(capacities, 0)
    remaining = min(total, sum(capacities.values()))
    open_keys = sorted(capacities)
    while remaining > 0 and open_keys:
        share, extra = divmod(remaining, len(open_keys))
        for i, key in enumerate(open_keys):
            give = min(share + (1 if i < extra else 0), capacities[key] - alloc[key])
            alloc[key] += give
            remaining -= give
        open_keys = [k for k in open_keys if alloc[k] < capacities[k]]
    return alloc


def split_labels(n: int, ratios: Mapping[str, float]) -> list[str]:
    """`n` split names in train, validation, test order: largest-remainder sizes, at least one
    row for every split with a positive ratio (taken from the largest split)."""
    raw = {s: n * ratios[s] for s in SPLITS}
    sizes = {s: math.floor(v + 1e-9) for s, v in raw.items()}
    for s in sorted(SPLITS, key=lambda s: (-(raw[s] - sizes[s]), SPLITS.index(s)))[:n - sum(sizes.values())]:
        sizes[s] += 1
    for s in SPLITS:
        if ratios[s] > 0 and sizes[s] == 0:
            donor = max(SPLITS, key=lambda d: sizes[d])
            sizes[donor] -= 1
            sizes[s] += 1
    return [s for s in SPLITS for _ in range(sizes[s])]


def choose_rows(rows: list[Row], size: int, balance_targets: bool, rng: np.random.Generator) -> list[Row]:
    """A seeded sample of `size` rows (original order when `balance_targets` spreads them evenly
    over the target words, shuffled order otherwise)."""
    order = rng.permutation(len(rows))
    if not balance_targets:
        return [rows[i] for i in order[:size]]
    groups: dict[str, list[int]] = {}
    for i in order:
        groups.setdefault(rows[i].label.lower(), []).append(int(i))
    quota = even_allocation({w: len(g) for w, g in groups.items()}, size)
    picked = {i for w, g in groups.items() for i in g[:quota[w]]}
    return [rows[i] for i in order if i in picked]


def select_rows(matched: Mapping[str, list[Row]], feature_targets: Sequence[TextFilterConfig],
                ratios: Mapping[str, float], rng: RngFactory, *, max_size_per_class: int | None, balance: bool,
                balance_targets: bool, exclusive: bool, min_rows_per_class: int, min_classes: int,
                raise_on_incomplete_classes: bool, saving_left_out: bool) -> Selection:
    """Balance and split the matched rows of every class.

    `exclusive` keeps only texts matched by one class. Classes with fewer than
    `min_rows_per_class` rows (or too few to fill every split with a positive ratio) are left out
    with a warning, or raise with `raise_on_incomplete_classes`; fewer than `min_classes` classes
    left raises. `saving_left_out` only changes the warning's wording.
    """
    configs = {cfg.id: cfg for cfg in feature_targets}
    candidates = {cls: [r for r in rows if r.n_classes == 1] if exclusive else rows for cls, rows in matched.items()}
    needed = max(min_rows_per_class, sum(1 for r in ratios.values() if r > 0))
    incomplete = {cls: rows for cls, rows in candidates.items() if len(rows) < needed}
    if incomplete:
        sizes = {cls: len(rows) for cls, rows in incomplete.items()}
        message = (f"Class(es) {sizes} have fewer than {needed} rows, too few to split "
                   f"(min_rows_per_class={min_rows_per_class}, ratios {ratios}); add text or lower "
                   f"min_rows_per_class")
        if raise_on_incomplete_classes:
            raise DataError(message)
        logger.warning("%s. They are left out%s.", message, " and saved separately" if saving_left_out else "")
    complete = [cls for cls in configs if cls not in incomplete]
    if not complete or len(complete) < min_classes:
        raise DataError(f"No {'pair of ' if min_classes == 2 else ''}classes left with enough rows to split: "
                        f"{ {c: len(r) for c, r in candidates.items()} }; add text or lower "
                        f"min_rows_per_class={min_rows_per_class}")
    sizes = class_sizes({c: len(candidates[c]) for c in complete}, {c: configs[c].weight for c in complete},
                        max_size_per_class, balance)
    chosen = {cls: choose_rows(candidates[cls], sizes[cls], balance_targets, rng("class", cls)) for cls in complete}
    return Selection(chosen, {cls: split_labels(len(rows), ratios) for cls, rows in chosen.items()}, incomplete)
