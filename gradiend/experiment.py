"""The experiment directory: its layout, reads, atomic writes and the run lock, in one place.

`ExperimentDir` knows where every file of an experiment lives and loads them as typed records
(`gradiend.records`). Every file the library writes goes through `atomic_write_*` (temp file in
the same directory, fsync, `os.replace`), so an interrupted run leaves either the old file or the
new one, never a torn one. Directories (checkpoints) are built in a sibling temp dir and swapped
in. Temp entries are created with the usual modes (0o666 / 0o777), so the process umask applies
as for any other file; nothing touches the umask.

Nothing of the user's is ever deleted: a directory is replaced only when it is ours (absent, empty,
carrying our `.gradiend-output.json` manifest with only the files listed there, or holding only the
files of a checkpoint, rewrite or dataset an earlier version wrote), unless the caller passes
`overwrite=True`. Names that become path parts go through `safe_path_part`. A directory swap that
dies between its two renames is undone by the next writer (`recover_interrupted`), and `lock()`
removes the temp entries of killed runs.

Test hook (fault injection, `tests/test_hostile.py`): with `GRADIEND_TEST_WRITE_HOOK=<file>` set,
every write point (a finished temp file before its rename, a finished temp directory before its
swap, the moment between the two renames of a swap) appends the tab-separated line
`write <n> <kind> <path> <digest>` to that file, and `GRADIEND_TEST_WRITE_KILL=<n>` makes the
process SIGKILL itself at write point n.
Unset (always, outside tests) it costs one environment lookup per write.

Several processes (torchrun, `gradiend.distributed`): only rank 0 writes. The other ranks' writes
are skipped (an `atomic_directory` gives them a scratch directory that is removed afterwards),
except inside `distributed.rank_local_writes()` (a rank's own disk gradient cache); `lock()` is
taken by rank 0 while the others wait at a barrier, and on leaving it every rank waits for the
others, so what rank 0 wrote is there for all of them to read. In one process (no `WORLD_SIZE > 1`)
none of this costs more than an environment lookup.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
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
MODEL_WEIGHTS = "model.safetensors"  # the GRADIEND checkpoint weights (gradiend.model.WEIGHTS_FILE)
MODEL_CONFIG = "gradiend_config.json"  # the GRADIEND checkpoint config (gradiend.model.CONFIG_FILE)
OUTPUT_MARKER = ".gradiend-output.json"  # the manifest in every directory atomic_directory creates
_ENCODER_PREFIX = "encoded_values_split_"
_MAX_SIZE_TAG = "_max_size_"
# our temp entries: ".<name>.<8 hex>.tmp"; a target moved aside during a swap: ".<name>.<pid>-<8 hex>.old"
_TEMP_RE = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
_ASIDE_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)-[0-9a-f]{8}\.old$")
_SAFE_PART_RE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_PART_LEN = 100


class MissingResultError(FileNotFoundError):
    """An experiment directory lacks a result; the message says which command produces it."""


class OutputNotOursError(FileExistsError):
    """A directory to be replaced holds files the library did not write; it is left untouched."""


class OutputNotWritableError(OSError):
    """A file or directory could not be written (disk full, read-only, no permission); the message names the
    path and the fix, `errno`/`strerror` keep the system's reason. Earlier versions of the target are intact."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()

    @classmethod
    def wrap(cls, path: str | os.PathLike, err: OSError, also: str = "") -> OutputNotWritableError:
        """The error for a failed write of `path`; `also` adds a fix of the caller's (e.g. another flag).

        An error of this class about `path` keeps its message."""
        if isinstance(err, cls) and err.filename == str(path):
            if not also:
                return err
            message = f"{err}; {also}"
        else:
            fix = f"{_write_fix(err)}, {also}" if also else _write_fix(err)
            message = f"Cannot write {path}: {err.strerror or err}; {fix}. Its previous version, if any, is unchanged"
        wrapped = cls(message)
        wrapped.errno, wrapped.strerror, wrapped.filename = err.errno, err.strerror, str(path)
        return wrapped


