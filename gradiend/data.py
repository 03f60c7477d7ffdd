"""User data → validated unified rows → single-class batches.

Unified rows (one DataFrame) have the columns of `UNIFIED_COLUMNS`:
`masked` (text with the mask placeholder), `split` (train/validation/test), `factual_class`,
`alternative_class`, `factual` (token that fills the slot), `alternative` (token of the other
class) and `label` (+1 for pair[0]→pair[1], −1 for pair[1]→pair[0], 0 otherwise).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from gradiend.data_sources import SPLIT_ALIASES, DataError, read_table, resolve_table_input

if TYPE_CHECKING:
    from gradiend.objectives import LMObjective

logger = logging.getLogger(__name__)

__all__ = ["MASK", "SPLITS", "SUITE_HINT", "UNIFIED_COLUMNS", "Batch", "BatchSchedule", "DataError",
           "NeutralSchedule", "UnifiedData", "cap_per_class", "check_merge_map", "data_classes", "mask_random_word",
           "match_case", "neutral_rows", "prepare_rows", "read_table", "require_split", "rows_with_context", "unify",
           "unify_classes"]

MASK = "[MASK]"
SPLITS = ("train", "validation", "test")
UNIFIED_COLUMNS = ["masked", "split", "factual_class", "alternative_class", "factual", "alternative", "label"]
MERGED_REQUIRED = ("masked", "split", "label_class", "label")


def _missing_columns_error(where: str, missing: Sequence[str], present: Sequence[str]) -> DataError:
    return DataError(
        f"{where} is missing required column(s) {list(missing)}; it has {list(present)}. "
        f"Rename your columns (e.g. df.rename(columns={{'old': 'new'}})) or see the data format "
        f"in the README.")


def _normalize_split(series: pd.Series) -> pd.Series:
    values = series.astype(str).str.strip().str.lower().replace(SPLIT_ALIASES)
    bad = sorted(set(values) - set(SPLITS))
    if bad:
        raise DataError(f"Unknown split name(s) {bad}; use {list(SPLITS)} (aliases: {SPLIT_ALIASES})")
    return values


def _check_text_column(df: pd.DataFrame, column: str, where: str, mask: str = MASK) -> None:
    if df[column].isna().any():
        raise DataError(f"{where}: column {column!r} has {int(df[column].isna().sum())} missing values")
    lacking = ~df[column].astype(str).str.contains(mask, regex=False)
    if lacking.any():
        example = df.loc[lacking, column].iloc[0]
        raise DataError(f"{where}: {int(lacking.sum())} row(s) of {column!r} contain no {mask} "
                        f"placeholder, e.g. {example!r}. Mark the target slot with {mask}.")


def _sample_alternatives(factual: pd.Series, other_tokens: Counter, rng: np.random.Generator) -> list[str]:
    """Draw an alternative per row from the other class's token distribution, copying the casing.

    When the classes share a word (merged classes, `der` as masculine and feminine), a row never
    draws its own word as long as the other class has another one (it would teach nothing).
    """
    tokens = sorted(other_tokens)
    weights = np.array([other_tokens[t] for t in tokens], dtype=float)
    lowered = [str(w).lower() for w in factual]
    shared = {w for w in lowered if w in other_tokens}
    if not shared or len(tokens) == 1:
        drawn = rng.choice(len(tokens), size=len(factual), p=weights / weights.sum())
        return [match_case(tokens[i], word) for i, word in zip(drawn, factual, strict=True)]
    out = [""] * len(lowered)
    for word in sorted(set(lowered)):
        rows = [i for i, w in enumerate(lowered) if w == word]
        w = np.where(np.array(tokens) == word, 0.0, weights) if word in shared else weights
        drawn = rng.choice(len(tokens), size=len(rows), p=w / w.sum())
        for i, d in zip(rows, drawn, strict=True):
            out[i] = match_case(tokens[d], str(factual.iloc[i]))
    return out


def match_case(token: str, like: str) -> str:
    """Give `token` the casing pattern of `like` ("He" → "They", "HE" → "THEY")."""
    if like.isupper() and len(like) > 1:
        return token.upper()
    if like[:1].isupper():
        return token[:1].upper() + token[1:]
    return token.lower()


def _token_counter(tokens: pd.Series) -> Counter:
    return Counter(str(t).lower() for t in tokens)


def _str_column(values: Any) -> pd.Series:
    """Strings, with missing values (None/NaN) as ''."""
    series = pd.Series(values)
    return series.where(series.notna(), "").astype(str).reset_index(drop=True)


SUITE_HINT = ("a GRADIEND learns one pair of classes. For more classes train one GRADIEND per pair with a suite "
              "(gradiend.suites.SymmetricSuite: every pair; PositiveSuite: each class against the rest; "
              "GradiendCollection: pairs you list), or merge classes into two groups with "
              "class_merge_map={'A': [...], 'B': [...]}")


@dataclass(frozen=True)
class UnifiedData:
    """Validated data of one GRADIEND.

    `rows`: the pair's transitions (label +1 for pair[0]→pair[1], −1 back), what training uses;
    `other_rows`: rows whose factual class is another class of `all_classes` (label 0), for
    evaluations with `include_other_classes`; `all_classes`: every class kept, pair included.
    """

    rows: pd.DataFrame
    pair: tuple[str, str]
    other_rows: pd.DataFrame
    all_classes: tuple[str, ...]
    raw_class: pd.Series = field(default_factory=lambda: pd.Series(dtype=str), repr=False)

    def class_rows(self) -> pd.DataFrame:
        """`rows` then `other_rows`, with `raw_class`: each row's class before `class_merge_map`."""
        both = pd.concat([self.rows, self.other_rows], ignore_index=True)
        both["raw_class"] = self.raw_class.to_numpy() if len(self.raw_class) == len(both) else both["factual_class"]
        return both


