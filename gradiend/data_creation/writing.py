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

from gradiend.data import _sample_alternatives, match_case
from gradiend.data_creation.matching import Row
from gradiend.data_sources import DataError, import_datasets, require_parquet_engine
from gradiend.experiment import atomic_directory, atomic_write_with

logger = logging.getLogger(__name__)

#: Where and how to write: the path and one of "csv", "parquet", "hf".
OutputTarget = tuple[Path, str]


def per_class_frame(cls: str, rows: Sequence[Row], splits: Sequence[str],
                    partners: Sequence[Mapping[str, str]] | None = None) -> pd.DataFrame:
    """One class's table: `text, masked, label, token_count, split` and a column named after the class;
    `partners` (paired targets) adds a column per other class with the row's alternative, cased like the label."""
    df = pd.DataFrame({"text": [r.text for r in rows], "masked": [r.masked for r in rows],
                       "label": [r.label for r in rows], "token_count": [r.token_count for r in rows],
                       "split": list(splits)})
    df[cls] = df["label"]
    if partners is not None:
        for other in (partners[0] if partners else {}):
            df[other] = [match_case(p[other], label) for p, label in zip(partners, df["label"], strict=True)]
    return df


def pair_columns(df: pd.DataFrame, pair_ids: Sequence[str]) -> list[str]:
    """The class-named token columns of a paired per-class table, in class order."""
    return [c for c in pair_ids if c in df.columns]


def minimal(per_class: Mapping[str, pd.DataFrame], with_text: bool = False, pair_ids: Sequence[str] = ()
            ) -> pd.DataFrame:
    """All classes in one table (`masked, label, label_class, split`; `with_text` adds `text, token_count`;
    paired targets add one token column per class)."""
    columns = ["text", "masked", "label", "label_class", "split", "token_count"] if with_text else [
        "masked", "label", "label_class", "split"]
    frames = [df.assign(label_class=cls)[columns + pair_columns(df, pair_ids)] for cls, df in per_class.items()]
    return pd.concat(frames, ignore_index=True)


def unified(per_class: Mapping[str, pd.DataFrame], rng: Callable[..., np.random.Generator]) -> pd.DataFrame:
    """One block per ordered class pair: each row of the first class with an `alternative` (its paired
    word, else sampled from the second class's labels, casing copied), its `transition` name and
    `feature_class_id`."""
    frames = []
    classes = list(per_class)
    transition_id = 0
    for cls in classes:
        for other in classes:
            if other == cls:
                continue
            df = per_class[cls]
            if other in df.columns:  # paired targets: the row's own partner word
                alternatives = list(df[other])
            else:
                tokens = Counter(t.lower() for t in per_class[other]["label"])
                alternatives = _sample_alternatives(df["label"], tokens, rng("unified", cls, other))
            frames.append(pd.DataFrame({
                "masked": df["masked"], "split": df["split"], "label_class": cls, "alternative_class": other,
                "label": df["label"], "alternative": alternatives, "transition": f"{cls}→{other}",
                "feature_class_id": transition_id}))
            transition_id += 1
    return pd.concat(frames, ignore_index=True)


FORMAT_SUFFIX = {"csv": ".csv", "parquet": ".parquet", "hf": ""}


def resolve_output(output: str | os.PathLike | None, output_format: str | None,
                   default_format: str | None = None) -> OutputTarget | None:
    """The output path and format (`output_format`, else from the suffix, else `default_format`),
    checking its engine is installed."""
    if output is None:
        if output_format is not None:
            raise DataError("output_format is given but output is not; pass output=PATH (or the creator's "
                            "output_dir)")
        return None
    path = Path(output)
    fmt = output_format or {".csv": "csv", ".parquet": "parquet"}.get(path.suffix.lower()) or default_format
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
                   target: OutputTarget, show_progress: bool = True, pair_ids: Sequence[str] = ()) -> None:
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
    write_table(minimal(per_class, with_text=True, pair_ids=pair_ids) if isinstance(result, dict) else result, target)


_INT_COLUMNS = ("token_count", "feature_class_id")


def read_table(target: OutputTarget) -> pd.DataFrame:
    """A table written by `write_table`, with its strings as written (no 'NA'/'null' turned into NaN)."""
    path, fmt = target
    if fmt == "parquet":
        return pd.read_parquet(path)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in _INT_COLUMNS:
        if column in df.columns:
            df[column] = df[column].astype(np.int64)
    return df


def read_training(target: OutputTarget, format: str) -> dict[str, pd.DataFrame] | pd.DataFrame:
    """Training data as `write_training` wrote it for `format`, in the form `generate_training_data` returns."""
    path, fmt = target
    if fmt == "hf":
        datasets = import_datasets("output_format='hf'")
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            return {str(cls): ds.to_pandas() for cls, ds in loaded.items()}
        return loaded.to_pandas()
    df = read_table(target)
    if format != "per_class":
        return df
    base = ["text", "masked", "label", "token_count", "split"]
    out = {}
    for cls, group in df.groupby("label_class", sort=False):
        frame = group.drop(columns="label_class").reset_index(drop=True)
        frame[str(cls)] = frame["label"]
        extra = [c for c in frame.columns if c not in base and c != cls]
        out[str(cls)] = frame[[*base, str(cls), *extra]]
    return out
