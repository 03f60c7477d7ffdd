"""Plots drawn from saved results (training statistics, encoder DataFrames), never live trainers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from gradiend.experiment import atomic_write_with

logger = logging.getLogger(__name__)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("Plots need matplotlib: pip install 'gradiend[plot]'") from err
    return plt


def _save(fig: Any, output: str, show: bool) -> str:
    plt = _pyplot()
    suffix = Path(output).suffix.lstrip(".") or "png"
    atomic_write_with(output, lambda tmp: fig.savefig(tmp, format=suffix, dpi=120, bbox_inches="tight"))
    if show:
        plt.show()
    plt.close(fig)
    logger.info("Saved plot %s", output)
    return output


def plot_training_convergence(stats: dict[str, Any], output: str, show: bool = False) -> str:
    """Validation correlation and class means per evaluation step; the best step marked."""
    plt = _pyplot()
    train = stats["training_stats"]
    steps = sorted(int(s) for s in train["scores"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(steps, [train["scores"][str(s)] for s in steps], marker="o")
    ax1.set(xlabel="step", ylabel="validation correlation", ylim=(-1.05, 1.05), title="Correlation")
    classes = list(train["mean_by_class"][str(steps[0])]) if steps else []
    for cls in classes:
        ax2.plot(steps, [train["mean_by_class"][str(s)][cls] for s in steps], marker="o", label=cls)
    ax2.set(xlabel="step", ylabel="mean encoding", ylim=(-1.05, 1.05), title="Class means")
    best = stats.get("best_score_checkpoint")
    for ax in (ax1, ax2):
        ax.axhline(0, color="grey", lw=0.5)
        if best:
            ax.axvline(best["global_step"], color="red", ls="--", lw=1, label="best")
    ax2.legend()
    return _save(fig, output, show)


def plot_encoder_distributions(encoder_df: pd.DataFrame, pair: Sequence[str], output: str, show: bool = False) -> str:
    """Violins of the encodings per target class and per neutral variant."""
    plt = _pyplot()
    groups, names = [], []
    for cls in pair:
        values = encoder_df.loc[(encoder_df["type"] == "training") & (encoder_df["factual_class"] == cls), "encoded"]
        if len(values):
            groups.append(values.to_numpy())
            names.append(cls)
    for kind in ("neutral_training_masked", "neutral_dataset"):
        values = encoder_df.loc[encoder_df["type"] == kind, "encoded"]
        if len(values):
            groups.append(values.to_numpy())
            names.append(kind.replace("_", " "))
    fig, ax = plt.subplots(figsize=(1.8 * max(len(groups), 2) + 1, 3.6))
    if groups:
        ax.violinplot(groups, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set(ylabel="encoded value h", ylim=(-1.1, 1.1), title="Encoder distributions")
    ax.axhline(0, color="grey", lw=0.5)
    return _save(fig, output, show)