def _from_merged(df: pd.DataFrame) -> pd.DataFrame:
    """Merged-format rows as unified rows whose alternative may still be empty."""
    missing = [c for c in MERGED_REQUIRED if c not in df.columns]
    if missing:
        raise _missing_columns_error("Training data", missing, list(df.columns))
    has_alt = "alternative" in df.columns
    if has_alt != ("alternative_class" in df.columns):
        raise DataError("Training data must have both 'alternative' and 'alternative_class' columns or neither")
    return pd.DataFrame({
        "masked": _str_column(df["masked"]),
        "split": df["split"].reset_index(drop=True),
        "factual_class": _str_column(df["label_class"]),
        "factual": _str_column(df["label"]),
        "alternative_class": _str_column(df["alternative_class"]) if has_alt else "",
        "alternative": _str_column(df["alternative"]) if has_alt else "",
    })


def _complete_alternatives(rows: pd.DataFrame, pair: Sequence[str], seed: int | None,
                           groups: Sequence[frozenset[str]] | None = None) -> pd.DataFrame:
    """Pair rows without an alternative token get one drawn from the other pair class's tokens (with
    transition `groups`: from the other class's rows whose class before merging is in the row's group)."""
    rows = rows.copy()
    need = rows["alternative"].str.strip() == ""
    if not need.any():
        return rows
    rng = np.random.default_rng(seed)
    for cls, other in ((pair[0], pair[1]), (pair[1], pair[0])):
        for group in groups or [None]:
            within = np.ones(len(rows), dtype=bool) if group is None else rows["raw_class"].isin(group).to_numpy()
            todo = need & (rows["factual_class"] == cls) & within
            other_tokens = _token_counter(rows.loc[(rows["factual_class"] == other) & within, "factual"])
            if todo.any() and other_tokens:
                rows.loc[todo, "alternative_class"] = other
                rows.loc[todo, "alternative"] = _sample_alternatives(rows.loc[todo, "factual"], other_tokens, rng)
    return rows


def _class_frame(df: pd.DataFrame, cls: str) -> tuple[pd.DataFrame, str]:
    """Check one per-class table; return it and the name of its token column."""
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"data[{cls!r}] must be a pandas DataFrame or a datasets.Dataset, got {type(df).__name__}")
    if "masked" not in df.columns:
        raise _missing_columns_error(f"Data of class {cls!r}", ["masked"], list(df.columns))
    token_col = next((c for c in (cls, "label", "token") if c in df.columns), None)
    if token_col is None:
        raise _missing_columns_error(f"Data of class {cls!r}", [f"{cls!r} (or 'label'/'token')"], list(df.columns))
    return df, token_col


