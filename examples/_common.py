"""Shared command-line options and printing of the example workflows (not part of the library)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from gradiend import TrainingArguments, embedded_model_path


def parser(description: str, *, steps: int, experiment_dir: str) -> argparse.ArgumentParser:
    """Options every example takes: the base model, where to write, and how long to train."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="mlm",
                   help="base model: 'mlm' / 'clm' (the embedded offline models), a Hub id or a local directory")
    p.add_argument("--experiment-dir", default=experiment_dir, help="where the runs go (default: %(default)s)")
    p.add_argument("--steps", type=int, default=steps, help="optimiser steps per GRADIEND (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="training batch size (default: %(default)s)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="GRADIEND learning rate (default: %(default)s)")
    p.add_argument("--params", nargs="*", default=None,
                   help="base-model parameters to learn from (glob patterns; default: all)")
    p.add_argument("--max-size", type=int, default=40, help="evaluation rows per class (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no printed tables")
    return p


def model_path(name: str) -> str:
    """'mlm'/'clm' → the embedded model's directory (built on first use), anything else as given."""
    return embedded_model_path(name) if name in ("mlm", "clm") else name


def training_args(ns: argparse.Namespace, experiment_dir: str, **overrides: Any) -> TrainingArguments:
    """TrainingArguments of the command line, `overrides` on top."""
    settings: dict[str, Any] = {
        "experiment_dir": experiment_dir, "train_batch_size": ns.batch_size, "max_steps": ns.steps,
        "eval_steps": max(1, ns.steps // 2), "learning_rate": ns.learning_rate, "seed": ns.seed,
        "show_progress": not ns.quiet, "encoder_eval_train_max_size": ns.max_size,
        "encoder_eval_max_size": ns.max_size}
    if ns.params:
        settings["params"] = list(ns.params)
    settings.update(overrides)
    return TrainingArguments(**settings)


def setup_logging(ns: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING if ns.quiet else logging.INFO, format="%(levelname)s %(message)s")


def format_matrix(title: str, payload: dict[str, Any], digits: int = 2) -> str:
    """A `{"model_ids", "column_ids", "matrix"}` payload as a plain-text table."""
    columns: Sequence[str] = payload["column_ids"]
    width = max(8, *(len(str(c)) for c in columns), *(len(str(m)) for m in payload["model_ids"]))
    lines = [title, " " * width + " " + " ".join(f"{c:>{width}}" for c in columns)]
    for model, row in zip(payload["model_ids"], payload["matrix"], strict=True):
        cells = " ".join(f"{'-' if v is None else format(v, f'.{digits}f'):>{width}}" for v in row)
        lines.append(f"{model:>{width}} {cells}")
    return "\n".join(lines)


def report(ns: argparse.Namespace, text: str) -> None:
    """Print a result unless --quiet (the examples are scripts; the library never prints)."""
    if not ns.quiet:
        print(text)