def _write_fix(err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space (or choose a directory on another disk) and run the command again"
    if err.errno == errno.EROFS:
        return "the file system is read-only; choose a writable directory"
    if isinstance(err, PermissionError):
        return "you may not write there; choose a writable directory"
    return "check the path and the disk, then run the command again"


@contextlib.contextmanager
def naming_write_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError of a write into an `OutputNotWritableError` that names `path` and the fix."""
    try:
        yield
    except OSError as err:
        raise OutputNotWritableError.wrap(path, err) from err


# errors of a directory's content writes that are about the disk, not the caller's code
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO})


class UnsafePathError(ValueError):
    """A name or path would escape its parent directory or clash with the experiment's own layout."""


# ---------------------------------------------------------------- safe path parts

def safe_path_part(name: str, what: str = "name") -> str:
    """`name` as one safe file name. Safe names ([A-Za-z0-9._-], no leading dot, ≤ 100 characters)
    stay as they are; otherwise other characters and a leading dot become `_`, the result is cut to
    length and gets `-<8 hex of the original>` (no hidden or temp-like names, no clashes).
    Empty names, `.` and `..` are refused."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__}")
    if name.strip() in ("", ".", ".."):
        raise UnsafePathError(f"{what} {name!r} cannot be used as a file name; use a name with letters or digits")
    safe = _SAFE_PART_RE.sub("_", name)
    if safe.startswith("."):
        safe = "_" + safe[1:]
    if safe != name or len(safe) > _MAX_PART_LEN:
        # a hash of the original keeps changed names distinct ("男" and "女" are not both "_")
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
        safe = f"{safe[:_MAX_PART_LEN - 9]}-{digest}"
    if safe != name:
        logger.info("Using %r as the file name for %s %r", safe, what, name)
    return safe


def child_path(parent: str | os.PathLike, part: str, what: str = "name") -> Path:
    """`parent / safe_path_part(part)`, checked to stay inside `parent`."""
    parent = Path(parent)
    path = parent / safe_path_part(part, what)
    if not is_within(path, parent) or path.resolve() == parent.resolve():
        raise UnsafePathError(f"{what} {part!r} would leave {parent}; use a plain name")
    return path


def is_within(path: str | os.PathLike, parent: str | os.PathLike) -> bool:
    """Whether `path` is `parent` or below it once both are resolved (symlinks and `..` followed)."""
    return Path(path).resolve().is_relative_to(Path(parent).resolve())


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


# ---------------------------------------------------------------- test hook: write points

WRITE_HOOK_ENV = "GRADIEND_TEST_WRITE_HOOK"  # file that gets one line per write point
WRITE_KILL_ENV = "GRADIEND_TEST_WRITE_KILL"  # number of the write point at which the process SIGKILLs itself
_WRITE_POINTS = itertools.count(1)  # write points of this process


def tree_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, or of a directory's relative file names and file digests (test hook)."""
    path = Path(path)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    parts = [f"{name}:{tree_digest(path / name)}" for name in _files_below(path)]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def _write_point(kind: str, final: Path, content: Path) -> None:
    """The fault-injection test hook (see the module docstring); nothing happens unless the variable is set."""
    log = os.environ.get(WRITE_HOOK_ENV)
    if not log:
        return
    number = next(_WRITE_POINTS)
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"write\t{number}\t{kind}\t{final}\t{tree_digest(content)}\n")
    if os.environ.get(WRITE_KILL_ENV) == str(number):
        os.kill(os.getpid(), signal.SIGKILL)


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
        _write_point("file", path, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _several_processes() -> bool:
    """Whether this process is one rank of several (torchrun); an environment lookup, no import, otherwise."""
    return os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def _skip_write() -> bool:
    """True on a rank other than 0 of a distributed run (outside `distributed.rank_local_writes`)."""
    if not _several_processes():
        return False
    from gradiend import distributed

    return not distributed.may_write()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file + fsync + rename); OSErrors become `OutputNotWritableError`.

    Skipped on ranks other than 0 of a distributed run (see the module doc)."""
    if _skip_write():
        return
    path = Path(path)
    with naming_write_errors(path):
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
    """Let `writer(tmp_path)` produce a file, then move it to `path` atomically (OSErrors name `path`).

    Skipped on ranks other than 0 of a distributed run (see the module doc)."""
    if _skip_write():
        return
    path = Path(path)
    with naming_write_errors(path):
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


# ---------------------------------------------------------------- directories we own

# what earlier versions wrote without a manifest: checkpoint (model/, seeds/seed_<n>), rewrite, dataset
_CHECKPOINT_FILES = frozenset({MODEL_CONFIG, "model.safetensors", "param_map.safetensors", TRAINING_STATS})
_REWRITE_PATTERNS = ("config.json", "generation_config.json", "README.md", "*.safetensors", "*.safetensors.index.json",
                     "tokenizer*.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
                     "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "chat_template.*")
_DATASET_PATTERNS = ("dataset_dict.json", "dataset_info.json", "state.json", "data-*.arrow")
# files that mark a directory as an experiment directory (never replaced as a whole)
_EXPERIMENT_FILES = (LOCK_FILE, RUN_CONFIG, DECODER_GRID, DECODER_SUMMARIES, f"{MODEL_DIR}/{MODEL_CONFIG}")


def _files_below(directory: Path) -> list[str]:
    """Relative POSIX paths of every file (and symlink) below `directory`, without following links."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        base = Path(dirpath).relative_to(directory)
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        found.extend((base / name).as_posix() for name in [*filenames, *links])
    return sorted(found)