def _from_per_class(data: Mapping[str, pd.DataFrame], pair: Sequence[str] | None) -> pd.DataFrame:
    """Per-class tables; a column named after another class gives that row's alternative of that class.

    A pair class uses only its partner's column; another class gives one row per other-class column
    (empty cells skipped), or one row without alternative when it has no such column.
    """
    if not data:
        raise DataError("Training data is empty: the dict of per-class DataFrames has no entries")
    known = list(dict.fromkeys([*(str(k) for k in data), *(pair or [])]))
    frames = []
    for key, raw in data.items():
        cls = str(key)
        df, token_col = _class_frame(raw, cls)
        base = {"masked": _str_column(df["masked"]),
                "split": df["split"].reset_index(drop=True) if "split" in df.columns else "train",
                "label_class": cls, "label": _str_column(df[token_col])}
        in_pair = pair is not None and cls in pair
        candidates = [c for c in (pair if in_pair else known) if c != cls and c in df.columns]
        partners = candidates[:1] if in_pair else candidates
        if not partners:
            frames.append(pd.DataFrame({**base, "alternative_class": "", "alternative": ""}))
        for other in partners:
            frame = pd.DataFrame({**base, "alternative_class": other, "alternative": _str_column(df[other])})
            frames.append(frame if in_pair else frame[frame["alternative"].str.strip() != ""])
    merged = pd.concat(frames, ignore_index=True)
    merged.loc[merged["alternative"].str.strip() == "", "alternative_class"] = ""
    return _from_merged(merged)


def check_merge_map(class_merge_map: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]] | None:
    """A validated class_merge_map: merged name → the data's class names it groups (each in one group)."""
    if class_merge_map is None:
        return None
    example = "e.g. class_merge_map={'singular': ['1SG', '3SG'], 'plural': ['1PL', '3PL']}"
    if not isinstance(class_merge_map, Mapping) or not class_merge_map:
        raise DataError(f"class_merge_map must be a non-empty dict merged class → list of classes, {example}; "
                        f"got {class_merge_map!r}")
    out: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for merged, bases in class_merge_map.items():
        if isinstance(bases, str) or not isinstance(bases, Iterable) or not list(bases):
            raise DataError(f"class_merge_map[{merged!r}] must be a non-empty list of class names, {example}; "
                            f"got {bases!r}")
        out[str(merged)] = [str(b) for b in bases]
        for base in out[str(merged)]:
            if base in seen and seen[base] != str(merged):
                raise DataError(f"class_merge_map puts class {base!r} into both {seen[base]!r} and {merged!r}; "
                                f"each class may belong to one merged class")
            seen[base] = str(merged)
    return out


def check_transition_groups(groups: Any, merge: Mapping[str, Sequence[str]] | None) -> list[frozenset[str]] | None:
    """Validated `class_merge_transition_groups`: clusters of classes (before merging) whose rows may pair."""
    if groups is None:
        return None
    example = "e.g. class_merge_transition_groups=[['1SG', '1PL'], ['3SG', '3PL']]"
    if merge is None:
        raise DataError(f"class_merge_transition_groups limits which merged classes pair with each other; it needs "
                        f"class_merge_map= too ({example})")
    if isinstance(groups, str) or not isinstance(groups, Iterable):
        raise DataError(f"class_merge_transition_groups must be a list of lists of class names, {example}; got "
                        f"{groups!r}")
    clusters: list[frozenset[str]] = []
    for group in groups:
        if isinstance(group, str) or not isinstance(group, Iterable) or len(names := [str(c) for c in group]) < 2:
            raise DataError(f"Each class_merge_transition_groups entry must list at least two classes, {example}; "
                            f"got {group!r}")
        twice = sorted(set(names) & set().union(*clusters)) if clusters else []
        if twice:
            raise DataError(f"class_merge_transition_groups puts {twice} into two groups; each class may be in one")
        clusters.append(frozenset(names))
    unknown = sorted(set().union(*clusters) - {b for bases in merge.values() for b in bases})
    if unknown:
        raise DataError(f"class_merge_transition_groups names {unknown}, which class_merge_map does not merge")
    return clusters


