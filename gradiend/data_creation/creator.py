"""`TextPredictionDataCreator`: loads and preprocesses a corpus, then wires matching, balancing
and writing into training data and neutral data (all randomness derived from one seed)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from gradiend.data_creation import cache
from gradiend.data_creation.balancing import SPLITS, check_balance, check_ratios, select_rows
from gradiend.data_creation.config import (
    PairedTextFilterConfig,
    Pairing,
    SpacyTagSpec,
    TextFilterConfig,
    TextPreprocessConfig,
    check_tags,
    expand_feature_targets,
)
from gradiend.data_creation.matching import Matching, Row, match_targets, neutral_indices, nothing_matched_message
from gradiend.data_creation.preprocess import preprocess_texts
from gradiend.data_creation.tagging import annotate, load_spacy, needs_loading, require_spacy
from gradiend.data_creation.writing import (
    FORMAT_SUFFIX,
    OutputTarget,
    minimal,
    per_class_frame,
    read_training,
    resolve_output,
    sidecar,
    unified,
    write_training,
)
from gradiend.data_sources import DataError, load_texts

logger = logging.getLogger(__name__)

TrainingFormat = Literal["per_class", "minimal", "unified"]
OutputFormat = Literal["csv", "parquet", "hf"]
Balance = bool | Literal["try", "strict"]
SplitGroupKey = Callable[[str], Any] | Sequence[Callable[[str], Any]] | None
#: the columns of the generated rows a split can be grouped by (besides a class-named column = label)
GROUP_COLUMNS = ("label", "text", "masked")


def _positive_int_or_none(value: Any, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DataError(f"{name} must be a positive int or None, got {value!r}")


def _check_choice(value: Any, name: str, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise DataError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_split_groups(split_group_col: Any, split_group_key: Any, split_by_target: Any) -> None:
    if split_group_col is not None and (not isinstance(split_group_col, str) or not split_group_col):
        raise DataError(f"split_group_col must be a column name such as 'label', got {split_group_col!r}")
    keys = [split_group_key] if callable(split_group_key) else split_group_key
    if keys is not None and (isinstance(keys, str) or not isinstance(keys, Sequence)
                             or not all(callable(k) for k in keys)):
        raise DataError(f"split_group_key must be a function or a list of functions applied to the group value, "
                        f"e.g. [str.strip, str.casefold]; got {split_group_key!r}")
    if split_by_target is not None and not isinstance(split_by_target, bool):
        raise DataError(f"split_by_target must be True or False, got {split_by_target!r}")
    if split_by_target and split_group_col is not None:
        raise DataError("split_by_target and split_group_col are alternatives (split_by_target groups by the target "
                        "word); pass only one of them")


class TextPredictionDataCreator:
    """Mine masked training rows and neutral sentences from a text corpus.

    `base_data`: a list of str, a pandas DataFrame/Series, a CSV/TSV/parquet file (column
    `text_column`) or .txt file (one text per line), a `datasets.Dataset`/`DatasetDict`
    (`split`), or a Hugging Face dataset id (`hf_config`, `split`). Entries that are not strings,
    NaN or blank are skipped and counted (`stats["skipped_texts"]`). `base_max_size` keeps a
    seeded random subset. `preprocess` splits and filters texts (see `TextPreprocessConfig`);
    identical texts are kept once (`deduplicate`). `feature_targets`: one `TextFilterConfig` per
    class, or `PairedTextFilterConfig` groups (explicit alternatives). `min_left_context_words`
    (default 10, as the reference) is the number of words required before a class's first match:
    causal LMs need the left context; 0 keeps sentence-initial targets. Everything random follows `seed`.

    Files: with `output_dir`, generated data is also written there as `<training_basename>` /
    `<neutral_basename>` + the `output_format` suffix ("csv" default, "parquet", or "hf": a saved
    dataset directory) unless a call passes `output=`. `use_cache=True` reuses such a file when it
    was written by the same settings from the same corpus (and then the corpus is not even loaded).
    `split_group_col` / `split_group_key` / `split_by_target` keep groups of rows (e.g. every
    target word) in one split, so validation and test hold unseen words.
    """

    def __init__(self, base_data: Any, feature_targets: Sequence[TextFilterConfig | PairedTextFilterConfig], *,
                 text_column: str = "text", split: str = "train", hf_config: str | None = None,
                 trust_remote_code: bool | None = None, base_max_size: int | None = None,
                 preprocess: TextPreprocessConfig | None = None, spacy_model: Any = None,
                 min_left_context_words: int = 10, deduplicate: bool = True, seed: int | None = 42,
                 show_progress: bool = True, spacy_batch_size: int = 256, output_dir: str | os.PathLike | None = None,
                 training_basename: str = "training", neutral_basename: str = "neutral",
                 output_format: OutputFormat | None = None, use_cache: bool = False,
                 split_group_col: str | None = None, split_group_key: SplitGroupKey = None,
                 split_by_target: bool = False) -> None:
        self.feature_targets, self.pairing = expand_feature_targets(feature_targets)
        if isinstance(min_left_context_words, bool) or not isinstance(min_left_context_words, int) or (
                min_left_context_words < 0):
            raise DataError(f"min_left_context_words must be an int >= 0, got {min_left_context_words!r}")
        _positive_int_or_none(base_max_size, "base_max_size")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise DataError(f"seed must be an int >= 0 or None, got {seed!r}")
        if preprocess is not None and not isinstance(preprocess, TextPreprocessConfig):
            raise DataError(f"preprocess must be a TextPreprocessConfig or None, got {type(preprocess).__name__}")
        self._check_files(output_dir, training_basename, neutral_basename, output_format, use_cache)
        _check_split_groups(split_group_col, split_group_key, split_by_target)
        self.text_column = text_column
        self.split = split
        self.hf_config = hf_config
        self.trust_remote_code = trust_remote_code
        self.base_max_size = base_max_size
        self.preprocess = preprocess
        self.min_left_context_words = min_left_context_words
        self.deduplicate = deduplicate
        self.seed = seed
        self.show_progress = show_progress
        self.spacy_batch_size = spacy_batch_size
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.training_basename, self.neutral_basename = training_basename, neutral_basename
        self.output_format = output_format
        self.use_cache = use_cache
        self.split_group_col, self.split_group_key, self.split_by_target = (split_group_col, split_group_key,
                                                                             split_by_target)
        self._spacy_model_arg = spacy_model
        self._nlp: Any = None
        if any(cfg.needs_spacy for cfg in self.feature_targets) and needs_loading(spacy_model):
            require_spacy()
        self.stats: dict[str, Any] = {}
        self._base_data = base_data
        self._texts: list[str] | None = None
        self._matching: Matching | None = None
        if not (use_cache and self.output_dir is not None):
            self._load()  # eager: a bad corpus fails here; with a cache it may never be needed

    @staticmethod
    def _check_files(output_dir: Any, training_basename: Any, neutral_basename: Any, output_format: Any,
                     use_cache: Any) -> None:
        if output_dir is not None and not isinstance(output_dir, (str, os.PathLike)):
            raise DataError(f"output_dir must be a directory path or None, got {type(output_dir).__name__}")
        for name, value in (("training_basename", training_basename), ("neutral_basename", neutral_basename)):
            if not isinstance(value, str) or not value.strip() or Path(value).name != value or value in (".", ".."):
                raise DataError(f"{name} must be a plain file name without directories, got {value!r}")
        if output_format is not None:
            _check_choice(output_format, "output_format", ("csv", "parquet", "hf"))
        if not isinstance(use_cache, bool):
            raise DataError(f"use_cache must be True or False, got {use_cache!r}")
        if use_cache and output_dir is None:
            raise DataError("use_cache=True reuses files in output_dir; pass output_dir= as well")

    # -- inputs ----------------------------------------------------------------------------------
    @property
    def texts(self) -> list[str]:
        """The preprocessed corpus (loaded on first use when a cache may make it unnecessary)."""
        return self._load()

    def _load(self) -> list[str]:
        if self._texts is None:
            started = time.perf_counter()
            self._texts = self._prepare(self._base_data, self.stats, "base_data")
            self.stats["load_seconds"] = round(time.perf_counter() - started, 3)
        return self._texts

    def _prepare(self, source: Any, stats: dict[str, Any], what: str) -> list[str]:
        texts, skipped = load_texts(source, self.text_column, split=self.split, config=self.hf_config,
                                    trust_remote_code=self.trust_remote_code, what=what)
        stats.update({"loaded_texts": len(texts) + skipped, "skipped_texts": skipped})
        if self.base_max_size is not None and len(texts) > self.base_max_size:
            picks = np.sort(self._rng("base").choice(len(texts), size=self.base_max_size, replace=False))
            texts = [texts[i] for i in picks]
        texts = preprocess_texts(texts, self.preprocess, stats)
        if self.deduplicate:
            before = len(texts)
            texts = list(dict.fromkeys(texts))
            stats["duplicates_removed"] = before - len(texts)
        stats["texts"] = len(texts)
        if not texts:
            raise DataError(f"{what} has no usable texts ({stats}); check the input, text_column and the "
                            f"preprocessing filters")
        return texts

    def _rng(self, *key: str | int) -> np.random.Generator:
        """A generator seeded by `seed` and `key`, so each use of randomness is independent and reproducible."""
        if self.seed is None:
            return np.random.default_rng()
        digest = hashlib.sha256("\0".join(str(k) for k in key).encode()).digest()
        return np.random.default_rng([self.seed, int.from_bytes(digest[:8], "little")])

    @property
    def nlp(self) -> Any:
        """The spaCy pipeline (loaded on first use)."""
        if self._nlp is None:
            self._nlp = load_spacy(self._spacy_model_arg)
        return self._nlp

    def _docs(self, texts: Sequence[str], tags: Iterable[tuple[str, str]], desc: str) -> Iterable[Any]:
        return annotate(self.nlp, texts, tags, batch_size=self.spacy_batch_size, desc=desc,
                        show_progress=self.show_progress)

    def _match(self) -> Matching:
        """Every class's masked rows (computed once, then cached)."""
        if self._matching is not None:
            return self._matching
        texts = self.texts
        started = time.perf_counter()
        matching = match_targets(texts, self.feature_targets, self.min_left_context_words, self._docs,
                                 self.show_progress)
        if self.pairing is not None:
            self._drop_unpaired(matching, self.pairing)
        self._matching = matching
        seconds = time.perf_counter() - started
        counts = {c: len(r) for c, r in matching.rows.items()}
        self.stats.update({"match_seconds": round(seconds, 3), "texts_with_mask_skipped": matching.skipped_with_mask,
                           "spacy_texts": matching.spacy_texts, "matches_per_class": counts,
                           "dropped_left_context": matching.dropped_left_context})
        logger.info("Matched %d texts in %.1fs (%.0f texts/s): %s", len(texts), seconds,
                    len(texts) / max(seconds, 1e-9), counts)
        return matching

    def _drop_unpaired(self, matching: Matching, pairing: Pairing) -> None:
        """Paired targets: drop rows in which a class matched different words (no single alternative)."""
        dropped = {}
        for cls, rows in matching.rows.items():
            kept = [r for r in rows if pairing.alternatives(cls, r.words) is not None]
            dropped[cls] = len(rows) - len(kept)
            matching.rows[cls] = kept
        self.stats["dropped_several_paired_words"] = dropped

    # -- files -----------------------------------------------------------------------------------
    def _target(self, kind: str, output: str | os.PathLike | None, output_format: str | None) -> OutputTarget | None:
        """Where a call writes: `output`, else `output_dir/<basename>` with the format's suffix, else nowhere."""
        if output is not None or self.output_dir is None:
            return resolve_output(output, output_format, self.output_format)
        fmt = output_format or self.output_format or "csv"
        basename = self.training_basename if kind == "training" else self.neutral_basename
        return resolve_output(self.output_dir / f"{basename}{FORMAT_SUFFIX[fmt]}", fmt)

    def _key(self, target: OutputTarget | None, override: Any = None, **call: Any) -> str | None:
        """The cache key of a call writing to `target`: every setting that decides the data, the corpus's
        identity included; None (no reuse, no record) when something cannot be identified across runs."""
        if target is None:
            return None
        if self.seed is None:
            logger.info("use_cache is off for this call: seed=None draws differently on every run")
            return None
        if self._spacy_model_arg is not None and not isinstance(self._spacy_model_arg, str):
            logger.info("use_cache is off for this call: a loaded spaCy pipeline cannot be identified across runs; "
                        "pass its name (spacy_model='en_core_web_sm')")
            return None
        try:
            sources = [cache.describe_source(s, self.text_column) for s in (self._base_data, override)
                       if s is not None]
        except cache.Unidentifiable as err:
            logger.info("use_cache is off for this call: %s cannot be identified across runs", err)
            return None
        return cache.cache_key({
            "sources": sources, "text_column": self.text_column, "split": self.split, "hf_config": self.hf_config,
            "base_max_size": self.base_max_size, "preprocess": self.preprocess,
            "min_left_context_words": self.min_left_context_words, "deduplicate": self.deduplicate,
            "seed": self.seed, "feature_targets": self.feature_targets,
            "paired": None if self.pairing is None else self.pairing.partners,
            "spacy_model": self._spacy_model_arg, **call})

    # -- training data ---------------------------------------------------------------------------
    def generate_training_data(self, max_size_per_class: int | None = None, format: TrainingFormat = "per_class",
                               *, balance: Balance = "try", balance_targets: bool = False, exclusive: bool = False,
                               train_ratio: float = 0.8, val_ratio: float = 0.1, test_ratio: float = 0.1,
                               min_rows_per_class: int = 10, min_rows_per_class_for_split: int | None = None,
                               min_rows_per_target_for_balance: int = 1, raise_on_incomplete_classes: bool = False,
                               output: str | os.PathLike | None = None, output_format: OutputFormat | None = None,
                               split_group_col: str | None = None, split_group_key: SplitGroupKey = None,
                               split_by_target: bool | None = None) -> dict[str, pd.DataFrame] | pd.DataFrame:
        """Masked rows per class, balanced and split into train/validation/test.

        `balance`: "try" (default; True means the same) gives every class the same number of rows
        (scaled by its `weight`) as far as the scarcest class allows, and draws rows at random (or
        evenly over its target words with `balance_targets`); "strict" also gives every target word
        of a class exactly the same number of rows (words below `min_rows_per_target_for_balance`
        are oversampled with replacement, copies stay in one split) and raises when
        `max_size_per_class` makes that impossible; False keeps every match (up to the cap).
        `exclusive` drops texts in which another class matches too. Classes with fewer than
        `min_rows_per_class` rows (the reference's `min_rows_per_class_for_split`), or too few to
        fill every split with a positive ratio, are left out with a warning (an error with
        `raise_on_incomplete_classes`). Splits are by row, or by group: `split_by_target` keeps
        every target word (every pair, for paired targets) in one split; `split_group_col`
        ("label", "text", "masked" or a class name) groups by that column, after
        `split_group_key` (function(s) applied to the value). Formats: `per_class` (dict class →
        DataFrame with `text, masked, label, token_count, split` and a column named after the
        class, plus the partner columns of paired targets), `minimal` (`masked, label,
        label_class, split`), `unified` (one row per ordered class pair with an `alternative`).
        `output` (or the creator's `output_dir`) is written atomically in a form
        `TextPredictionTrainer(data=...)` reads back; left-out classes go to `<name>_incomplete_classes`.
        """
        _check_choice(format, "format", ("per_class", "minimal", "unified"))
        _positive_int_or_none(max_size_per_class, "max_size_per_class")
        ratios = check_ratios(train_ratio, val_ratio, test_ratio)
        mode = check_balance(balance)
        min_rows_per_class = self._min_rows(min_rows_per_class, min_rows_per_class_for_split)
        if isinstance(min_rows_per_target_for_balance, bool) or not isinstance(min_rows_per_target_for_balance, int) \
                or min_rows_per_target_for_balance < 1:
            raise DataError(f"min_rows_per_target_for_balance must be a positive int, got "
                            f"{min_rows_per_target_for_balance!r}")
        if min_rows_per_target_for_balance > 1 and mode != "strict":
            raise DataError("min_rows_per_target_for_balance applies to balance='strict' only; pass balance='strict'")
        group_col = self.split_group_col if split_group_col is None else split_group_col
        group_fn = self.split_group_key if split_group_key is None else split_group_key
        by_target = self.split_by_target if split_by_target is None else split_by_target
        _check_split_groups(split_group_col, group_fn, by_target)
        if by_target and split_group_col is None and self.split_group_col is not None:
            group_col = None  # a per-call split_by_target replaces the creator's split_group_col
        target = self._target("training", output, output_format)
        settings = {"max_size_per_class": max_size_per_class, "format": format, "balance": mode,
                    "balance_targets": balance_targets, "exclusive": exclusive, "ratios": ratios,
                    "min_rows_per_class": min_rows_per_class, "min_per_target": min_rows_per_target_for_balance,
                    "group_col": group_col, "group_key": group_fn, "by_target": by_target,
                    "output_format": None if target is None else target[1]}
        key = self._key(target, **settings) if self.use_cache else None
        if key is not None:
            reused = cache.cached(target[0], key, lambda: read_training(target, format))  # type: ignore[index]
            if reused is not None:
                return reused
        matching = self._match()
        empty = [cls for cls, rows in matching.rows.items() if not rows]
        if empty:
            raise DataError(nothing_matched_message(empty, matching, self.feature_targets, len(self.texts)))
        group_key, shared = self._group_key(group_col, group_fn, by_target)
        selection = select_rows(
            matching.rows, self.feature_targets, ratios, self._rng, max_size_per_class=max_size_per_class,
            balance=mode, balance_targets=balance_targets, exclusive=exclusive,
            min_rows_per_class=min_rows_per_class, min_classes=2 if format == "unified" else 1,
            raise_on_incomplete_classes=raise_on_incomplete_classes, saving_left_out=target is not None,
            min_rows_per_target_for_balance=min_rows_per_target_for_balance, group_key=group_key,
            shared_groups=shared)
        per_class = {cls: per_class_frame(cls, rows, selection.splits[cls], self._partners(cls, rows))
                     for cls, rows in selection.rows.items()}
        self._log_sizes(per_class)
        result = self._formatted(per_class, format)
        if target is not None:
            self._write_training(result, per_class, selection.incomplete, target)
            cache.record(target[0], key, settings)
        return result

    @staticmethod
    def _min_rows(min_rows_per_class: Any, min_rows_per_class_for_split: Any) -> int:
        if min_rows_per_class_for_split is not None:
            if min_rows_per_class != 10:
                raise DataError("Pass min_rows_per_class or its reference spelling min_rows_per_class_for_split, "
                                "not both")
            if isinstance(min_rows_per_class_for_split, bool) or not isinstance(min_rows_per_class_for_split, int) \
                    or min_rows_per_class_for_split < 0:
                raise DataError(f"min_rows_per_class_for_split must be an int >= 0, got "
                                f"{min_rows_per_class_for_split!r}")
            min_rows_per_class = max(1, min_rows_per_class_for_split)  # the reference's 0 (no minimum) is 1 row
        if isinstance(min_rows_per_class, bool) or not isinstance(min_rows_per_class, int) or min_rows_per_class < 1:
            raise DataError(f"min_rows_per_class must be a positive int, got {min_rows_per_class!r}")
        return min_rows_per_class

    def _group_key(self, group_col: str | None, group_fn: SplitGroupKey, by_target: bool
                   ) -> tuple[Callable[[str, Row], Hashable] | None, bool]:
        """The split-group function and whether its groups are shared by all classes (paired targets)."""
        if not by_target and group_col is None:
            return None, False
        functions = [] if group_fn is None else [group_fn] if callable(group_fn) else list(group_fn)

        def normalise(value: str) -> Hashable:
            out: Any = value
            for fn in functions:
                out = fn(out)
            return out

        if by_target and self.pairing is not None and group_fn is None:
            pairing = self.pairing
            return (lambda cls, row: pairing.alternatives(cls, row.words)[0]), True  # type: ignore[index]
        if by_target:
            if group_fn is None:
                return (lambda cls, row: row.label.strip().casefold()), False
            return (lambda cls, row: normalise(row.label)), False
        column = "label" if group_col in {cfg.id for cfg in self.feature_targets} else group_col
        if column not in GROUP_COLUMNS:
            raise DataError(f"split_group_col {group_col!r} is not a column of the generated rows; use one of "
                            f"{list(GROUP_COLUMNS)} or a class name (its column holds the label)")
        return (lambda cls, row: normalise(getattr(row, column))), False

    def _partners(self, cls: str, rows: Sequence[Row]) -> list[dict[str, str]] | None:
        if self.pairing is None:
            return None
        return [self.pairing.alternatives(cls, r.words)[1] for r in rows]  # type: ignore[index]

    def _log_sizes(self, per_class: Mapping[str, pd.DataFrame]) -> None:
        self.stats["rows_per_class"] = {c: len(df) for c, df in per_class.items()}
        self.stats["rows_per_split"] = {c: df["split"].value_counts().reindex(SPLITS, fill_value=0).to_dict()
                                        for c, df in per_class.items()}
        logger.info("Training rows per class and split: %s", self.stats["rows_per_split"])

    def _formatted(self, per_class: dict[str, pd.DataFrame], format: str) -> dict[str, pd.DataFrame] | pd.DataFrame:
        if format == "per_class":
            return per_class
        if format == "minimal":
            return minimal(per_class, pair_ids=self._pair_ids)
        return unified(per_class, self._rng)

    @property
    def _pair_ids(self) -> tuple[str, ...]:
        return self.pairing.ids if self.pairing is not None else ()

    def _write_training(self, result: dict[str, pd.DataFrame] | pd.DataFrame, per_class: Mapping[str, pd.DataFrame],
                        incomplete: Mapping[str, list[Row]], target: OutputTarget) -> None:
        write_training(result, per_class, target, self.show_progress, pair_ids=self._pair_ids)
        if incomplete:
            left_out = {cls: per_class_frame(cls, rows, ["train"] * len(rows)) for cls, rows in incomplete.items()}
            write_training(minimal(left_out, with_text=True), left_out, sidecar(target), self.show_progress)

    # -- neutral data ----------------------------------------------------------------------------
    def generate_neutral_data(self, additional_excluded_words: Sequence[str] | None = None,
                              excluded_spacy_tags: SpacyTagSpec | Sequence[SpacyTagSpec] | None = None,
                              max_size: int | None = None, *, base_data: Any = None, format: Literal["minimal"] =
                              "minimal", output: str | os.PathLike | None = None,
                              output_format: OutputFormat | None = None) -> pd.DataFrame:
        """Texts with none of the classes' target words (tags are not consulted, and glued forms
        such as "it's" count), none of `additional_excluded_words` (likewise) and no token matching any of
        `excluded_spacy_tags`; a DataFrame with column `text` (`format="minimal"`, the reference's only
        format), at most `max_size` rows (a seeded sample, original order). `base_data` replaces the
        creator's corpus. Written to `output` or the creator's `output_dir` (csv, parquet or a saved dataset)."""
        if isinstance(additional_excluded_words, str):
            raise DataError(f"additional_excluded_words must be a list of words, got the string "
                            f"{additional_excluded_words!r}")
        _positive_int_or_none(max_size, "max_size")
        _check_choice(format, "format", ("minimal",))
        target = self._target("neutral", output, output_format)
        specs: list[dict[str, str]] = []
        if excluded_spacy_tags is not None:
            raw = [excluded_spacy_tags] if isinstance(excluded_spacy_tags, Mapping) else list(excluded_spacy_tags)
            specs = [check_tags(spec, "excluded_spacy_tags") for spec in raw]
        extra = [w.strip() for w in additional_excluded_words or [] if isinstance(w, str) and w.strip()]
        settings = {"neutral": True, "extra": sorted(extra), "tags": specs, "max_size": max_size,
                    "output_format": None if target is None else target[1]}
        key = self._key(target, base_data, **settings) if self.use_cache else None
        if key is not None:
            reused = cache.cached(target[0], key, lambda: read_training(target, "minimal"))  # type: ignore[index]
            if reused is not None:
                return reused
        result = self._neutral(base_data, extra, specs, max_size)
        if target is not None:
            write_training(result, {}, target, self.show_progress)
            cache.record(target[0], key, settings)
        return result

    def _neutral(self, base_data: Any, extra: list[str], specs: list[dict[str, str]], max_size: int | None
                 ) -> pd.DataFrame:
        texts = self.texts if base_data is None else self._prepare(base_data, {}, "base_data")
        keep = neutral_indices(texts, self.feature_targets, extra, specs, self._docs, self.show_progress)
        if not keep:
            raise DataError(f"No neutral text left among {len(texts)} texts: every text contains a target or "
                            f"excluded word/tag. Add text or exclude fewer words.")
        if max_size is not None and len(keep) > max_size:
            picks = np.sort(self._rng("neutral").choice(len(keep), size=max_size, replace=False))
            keep = [keep[i] for i in picks]
        result = pd.DataFrame({"text": [texts[i] for i in keep]})
        self.stats["neutral_rows"] = len(result)
        logger.info("Neutral texts: %d of %d", len(result), len(texts))
        return result
