"""Reusing generated data files (`use_cache`): a file is reused only when it was written by the same
settings from the same corpus, recorded in a `<file>.meta.json` beside it.

The corpus is identified without reading it where possible (a file by path, size and modification
time; a Hub dataset by id, config and split); in-memory lists and DataFrames by a hash of their
texts. Settings that cannot be identified across runs (a lambda or a local function as
`custom_filter` or `split_group_key`, an unknown corpus type) turn the cache off, with a log line,
rather than risk reusing data made by other settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from gradiend.experiment import atomic_write_json, read_json

logger = logging.getLogger(__name__)

CACHE_VERSION = 1


class Unidentifiable(ValueError):
    """A setting whose identity is not stable across runs, so a cache keyed by it would be unsafe."""


def _callable_id(fn: Callable[..., Any]) -> str:
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    if "<lambda>" in name or "<locals>" in name:
        raise Unidentifiable(f"the function {name} (a lambda or local function)")
    return name


def describe(value: Any) -> Any:
    """A JSON-able description of a setting (dataclasses, callables, nested containers)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__,
                **{f.name: describe(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, Mapping):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if callable(value):
        return _callable_id(value)
    raise Unidentifiable(f"a {type(value).__name__} setting")


def describe_source(source: Any, text_column: str) -> dict[str, Any]:
    """The identity of a corpus: a file by path/size/mtime, a Hub id as given, in-memory texts by hash."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.exists():
            stat = path.stat()
            return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        return {"hub_id": os.fspath(source)}
    if isinstance(source, pd.DataFrame):
        if text_column not in source.columns:
            raise Unidentifiable(f"a DataFrame without the column {text_column!r}")
        source = source[text_column]
    if isinstance(source, pd.Series):
        hashed = pd.util.hash_pandas_object(source.astype(str), index=False).to_numpy().tobytes()
        return {"series_sha256": hashlib.sha256(hashed).hexdigest(), "rows": len(source)}
    if isinstance(source, Sequence) and all(isinstance(t, str) for t in source):
        digest = hashlib.sha256("\0".join(source).encode("utf-8", "surrogatepass")).hexdigest()
        return {"texts_sha256": digest, "rows": len(source)}
    raise Unidentifiable(f"a corpus of type {type(source).__name__}")


def cache_key(settings: Mapping[str, Any]) -> str | None:
    """A hash of the settings, or None (with a log line) when one of them cannot be identified."""
    try:
        text = json.dumps({"version": CACHE_VERSION, **{k: describe(v) for k, v in settings.items()}},
                          sort_keys=True)
    except Unidentifiable as err:
        logger.info("use_cache is off for this call: %s cannot be identified across runs", err)
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def cached(path: Path, key: str, load: Callable[[], Any]) -> Any | None:
    """The data at `path` when its metadata records `key`; None (regenerate) otherwise."""
    meta = meta_path(path)
    if not path.exists() or not meta.is_file():
        return None
    recorded = read_json(meta, "data cache metadata")
    if not isinstance(recorded, dict) or recorded.get("key") != key:
        logger.info("Not reusing %s: it was written with other settings or from another corpus", path)
        return None
    logger.info("Reusing %s (use_cache=True; same settings and corpus)", path)
    return load()


def record(path: Path, key: str | None, settings: Mapping[str, Any]) -> None:
    """Record (atomically) which settings wrote `path`; without a key (no cache, or settings that cannot be
    identified) remove any earlier record, so that data written now is never mistaken for the recorded data."""
    meta = meta_path(path)
    if key is not None:
        atomic_write_json(meta, {"key": key, "settings": sorted(settings)})
    elif meta.is_file():
        meta.unlink()