def _within_groups(raw: pd.DataFrame, groups: Sequence[frozenset[str]], merge: Mapping[str, Sequence[str]]
                   ) -> pd.Series:
    """Which rows (before merging) stay: rows of merged classes pair only within their transition group, so an
    explicit alternative of another group (or of a class outside every group) goes, as does a row whose class
    is in no group. Drops are logged."""
    bases = {b for names in merge.values() for b in names}
    group_of = {c: i for i, group in enumerate(groups) for c in group}
    factual = raw["factual_class"].map(group_of)
    merged = raw["factual_class"].isin(bases)
    explicit = raw["alternative_class"] != ""
    same = factual.notna() & (factual == raw["alternative_class"].map(group_of))
    keep = ~merged | (explicit & same) | (~explicit & factual.notna())
    if not keep.all():
        counts = (raw.loc[~keep, "factual_class"] + "→" + raw.loc[~keep, "alternative_class"].replace("", "?")
                  ).value_counts().sort_index().to_dict()
        logger.info("class_merge_transition_groups: dropped %d row(s) outside their group: %s", int((~keep).sum()),
                    counts)
    return keep


def _check_target_classes(target_classes: Sequence[str] | None,
                          merge: Mapping[str, Sequence[str]] | None) -> list[str] | None:
    if target_classes is None:
        return list(merge) if merge is not None and len(merge) == 2 else None
    if isinstance(target_classes, str) or not isinstance(target_classes, Iterable):
        raise DataError(f"target_classes must name exactly two classes, e.g. ['3SG', '3PL'], got {target_classes!r}")
    classes = [str(c) for c in target_classes]
    if len(classes) != 2:
        hint = SUITE_HINT if len(classes) > 2 else "name the pair, e.g. target_classes=['3SG', '3PL']"
        raise DataError(f"target_classes must name exactly two classes, got {list(target_classes)!r}: {hint}")
    return classes


def _merge_classes(raw: pd.DataFrame, merge: Mapping[str, Sequence[str]] | None) -> pd.DataFrame:
    """Rename classes by `merge`; rows whose explicit alternative falls into their own merged class go."""
    if merge is None:
        return raw
    base_to = {base: name for name, bases in merge.items() for base in bases}
    present = set(raw["factual_class"])
    unknown = sorted(set(base_to) - present)
    if unknown:
        raise DataError(f"class_merge_map names class(es) {unknown} that are not in the data; its classes are "
                        f"{sorted(present)}")
    out = raw.copy()
    out["factual_class"] = raw["factual_class"].map(lambda c: base_to.get(c, c))
    out["alternative_class"] = raw["alternative_class"].map(lambda c: base_to.get(c, c))
    collapsed = (raw["alternative_class"] != "") & (out["factual_class"] == out["alternative_class"])
    if collapsed.any():
        logger.info("class_merge_map: dropped %d row(s) whose alternative belongs to the same merged class",
                    int(collapsed.sum()))
    logger.info("class_merge_map merged classes %s", {k: list(v) for k, v in merge.items()})
    return out[~collapsed]


def _restrict_classes(raw: pd.DataFrame, all_classes: Sequence[str] | None) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Rows of `all_classes` only (default: every class in the data, sorted); drops are logged."""
    present = sorted(set(raw["factual_class"]))
    if all_classes is None:
        return raw, tuple(present)
    if isinstance(all_classes, str) or not isinstance(all_classes, Iterable):
        raise DataError(f"all_classes must be a list of class names, got {all_classes!r}")
    classes = tuple(dict.fromkeys(str(c) for c in all_classes))
    unknown = [c for c in classes if c not in present]
    if unknown or len(classes) < 2:
        raise DataError(f"all_classes {list(classes)} must name at least two classes of the data; "
                        f"{unknown or 'too few'} (the data has {present})")
    drop = ~raw["factual_class"].isin(classes)
    if drop.any():
        counts = raw.loc[drop, "factual_class"].value_counts().sort_index().to_dict()
        logger.info("Dropped %d row(s) of classes outside all_classes: %s", int(drop.sum()), counts)
    return raw[~drop], classes


def _pair_rows(part: pd.DataFrame, pair: tuple[str, str], seed: int | None,
               groups: Sequence[frozenset[str]] | None = None) -> pd.DataFrame:
    """The pair's transitions with labels ±1; rows of a pair class toward a third class are logged and left out."""
    rows = _complete_alternatives(part, pair, seed, groups)
    keep = rows["alternative_class"].isin(pair) & (rows["factual_class"] != rows["alternative_class"])
    if not keep.all():
        counts = (rows.loc[~keep, "factual_class"] + "→" + rows.loc[~keep, "alternative_class"].replace("", "?")
                  ).value_counts().sort_index().to_dict()
        logger.info("Left out %d row(s) of %s whose alternative is not the other pair class: %s",
                    int((~keep).sum()), list(pair), counts)
    rows = rows[keep].copy()
    for cls in pair:
        if not (rows["factual_class"] == cls).any():
            raise DataError(f"Class {cls!r} has no rows paired with the other target class")
    rows["label"] = np.where(rows["factual_class"] == pair[0], 1, -1)
    return rows