def _manifest_files(directory: Path) -> set[str] | None:
    """The files our manifest in `directory` lists, None without a readable manifest of ours."""
    marker = directory / OUTPUT_MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        logger.warning("Unreadable output manifest %s (%s); treating the directory as not ours", marker, err)
        return None
    if not (isinstance(data, dict) and data.get("written_by") == "gradiend" and isinstance(data.get("files"), list)):
        return None
    return {str(name) for name in data["files"]}


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(Path(name).match(pattern) for pattern in patterns)


def _legacy_layout(directory: Path, files: list[str]) -> bool:
    """Whether `files` are exactly what an earlier version wrote here (no manifest then)."""
    top = set(files)
    flat = all("/" not in name for name in files)
    if flat and top <= _CHECKPOINT_FILES and top & {MODEL_CONFIG, TRAINING_STATS}:
        return True
    if flat and {"config.json", "README.md"} <= top and all(_matches(n, _REWRITE_PATTERNS) for n in files):
        return "- gradiend" in (directory / "README.md").read_text("utf-8", errors="replace")[:500]
    return (bool(top & {"dataset_dict.json", "state.json"}) and all(n.count("/") <= 1 for n in files)
            and all(_matches(n.rpartition("/")[2], _DATASET_PATTERNS) for n in files))


def foreign_files(directory: str | os.PathLike) -> list[str]:
    """Files in `directory` the library did not write ([] when it is absent, empty or ours)."""
    directory = Path(directory)
    if not directory.is_dir() or directory.is_symlink():
        return []
    files = _files_below(directory)
    listed = _manifest_files(directory)
    if listed is not None:
        return [name for name in files if name != OUTPUT_MARKER and name not in listed]
    if not files or _legacy_layout(directory, files):
        return []
    return files


