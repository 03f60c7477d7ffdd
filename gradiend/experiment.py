"""The experiment directory: its layout, reads, atomic writes and the run lock, in one place.

`ExperimentDir` knows where every file of an experiment lives and loads them as typed records
(`gradiend.records`). Every file the library writes goes through `atomic_write_*` (temp file in
the same directory, fsync, `os.replace`), so an interrupted run leaves either the old file or the
new one, never a torn one. Directories (checkpoints) are built in a sibling temp dir and swapped
in. Temp entries are created with the usual modes (0o666 / 0o777), so the process umask applies
as for any other file; nothing touches the umask.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradiend.records import DecoderSummaries, EncoderMeta, Record, RunConfig, SeedReport, TrainingRecord

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
TRAINING_STATS = "training.json"
SEEDS_DIR = "seeds"
SEED_REPORT = "seed_report.json"
DECODER_GRID = "decoder_grid.json"
DECODER_SUMMARIES = "decoder_summaries.json"
RUN_CONFIG = "run_config.json"
LOCK_FILE = ".gradiend.lock"
MODEL_CONFIG = "gradiend_config.json"  # the GRADIEND checkpoint config (gradiend.model.CONFIG_FILE)
_ENCODER_PREFIX = "encoded_values_split_"
_MAX_SIZE_TAG = "_max_size_"


class MissingResultError(FileNotFoundError):
    """An experiment directory lacks a result; the message says which command produces it."""


# ---------------------------------------------------------------- atomic writes and reads

def _json_default(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _finite(value: Any) -> Any:
    """Replace NaN/inf by None so the JSON stays standard (records become their JSON objects)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Record):
        return _finite(value.to_json())
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _create_temp_file(path: Path) -> tuple[int, Path]:
    """Open a new, empty temp file next to `path` (mode 0o666 before the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_name(path)
        try:
            return os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666), tmp
        except FileExistsError:
            continue


def _replace_or_discard(tmp: Path, path: Path) -> None:
    """Move a finished temp file over `path`; on any error leave nothing behind."""
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file + fsync + rename)."""
    path = Path(path)
    fd, tmp = _create_temp_file(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _replace_or_discard(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` (records included) as indented JSON atomically (NaN/inf become null)."""
    text = json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False)
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Let `writer(tmp_path)` produce a file, then move it to `path` atomically."""
    path = Path(path)
    fd, tmp = _create_temp_file(path)
    os.close(fd)
    try:
        writer(str(tmp))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _replace_or_discard(tmp, path)


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read JSON with an error that names the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {path} is corrupt ({err}); delete it and re-run to regenerate it") from err


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp dir next to `target`; on success it replaces `target` as a whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_name(target)
        try:
            os.mkdir(tmp, 0o777)
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def link_or_copy(src: str, dst: str) -> str:
    """Hard-link `src` to `dst` (no bytes written), copying only across file systems.

    Safe for checkpoint files because every library write replaces a file by rename (a new
    inode), so a later write to one link never changes the other.
    """
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-serialisable object (cache keys)."""
    text = json.dumps(obj, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- the experiment directory

@dataclass(frozen=True)
class EncoderResultFile:
    """One saved encoder evaluation: its split, row cap, CSV of encodings and metadata JSON."""

    split: str
    max_size: int | None
    csv: Path
    meta: Path

    @property
    def path(self) -> Path:
        """The CSV of encodings (name kept from the former `EncoderResult`)."""
        return self.csv

    @property
    def metrics_path(self) -> Path:
        return self.meta

    def load(self) -> EncoderMeta:
        """The metadata record (cache key, split, cap, metrics)."""
        return EncoderMeta.from_json(read_json(self.meta, "encoder metrics"))


def _legacy_encoder_key(csv: Path) -> tuple[str, int | None] | None:
    """Split and cap from an encodings file name, for files whose metadata does not store them."""
    stem = csv.stem.removeprefix(_ENCODER_PREFIX)
    split, tag, cap = stem.rpartition(_MAX_SIZE_TAG)
    if tag and split and cap.isdigit():
        return split, int(cap)
    return (stem, None) if stem else None


class ExperimentDir:
    """Every path, read, write and the lock of one experiment directory.

    Layout: `model/` (checkpoint + `training.json`), `seeds/` (per-seed runs + `seed_report.json`),
    `encoded_values_split_<s>[_max_size_<n>].{csv,json}`, `decoder_grid.json`,
    `decoder_summaries.json`, `run_config.json`, `cache/gradients/`, `<key>/` rewritten models.
    `model_dir` and `seeds_dir` are the user's overrides (`output_dir`, `seed_runs_dir`).
    """

    def __init__(self, root: str | os.PathLike, *, model_dir: str | os.PathLike | None = None,
                 seeds_dir: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        self.model = Path(model_dir) if model_dir is not None else self.root / MODEL_DIR
        self.seeds = Path(seeds_dir) if seeds_dir is not None else self.root / SEEDS_DIR

    def __repr__(self) -> str:
        return f"ExperimentDir({str(self.root)!r})"

    @classmethod
    def find(cls, path: str | os.PathLike) -> ExperimentDir:
        """The experiment of `path`: the experiment directory itself or its `model/` checkpoint."""
        path = Path(path)
        if not path.exists():
            raise MissingResultError(f"Experiment directory {path} does not exist; create it with "
                                     f"`gradiend train CONFIG.yaml` (or Trainer.train() with experiment_dir set)")
        if not path.is_dir():
            raise NotADirectoryError(f"{path} is a file; pass the experiment directory")
        if (path / MODEL_CONFIG).is_file() and path.name == MODEL_DIR:
            return cls(path.parent)
        return cls(path)

    # paths
    @property
    def training_stats(self) -> Path:
        return self.model / TRAINING_STATS

    @property
    def model_config(self) -> Path:
        return self.model / MODEL_CONFIG

    @property
    def seed_report(self) -> Path:
        return self.seeds / SEED_REPORT

    def seed_run(self, seed: int) -> Path:
        return self.seeds / f"seed_{seed}"

    @property
    def decoder_grid(self) -> Path:
        return self.root / DECODER_GRID

    @property
    def decoder_summaries(self) -> Path:
        return self.root / DECODER_SUMMARIES

    @property
    def run_config(self) -> Path:
        return self.root / RUN_CONFIG

    @property
    def gradient_cache(self) -> Path:
        return self.root / "cache" / "gradients"

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE

    def _encoder_stem(self, split: str, max_size: int | None) -> str:
        return f"{_ENCODER_PREFIX}{split}{f'{_MAX_SIZE_TAG}{max_size}' if max_size is not None else ''}"

    def encoder_csv(self, split: str, max_size: int | None) -> Path:
        """The cached encodings of one split (metrics are recomputed from them)."""
        return self.root / f"{self._encoder_stem(split, max_size)}.csv"

    def encoder_meta(self, split: str, max_size: int | None) -> Path:
        """Cache key, split, cap and metrics of one split's encodings."""
        return self.root / f"{self._encoder_stem(split, max_size)}.json"

    def rewritten(self, key: str) -> Path:
        """Where the base model rewritten for `key` (`<class>[_weaken]`) is saved."""
        return self.root / key

    # the lock
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory for one run; a second holder (any process, any trainer) gets RuntimeError.

        An OS file lock (`filelock`, flock): the kernel releases it when its holder exits, so a
        killed run leaves no stale lock to clean up (its file stays, unlocked). On a normal exit
        the holder removes the file while still holding it; a peer that opened the old file then
        locks an unlinked inode, which filelock detects and does not count as held.
        """
        import filelock  # ~20 ms; only runs that write need it

        self.root.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(self.lock_file, timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise RuntimeError(f"Experiment directory {self.root} is in use by another run (lock {self.lock_file}); "
                               f"wait for it to finish or use another experiment_dir") from None
        held = os.stat(self.lock_file)
        try:
            yield
        finally:
            try:
                with contextlib.suppress(FileNotFoundError):
                    if os.path.samestat(os.stat(self.lock_file), held):
                        os.unlink(self.lock_file)
            finally:
                lock.release()

    # generic reads and writes
    def write_json(self, path: str | os.PathLike, obj: Any) -> None:
        """Write `obj` (a record or JSON data) atomically; relative paths are under the root."""
        atomic_write_json(self.root / path, obj)

    def read_json(self, path: str | os.PathLike, what: str = "file") -> Any:
        return read_json(self.root / path, what)

    def write_with(self, path: str | os.PathLike, writer: Callable[[str], None]) -> None:
        atomic_write_with(self.root / path, writer)

    @contextlib.contextmanager
    def replace_dir(self, path: str | os.PathLike) -> Iterator[Path]:
        """A temp dir that replaces `path` as a whole when the block succeeds."""
        with atomic_directory(self.root / path) as tmp:
            yield tmp

    # typed loads
    def _missing(self, what: str, path: Path, command: str) -> MissingResultError:
        return MissingResultError(f"No {what} in {path.parent} ({path.name} is missing); run `{command}` first")

    def load_training(self) -> TrainingRecord:
        """`model/training.json`: per-eval correlation and class means, losses, timings, arguments."""
        if not self.training_stats.is_file():
            raise self._missing("training results", self.training_stats, "gradiend train CONFIG.yaml")
        return TrainingRecord.from_json(read_json(self.training_stats, "training stats"))

    def load_seed_report(self) -> SeedReport | None:
        """The seed report of a multi-seed run (also under a `seed_runs_dir` recorded in training.json)."""
        candidates = [self.seed_report]
        if self.training_stats.is_file():
            seed_dir = self.load_training().training_args.get("seed_runs_dir")
            if seed_dir:
                candidates.append(Path(seed_dir) / SEED_REPORT)
        path = next((p for p in candidates if p.is_file()), None)
        return SeedReport.from_json(read_json(path, "seed report")) if path is not None else None

    def load_run_config(self) -> RunConfig | None:
        """`run_config.json` (model, data, classes, arguments) written by `gradiend train`, None when absent."""
        if not self.run_config.is_file():
            return None
        return RunConfig.from_json(read_json(self.run_config, "run configuration"))

    def load_model_config(self) -> dict[str, Any] | None:
        """`model/gradiend_config.json` (architecture, base model, parameter map), None when absent."""
        return read_json(self.model_config, "GRADIEND config") if self.model_config.is_file() else None

    def encoder_results(self) -> list[EncoderResultFile]:
        """Every saved encoder evaluation, sorted by file name."""
        found = []
        for csv in sorted(self.root.glob(f"{_ENCODER_PREFIX}*.csv")):
            meta = csv.with_suffix(".json")
            key: tuple[str, int | None] | None = None
            if meta.is_file():
                try:
                    record = EncoderMeta.from_json(read_json(meta, "encoder metrics"))
                except (ValueError, TypeError) as err:
                    logger.warning("Unreadable %s (%s); taking split and cap from the file name", meta, err)
                else:
                    if record.split is not None:
                        key = record.split, record.max_size
            key = key or _legacy_encoder_key(csv)
            if key is not None:
                found.append(EncoderResultFile(key[0], key[1], csv, meta))
        return found

    def load_decoder(self) -> dict[str, Any]:
        """The decoder grid and the selected candidates: `{"grid": records, <key>: DecoderSelection, …}`."""
        if not self.decoder_grid.is_file():
            raise self._missing("decoder evaluation", self.decoder_grid, f"gradiend evaluate {self.root} --decoder")
        result: dict[str, Any] = {"grid": list(read_json(self.decoder_grid, "decoder grid")["records"])}
        result.update(self.load_decoder_summaries().summaries)
        return result

    def load_decoder_summaries(self) -> DecoderSummaries:
        """`decoder_summaries.json` (empty when no selection was saved)."""
        if not self.decoder_summaries.is_file():
            return DecoderSummaries()
        return DecoderSummaries.from_json(read_json(self.decoder_summaries, "decoder summaries"))

    def rewritten_models(self) -> list[Path]:
        """Sub-directories holding a rewritten base model (HF checkpoint + GRADIEND model card)."""
        found = []
        for child in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            card = child / "README.md"
            if (child / "config.json").is_file() and card.is_file() and "- gradiend" in card.read_text("utf-8")[:500]:
                found.append(child)
        return found