def _other_rows(part: pd.DataFrame, pair_rows: pd.DataFrame, pair: tuple[str, str], classes: Sequence[str],
                seed: int | None) -> pd.DataFrame:
    """Rows of the classes outside the pair, label 0 (evaluation only).

    A row with an alternative of another class of `classes` keeps it; a row without one becomes two
    rows, toward each pair class, with the alternative drawn from that class's tokens (seeded).
    """
    if part.empty:
        return pd.DataFrame(columns=UNIFIED_COLUMNS)
    explicit = part["alternative"].str.strip() != ""
    given = part[explicit & part["alternative_class"].isin(classes)
                 & (part["alternative_class"] != part["factual_class"])]
    need = part[~explicit]
    rng = np.random.default_rng(None if seed is None else [seed, 1])
    sampled = []
    for target in pair:
        tokens = _token_counter(pair_rows.loc[pair_rows["factual_class"] == target, "factual"])
        if not need.empty:
            sampled.append(need.assign(alternative_class=target,
                                       alternative=_sample_alternatives(need["factual"], tokens, rng)))
    other = pd.concat([given, *sampled]).sort_index(kind="stable")
    other["label"] = 0
    return other


def _validate_rows(rows: pd.DataFrame, mask: str) -> pd.DataFrame:
    rows = rows.copy()
    rows["split"] = _normalize_split(rows["split"])
    _check_text_column(rows, "masked", "Training data", mask)
    if (rows["factual"].str.strip() == "").any():
        raise DataError("Training data has rows with an empty target token ('label' column)")
    return rows


def unify_classes(data: Any, target_classes: Sequence[str] | None = None, *,
                  all_classes: Sequence[str] | None = None,
                  class_merge_map: Mapping[str, Sequence[str]] | None = None,
                  seed: int | None = 0, mask: str = MASK,
                  transition_groups: Sequence[Sequence[str]] | None = None) -> UnifiedData:
    """Validate user data: the pair's training rows, the other classes' rows and every class.

    `class_merge_map` renames classes first (`{"masc": ["der_nom", "den_acc"], ...}`; with two
    merged classes they are the default pair); `all_classes` then keeps only those classes
    (default: all). Rows of other classes are kept as `other_rows` (label 0), never trained on.
    `transition_groups` (the reference's `class_merge_transition_groups`, e.g. `[["1SG", "1PL"],
    ["3SG", "3PL"]]`) lets merged classes pair only within a group: 1SG↔1PL and 3SG↔3PL, never 1SG↔3PL.
    Accepts every input `unify` does.
    """
    merge = check_merge_map(class_merge_map)
    groups = check_transition_groups(transition_groups, merge)
    target = _check_target_classes(target_classes, merge)
    data = resolve_table_input(data, "Training data")
    if isinstance(data, Mapping):
        if target is None and merge is None and len(data) == 2:
            target = [str(k) for k in data]
        raw = _from_per_class(data, target if merge is None else None)
    else:
        raw = _from_merged(data)
    if target is not None and all_classes is not None and not isinstance(all_classes, str):
        unknown = [c for c in target if c not in {str(a) for a in all_classes}]
        if unknown:
            raise DataError(f"target_classes {unknown} are not in all_classes {list(all_classes)}; add them")
    raw = raw.assign(raw_class=raw["factual_class"])
    merged = _merge_classes(raw, merge)
    if groups is not None:  # after the merge map's own checks, on the classes before merging
        merged = merged[_within_groups(raw, groups, merge).loc[merged.index]]
    raw, classes = _restrict_classes(merged, all_classes)
    if raw.empty:
        raise DataError("Training data is empty: no rows left after reading it")
    pair = _resolve_pair(sorted(set(raw["factual_class"])), target)
    in_pair = raw["factual_class"].isin(pair)
    rows = _pair_rows(_validate_rows(raw[in_pair], mask), pair, seed, groups)
    if (rows["alternative"].str.strip() == "").any():
        raise DataError("Some rows have no alternative token; the other class has no tokens to sample from")
    other = _other_rows(_validate_rows(raw[~in_pair], mask), rows, pair, classes, seed)
    if len(other):
        logger.info("Rows of other classes (label 0, evaluation only): %s",
                    other["factual_class"].value_counts().sort_index().to_dict())
    raw_class = pd.concat([rows["raw_class"], other["raw_class"] if len(other) else pd.Series(dtype=str)],
                          ignore_index=True).astype(str)
    return UnifiedData(rows[UNIFIED_COLUMNS].reset_index(drop=True), pair,
                       other[UNIFIED_COLUMNS].reset_index(drop=True), classes, raw_class)


