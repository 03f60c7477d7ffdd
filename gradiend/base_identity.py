"""Identity of a base model: where it resolves to, and a content fingerprint of its weight files.

Results must stay bound to the weights that made them. A path string is not enough: new weights can
be saved at the same path, and a relative path means another model when read from another directory.
`resolve_base_model` turns a local path into an absolute one (Hub ids stay as given);
`base_model_fingerprint` keys a local model by the content of its files, cheaply: each weight file's
name, size and modification time, plus the safetensors header (tensor names, dtypes, shapes, offsets
and metadata), never the full weights. A Hub id is keyed by the id itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path

logger = logging.getLogger(__name__)

# files whose content decides what a local model computes
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
CONFIG_NAMES = ("config.json",)
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit on the header size


def local_model_dir(name_or_path: str | os.PathLike) -> Path | None:
    """The directory `name_or_path` names on disk, or None (a Hub id, or nothing there)."""
    path = Path(name_or_path).expanduser()
    return path.resolve() if path.is_dir() else None


def resolve_base_model(name_or_path: str | os.PathLike) -> str:
    """Absolute path of a local model directory; a Hub id (or a missing path) as given."""
    local = local_model_dir(name_or_path)
    return str(local) if local is not None else os.fspath(name_or_path)


def safetensors_header(path: Path) -> bytes:
    """The raw JSON header of a safetensors file (ValueError naming the path when it is not one)."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path} is not a safetensors file (only {len(prefix)} bytes); the file is truncated "
                             f"or damaged: save the model again (model.save_pretrained) or re-download it")
        (size,) = struct.unpack("<Q", prefix)
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"{path} has an implausible safetensors header size ({size} bytes); the file is "
                             f"damaged: save the model again (model.save_pretrained) or re-download it")
        header = handle.read(size)
    if len(header) < size:
        raise ValueError(f"{path} is truncated inside its safetensors header; save the model again "
                         f"(model.save_pretrained) or re-download it")
    return header


def check_safetensors(path: Path) -> None:
    """ValueError naming `path` when its header is unreadable or the file is shorter than the header says."""
    header = safetensors_header(path)
    try:
        entries = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} has an unreadable safetensors header ({err}); the file is damaged: save the "
                         f"model again (model.save_pretrained) or re-download it") from err
    end = max((e["data_offsets"][1] for k, e in entries.items() if k != "__metadata__"), default=0)
    expected, actual = 8 + len(header) + end, path.stat().st_size
    if actual < expected:
        raise ValueError(f"{path} is truncated: {actual} bytes, its header describes {expected}. Save the model "
                         f"again (model.save_pretrained) or re-download it")


def check_weight_files(directory: Path) -> None:
    """Check every safetensors file of a local model directory (cheap: headers and sizes only)."""
    for path in sorted(directory.glob("*.safetensors")):
        check_safetensors(path)


def base_model_fingerprint(name_or_path: str | os.PathLike) -> str:
    """Content key of a base model: local directories by their weight files, Hub ids by the id."""
    local = local_model_dir(name_or_path)
    if local is None:
        return "hub:" + os.fspath(name_or_path)
    digest = hashlib.sha256()
    files = sorted(p for p in local.iterdir()
                   if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in CONFIG_NAMES))
    for path in files:
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        if path.suffix == ".safetensors":
            digest.update(safetensors_header(path))
        elif path.name in CONFIG_NAMES:
            digest.update(path.read_bytes())
    return "local:" + digest.hexdigest()[:32]
