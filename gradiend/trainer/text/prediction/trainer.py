"""`TextPredictionTrainer`: GRADIEND on masked-token prediction data."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import pandas as pd

from gradiend.arguments import TrainingArguments
from gradiend.data import MASK, DataError, read_table, unify
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.trainer.trainer import Trainer

DataInput = pd.DataFrame | Mapping[str, pd.DataFrame] | str | os.PathLike
NeutralInput = pd.DataFrame | Sequence[str] | str | os.PathLike


class TextPredictionTrainer(Trainer):
    """Train a GRADIEND from (masked text, factual token, alternative token) rows.

    `data`: merged DataFrame (`masked, split, label_class, label[, alternative,
    alternative_class]`), a dict class → DataFrame, or a CSV/TSV/parquet path.
    `eval_neutral_data`: feature-free texts (DataFrame with `text`, list of str, or a path).
    """

    def __init__(self, model: str | ModelWithGradiend, data: DataInput | None = None,
                 args: TrainingArguments | None = None, *, training_args: TrainingArguments | None = None,
                 target_classes: Sequence[str] | None = None, run_id: str | None = None,
                 eval_neutral_data: NeutralInput | None = None, n_features: int = 1, mask: str = MASK) -> None:
        if args is not None and training_args is not None and args is not training_args:
            raise ValueError("Pass either args= or training_args=, not both")
        super().__init__(model, target_classes=target_classes, args=training_args or args, run_id=run_id,
                         n_features=n_features)
        if data is None:
            raise DataError("TextPredictionTrainer needs data= (a DataFrame, a dict of DataFrames or a path)")
        self._rows, self._pair = unify(data, target_classes, seed=self._args.seed, mask=mask)
        self._target_classes = list(self._pair)
        self._neutral = _neutral_texts(eval_neutral_data)

    def unified_data(self) -> tuple[pd.DataFrame, tuple[str, str]]:
        return self._rows, self._pair

    def neutral_texts(self) -> list[str] | None:
        return self._neutral

    @property
    def combined_data(self) -> pd.DataFrame:
        """The validated training rows in the unified schema (a copy)."""
        return self._rows.copy()


def _neutral_texts(data: NeutralInput | None) -> list[str] | None:
    if data is None:
        return None
    if isinstance(data, (str, os.PathLike)):
        data = read_table(data)
    if isinstance(data, pd.DataFrame):
        if "text" not in data.columns:
            raise DataError(f"eval_neutral_data needs a 'text' column; it has {list(data.columns)}")
        texts = [str(t) for t in data["text"] if isinstance(t, str) and t.strip()]
    elif isinstance(data, Sequence):
        texts = [str(t) for t in data if isinstance(t, str) and t.strip()]
    else:
        raise DataError(f"eval_neutral_data must be a DataFrame, a list of str or a path, "
                        f"got {type(data).__name__}")
    if not texts:
        raise DataError("eval_neutral_data has no non-empty texts")
    return texts