def data_classes(data: Any, *, class_merge_map: Mapping[str, Sequence[str]] | None = None,
                 all_classes: Sequence[str] | None = None) -> tuple[str, ...]:
    """The classes of `data` (after `class_merge_map`, restricted to `all_classes`), sorted unless
    `all_classes` gives the order; reads any input `unify` accepts."""
    data = resolve_table_input(data, "Training data")
    raw = _from_per_class(data, None) if isinstance(data, Mapping) else _from_merged(data)
    return _restrict_classes(_merge_classes(raw, check_merge_map(class_merge_map)), all_classes)[1]


def unify(
    data: Any,
    target_classes: Sequence[str] | None = None,
    seed: int | None = 0,
    mask: str = MASK,
    *,
    all_classes: Sequence[str] | None = None,
    class_merge_map: Mapping[str, Sequence[str]] | None = None,
) -> tuple[pd.DataFrame, tuple[str, str]]:
    """Validate user data and return (unified rows, (class A, class B)).

    Accepts the merged format (`masked, split, label_class, label[, alternative,
    alternative_class]`), a dict class → DataFrame (`masked`, optional `split`, token column
    named after the class or `label`; a column named after another class holds that row's
    alternative), a `datasets.Dataset`/`DatasetDict`, a file or directory path, or a Hugging
    Face dataset id (see `gradiend.data_sources.resolve_table_input`). Rows of other classes are
    not part of the result (see `unify_classes` for them).
    """
    unified = unify_classes(data, target_classes, all_classes=all_classes, class_merge_map=class_merge_map,
                            seed=seed, mask=mask)
    return unified.rows, unified.pair


def _resolve_pair(classes: Sequence[str], target_classes: Sequence[str] | None) -> tuple[str, str]:
    if target_classes is None:  # merged data: the pair in sorted order
        if len(classes) != 2:
            raise DataError(f"The data has classes {list(classes)}; a GRADIEND learns exactly two classes: pass "
                            f"target_classes=[A, B] to pick the pair, or see gradiend.suites for more")
        return classes[0], classes[1]
    unknown = [c for c in target_classes if c not in classes]
    if unknown:
        raise DataError(f"target_classes {unknown} not found in the data; its classes are {list(classes)}")
    if target_classes[0] == target_classes[1]:
        raise DataError(f"target_classes must be two different classes, got {target_classes!r}")
    return str(target_classes[0]), str(target_classes[1])


def require_split(rows: pd.DataFrame, split: str, pair: Sequence[str], purpose: str) -> pd.DataFrame:
    """Rows of `split`; error if a target class has none there."""
    part = rows[rows["split"] == split]
    for cls in pair:
        if not (part["factual_class"] == cls).any():
            counts = rows.groupby(["split", "factual_class"]).size().to_dict()
            raise DataError(f"Class {cls!r} has no rows in split {split!r}, needed for {purpose}. "
                            f"Rows per (split, class): {counts}. Add rows or change the split column.")
    return part


