"""`TextPredictionTrainer`: GRADIEND on masked-token prediction data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from gradiend.arguments import TrainingArguments
from gradiend.data import MASK, DataError, unify_classes
from gradiend.data_sources import load_texts
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.trainer.trainer import Trainer

# DataFrame, dict class → DataFrame/Dataset, file or directory path, datasets.Dataset/DatasetDict, or Hub id
DataInput = Any
# list of str, DataFrame/file/dataset with a `text` column, or Hub id
NeutralInput = Any


class TextPredictionTrainer(Trainer):
    """Train a GRADIEND from (masked text, factual token, alternative token) rows.

    `data`: merged DataFrame (`masked, split, label_class, label[, alternative,
    alternative_class]`), a dict class → DataFrame, a CSV/TSV/parquet file or directory, a
    `datasets.Dataset`/`DatasetDict`, a saved dataset directory or a Hugging Face dataset id.
    `eval_neutral_data`: feature-free texts (list of str, DataFrame/file/dataset with `text`).
    `class_merge_map` merges classes (`{"masc": ["der_nom", "den_acc"], ...}`), `all_classes` keeps only
    those classes; rows of classes outside the pair are kept for `include_other_classes` evaluations.
    """

    def __init__(self, model: str | ModelWithGradiend, data: DataInput | None = None,
                 args: TrainingArguments | None = None, *, training_args: TrainingArguments | None = None,
                 target_classes: Sequence[str] | None = None, run_id: str | None = None,
                 eval_neutral_data: NeutralInput | None = None, n_features: int = 1, mask: str = MASK,
                 all_classes: Sequence[str] | None = None,
                 class_merge_map: Mapping[str, Sequence[str]] | None = None) -> None:
        if args is not None and training_args is not None and args is not training_args:
            raise ValueError("Pass either args= or training_args=, not both")
        super().__init__(model, target_classes=target_classes, args=training_args or args, run_id=run_id,
                         n_features=n_features)
        if data is None:
            raise DataError("TextPredictionTrainer needs data= (a DataFrame, a dict of DataFrames or a path)")
        unified = unify_classes(data, target_classes, all_classes=all_classes, class_merge_map=class_merge_map,
                                seed=self._args.seed, mask=mask)
        self._rows, self._pair, self._other_rows = unified.rows, unified.pair, unified.other_rows
        self._all_classes = list(unified.all_classes)
        self._target_classes = list(self._pair)
        self._neutral = _neutral_texts(eval_neutral_data)

    def unified_data(self) -> tuple[pd.DataFrame, tuple[str, str]]:
        return self._rows, self._pair

    def neutral_texts(self) -> list[str] | None:
        return self._neutral

    @property
    def all_classes(self) -> list[str]:
        """Every class kept from the data (`all_classes=`, default: all), the pair included."""
        return list(self._all_classes)

    def other_class_rows(self) -> pd.DataFrame:
        """Rows of the classes outside the pair (label 0; never trained on), for `include_other_classes`."""
        return self._other_rows

    @property
    def combined_data(self) -> pd.DataFrame:
        """The validated training rows in the unified schema (a copy)."""
        return self._rows.copy()


def _neutral_texts(data: NeutralInput | None) -> list[str] | None:
    if data is None:
        return None
    texts, _ = load_texts(data, "text", what="eval_neutral_data")
    if not texts:
        raise DataError("eval_neutral_data has no non-empty texts")
    return texts
