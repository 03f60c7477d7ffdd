"""Experiment-directory helpers: atomic writes keep normal permissions, failed writes leave nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gradiend.experiment import atomic_directory, atomic_write_json, atomic_write_with


def test_atomic_files_and_directories_get_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "f.txt").write_text("hi")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_failed_writes_leave_no_trace(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("old")

    def broken(path: str) -> None:
        Path(path).write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_with(tmp_path / "keep.txt", broken)
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "dir") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("interrupted")
    assert (tmp_path / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