def rows_with_context(rows: pd.DataFrame, objective: LMObjective, purpose: str) -> pd.DataFrame:
    """`rows` the objective can score: causal LMs drop rows with too little text left of the slot.

    Logs how many rows were dropped; a factual class losing all its rows is an error.
    """
    if rows.empty:
        return rows
    keep = np.array([objective.has_context(str(t)) for t in rows["masked"]], dtype=bool)
    if keep.all():
        return rows
    logger.warning("Dropped %d of %d %s rows without enough context before the slot (%s)",
                   int((~keep).sum()), len(rows), purpose, objective.context_requirement)
    for cls in rows["factual_class"].unique():
        if not keep[(rows["factual_class"] == cls).to_numpy()].any():
            raise DataError(f"All rows of class {cls!r} for {purpose} lack context before {objective.mask}: "
                            f"{objective.context_requirement}. Use rows with more left context.")
    return rows[keep]


def prepare_rows(rows: pd.DataFrame, split: str, pair: Sequence[str], objective: LMObjective, purpose: str,
                 max_size: int | None = None, seed: int | None = None) -> pd.DataFrame:
    """The rows of `split` that `objective` can score, at most `max_size` per class (seeded).

    Errors name the class that has no rows (before or after the context filter) and the fix.
    """
    part = rows_with_context(require_split(rows, split, pair, purpose), objective, purpose)
    return cap_per_class(part, max_size, seed)


def cap_per_class(rows: pd.DataFrame, max_size: int | None, seed: int | None) -> pd.DataFrame:
    """At most `max_size` rows per factual class (seeded sample, original order kept)."""
    if max_size is None:
        return rows
    parts = [g.sample(n=min(max_size, len(g)), random_state=seed).sort_index()
             for _, g in rows.groupby("factual_class", sort=True)]
    return pd.concat(parts) if parts else rows


@dataclass(frozen=True)
class Batch:
    """A single-class batch of unified rows (positional indices into the rows frame)."""

    indices: tuple[int, ...]
    label: int


class BatchSchedule:
    """Single-class batches served round-robin over the two transitions.

    Everything is drawn from `seed` (the *data* seed): which rows form each batch (once) and the
    order of each class's batches (reshuffled every epoch). Runs that differ only in their model
    seed therefore see the same batches in the same order, so every batch's gradients can be
    cached and reused across epochs and seeds (the base model is frozen). The smaller class wraps
    around so both are seen equally often. One epoch = 2 × (batches of the larger class).
    """

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int | None = 0) -> None:
        labels = np.asarray(labels)
        groups = [np.flatnonzero(labels == value) for value in (1, -1)]
        if any(len(g) == 0 for g in groups):
            raise DataError("Both target classes need training rows to form batches")
        self.batch_size = batch_size
        self.seed = seed
        rng = self._rng(0)
        self.batches = []
        for group, label in zip(groups, (1, -1), strict=True):
            order = rng.permutation(group)
            self.batches.append([Batch(tuple(int(i) for i in order[s:s + batch_size]), label)
                                 for s in range(0, len(order), batch_size)])

    def _rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng(None if self.seed is None else (self.seed, stream))

    def batches_per_epoch(self) -> int:
        return 2 * max(len(g) for g in self.batches)

    def epoch(self, epoch: int) -> list[Batch]:
        rng = self._rng(1 + epoch)
        per_group = [[group[i] for i in rng.permutation(len(group))] for group in self.batches]
        n = max(len(g) for g in per_group)
        out = []
        for i in range(n):
            for group in per_group:
                out.append(group[i % len(group)])
        return out

    def iterate(self, total_steps: int) -> Iterator[tuple[int, Batch]]:
        """Yield (epoch, batch) for `total_steps` steps."""
        step, epoch = 0, 0
        while step < total_steps:
            for batch in self.epoch(epoch):
                if step >= total_steps:
                    return
                yield epoch, batch
                step += 1
            epoch += 1


