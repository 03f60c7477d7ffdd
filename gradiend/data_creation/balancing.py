"""Class sizes, balancing and train/validation/test splits of the matched rows (deterministic
given the random generators passed in)."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
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


def check_balance(balance: object) -> str:
    """The balancing mode: "off" (False), "try" (True or "try") or "strict"."""
    if balance is False:
        return "off"
    if balance is True or balance == "try":
        return "try"
    if balance == "strict":
        return "strict"
    raise DataError(f"balance must be 'try' (default; same as True), 'strict' or False, got {balance!r}")


def _by_word(rows: list[Row], rng: np.random.Generator) -> dict[str, list[Row]]:
    """Rows grouped by lower-cased label, each group in a seeded random order (groups sorted by word)."""
    groups: dict[str, list[Row]] = {}
    for i in rng.permutation(len(rows)):
        groups.setdefault(rows[i].label.lower(), []).append(rows[i])
    return dict(sorted(groups.items()))


def _strict_quota(cls: str, groups: Mapping[str, list[Row]], cap: int | None, min_per_target: int) -> int:
    """Rows per target word of one class under strict balancing (raises when the cap makes it impossible)."""
    quota = max(min(len(g) for g in groups.values()), min_per_target)
    if cap is not None:
        quota = min(quota, cap // len(groups))
    if quota < max(1, min_per_target):
        raise DataError(f"Strict balancing is impossible for class {cls!r}: its {len(groups)} target words need "
                        f"{max(1, min_per_target)} row(s) each (min_rows_per_target_for_balance={min_per_target}), "
                        f"but max_size_per_class allows {cap} rows. Raise max_size_per_class, lower "
                        f"min_rows_per_target_for_balance or use balance='try'.")
    return quota


def strict_rows(candidates: Mapping[str, list[Row]], weights: Mapping[str, float], max_size: int | None,
                min_per_target: int, rng: RngFactory) -> dict[str, list[Row]]:
    """Every target word of a class gets the same number of rows, and the classes the same size (weighted, up to
    less than one row per word). Words with fewer rows than that are oversampled with replacement, which only
    happens when `min_per_target` exceeds the rarest word's count."""
    top = max(weights.values())
    groups = {cls: _by_word(rows, rng("class", cls)) for cls, rows in candidates.items()}
    caps = {cls: None if max_size is None else max(1, math.floor(max_size * weights[cls] / top + 1e-9))
            for cls in candidates}
    quota = {cls: _strict_quota(cls, groups[cls], caps[cls], min_per_target) for cls in candidates}
    common = min(quota[c] * len(groups[c]) * top / weights[c] for c in candidates)
    out = {}
    for cls, by_word in groups.items():
        size = math.floor(common * weights[cls] / top + 1e-9)
        per_word = _strict_quota(cls, by_word, min(size, quota[cls] * len(by_word)), min_per_target)
        draw = rng("oversample", cls)
        chosen: list[Row] = []
        for rows in by_word.values():
            chosen += rows[:per_word]
            if len(rows) < per_word:
                chosen += [rows[i] for i in draw.choice(len(rows), size=per_word - len(rows), replace=True)]
        out[cls] = chosen
    return out


def row_splits(rows: list[Row], ratios: Mapping[str, float]) -> list[str]:
    """Split names for rows in order; copies of one row (oversampling) share the first copy's split."""
    unique = list(dict.fromkeys(id(r) for r in rows))
    labels = dict(zip(unique, split_labels(len(unique), ratios), strict=True))
    return [labels[id(r)] for r in rows]


