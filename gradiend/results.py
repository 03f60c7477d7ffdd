"""Read the results an experiment directory holds, with errors that name the command producing them.

Plots and the HTML report are functions of these saved results, never of a live trainer. Every
loader accepts the experiment directory (or its `model/` checkpoint directory) and reads through
`ExperimentDir`; results come back as typed records (`gradiend.records`) that also read like dicts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from gradiend.experiment import (
    DECODER_GRID,
    DECODER_SUMMARIES,
    RUN_CONFIG,
    SEED_REPORT,
    SEEDS_DIR,
    EncoderResultFile,
    ExperimentDir,
    MissingResultError,
    OutputNotWritableError,
    read_json,
    weights_stamp,
)
from gradiend.records import EncoderMetrics, RunConfig, SeedReport, TrainingRecord

logger = logging.getLogger(__name__)

__all__ = [
    "DECODER_GRID",
    "DECODER_SUMMARIES",
    "RUN_CONFIG",
    "SEEDS_DIR",
    "SEED_REPORT",
    "EncoderResult",
    "MissingResultError",
    "OutputNotWritableError",
    "StaleResultError",
    "encoder_results",
    "experiment_root",
    "load_decoder",
    "load_encoder_metrics",
    "load_encodings",
    "load_model_config",
    "load_run_config",
    "load_seed_report",
    "load_training",
    "rewritten_models",
]

EncoderResult = EncoderResultFile  # former name


def experiment_root(path: str | os.PathLike) -> Path:
    """The experiment directory for `path` (which may also be its `model/` checkpoint)."""
    return ExperimentDir.find(path).root


def load_training(experiment_dir: str | os.PathLike) -> TrainingRecord:
    """`model/training.json`: per-eval correlation and class means, losses, timings, arguments."""
    return ExperimentDir.find(experiment_dir).load_training()


def load_model_config(experiment_dir: str | os.PathLike) -> dict[str, Any] | None:
    """`model/gradiend_config.json` (architecture, base model, parameter map), None when absent."""
    return ExperimentDir.find(experiment_dir).load_model_config()


def encoder_results(experiment_dir: str | os.PathLike) -> list[EncoderResultFile]:
    """Every saved encoder evaluation (`encoded_values_split_<s>[_max_size_<n>].csv`)."""
    return ExperimentDir.find(experiment_dir).encoder_results()


def _pick_encoder_result(experiment: ExperimentDir, split: str | None) -> EncoderResultFile:
    results = experiment.encoder_results()
    chosen = [r for r in results if split is None or r.split == split]
    if not chosen:
        flag = f" --split {split}" if split not in (None, "test") else ""
        have = f" (saved splits: {sorted({r.split for r in results})})" if results else ""
        raise MissingResultError(f"No encoder evaluation{'' if split is None else f' of split {split!r}'} in "
                                 f"{experiment.root}{have}; run `gradiend evaluate {experiment.root} --encoder{flag}` "
                                 f"first")
    # prefer the uncapped evaluation, else the largest cap
    return max(chosen, key=lambda r: (r.max_size is None, r.max_size or 0))


class StaleResultError(MissingResultError):
    """A saved result was made by an earlier model in the same directory (retrained since)."""


def _require_current(experiment: ExperimentDir, model: str | None, what: str, command: str) -> None:
    """Refuse a result recorded for other weights than the directory's current model (retrained since).

    Nothing is refused when either side is unknown (older files, or no checkpoint weights in the directory)."""
    current = weights_stamp(experiment.model)
    if model is not None and current is not None and model != current:
        raise StaleResultError(f"The {what} in {experiment.root} belongs to an earlier model in this directory "
                                 f"(retrained since); run `{command}` again")


def _current_encoder_result(experiment: ExperimentDir, split: str | None) -> EncoderResultFile:
    result = _pick_encoder_result(experiment, split)
    if result.meta.is_file():
        _require_current(experiment, result.load().model, f"encoder evaluation of split {result.split!r}",
                         f"gradiend evaluate {experiment.root} --encoder --split {result.split}")
    return result


def load_encodings(experiment_dir: str | os.PathLike, split: str | None = "test") -> pd.DataFrame:
    """The per-row encodings of one split (`split=None`: every saved split, with an `eval_split` column)."""
    experiment = ExperimentDir.find(experiment_dir)
    if split is None:
        splits = sorted({r.split for r in experiment.encoder_results()})
        if not splits:
            _pick_encoder_result(experiment, None)  # raises with the command to run
        return pd.concat([load_encodings(experiment.root, s) for s in splits], ignore_index=True)
    result = _current_encoder_result(experiment, split)
    frame = pd.read_csv(result.csv, keep_default_na=False)
    frame["eval_split"] = result.split
    return frame


def load_encoder_metrics(experiment_dir: str | os.PathLike, split: str = "test") -> EncoderMetrics:
    """The metrics saved next to an encoder evaluation (correlation, accuracies, class means, …)."""
    experiment = ExperimentDir.find(experiment_dir)
    result = _current_encoder_result(experiment, split)
    if not result.meta.is_file():
        raise MissingResultError(f"No encoder metrics in {experiment.root} ({result.meta.name} is missing); run "
                                 f"`gradiend evaluate {experiment.root} --encoder --split {split}` first")
    return result.load().metrics


def load_decoder(experiment_dir: str | os.PathLike) -> dict[str, Any]:
    """The decoder grid and the selected candidates: `{"grid": records, <class>: summary, …}`."""
    experiment = ExperimentDir.find(experiment_dir)
    _require_current(experiment, experiment.load_decoder_summaries().model, "decoder evaluation",
                     f"gradiend evaluate {experiment.root} --decoder")
    return experiment.load_decoder()


def load_seed_report(experiment_dir: str | os.PathLike) -> SeedReport | None:
    """`seeds/seed_report.json` (or under `seed_runs_dir`) of a multi-seed run, None for single-seed runs."""
    return ExperimentDir.find(experiment_dir).load_seed_report()


def load_run_config(experiment_dir: str | os.PathLike) -> RunConfig | None:
    """`run_config.json` (model, data, classes, arguments) written by `gradiend train`, None when absent."""
    return ExperimentDir.find(experiment_dir).load_run_config()


def rewritten_models(experiment_dir: str | os.PathLike) -> list[Path]:
    """Sub-directories holding a rewritten base model (HF checkpoint + GRADIEND model card)."""
    return ExperimentDir.find(experiment_dir).rewritten_models()


def load_seed_stability(experiment_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The seed-stability analysis of a multi-seed run (`seeds/seed_stability_topk.json`), None when absent."""
    from gradiend.topk import SEED_STABILITY_FILE

    path = ExperimentDir.find(experiment_dir).seeds / SEED_STABILITY_FILE
    return dict(read_json(path, "seed stability")) if path.is_file() else None