def check_replaceable(target: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Refuse (OutputNotOursError / UnsafePathError) to replace `target` unless it is ours or `overwrite`.

    Never replaced, whatever `overwrite` says: files and symlinks, experiment directories, and
    directories holding the current directory or the home directory.
    """
    target = Path(target)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise OutputNotOursError(f"Refusing to replace {target}: it is a file or a link, not a directory we wrote; "
                                 f"pass a directory path")
    if not target.exists():
        return
    if target.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents, Path.home().resolve(),
                            *Path.home().resolve().parents):
        raise UnsafePathError(f"Refusing to replace {target}: it holds the current or the home directory; "
                              f"pass a new sub-directory")
    marks = [name for name in _EXPERIMENT_FILES if (target / name).exists()]
    if marks:
        raise UnsafePathError(f"Refusing to replace {target}: it is an experiment directory ({marks[0]}); "
                              f"write the output to a directory outside it or to a new sub-directory")
    if overwrite:
        return
    refuse_foreign_files(target, "replace", "Choose another directory or move those files away; a rewrite can "
                         "replace it as a whole with rewrite_base_model(..., overwrite=True) or "
                         "`gradiend rewrite ... --overwrite`")


def refuse_foreign_files(target: Path, action: str, fix: str) -> None:
    """OutputNotOursError naming (up to five of) the files in `target` we did not write, and `fix`."""
    foreign = foreign_files(target)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputNotOursError(f"Refusing to {action} {target}: it holds files gradiend did not write ({shown}). "
                                 f"{fix}")


def _write_manifest(directory: Path, kind: str) -> None:
    """Record what we wrote in `directory` (the file list decides later whether it is ours to replace)."""
    from gradiend._version import __version__

    files = [name for name in _files_below(directory) if name != OUTPUT_MARKER]
    atomic_write_json(directory / OUTPUT_MARKER, {"written_by": "gradiend", "version": __version__, "kind": kind,
                                                  "files": files})


def _remove_tree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except OSError as err:
        logger.warning("Could not remove %s (%s); delete it by hand", path, err)


def _remove_entry(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        _remove_tree(path)
    else:
        path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted(parent: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Undo directory swaps whose process died between the two renames (of `name`, or of any entry).

    Where the target is missing, its moved-aside original is renamed back (the old version is
    restored); where the target exists, the swap finished and the leftover original is removed.
    Leftovers of live processes are skipped. Returns the restored paths. Rank 0's job in a distributed run.
    """
    parent = Path(parent)
    if not parent.is_dir() or _skip_write():
        return []
    restored = []
    for entry in sorted(parent.iterdir()):
        match = _ASIDE_RE.match(entry.name)
        if match is None or (name is not None and match["name"] != name) or _process_alive(int(match["pid"])):
            continue
        original = entry.with_name(match["name"])
        if original.exists() or original.is_symlink():
            logger.info("Removing %s, left by a replacement of %s that was interrupted after it finished",
                        entry, original)
            _remove_tree(entry)
        else:
            os.replace(entry, original)
            logger.warning("Restored %s: the run that was replacing it died mid-swap", original)
            restored.append(original)
    return restored


def remove_orphan_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove our temp entries (`.<name>.<8 hex>.tmp`) directly in `directory`, left by killed runs.

    Not recursive: our temp entries sit next to what they replace (the experiment root, the seeds
    and gradient-cache directories), and folders of the user's inside the experiment are never walked.
    Call only while holding the experiment lock: a live writer's temp entries look the same.
    Rank 0's job in a distributed run.
    """
    if _skip_write():
        return []
    removed = []
    for path in Path(directory).iterdir():
        if _TEMP_RE.match(path.name):
            _remove_entry(path)
            removed.append(path)
    if removed:
        logger.info("Removed %d temp entries left by an interrupted run in %s", len(removed), directory)
    return removed


def _swap_in(tmp: Path, target: Path) -> None:
    """Move the finished `tmp` to `target`; an existing target is moved aside first, then removed.

    A process killed between the two renames leaves the aside copy, which `recover_interrupted`
    restores on the next start.
    """
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp, target)
        return
    aside = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.old")
    os.replace(target, aside)
    try:
        _write_point("swap", target, tmp)
        os.replace(tmp, target)
    except BaseException:
        os.replace(aside, target)
        raise
    _remove_tree(aside)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, *, overwrite: bool = False, kind: str = "output") -> Iterator[Path]:
    """Yield a temp dir next to `target`; on success it replaces `target` as a whole.

    `target` must be ours (see `check_replaceable`) unless `overwrite`; it is checked before and again
    right before the swap. The new directory gets our manifest (`kind` says what it holds).
    On ranks other than 0 of a distributed run the block gets a scratch directory, removed afterwards.
    """
    if _skip_write():
        scratch = Path(tempfile.mkdtemp(prefix="gradiend-rank-scratch-"))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    target = Path(target)
    with naming_write_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted(target.parent, target.name)
    check_replaceable(target, overwrite=overwrite)
    tmp = _make_temp_dir(target)
    try:
        try:
            yield tmp
        except OSError as err:
            if isinstance(err, OutputNotWritableError) or err.errno in _DISK_ERRNOS:
                raise OutputNotWritableError.wrap(target, err) from err  # a temp path would mean nothing
            raise
        with naming_write_errors(target):
            _write_manifest(tmp, kind)
        check_replaceable(target, overwrite=overwrite)
        _write_point("dir", target, tmp)
        with naming_write_errors(target):
            _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _make_temp_dir(target: Path) -> Path:
    with naming_write_errors(target):
        while True:
            tmp = _temp_name(target)
            try:
                os.mkdir(tmp, 0o777)
                return tmp
            except FileExistsError:
                continue


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


def weights_stamp(model_dir: str | os.PathLike) -> str | None:
    """Identity of a GRADIEND checkpoint's weights file (mtime + size; every save is a new file), or None.

    Evaluation results record it, so results of an earlier model in the same directory are recognised.
    """
    weights = Path(model_dir) / MODEL_WEIGHTS
    if not weights.is_file():
        return None
    stat = weights.stat()
    return f"{stat.st_mtime_ns}-{stat.st_size}"


def short_hash(text: str) -> str:
    """16 hex digits of the SHA-256 of `text` (cache keys of data and texts)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-serialisable object (cache keys)."""
    return short_hash(json.dumps(obj, sort_keys=True, default=_json_default))


# ---------------------------------------------------------------- the experiment directory

_THREAD = threading.local()


def _held_roots() -> set[Path]:
    """The experiment roots whose lock this thread holds."""
    if not hasattr(_THREAD, "roots"):
        _THREAD.roots = set()
    return _THREAD.roots


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


def _model_in_swap(root: Path) -> Path | None:
    """The moved-aside `model/` of a swap caught between its two renames (a writer live at that moment, or
    killed there), None when `model/` exists or nothing is aside. Readers read it: it is the last complete
    checkpoint, and the next writer restores or removes it."""
    if (root / MODEL_DIR).exists() or not root.is_dir():
        return None
    aside = [entry for entry in root.iterdir() if (match := _ASIDE_RE.match(entry.name)) and
             match["name"] == MODEL_DIR and (entry / MODEL_CONFIG).is_file()]
    if len(aside) != 1:
        return None
    logger.info("%s is being replaced; reading its previous version %s", root / MODEL_DIR, aside[0])
    return aside[0]


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
        for name, path in (("output_dir (the model directory)", self.model), ("seed_runs_dir", self.seeds)):
            if path.resolve() == self.root.resolve() or is_within(self.root, path):
                raise UnsafePathError(f"{name} {path} is or holds the experiment directory {self.root}, whose "
                                      f"results it would replace; use a sub-directory such as {self.root / MODEL_DIR}")

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
            path = path.parent
        return cls(path, model_dir=_model_in_swap(path))

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
        split = safe_path_part(split, "split")
        return f"{_ENCODER_PREFIX}{split}{f'{_MAX_SIZE_TAG}{max_size}' if max_size is not None else ''}"

    def encoder_csv(self, split: str, max_size: int | None) -> Path:
        """The cached encodings of one split (metrics are recomputed from them)."""
        return self.root / f"{self._encoder_stem(split, max_size)}.csv"

    def encoder_meta(self, split: str, max_size: int | None) -> Path:
        """Cache key, split, cap and metrics of one split's encodings."""
        return self.root / f"{self._encoder_stem(split, max_size)}.json"

    def rewritten(self, key: str) -> Path:
        """Where the base model rewritten for `key` (`<class>[_weaken]`) is saved (`key` made a safe name)."""
        path = child_path(self.root, key, "class key")
        if path.name in (MODEL_DIR, SEEDS_DIR, "cache"):
            raise UnsafePathError(f"class key {key!r} names the experiment's own {path.name}/ directory; pass "
                                  f"rewrite(output_dir=...) to save the rewrite elsewhere")
        return path

    def check_output_dir(self, path: str | os.PathLike) -> Path:
        """Refuse an output directory that is, holds, or lies inside a part of this experiment it would replace.

        Allowed: any directory outside the experiment, or a new sub-directory of it other than
        `model/`, `seeds/` and `cache/`.
        """
        path = Path(path)
        if path.resolve() == self.root.resolve() or is_within(self.root, path):
            raise UnsafePathError(f"Output directory {path} is or holds the experiment directory {self.root}; "
                                  f"choose a directory outside it or a new sub-directory of it")
        for part in (self.model, self.seeds, self.root / "cache"):
            if is_within(path, part):
                raise UnsafePathError(f"Output directory {path} lies inside {part}, which the experiment manages; "
                                      f"choose a directory outside it")
        return path

    # the lock
    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the lock for a write, unless this thread already holds it (a write inside `train()`)."""
        if self.root.resolve() in _held_roots():
            yield
            return
        with self.lock():
            yield

    def _clean_leftovers(self) -> None:
        """Restore swaps and remove temp entries a killed run left (called with the lock held)."""
        recover_interrupted(self.root)
        recover_interrupted(self.model.parent, self.model.name)
        recover_interrupted(self.seeds)
        from gradiend.resume import clean_resume_root  # resume imports this module

        clean_resume_root(self.root)
        for directory in dict.fromkeys((self.root, self.model, self.seeds, self.gradient_cache)):
            if directory.is_dir():
                remove_orphan_temps(directory)
        if self.model.parent.is_dir() and not is_within(self.model.parent, self.root):
            # a model directory outside the experiment: only the temp entries of its own name
            for entry in self.model.parent.iterdir():
                if _TEMP_RE.match(entry.name) and entry.name.startswith(f".{self.model.name}."):
                    _remove_entry(entry)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory for one run; a second holder (any process, any trainer) gets RuntimeError.

        Several processes: rank 0 holds it (`_file_lock`), the other ranks wait until it does, and every
        rank waits for the others before it is released (see the module doc)."""
        if not _several_processes():
            with self._file_lock():
                yield
            return
        from gradiend import distributed

        if not distributed.context().enabled:
            with self._file_lock():
                yield
            return
        with self._ranks_lock():
            yield

    @contextlib.contextmanager
    def _ranks_lock(self) -> Iterator[None]:
        """`lock()` of a distributed run: rank 0's file lock, barriers on entry and (normal) exit for every rank.

        A rank that fails inside the block skips the exit barrier: its peers get `DistributedError` at
        their next collective once it exits, instead of a collective that does not match theirs."""
        from gradiend import distributed

        with contextlib.ExitStack() as stack:
            if distributed.is_main():
                try:
                    stack.enter_context(self._file_lock())
                except Exception:
                    distributed.all_agree(False, "experiment lock")  # the others are waiting for this answer
                    raise
            if not distributed.all_agree(True, "experiment lock"):
                raise RuntimeError(f"Rank 0 could not take the experiment lock of {self.root}; see its error")
            roots, key = _held_roots(), self.root.resolve()
            added = key not in roots
            roots.add(key)
            try:
                yield
            finally:
                if added:
                    roots.discard(key)
            distributed.barrier("experiment lock release")  # rank 0's writes are complete for everyone

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """The OS file lock behind `lock()` (one process, or rank 0).

        An OS file lock (`filelock`, flock): the kernel releases it when its holder exits, so a
        killed run leaves no stale lock to clean up (its file stays, unlocked). On a normal exit
        the holder removes the file while still holding it; a peer that opened the old file then
        locks an unlinked inode, which filelock detects and does not count as held.
        """
        import filelock  # ~20 ms; only runs that write need it

        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"Experiment directory {self.root} is a file; pass a directory path")
        with naming_write_errors(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(self.lock_file, timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise RuntimeError(f"Experiment directory {self.root} is in use by another run (lock {self.lock_file}); "
                               f"wait for it to finish or use another experiment_dir") from None
        held = os.stat(self.lock_file)
        roots = _held_roots()
        key = self.root.resolve()
        roots.add(key)
        try:
            self._clean_leftovers()
            yield
        finally:
            roots.discard(key)
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

    @contextlib.contextmanager
    def replace_dir(self, path: str | os.PathLike, *, overwrite: bool = False,
                    kind: str = "output") -> Iterator[Path]:
        """A temp dir that replaces `path` (ours only, see `check_replaceable`) as a whole when the block succeeds."""
        target = self.root / path
        if target.resolve() == self.root.resolve() or is_within(self.root, target):
            raise UnsafePathError(f"Refusing to replace {target}: it is or holds the experiment directory {self.root}")
        with atomic_directory(target, overwrite=overwrite, kind=kind) as tmp:
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
            try:  # a writer may replace the directory meanwhile: then it is skipped
                if (child / "config.json").is_file() and "- gradiend" in card.read_text("utf-8")[:500]:
                    found.append(child)
            except (FileNotFoundError, NotADirectoryError):
                continue
        return found