# evaluation batches hold at most this many padded tokens per allowed row (batch_size rows)
TOKENS_PER_ROW = 16


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices grouped for evaluation passes: sorted by token length, so each batch pads to
    nearly its own rows' length, with at most `batch_size` rows and `TOKENS_PER_ROW·batch_size`
    padded tokens (always at least one row).

    Sentences vary in length: one batch of 30 test sentences (25 tokens on average, longest 53)
    padded to the longest costs 2.1x the real tokens; sorted batches cost about 1.2x.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    budget = TOKENS_PER_ROW * batch_size
    batches: list[np.ndarray] = []
    current: list[int] = []
    for i in np.argsort(np.asarray(lengths), kind="stable").tolist():
        if current and (len(current) >= batch_size or (len(current) + 1) * lengths[i] > budget):
            batches.append(np.asarray(current))
            current = []
        current.append(i)
    if current:
        batches.append(np.asarray(current))
    return batches



_WORD = re.compile(r"[A-Za-z]{2,}")


def mask_random_word(texts: Iterable[str], excluded: set[str], rng: np.random.Generator,
                     mask: str = MASK, usable: Callable[[str], bool] | None = None,
                     context_ok: Callable[[str], bool] | None = None) -> pd.DataFrame:
    """Mask one random word per text (≥ 2 letters, not in `excluded`, `usable` by the tokenizer,
    and, if given, `context_ok` for the masked text, e.g. enough left context for a causal LM).

    Texts without such a word are dropped. Returns columns `masked` and `factual` (the word).
    """
    out = []
    for text in texts:
        spans = [m for m in _WORD.finditer(text)
                 if m.group().lower() not in excluded and (usable is None or usable(m.group()))
                 and (context_ok is None or context_ok(text[:m.start()] + mask))]
        if not spans:
            continue
        m = spans[int(rng.integers(len(spans)))]
        out.append({"masked": text[:m.start()] + mask + text[m.end():], "factual": m.group()})
    return pd.DataFrame(out, columns=["masked", "factual"])


def neutral_rows(rows: pd.DataFrame, objective: LMObjective, seed: int | None = 0,
                 excluded_words: Iterable[str] = ()) -> pd.DataFrame:
    """Feature-free training rows from `rows`: each text with its slot filled by the factual word
    and another word masked (never a target word of `rows` or `excluded_words`).

    Their factual and alternative token are the same word, so the target gradient difference is
    exactly 0 and the row teaches "no feature here" → h = 0. Built from the training split only, so
    the neutral variants of the encoder evaluation (test split, neutral corpus) stay unseen.
    Columns as unified rows, with `factual_class` "neutral" and `label` 0.
    """
    excluded = {w.lower() for w in excluded_words} | {t.lower() for t in rows["factual"]} | {
        t.lower() for t in rows["alternative"]}
    filled = [str(t).replace(objective.mask, str(f)) for t, f in zip(rows["masked"], rows["factual"], strict=True)]
    picked = mask_random_word(filled, excluded, np.random.default_rng(seed), objective.mask, objective.is_known,
                              objective.has_context)
    if picked.empty:
        raise DataError("No neutral training rows: no text has a word besides the target words that the model's "
                        "tokenizer knows; turn neutral training off or use longer texts")
    return pd.DataFrame({"masked": picked["masked"], "split": "train", "factual_class": "neutral",
                         "alternative_class": "neutral", "factual": picked["factual"],
                         "alternative": picked["factual"], "label": 0})[UNIFIED_COLUMNS]


class NeutralSchedule:
    """Batches of neutral rows for the training steps: a seeded permutation, reshuffled every pass."""

    def __init__(self, n_rows: int, batch_size: int, seed: int | None = 0) -> None:
        if n_rows <= 0:
            raise DataError("NeutralSchedule needs at least one neutral row")
        self.n_rows = n_rows
        self.batch_size = min(batch_size, n_rows)
        self.rng = np.random.default_rng(None if seed is None else (seed, 2**16))
        self._order: list[int] = []

    def next(self) -> tuple[int, ...]:
        """The next batch's row indices (sorted, so equal batches give equal cache keys)."""
        if len(self._order) < self.batch_size:
            self._order = [int(i) for i in self.rng.permutation(self.n_rows)]
        batch, self._order = self._order[:self.batch_size], self._order[self.batch_size:]
        return tuple(sorted(batch))
