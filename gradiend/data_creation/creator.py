"""`TextPredictionDataCreator`: loads and preprocesses a corpus, then wires matching, balancing
and writing into training data and neutral data (all randomness derived from one seed)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from gradiend.data_creation.balancing import SPLITS, check_ratios, select_rows
from gradiend.data_creation.config import (
    SpacyTagSpec,
    TextFilterConfig,
    TextPreprocessConfig,
    check_feature_targets,
    check_tags,
)
from gradiend.data_creation.matching import Matching, match_targets, neutral_indices, nothing_matched_message
from gradiend.data_creation.preprocess import preprocess_texts
from gradiend.data_creation.tagging import annotate, load_spacy, needs_loading, require_spacy
from gradiend.data_creation.writing import (
    minimal,
    per_class_frame,
    resolve_output,
    sidecar,
    unified,
    write_table,
    write_training,
)
from gradiend.data_sources import DataError, load_texts

logger = logging.getLogger(__name__)

TrainingFormat = Literal["per_class", "minimal", "unified"]


def _positive_int_or_none(value: Any, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DataError(f"{name} must be a positive int or None, got {value!r}")


class TextPredictionDataCreator:
    """Mine masked training rows and neutral sentences from a text corpus.

    `base_data`: a list of str, a pandas DataFrame/Series, a CSV/TSV/parquet file (column
    `text_column`) or .txt file (one text per line), a `datasets.Dataset`/`DatasetDict`
    (`split`), or a Hugging Face dataset id (`hf_config`, `split`). Entries that are not strings,
    NaN or blank are skipped and counted (`stats["skipped_texts"]`). `base_max_size` keeps a
    seeded random subset. `preprocess` splits and filters texts (see `TextPreprocessConfig`);
    identical texts are kept once (`deduplicate`). `min_left_context_words` is the number of words
    required before a class's first match (0 keeps sentence-initial targets; causal LMs want
    about 10). Everything random follows `seed`.
    """

    def __init__(self, base_data: Any, feature_targets: Sequence[TextFilterConfig], *, text_column: str = "text",
                 split: str = "train", hf_config: str | None = None, trust_remote_code: bool | None = None,
                 base_max_size: int | None = None, preprocess: TextPreprocessConfig | None = None,
                 spacy_model: Any = None, min_left_context_words: int = 0, deduplicate: bool = True,
                 seed: int | None = 42, show_progress: bool = True, spacy_batch_size: int = 256) -> None:
        self.feature_targets = check_feature_targets(feature_targets)
        if isinstance(min_left_context_words, bool) or not isinstance(min_left_context_words, int) or (
                min_left_context_words < 0):
            raise DataError(f"min_left_context_words must be an int >= 0, got {min_left_context_words!r}")
        _positive_int_or_none(base_max_size, "base_max_size")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise DataError(f"seed must be an int >= 0 or None, got {seed!r}")
        if preprocess is not None and not isinstance(preprocess, TextPreprocessConfig):
            raise DataError(f"preprocess must be a TextPreprocessConfig or None, got {type(preprocess).__name__}")
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
        self._spacy_model_arg = spacy_model
        self._nlp: Any = None
        if any(cfg.needs_spacy for cfg in self.feature_targets) and needs_loading(spacy_model):
            require_spacy()
        self.stats: dict[str, Any] = {}
        started = time.perf_counter()
        self.texts = self._prepare(base_data, self.stats, "base_data")
        self.stats["load_seconds"] = round(time.perf_counter() - started, 3)
        self._matching: Matching | None = None

    # -- inputs ----------------------------------------------------------------------------------
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
        started = time.perf_counter()
        matching = match_targets(self.texts, self.feature_targets, self.min_left_context_words, self._docs,
                                 self.show_progress)
        self._matching = matching
        seconds = time.perf_counter() - started
        counts = {c: len(r) for c, r in matching.rows.items()}
        self.stats.update({"match_seconds": round(seconds, 3), "texts_with_mask_skipped": matching.skipped_with_mask,
                           "spacy_texts": matching.spacy_texts, "matches_per_class": counts,
                           "dropped_left_context": matching.dropped_left_context})
        logger.info("Matched %d texts in %.1fs (%.0f texts/s): %s", len(self.texts), seconds,
                    len(self.texts) / max(seconds, 1e-9), counts)
        return matching

    # -- training data ---------------------------------------------------------------------------
    def generate_training_data(self, max_size_per_class: int | None = None, format: TrainingFormat = "per_class",
                               *, balance: bool = True, balance_targets: bool = False, exclusive: bool = False,
                               train_ratio: float = 0.8,
                               val_ratio: float = 0.1, test_ratio: float = 0.1, min_rows_per_class: int = 10,
                               raise_on_incomplete_classes: bool = False, output: str | os.PathLike | None = None,
                               output_format: Literal["csv", "parquet", "hf"] | None = None,
                               ) -> dict[str, pd.DataFrame] | pd.DataFrame:
        """Masked rows per class, balanced and split into train/validation/test.

        `balance` gives every class the same number of rows (scaled by its `weight`);
        `balance_targets` also spreads each class's rows evenly over its target words;
        `exclusive` drops texts in which another class matches too. Classes
        with fewer than `min_rows_per_class` rows, or too few to fill every split with a positive
        ratio, are left out with a warning (an error with `raise_on_incomplete_classes`).
        Formats: `per_class` (dict class → DataFrame with `text, masked, label, token_count,
        split` and a column named after the class), `minimal` (`masked, label, label_class,
        split`), `unified` (one row per ordered class pair with a sampled `alternative`).
        `output` (.csv/.parquet, or a directory with `output_format="hf"`) is written atomically
        in a form `TextPredictionTrainer(data=...)` reads back; left-out classes go to
        `<name>_incomplete_classes`.
        """
        if format not in ("per_class", "minimal", "unified"):
            raise DataError(f"format must be 'per_class', 'minimal' or 'unified', got {format!r}")
        _positive_int_or_none(max_size_per_class, "max_size_per_class")
        ratios = check_ratios(train_ratio, val_ratio, test_ratio)
        if isinstance(min_rows_per_class, bool) or not isinstance(min_rows_per_class, int) or min_rows_per_class < 1:
            raise DataError(f"min_rows_per_class must be a positive int, got {min_rows_per_class!r}")
        target = resolve_output(output, output_format)
        matching = self._match()
        empty = [cls for cls, rows in matching.rows.items() if not rows]
        if empty:
            raise DataError(nothing_matched_message(empty, matching, self.feature_targets, len(self.texts)))
        selection = select_rows(
            matching.rows, self.feature_targets, ratios, self._rng, max_size_per_class=max_size_per_class,
            balance=balance, balance_targets=balance_targets, exclusive=exclusive,
            min_rows_per_class=min_rows_per_class, min_classes=2 if format == "unified" else 1,
            raise_on_incomplete_classes=raise_on_incomplete_classes, saving_left_out=target is not None)
        per_class = {cls: per_class_frame(cls, rows, selection.splits[cls]) for cls, rows in selection.rows.items()}
        self.stats["rows_per_class"] = {c: len(df) for c, df in per_class.items()}
        self.stats["rows_per_split"] = {c: df["split"].value_counts().reindex(SPLITS, fill_value=0).to_dict()
                                        for c, df in per_class.items()}
        logger.info("Training rows per class and split: %s", self.stats["rows_per_split"])
        result: dict[str, pd.DataFrame] | pd.DataFrame
        if format == "per_class":
            result = per_class
        elif format == "minimal":
            result = minimal(per_class)
        else:
            result = unified(per_class, self._rng)
        if target is not None:
            write_training(result, per_class, target, self.show_progress)
            if selection.incomplete:
                left_out = {cls: per_class_frame(cls, rows, ["train"] * len(rows))
                            for cls, rows in selection.incomplete.items()}
                write_training(minimal(left_out, with_text=True), left_out, sidecar(target), self.show_progress)
        return result

    # -- neutral data ----------------------------------------------------------------------------
    def generate_neutral_data(self, additional_excluded_words: Sequence[str] | None = None,
                              excluded_spacy_tags: SpacyTagSpec | Sequence[SpacyTagSpec] | None = None,
                              max_size: int | None = None, *, base_data: Any = None,
                              output: str | os.PathLike | None = None,
                              output_format: Literal["csv", "parquet"] | None = None) -> pd.DataFrame:
        """Texts with none of the classes' target words (tags are not consulted, and glued forms
        such as "it's" count), none of `additional_excluded_words` (likewise) and no token matching any of
        `excluded_spacy_tags`; a DataFrame with column `text`, at most `max_size` rows (a seeded
        sample, original order). `base_data` replaces the creator's corpus."""
        if isinstance(additional_excluded_words, str):
            raise DataError(f"additional_excluded_words must be a list of words, got the string "
                            f"{additional_excluded_words!r}")
        _positive_int_or_none(max_size, "max_size")
        if output_format == "hf":
            raise DataError("Neutral data is written as csv or parquet")
        target = resolve_output(output, output_format)
        specs: list[dict[str, str]] = []
        if excluded_spacy_tags is not None:
            raw = [excluded_spacy_tags] if isinstance(excluded_spacy_tags, Mapping) else list(excluded_spacy_tags)
            specs = [check_tags(spec, "excluded_spacy_tags") for spec in raw]
        extra = [w.strip() for w in additional_excluded_words or [] if isinstance(w, str) and w.strip()]
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
        if target is not None:
            write_table(result, target)
        return result
