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


def plot_probability_shifts(grid: Sequence[dict[str, Any]], selected: dict[str, Any], target_class: str,
                            other_class: str, output: str, show: bool = False) -> str:
    """P(target-class tokens) on each dataset class and LMS vs the learning rate, per feature factor."""
    plt = _pyplot()
    base = next(r for r in grid if r["feature_factor"] is None)
    factors = sorted({r["feature_factor"] for r in grid if r["feature_factor"] is not None})
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [(other_class, f"P({target_class}) on {other_class} rows"),
              (target_class, f"P({target_class}) on {target_class} rows")]
    for ax, (dataset, title) in zip(axes[:2], panels, strict=True):
        for ff in factors:
            recs = sorted((r for r in grid if r["feature_factor"] == ff), key=lambda r: r["learning_rate"])
            ax.plot([r["learning_rate"] for r in recs], [r["probs"][dataset][target_class] for r in recs],
                    marker="o", label=f"ff={ff:g}")
        ax.axhline(base["probs"][dataset][target_class], color="grey", ls="--", label="base")
        ax.set(xscale="log", xlabel="learning rate", title=title)
    for ff in factors:
        recs = sorted((r for r in grid if r["feature_factor"] == ff), key=lambda r: r["learning_rate"])
        axes[2].plot([r["learning_rate"] for r in recs], [r["lms"] for r in recs], marker="o", label=f"ff={ff:g}")
    axes[2].axhline(base["lms"], color="grey", ls="--", label="base")
    axes[2].axhline(0.99 * base["lms"], color="red", ls=":", label="0.99 × base")
    axes[2].set(xscale="log", xlabel="learning rate", title="LMS (neutral text)")
    star_ax, star_y = (axes[0], selected["value"]) if selected["strengthen"] else (axes[1], 1 - selected["value"])
    star_ax.scatter([selected["learning_rate"]], [star_y], marker="*", s=200, color="gold", zorder=5,
                    label="selected")
    axes[2].scatter([selected["learning_rate"]], [selected["lms"]], marker="*", s=200, color="gold", zorder=5)
    star_ax.legend(fontsize=8)
    return _save(fig, output, show)
