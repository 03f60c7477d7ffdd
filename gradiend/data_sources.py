"""Where user data comes from: files, directories, `datasets` objects and Hugging Face Hub ids.

Everything here turns one of the inputs users bring into pandas objects (or a list of texts)
and reports bad input as a `DataError` whose message names the problem and the fix. The
`datasets` package is imported only when a dataset input needs it.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test")
SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation", "eval": "validation"}
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
TEXT_SUFFIXES = (*TABLE_SUFFIXES, ".txt")
_HUB_PROBE_TIMEOUT_S = 5.0


class DataError(ValueError):
    """Raised for data that cannot be used, with a message that names the fix."""


# -- files -------------------------------------------------------------------------------------
def require_parquet_engine(path: str | os.PathLike) -> None:
    """Fail with the install command when neither pyarrow nor fastparquet is importable."""
    if importlib.util.find_spec("pyarrow") is None and importlib.util.find_spec("fastparquet") is None:
        raise DataError(f"{path}: reading or writing parquet needs pyarrow. Install it with "
                        f"`pip install pyarrow` (it comes with `datasets`), or use a CSV file instead.")


def _read_file(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"Unsupported data file type {suffix or '(none)'!r}: {path}. Use .csv, .tsv (tab-separated, "
                        f"unquoted) or .parquet.")
    if suffix == ".parquet":
        require_parquet_engine(path)
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except DataError:
        raise
    except Exception as err:  # pandas/pyarrow raise many types for a bad file; name the file instead
        kind = {".parquet": "parquet", ".tsv": "TSV"}.get(suffix, "CSV")
        raise DataError(f"Could not read {path} as {kind} ({type(err).__name__}: {err}). Check that the file is a "
                        f"complete, UTF-8 encoded {kind} file.") from err


def _is_saved_dataset(path: Path) -> bool:
    """A directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def read_table(path: str | os.PathLike) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """Read a CSV/TSV/parquet file, or a directory of data.

    A directory may hold `training.csv`/`.parquet`/`.tsv`, split files (`train.csv`,
    `validation.csv`, `test.csv`; a `split` column is added), a single table file, or a
    dataset saved with `save_to_disk` (see `dataset_to_frames`).
    """
    path = Path(path)
    if path.is_dir():
        return _read_directory(path)
    if not path.is_file():
        raise DataError(f"Data file not found: {path}. Pass a DataFrame, a dict of DataFrames, a dataset, or an "
                        f"existing CSV/TSV/parquet path.")
    return _read_file(path)


def _read_directory(path: Path) -> pd.DataFrame | dict[str, pd.DataFrame]:
    if _is_saved_dataset(path):
        return dataset_to_frames(_load_saved_dataset(path))
    for stem in ("training", "data"):
        for suffix in TABLE_SUFFIXES:
            if (path / f"{stem}{suffix}").is_file():
                return _read_file(path / f"{stem}{suffix}")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
    by_split = {normalize_split_name(p.stem): p for p in files if normalize_split_name(p.stem) in SPLIT_NAMES}
    if by_split:
        frames = []
        for split, file in sorted(by_split.items(), key=lambda kv: SPLIT_NAMES.index(kv[0])):
            frame = _read_file(file)
            if "split" not in frame.columns:
                frame = frame.assign(split=split)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)
    if len(files) == 1:
        return _read_file(files[0])
    found = [p.name for p in sorted(path.iterdir())][:10]
    raise DataError(f"Directory {path} holds no data this library can read (found {found}). Put the rows in "
                    f"training.csv / training.parquet, or in train/validation/test.csv, or save a dataset there "
                    f"with save_to_disk.")


def _load_saved_dataset(path: Path) -> Any:
    datasets = import_datasets(f"Loading the saved dataset in {path}")
    try:
        return datasets.load_from_disk(str(path))
    except Exception as err:  # corrupt or foreign files: name the directory
        raise DataError(f"Could not load the saved dataset in {path} ({type(err).__name__}: {err})") from err


def normalize_split_name(name: str) -> str:
    """`val`/`valid`/`dev`/`eval` → `validation`; other names lower-cased and stripped."""
    name = str(name).strip().lower()
    return SPLIT_ALIASES.get(name, name)


def looks_like_path(text: str) -> bool:
    """Whether a string is meant as a local path rather than a Hub id (`owner/name`)."""
    if text.startswith(("/", ".", "~", "\\")) or text.count("/") > 1 or "\\" in text:
        return True
    if len(text) > 1 and text[1] == ":":  # Windows drive
        return True
    return Path(text).suffix.lower() in TEXT_SUFFIXES


