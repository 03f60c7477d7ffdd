"""The generated tables (per-class, minimal, unified) and writing them atomically as csv,
parquet or a saved Hugging Face dataset that `TextPredictionTrainer(data=...)` reads back."""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradiend.data import _sample_alternatives
from gradiend.data_creation.matching import Row
from gradiend.data_sources import DataError, import_datasets, require_parquet_engine
from gradiend.experiment import atomic_directory, atomic_write_with

logger = logging.getLogger(__name__)

#: Where and how to write: the path and one of "csv", "parquet", "hf".
OutputTarget = tuple[Path, str]


def per_class_frame(cls: str, rows: Sequence[Row], splits: Sequence[str]) -> pd.DataFrame:
    """One class's table: `text, masked, label, token_count, split` and a column named after the class."""
    df = pd.DataFrame({"text": [r.text for r in rows], "masked": [r.masked for r in rows],
                       "label": [r.label for r in rows], "token_count": [r.token_count for r in rows],
                       "split": list(splits)})
    df[cls] = df["label"]
    return df


def minimal(per_class: Mapping[str, pd.DataFrame], with_text: bool = False) -> pd.DataFrame:
    """All classes in one table (`masked, label, label_class, split`; `with_text` adds `text, token_count`)."""
    columns = ["text", "masked", "label", "label_class", "split", "token_count"] if with_text else [
        "masked", "label", "label_class", "split"]
    frames = [df.assign(label_class=cls)[columns] for cls, df in per_class.items()]
    return pd.concat(frames, ignore_index=True)


def unified(per_class: Mapping[str, pd.DataFrame], rng: Callable[..., np.random.Generator]) -> pd.DataFrame:
    """One block per ordered class pair: each row of the first class with an `alternative` sampled
    from the second class's labels (casing copied), its `transition` name and `feature_class_id`."""
    frames = []
    classes = list(per_class)
    transition_id = 0
    for cls in classes:
        for other in classes:
            if other == cls:
                continue
            df = per_class[cls]
            tokens = Counter(t.lower() for t in per_class[other]["label"])
            alternatives = _sample_alternatives(df["label"], tokens, rng("unified", cls, other))
            frames.append(pd.DataFrame({
                "masked": df["masked"], "split": df["split"], "label_class": cls, "alternative_class": other,
                "label": df["label"], "alternative": alternatives, "transition": f"{cls}→{other}",
                "feature_class_id": transition_id}))
            transition_id += 1
    return pd.concat(frames, ignore_index=True)


def resolve_output(output: str | os.PathLike | None, output_format: str | None) -> OutputTarget | None:
    """The output path and format (from the suffix unless given), checking its engine is installed."""
    if output is None:
        if output_format is not None:
            raise DataError("output_format is given but output is not; pass output=PATH")
        return None
    path = Path(output)
    fmt = output_format or {".csv": "csv", ".parquet": "parquet"}.get(path.suffix.lower())
    if fmt not in ("csv", "parquet", "hf"):
        raise DataError(f"Cannot tell the output format of {path}: use a .csv or .parquet file name, or "
                        f"output_format='csv' / 'parquet' / 'hf' (a dataset directory)")
    if fmt == "parquet":
        require_parquet_engine(path)
    if fmt == "hf":
        import_datasets("output_format='hf'")
    return path, fmt


def sidecar(target: OutputTarget) -> OutputTarget:
    """Where the left-out (incomplete) classes go: `<name>_incomplete_classes<suffix>` beside `target`."""
    path, fmt = target
    return path.with_name(f"{path.stem}_incomplete_classes{path.suffix}"), fmt


def write_table(df: pd.DataFrame, target: OutputTarget) -> None:
    """Write `df` atomically as csv or parquet (no index)."""
    path, fmt = target
    if fmt == "parquet":
        atomic_write_with(path, lambda tmp: df.to_parquet(tmp, index=False))
    else:
        atomic_write_with(path, lambda tmp: df.to_csv(tmp, index=False))
    logger.info("Wrote %d rows to %s", len(df), path)


@contextlib.contextmanager
def _datasets_progress_bars(datasets: Any, enabled: bool) -> Iterator[None]:
    """Hide `datasets`' progress bars inside the block when not `enabled`, then restore exactly the
    state found on entry. `save_to_disk` has no per-call switch, so this is the narrowest scope the
    `datasets` API allows; bars a user disabled stay disabled."""
    was_disabled = datasets.are_progress_bars_disabled()
    if not enabled and not was_disabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if datasets.are_progress_bars_disabled() != was_disabled:
            if was_disabled:
                datasets.disable_progress_bars()
            else:
                datasets.enable_progress_bars()


def write_training(result: dict[str, pd.DataFrame] | pd.DataFrame, per_class: Mapping[str, pd.DataFrame],
                   target: OutputTarget, show_progress: bool = True) -> None:
    """Write generated training data: a saved dataset (a DatasetDict for per-class dicts) for "hf",
    else one table (per-class dicts as the minimal table with text)."""
    path, fmt = target
    if fmt == "hf":
        datasets = import_datasets("output_format='hf'")
        if isinstance(result, dict):
            obj = datasets.DatasetDict({c: datasets.Dataset.from_pandas(df, preserve_index=False)
                                        for c, df in result.items()})
        else:
            obj = datasets.Dataset.from_pandas(result, preserve_index=False)
        with _datasets_progress_bars(datasets, show_progress), atomic_directory(path) as tmp:
            obj.save_to_disk(str(tmp))
        logger.info("Wrote the dataset to %s", path)
        return
    write_table(minimal(per_class, with_text=True) if isinstance(result, dict) else result, target)
