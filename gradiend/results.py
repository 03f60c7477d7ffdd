"""Read the results an experiment directory holds, with errors that name the command producing them.

Plots and the HTML report are functions of these saved results, never of a live trainer. Every
loader accepts the experiment directory (or its `model/` checkpoint directory).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gradiend.experiment import MODEL_DIR, TRAINING_STATS, read_json
from gradiend.model import CONFIG_FILE

logger = logging.getLogger(__name__)

DECODER_GRID = "decoder_grid.json"
DECODER_SUMMARIES = "decoder_summaries.json"
SEED_REPORT = "seeds/seed_report.json"
RUN_CONFIG = "run_config.json"
_ENCODER_CSV = re.compile(r"^encoded_values_split_(?P<split>.+?)(?:_max_size_(?P<max>\d+))?\.csv$")


class MissingResultError(FileNotFoundError):
    """An experiment directory lacks a result; the message says which command produces it."""


def experiment_root(path: str | os.PathLike) -> Path:
    """The experiment directory for `path` (which may also be its `model/` checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise MissingResultError(f"Experiment directory {path} does not exist; create it with "
                                 f"`gradiend train CONFIG.yaml` (or Trainer.train() with experiment_dir set)")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; pass the experiment directory")
    if (path / CONFIG_FILE).is_file() and path.name == MODEL_DIR:
        return path.parent
    return path


def _missing(what: str, path: Path, command: str) -> MissingResultError:
    return MissingResultError(f"No {what} in {path.parent if path.suffix else path} ({path.name} is missing); "
                              f"run `{command}` first")


def load_training(experiment_dir: str | os.PathLike) -> dict[str, Any]:
    """`model/training.json`: per-eval correlation and class means, losses, timings, arguments."""
    root = experiment_root(experiment_dir)
    path = root / MODEL_DIR / TRAINING_STATS
    if not path.is_file():
        raise _missing("training results", path, "gradiend train CONFIG.yaml")
    return read_json(path, "training stats")


def load_model_config(experiment_dir: str | os.PathLike) -> dict[str, Any] | None:
    """`model/gradiend_config.json` (architecture, base model, parameter map), None when absent."""
    path = experiment_root(experiment_dir) / MODEL_DIR / CONFIG_FILE
    return read_json(path, "GRADIEND config") if path.is_file() else None


@dataclass(frozen=True)
class EncoderResult:
    """One saved encoder evaluation: the split, its row cap and the CSV of encodings."""

    split: str
    max_size: int | None
    path: Path

    @property
    def metrics_path(self) -> Path:
        return self.path.with_suffix(".json")


def encoder_results(experiment_dir: str | os.PathLike) -> list[EncoderResult]:
    """Every saved encoder evaluation (`encoded_values_split_<s>[_max_size_<n>].csv`), sorted by split."""
    root = experiment_root(experiment_dir)
    found = []
    for path in sorted(root.glob("encoded_values_split_*.csv")):
        match = _ENCODER_CSV.match(path.name)
        if match:
            found.append(EncoderResult(match["split"], int(match["max"]) if match["max"] else None, path))
    return found


def _pick_encoder_result(experiment_dir: str | os.PathLike, split: str | None) -> EncoderResult:
    results = encoder_results(experiment_dir)
    chosen = [r for r in results if split is None or r.split == split]
    if not chosen:
        root = experiment_root(experiment_dir)
        flag = f" --split {split}" if split not in (None, "test") else ""
        have = f" (saved splits: {sorted({r.split for r in results})})" if results else ""
        raise MissingResultError(f"No encoder evaluation{'' if split is None else f' of split {split!r}'} in "
                                 f"{root}{have}; run `gradiend evaluate {root} --encoder{flag}` first")
    # prefer the uncapped evaluation, else the largest cap
    return max(chosen, key=lambda r: (r.max_size is None, r.max_size or 0))


def load_encodings(experiment_dir: str | os.PathLike, split: str | None = "test") -> pd.DataFrame:
    """The per-row encodings of one split (`split=None`: every saved split, with an `eval_split` column)."""
    if split is None:
        frames = []
        for split_name in sorted({r.split for r in encoder_results(experiment_dir)}):
            frame = load_encodings(experiment_dir, split_name)
            frames.append(frame)
        if not frames:
            _pick_encoder_result(experiment_dir, None)  # raises with the command to run
        return pd.concat(frames, ignore_index=True)
    result = _pick_encoder_result(experiment_dir, split)
    frame = pd.read_csv(result.path, keep_default_na=False)
    frame["eval_split"] = result.split
    return frame


def load_encoder_metrics(experiment_dir: str | os.PathLike, split: str = "test") -> dict[str, Any]:
    """The metrics saved next to an encoder evaluation (correlation, accuracies, class means, …)."""
    result = _pick_encoder_result(experiment_dir, split)
    if not result.metrics_path.is_file():
        raise _missing("encoder metrics", result.metrics_path,
                       f"gradiend evaluate {experiment_root(experiment_dir)} --encoder --split {split}")
    return read_json(result.metrics_path, "encoder metrics")["metrics"]


def load_decoder(experiment_dir: str | os.PathLike) -> dict[str, Any]:
    """The decoder grid and the selected candidates: `{"grid": records, <class>: summary, …}`."""
    root = experiment_root(experiment_dir)
    command = f"gradiend evaluate {root} --decoder"
    grid_path = root / DECODER_GRID
    if not grid_path.is_file():
        raise _missing("decoder evaluation", grid_path, command)
    result: dict[str, Any] = {"grid": list(read_json(grid_path, "decoder grid")["records"])}
    summaries = root / DECODER_SUMMARIES
    if summaries.is_file():
        result.update(read_json(summaries, "decoder summaries").get("summaries", {}))
    return result


def load_seed_report(experiment_dir: str | os.PathLike) -> dict[str, Any] | None:
    """`seeds/seed_report.json` (or under `seed_runs_dir`) of a multi-seed run, None for single-seed runs."""
    root = experiment_root(experiment_dir)
    candidates = [root / SEED_REPORT]
    stats_path = root / MODEL_DIR / TRAINING_STATS
    if stats_path.is_file():
        seed_dir = (read_json(stats_path, "training stats").get("training_args") or {}).get("seed_runs_dir")
        if seed_dir:
            candidates.append(Path(seed_dir) / Path(SEED_REPORT).name)
    path = next((p for p in candidates if p.is_file()), None)
    return read_json(path, "seed report") if path is not None else None


def load_run_config(experiment_dir: str | os.PathLike) -> dict[str, Any] | None:
    """`run_config.json` (model, data, classes, arguments) written by `gradiend train`, None when absent."""
    path = experiment_root(experiment_dir) / RUN_CONFIG
    return read_json(path, "run configuration") if path.is_file() else None


def rewritten_models(experiment_dir: str | os.PathLike) -> list[Path]:
    """Sub-directories holding a rewritten base model (HF checkpoint + GRADIEND model card)."""
    root = experiment_root(experiment_dir)
    found = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        card = child / "README.md"
        if (child / "config.json").is_file() and card.is_file() and "- gradiend" in card.read_text("utf-8")[:500]:
            found.append(child)
    return found


class OutputNotWritableError(OSError):
    """A plot, report or model could not be written where asked."""