# -- `datasets` objects ------------------------------------------------------------------------
def import_datasets(purpose: str) -> Any:
    """Import the `datasets` package or explain how to install it."""
    try:
        import datasets
    except ImportError as err:
        raise DataError(f"{purpose} needs the `datasets` package: pip install datasets") from err
    return datasets


def is_dataset(obj: Any) -> bool:
    """True for a `datasets.Dataset` or `datasets.DatasetDict` (without importing `datasets`)."""
    return type(obj).__module__.split(".")[0] == "datasets" and type(obj).__name__ in ("Dataset", "DatasetDict")


def _is_dataset_dict(obj: Any) -> bool:
    return is_dataset(obj) and type(obj).__name__ == "DatasetDict"


def dataset_to_frames(obj: Any) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """A `Dataset` → DataFrame; a `DatasetDict` keyed by split names → one DataFrame with a
    `split` column (kept when present); a `DatasetDict` keyed by anything else (class names)
    → dict key → DataFrame."""
    if not _is_dataset_dict(obj):
        return obj.to_pandas()
    keys = [str(k) for k in obj]
    if keys and all(normalize_split_name(k) in SPLIT_NAMES for k in keys):
        frames = []
        for key in keys:
            frame = obj[key].to_pandas()
            if "split" not in frame.columns:
                frame = frame.assign(split=normalize_split_name(key))
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)
    return {key: obj[key].to_pandas() for key in keys}


# -- the Hugging Face Hub ----------------------------------------------------------------------
def _offline_flag() -> str | None:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return None