def group_splits(sizes: Mapping[Hashable, int], ratios: Mapping[str, float], rng: np.random.Generator,
                 where: str) -> dict[Hashable, str]:
    """Assign whole groups (e.g. target words) to splits so that the rows come close to the ratios; every split
    with a positive ratio gets at least one group."""
    needed = [s for s in SPLITS if ratios[s] > 0]
    if len(sizes) < len(needed):
        raise DataError(f"{where}: a split by groups needs at least {len(needed)} distinct groups (one per split "
                        f"{needed}), got {len(sizes)}: {sorted(map(str, sizes))}. Add target words, set a ratio to 0, "
                        f"or split by rows (split_by_target=False, split_group_col=None).")
    keys = list(sizes)
    keys = [keys[i] for i in rng.permutation(len(keys))]
    keys.sort(key=lambda k: -sizes[k])  # stable: equal sizes keep the seeded order
    total = sum(sizes.values())
    filled = dict.fromkeys(needed, 0)
    members: dict[str, list[Hashable]] = {s: [] for s in needed}
    for key in keys:
        split = max(needed, key=lambda s: (ratios[s] * total - filled[s], -SPLITS.index(s)))
        filled[split] += sizes[key]
        members[split].append(key)
    for split in needed:
        if not members[split]:
            donor = max(needed, key=lambda s: len(members[s]))
            members[split].append(members[donor].pop())  # the donor's smallest group
    return {key: split for split, group in members.items() for key in group}


def select_rows(matched: Mapping[str, list[Row]], feature_targets: Sequence[TextFilterConfig],
                ratios: Mapping[str, float], rng: RngFactory, *, max_size_per_class: int | None, balance: str,
                balance_targets: bool, exclusive: bool, min_rows_per_class: int, min_classes: int,
                raise_on_incomplete_classes: bool, saving_left_out: bool, min_rows_per_target_for_balance: int = 1,
                group_key: Callable[[str, Row], Hashable] | None = None, shared_groups: bool = False) -> Selection:
    """Balance and split the matched rows of every class.

    `balance` ("off", "try", "strict", see `check_balance`): "try" gives the classes the same size
    (scaled by weight) as the scarcest class allows; "strict" also gives every target word of a
    class the same number of rows. `exclusive` keeps only texts matched by one class. Classes with
    fewer than `min_rows_per_class` rows (or too few to fill every split with a positive ratio) are
    left out with a warning, or raise with `raise_on_incomplete_classes`; fewer than `min_classes`
    classes left raises. `group_key(cls, row)` keeps every group in one split (per class, or across
    classes with `shared_groups`). `saving_left_out` only changes the warning's wording.
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
    weights = {c: configs[c].weight for c in complete}
    if balance == "strict":
        chosen = strict_rows({c: candidates[c] for c in complete}, weights, max_size_per_class,
                             min_rows_per_target_for_balance, rng)
    else:
        sizes = class_sizes({c: len(candidates[c]) for c in complete}, weights, max_size_per_class, balance == "try")
        chosen = {cls: choose_rows(candidates[cls], sizes[cls], balance_targets, rng("class", cls))
                  for cls in complete}
    return Selection(chosen, _splits(chosen, ratios, rng, group_key, shared_groups), incomplete)


def _splits(chosen: Mapping[str, list[Row]], ratios: Mapping[str, float], rng: RngFactory,
            group_key: Callable[[str, Row], Hashable] | None, shared_groups: bool) -> dict[str, list[str]]:
    """Split names per class: by row, or by group (per class, or one assignment shared by all classes)."""
    if group_key is None:
        return {cls: row_splits(rows, ratios) for cls, rows in chosen.items()}
    keys = {cls: [group_key(cls, r) for r in rows] for cls, rows in chosen.items()}
    if shared_groups:
        sizes = Counter(k for ks in keys.values() for k in ks)
        assignment = group_splits(sizes, ratios, rng("groups"), "All classes")
        return {cls: [assignment[k] for k in ks] for cls, ks in keys.items()}
    out = {}
    for cls, ks in keys.items():
        assignment = group_splits(Counter(ks), ratios, rng("groups", cls), f"Class {cls!r}")
        out[cls] = [assignment[k] for k in ks]
    return out