def hub_reachable(timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within `timeout` seconds."""
    parsed = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = parsed.hostname or "huggingface.co", parsed.port or (80 if parsed.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo itself has no timeout
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


def _offline_error(name: str, reason: str) -> DataError:
    return DataError(
        f"{name!r} is neither an existing local path nor a dataset that could be loaded from the Hugging Face Hub "
        f"({reason}). If it is a local file or directory, check the spelling. If it is a Hub dataset: "
        f"load it once where you have network and keep it with `datasets.load_dataset({name!r}).save_to_disk(DIR)`, "
        f"then pass DIR; or set HF_HUB_OFFLINE=1 to use a copy already in your Hugging Face cache.")


def check_hub(name: str) -> None:
    """Fail at once, instead of retrying for half a minute, when the Hub cannot be reached
    (unless `HF_HUB_OFFLINE=1` asks `datasets` to use the local cache)."""
    import_datasets(f"Loading {name!r} from the Hugging Face Hub")
    if _offline_flag() is None and not hub_reachable():
        raise _offline_error(name, "the Hub cannot be reached from this machine")


def load_hub_dataset(name: str, config: str | None = None, split: str | None = None,
                     trust_remote_code: bool | None = None, checked: bool = False) -> Any:
    """`datasets.load_dataset(name, config, split=split)` with failures turned into a `DataError`
    (`checked`: `check_hub` already ran)."""
    datasets = import_datasets(f"Loading {name!r} from the Hugging Face Hub")
    if not checked:
        check_hub(name)
    flag = _offline_flag()
    kwargs: dict[str, Any] = {"split": split}
    if trust_remote_code is not None:
        kwargs["trust_remote_code"] = trust_remote_code
    try:
        return datasets.load_dataset(name, config, **kwargs)
    except Exception as err:  # datasets raises connection, lookup and builder errors of many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        reason = f"{type(err).__name__}: {first}"
        if flag is not None:
            reason += f"; {flag} is set, so only the local cache was searched"
        raise _offline_error(name, reason) from None


def hub_config_names(name: str) -> list[str]:
    """The dataset's config names (empty when they cannot be listed)."""
    datasets = import_datasets(f"Loading {name!r} from the Hugging Face Hub")
    try:
        return [str(c) for c in datasets.get_dataset_config_names(name)]
    except Exception as err:  # unreachable hub or unknown dataset: load_hub_dataset reports it
        logger.debug("Could not list configs of %s: %s", name, err)
        return []


# -- resolution --------------------------------------------------------------------------------
def resolve_table_input(data: Any, what: str = "data",
                        trust_remote_code: bool | None = None) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """Any supported table input → a DataFrame (merged rows) or a dict key → DataFrame.

    Accepts a DataFrame, a dict of DataFrames/datasets, a `Dataset`/`DatasetDict`, a local
    file or directory, or a Hub dataset id (a Hub dataset with several configs and no
    `default` one becomes one entry per config, i.e. per class). `trust_remote_code` is passed to
    `datasets.load_dataset` for a Hub id (None: not passed).
    """
    if isinstance(data, pd.DataFrame):
        return data
    if is_dataset(data):
        return dataset_to_frames(data)
    if isinstance(data, Mapping):
        out: dict[str, pd.DataFrame] = {}
        for key, value in data.items():
            if is_dataset(value):
                value = dataset_to_frames(value)
                if isinstance(value, dict):
                    raise DataError(f"{what}[{key!r}] is a DatasetDict keyed by {list(value)}; pass one Dataset per "
                                    f"class, or a DatasetDict keyed by split names")
            out[str(key)] = value
        return out
    if isinstance(data, (str, os.PathLike)):
        text = os.fspath(data)
        if Path(text).exists() or not isinstance(data, str) or looks_like_path(text):
            return read_table(text)
        check_hub(text)
        configs = hub_config_names(text)
        if len(configs) > 1 and "default" not in configs:
            logger.info("Loading %s: one config per class %s", text, configs)
            return {cfg: _single_frame(dataset_to_frames(load_hub_dataset(
                text, cfg, trust_remote_code=trust_remote_code, checked=True)), f"{text}/{cfg}") for cfg in configs}
        return dataset_to_frames(load_hub_dataset(text, trust_remote_code=trust_remote_code, checked=True))
    raise DataError(f"{what} must be a DataFrame, a dict of DataFrames, a datasets.Dataset/DatasetDict, a file or "
                    f"directory path, or a Hugging Face dataset id; got {type(data).__name__}")


def _single_frame(frames: pd.DataFrame | dict[str, pd.DataFrame], where: str) -> pd.DataFrame:
    if isinstance(frames, dict):
        raise DataError(f"{where}: expected split names as dataset keys, got {list(frames)}")
    return frames


def load_texts(source: Any, text_column: str = "text", *, split: str | None = "train", config: str | None = None,
               trust_remote_code: bool | None = None, what: str = "texts") -> tuple[list[str], int]:
    """Texts from a list of str, a DataFrame/Series, a file (.csv/.tsv/.parquet with `text_column`,
    or .txt with one text per line), a `Dataset`/`DatasetDict` (`split`), or a Hub dataset id.

    Returns (texts, skipped): entries that are not strings, NaN or blank are skipped and counted.
    """
    values: Sequence[Any]
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        path = Path(text)
        if path.is_file() and path.suffix.lower() == ".txt":
            try:
                values = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise DataError(f"Could not read {path} as UTF-8 text ({err})") from err
            return _clean_texts(values, what)
        if path.is_dir() and _is_saved_dataset(path):
            source = _load_saved_dataset(path)
        elif path.exists() or not isinstance(source, str) or looks_like_path(text):
            source = read_table(path)
        else:
            source = load_hub_dataset(text, config, split=split, trust_remote_code=trust_remote_code)
    if is_dataset(source):
        if _is_dataset_dict(source):
            keys = [str(k) for k in source]
            pick = next((k for k in keys if split is not None and normalize_split_name(k) == normalize_split_name(
                split)), None)
            if pick is None:
                if len(keys) != 1:
                    raise DataError(f"{what}: the DatasetDict has splits {keys}; pick one with split=...")
                pick = keys[0]
            source = source[pick]
        if text_column not in source.column_names:
            raise DataError(f"{what}: column {text_column!r} does not exist; the dataset has columns "
                            f"{source.column_names}. Pass text_column=... to choose one.")
        return _clean_texts(source[text_column], what)
    if isinstance(source, dict):
        raise DataError(f"{what}: expected one table of texts, got several ({list(source)})")
    if isinstance(source, pd.DataFrame):
        if text_column not in source.columns:
            raise DataError(f"{what}: column {text_column!r} does not exist; the table has columns "
                            f"{list(source.columns)}. Pass text_column=... to choose one.")
        return _clean_texts(source[text_column].tolist(), what)
    if isinstance(source, pd.Series):
        return _clean_texts(source.tolist(), what)
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        return _clean_texts(source, what)
    raise DataError(f"{what} must be a list of str, a DataFrame, a file path, a datasets.Dataset or a Hugging Face "
                    f"dataset id; got {type(source).__name__}")


def _clean_texts(values: Sequence[Any], what: str) -> tuple[list[str], int]:
    texts = [v.strip() for v in values if isinstance(v, str) and v.strip()]
    skipped = len(values) - len(texts)
    if skipped:
        logger.warning("%s: skipped %d of %d entries that are not strings, missing (NaN) or blank",
                       what, skipped, len(values))
    return texts, skipped
