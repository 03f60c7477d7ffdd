"""Plots drawn from saved results: an experiment directory or the dicts/DataFrames the trainer returns.

Each `plot_*` function saves a file and returns its path; the matching `*_figure` function builds
the matplotlib figure only (for notebooks, custom layouts and the HTML report). Matplotlib comes
with the `[plot]` extra, plotly (the interactive scatter only) with `[interactive]`. `show=True`
displays a plot when a display exists; a headless process only saves it.
"""

from __future__ import annotations

import html
import itertools
import logging
import os
import sys
import webbrowser
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from gradiend.experiment import atomic_write_bytes, atomic_write_with, safe_path_part
from gradiend.records import DecoderSelection, TrainingRecord
from gradiend.results import (
    OutputNotWritableError,
    experiment_root,
    load_decoder,
    load_encodings,
    load_training,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

PLOT_HINT = "Plots need matplotlib: pip install 'gradiend[plot]'"
INTERACTIVE_HINT = "The interactive scatter needs plotly: pip install 'gradiend[interactive]'"
NEUTRAL_TYPES = ("neutral_training_masked", "neutral_dataset")
NEUTRAL_LABELS = {"neutral_training_masked": "neutral (masked other word)", "neutral_dataset": "neutral text"}
_NON_INTERACTIVE = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}
_LMS_RATIO = 0.99
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")  # matplotlib's C0…C5

StatsSource = Mapping[str, Any] | str | os.PathLike
FrameSource = pd.DataFrame | str | os.PathLike
DecoderSource = Mapping[str, Any] | Sequence[Mapping[str, Any]] | str | os.PathLike


# -- backend, display and saving -------------------------------------------------------------------
def has_display() -> bool:
    """False on Linux/BSD without X11 or Wayland (servers, CI, containers)."""
    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(PLOT_HINT) from err
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND") and not has_display():
        matplotlib.use("Agg")  # never try a GUI backend without a display
    return matplotlib


def _can_show() -> bool:
    matplotlib = _matplotlib()
    backend = str(matplotlib.get_backend()).lower()
    if backend.startswith("module://"):  # notebook backends (inline, widget) never block
        return True
    return backend not in _NON_INTERACTIVE and has_display()


def _new_figure(figsize: tuple[float, float], show: bool) -> Figure:
    """A pyplot-managed figure when it will be shown, else a free-standing one (no GUI, no global state)."""
    _matplotlib()
    if show and _can_show():
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize)
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (used to embed plots in HTML)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def resolve_output(output: str | os.PathLike | None, directory: str | os.PathLike | None, stem: str,
                   img_format: str) -> Path:
    """Where a plot goes: `output` (a file, or a directory to put `<stem>.<fmt>` in), else `directory`.

    The stem carries class and split names, so it is made one safe file name (it cannot leave the directory).
    """
    stem = safe_path_part(stem, "plot name")
    suffix = "." + img_format.lstrip(".").lower()
    if output is None:
        if directory is None:
            raise ValueError("No experiment directory to save the plot in; pass output='path/to/plot" + suffix + "'")
        return Path(directory) / f"{stem}{suffix}"
    path = Path(output)
    if path.is_dir() or str(output).endswith(("/", os.sep)):
        return path / f"{stem}{suffix}"
    return path if path.suffix else path.with_suffix(suffix)


def _writer_error(path: Path, err: OSError) -> OutputNotWritableError:
    reason = err.strerror or str(err)
    return OutputNotWritableError(f"Cannot write {path}: {reason}; choose a writable output path")


def _save(fig: Figure, output: Path, show: bool, dpi: int) -> str:
    fmt = output.suffix.lstrip(".").lower()
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(f"Unsupported image format {fmt!r} for {output}; use one of {sorted(supported)}")
    try:
        atomic_write_with(output, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight"))
    except OSError as err:
        raise _writer_error(output, err) from err
    logger.info("Saved plot %s", output)
    if show and _can_show():
        import matplotlib.pyplot as plt

        plt.show()
        plt.close(fig)
    elif show:
        logger.info("No display: %s saved, not shown", output)
    return str(output)


def _finish(fig: Figure, output: Path | None, show: bool, dpi: int, return_fig_ax: bool) -> Any:
    """Save (when there is a path) and show; the path, or `(fig, axes)` with `return_fig_ax` (left open)."""
    if not return_fig_ax:
        return _save(fig, output, show, dpi)
    if output is not None:
        _save(fig, output, False, dpi)
    if show and _can_show():
        import matplotlib.pyplot as plt

        plt.show()
    axes = fig.axes
    return fig, axes[0] if len(axes) == 1 else axes


def _output(output: str | os.PathLike | None, directory: str | os.PathLike | None, stem: str, img_format: str,
            return_fig_ax: bool) -> Path | None:
    """`resolve_output`, except that a figure handed back (`return_fig_ax`) needs no file."""
    if return_fig_ax and output is None and directory is None:
        return None
    return resolve_output(output, directory, stem, img_format)


def _set_title(fig: Figure, title: str | bool | None, default: str, **options: Any) -> None:
    """`title`: True (or None) the default, False no title, a string that string."""
    if title is False:
        return
    if title is not None and title is not True and not isinstance(title, str):
        raise TypeError(f"title must be a string, True or False, got {type(title).__name__}")
    fig.suptitle(default if title is None or title is True else title, **options)


def _convergence_mark(converged: bool | None) -> str:
    """The default title's marker of a run that did not converge (`converged=False`); none when unknown."""
    return " (not converged) †" if converged is False else ""


def _check_figsize(figsize: Any) -> tuple[float, float] | None:
    if figsize is None:
        return None
    ok = isinstance(figsize, (tuple, list)) and len(figsize) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in figsize)
    if not ok:
        raise ValueError(f"figsize must be (width, height) in inches, both > 0, got {figsize!r}")
    return float(figsize[0]), float(figsize[1])


def _display(name: Any, mapping: Mapping[Any, str] | None) -> str:
    """Display name of a class/label via `label_name_mapping` (the raw value or its string form)."""
    if mapping is not None:
        if name in mapping:
            return str(mapping[name])
        if str(name) in mapping:
            return str(mapping[str(name)])
    return str(name)


# -- inputs ------------------------------------------------------------------------------------------
def _stats_and_dir(source: StatsSource) -> tuple[Mapping[str, Any], Path | None]:
    if isinstance(source, Mapping):
        return source, None
    return load_training(source), experiment_root(source)


def _frame_and_dir(source: FrameSource, split: str | None) -> tuple[pd.DataFrame, Path | None]:
    if isinstance(source, pd.DataFrame):
        return source, None
    return load_encodings(source, split), experiment_root(source)


def infer_pair(encoder_df: pd.DataFrame) -> tuple[str, str]:
    """The target pair of an encoder DataFrame: the class labelled +1 first."""
    training = encoder_df[encoder_df["type"] == "training"]
    if training.empty:
        raise ValueError("The encoder DataFrame has no target-class rows (type == 'training')")
    by_label = training.groupby("label")["factual_class"].first()
    classes = [str(by_label[k]) for k in sorted(by_label.index, reverse=True)]
    if len(classes) != 2:
        raise ValueError(f"Expected rows of two target classes, found {classes}; pass pair=")
    return classes[0], classes[1]


# -- training convergence ------------------------------------------------------------------------------
def training_convergence_figure(stats: Mapping[str, Any], *, best_step: bool = True, show: bool = False,
                                title: str | bool | None = True, figsize: tuple[float, float] | None = None,
                                plot_mean_by_class: bool = True,
                                label_name_mapping: Mapping[Any, str] | None = None,
                                highlight_non_convergence: bool = True) -> Figure:
    """Validation correlation, mean encoding per class (`plot_mean_by_class`) and training loss per step.

    `stats`: a `TrainingRecord` or the training.json dict; `label_name_mapping` renames classes;
    `highlight_non_convergence` puts the run's verdict in the title ("(not converged) †").
    """
    record = stats if isinstance(stats, TrainingRecord) else TrainingRecord.from_json(stats)
    train = record.training_stats
    steps = sorted(int(s) for s in train["scores"])
    losses = list(record.losses or [])
    n_panels = 1 + bool(plot_mean_by_class) + bool(losses)
    fig = _new_figure(_check_figsize(figsize) or (4.4 * n_panels, 3.6), show)
    axes = list(np.atleast_1d(fig.subplots(1, n_panels)))
    ax_corr = axes[0]
    ax_corr.plot(steps, [train["scores"][str(s)] for s in steps], marker="o", label="validation correlation")
    ax_corr.set(xlabel="step", ylabel="Pearson correlation", ylim=(-1.05, 1.05), title="Correlation (validation)")
    panels = [ax_corr]
    if plot_mean_by_class:
        ax_means = axes[1]
        classes = list(record.pair or (train["mean_by_class"][str(steps[0])] if steps else []))
        for cls in classes:
            ax_means.plot(steps, [train["mean_by_class"][str(s)].get(cls, np.nan) for s in steps], marker="o",
                          label=f"mean h ({_display(cls, label_name_mapping)})")
        ax_means.set(xlabel="step", ylabel="mean encoding h", ylim=(-1.05, 1.05), title="Class means (validation)")
        panels.append(ax_means)
    best = record.best_score_checkpoint if best_step else None
    best = best if best is not None and best.global_step is not None else None
    for ax in panels:
        ax.axhline(0, color="grey", lw=0.5)
        if best is not None:
            ax.axvline(best.global_step, color="tab:red", ls="--", lw=1, label=f"best step {best.global_step}")
        ax.legend(fontsize=8, loc="best")
    if losses:
        ax_loss = axes[-1]
        ax_loss.plot(range(1, len(losses) + 1), losses, lw=1, label="reconstruction loss")
        if min(losses) > 0:
            ax_loss.set_yscale("log")
        if best is not None:
            ax_loss.axvline(best.global_step, color="tab:red", ls="--", lw=1)
        ax_loss.set(xlabel="step", ylabel="loss", title="Training loss")
    pair, verdict = record.pair, record.converged
    default = "Training convergence" + (
        f": {_display(pair[0], label_name_mapping)} vs {_display(pair[1], label_name_mapping)}" if pair else "")
    if verdict is not None and highlight_non_convergence:
        default += " (converged)" if verdict else " (not converged) †"
    _set_title(fig, title, default)
    fig.tight_layout()
    return fig


def plot_training_convergence(source: StatsSource, output: str | os.PathLike | None = None, *,
                              directory: str | os.PathLike | None = None, show: bool = False,
                              best_step: bool = True, img_format: str = "png", dpi: int = 120,
                              title: str | bool | None = True, figsize: tuple[float, float] | None = None,
                              plot_mean_by_class: bool = True, label_name_mapping: Mapping[Any, str] | None = None,
                              return_fig_ax: bool = False, highlight_non_convergence: bool = True) -> Any:
    """Save the convergence plot of a run; `source`: experiment directory or the `training.json` dict.

    Default file: `<experiment_dir>/training_convergence.<img_format>` (`directory` for dict input).
    Returns the path, or `(fig, axes)` with `return_fig_ax=True` (saved too when a path resolves).
    """
    stats, found = _stats_and_dir(source)
    path = _output(output, directory or found, "training_convergence", img_format, return_fig_ax)
    fig = training_convergence_figure(stats, best_step=best_step, show=show, title=title, figsize=figsize,
                                      plot_mean_by_class=plot_mean_by_class, label_name_mapping=label_name_mapping,
                                      highlight_non_convergence=highlight_non_convergence)
    return _finish(fig, path, show, dpi, return_fig_ax)


# -- encoder distributions -----------------------------------------------------------------------------
SPLIT_PLOT_MODES = ("facet", "overlay")


def _encoder_groups(frame: pd.DataFrame, pair: Sequence[str], target_and_neutral_only: bool,
                    include_neutral: bool = True, names: Mapping[Any, str] | None = None
                    ) -> list[tuple[str, np.ndarray]]:
    groups: list[tuple[str, np.ndarray]] = []
    training = frame[frame["type"] == "training"]
    for cls in pair:
        rows = training[training["factual_class"].astype(str) == cls]
        if target_and_neutral_only:
            groups.append((_display(cls, names), rows["encoded"].to_numpy(dtype=float)))
        else:
            for token, sub in rows.groupby(rows["factual"].astype(str).str.lower(), sort=True):
                groups.append((f"{_display(cls, names)}: {token}", sub["encoded"].to_numpy(dtype=float)))
    for kind in NEUTRAL_TYPES if include_neutral else ():
        values = frame.loc[frame["type"] == kind, "encoded"].to_numpy(dtype=float)
        if len(values):
            groups.append((_display(kind, names) if names and kind in names else NEUTRAL_LABELS[kind], values))
    return [(name, values) for name, values in groups if len(values)]


def _split_panels(encoder_df: pd.DataFrame, mode: str) -> list[tuple[str | None, pd.DataFrame]]:
    """(split, rows) per panel: one per `eval_split` value ("facet"), or one for all ("overlay")."""
    if "eval_split" not in encoder_df.columns:
        return [(None, encoder_df)]
    splits = list(dict.fromkeys(encoder_df["eval_split"].astype(str)))
    if mode == "overlay" and len(splits) > 1:
        return [("all", encoder_df)]
    return [(s, encoder_df[encoder_df["eval_split"].astype(str) == s]) for s in splits]


def _panel_groups(frame: pd.DataFrame, split: str | None, pair: Sequence[str], target_and_neutral_only: bool,
                  include_neutral: bool, names: Mapping[Any, str] | None) -> list[tuple[str, np.ndarray]]:
    """The violins of one panel; an "overlay" panel holds every split's groups, labelled by split."""
    if split != "all" or "eval_split" not in frame.columns:
        return _encoder_groups(frame, pair, target_and_neutral_only, include_neutral, names)
    return [(f"{s}: {name}", values) for s, part in frame.groupby(frame["eval_split"].astype(str), sort=False)
            for name, values in _encoder_groups(part, pair, target_and_neutral_only, include_neutral, names)]


def encoder_distributions_figure(encoder_df: pd.DataFrame, pair: Sequence[str] | None = None, *,
                                 target_and_neutral_only: bool = True, show: bool = False, seed: int = 0,
                                 title: str | bool | None = True, figsize: tuple[float, float] | None = None,
                                 include_neutral: bool | None = None, split_plot_mode: str = "facet",
                                 label_name_mapping: Mapping[Any, str] | None = None,
                                 converged: bool | None = None) -> Figure:
    """Violins (plus the points) of the encodings per target class and neutral variant.

    Rows of several splits (`eval_split`): one panel per split (`split_plot_mode="facet"`) or one
    panel with every split's groups (`"overlay"`); neutral rows then only with `include_neutral=True`
    (default: shown for one split, hidden for several). `label_name_mapping` renames classes;
    `converged=False` marks the default title "(not converged) †".
    """
    if "encoded" not in encoder_df.columns:
        raise ValueError("encoder_df has no 'encoded' column; pass the DataFrame of evaluate_encoder(return_df=True)")
    if split_plot_mode not in SPLIT_PLOT_MODES:
        raise ValueError(f"split_plot_mode must be one of {list(SPLIT_PLOT_MODES)}, got {split_plot_mode!r}")
    pair = tuple(pair) if pair is not None else infer_pair(encoder_df)
    panels = _split_panels(encoder_df, split_plot_mode)
    several = "eval_split" in encoder_df.columns and encoder_df["eval_split"].nunique() > 1
    neutral = (not several) if include_neutral is None else bool(include_neutral)
    per_panel = [_panel_groups(frame, split, pair, target_and_neutral_only, neutral, label_name_mapping)
                 for split, frame in panels]
    width = max(len(g) for g in per_panel) if per_panel else 2
    size = _check_figsize(figsize) or (max(1.6 * max(width, 2) + 1.5, 5.0) * len(panels), 3.9)
    fig = _new_figure(size, show)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    rng = np.random.default_rng(seed)
    for ax, (split, _), groups in zip(axes, panels, per_panel, strict=True):
        ax.axhspan(-0.5, 0.5, color="0.93", zorder=0, label="neutral band ±0.5")
        ax.axhline(0, color="grey", lw=0.5)
        for i, (_, values) in enumerate(groups, start=1):
            color = f"C{i - 1}"
            if len(values) > 1 and np.ptp(values) > 0:
                parts = ax.violinplot([values], positions=[i], showextrema=False, widths=0.8)
                for body in parts["bodies"]:
                    body.set_facecolor(color)
                    body.set_alpha(0.35)
            jitter = rng.uniform(-0.12, 0.12, len(values))
            ax.scatter(i + jitter, values, s=6, color=color, alpha=0.6, lw=0)
            ax.scatter([i], [values.mean()], marker="D", s=28, color="black", zorder=4)
        ax.set_xticks(range(1, len(groups) + 1), [f"{name}\n(n={len(v)})" for name, v in groups], fontsize=8)
        ax.set(ylim=(-1.1, 1.1), title="Encodings" + (f" (split: {split})" if split else ""))
    axes[0].set_ylabel("encoded value h")
    a, b = (_display(c, label_name_mapping) for c in pair)
    _set_title(fig, title, f"Encoder distributions: {a} (+1) vs {b} (−1); ◆ = mean{_convergence_mark(converged)}",
               fontsize=10)
    fig.tight_layout()
    return fig


def plot_encoder_distributions(source: FrameSource, pair: Sequence[str] | None = None,
                               output: str | os.PathLike | None = None, *, directory: str | os.PathLike | None = None,
                               split: str | None = "test", show: bool = False, target_and_neutral_only: bool = True,
                               img_format: str = "png", dpi: int = 120, title: str | bool | None = True,
                               figsize: tuple[float, float] | None = None, include_neutral: bool | None = None,
                               split_plot_mode: str = "facet", label_name_mapping: Mapping[Any, str] | None = None,
                               return_fig_ax: bool = False, converged: bool | None = None) -> Any:
    """Save the encoder distribution plot; `source`: experiment directory or an encoder DataFrame.

    From a directory, `split=None` draws every saved split side by side. Default file:
    `<experiment_dir>/encoder_analysis_split_<split>.<img_format>` (`encoder_analysis.<fmt>` for all splits).
    Returns the path, or `(fig, axes)` with `return_fig_ax=True` (saved too when a path resolves).
    """
    frame, found = _frame_and_dir(source, split)
    stem = f"encoder_analysis_split_{split}" if split else "encoder_analysis"
    path = _output(output, directory or found, stem, img_format, return_fig_ax)
    fig = encoder_distributions_figure(frame, pair, target_and_neutral_only=target_and_neutral_only, show=show,
                                       title=title, figsize=figsize, include_neutral=include_neutral,
                                       split_plot_mode=split_plot_mode, label_name_mapping=label_name_mapping,
                                       converged=converged)
    return _finish(fig, path, show, dpi, return_fig_ax)


# -- interactive encoder scatter ----------------------------------------------------------------------------
def _plotly_go() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError as err:
        raise ImportError(INTERACTIVE_HINT) from err
    return go


def _wrap(text: str, width: int = 80) -> str:
    import textwrap

    return "<br>".join(textwrap.wrap(html.escape(str(text)), width)) or "&nbsp;"


def _scatter_groups(frame: pd.DataFrame, pair: Sequence[str], color_by: str | None,
                    names: Mapping[Any, str] | None) -> tuple[pd.Series, list[str]]:
    """The colour group of every row and the groups' order: class / neutral variant, or a column's values."""
    if color_by is None:
        raw = pd.Series([t if t in NEUTRAL_LABELS else str(c) for t, c in zip(frame["type"], frame["factual_class"],
                                                                           strict=True)], index=frame.index)
        order = [*pair, *NEUTRAL_TYPES]
        default = {**NEUTRAL_LABELS, **(names or {})}
    else:
        if color_by not in frame.columns:
            raise ValueError(f"color_by={color_by!r} is not a column of the encoder DataFrame; use one of "
                             f"{sorted(frame.columns)} or None (class / neutral variant)")
        raw = frame[color_by]
        order = sorted(raw.unique(), key=str)
        default = dict(names or {})
    if color_by == "label" and not names:
        default = {1: pair[0], -1: pair[1], 0: "neutral"}
    present = [g for g in order if (raw == g).any()]
    return raw.map(lambda v: _display(v, default)), [_display(g, default) for g in present]


def encoder_scatter_figure(encoder_df: pd.DataFrame, pair: Sequence[str] | None = None, *, max_points: int = 2000,
                           height: int = 500, seed: int = 0, color_by: str | None = None,
                           label_name_mapping: Mapping[Any, str] | None = None,
                           title: str | bool | None = True, converged: bool | None = None) -> Any:
    """Plotly figure: one jittered row of points per group; hovering shows the text.

    Groups: the target classes and neutral variants (`color_by=None`), or the values of a column
    (`color_by="label"`, `"factual"`, `"eval_split"`, …); `label_name_mapping` renames them.
    """
    go = _plotly_go()
    pair = tuple(pair) if pair is not None else infer_pair(encoder_df)
    frame = encoder_df.copy()
    frame["group"], groups = _scatter_groups(frame, pair, color_by, label_name_mapping)
    per_group = max(1, max_points // max(len(groups), 1))
    rng = np.random.default_rng(seed)
    fig = go.Figure()
    for i, name in enumerate(groups):
        rows = frame[frame["group"] == name]
        if len(rows) > per_group:
            rows = rows.iloc[np.sort(rng.choice(len(rows), size=per_group, replace=False))]
        hover = [f"<b>{html.escape(name)}</b> h = {h:+.3f}<br>token: {html.escape(str(f))}<br>{_wrap(t)}"
                 for h, f, t in zip(rows["encoded"], rows["factual"], rows["text"], strict=True)]
        fig.add_trace(go.Scatter(x=rows["encoded"], y=i + rng.uniform(-0.25, 0.25, len(rows)), mode="markers",
                                 name=f"{name} (n={len(rows)})", hovertext=hover, hoverinfo="text",
                                 marker={"size": 6, "opacity": 0.7, "color": _COLORS[i % len(_COLORS)]}))
    a, b = (_display(c, label_name_mapping) for c in pair)
    default = f"Encoder scatter: {a} (+1) vs {b} (−1); hover for the text{_convergence_mark(converged)}"
    if title is not None and not isinstance(title, (bool, str)):
        raise TypeError(f"title must be a string, True or False, got {type(title).__name__}")
    fig.update_layout(title=None if title is False else default if title in (True, None) else title,
                      height=height, xaxis={"title": "encoded value h", "range": [-1.1, 1.1]},
                      yaxis={"tickmode": "array", "tickvals": list(range(len(groups))), "ticktext": groups},
                      template="plotly_white", legend={"orientation": "h", "y": 1.0, "yanchor": "bottom"},
                      margin={"t": 90})
    return fig


def plot_encoder_scatter(source: FrameSource, pair: Sequence[str] | None = None,
                         output: str | os.PathLike | None = None, *, directory: str | os.PathLike | None = None,
                         split: str | None = "test", show: bool = False,
                         max_points: int = 2000, height: int = 500, include_plotlyjs: bool | str = True,
                         seed: int = 0, color_by: str | None = None,
                         label_name_mapping: Mapping[Any, str] | None = None, title: str | bool | None = True,
                         converged: bool | None = None) -> str:
    """Save an interactive HTML scatter of the encodings (plotly; the `[interactive]` extra).

    The HTML embeds plotly.js by default, so it opens offline; `include_plotlyjs="cdn"` makes it
    small but fetches the library when opened. Default file:
    `<experiment_dir>/encoder_scatter_split_<split>.html`. `show` opens it in a browser when a display exists.
    """
    _plotly_go()
    frame, found = _frame_and_dir(source, split)
    stem = f"encoder_scatter_split_{split}" if split else "encoder_scatter"
    path = resolve_output(output, directory or found, stem, "html")
    fig = encoder_scatter_figure(frame, pair, max_points=max_points, height=height, seed=seed, color_by=color_by,
                                 label_name_mapping=label_name_mapping, title=title, converged=converged)
    text = fig.to_html(include_plotlyjs=include_plotlyjs, full_html=True)
    try:
        atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as err:
        raise _writer_error(path, err) from err
    logger.info("Saved interactive scatter %s", path)
    if show:
        if has_display():
            webbrowser.open(path.resolve().as_uri())
        else:
            logger.info("No display: %s saved, not opened", path)
    return str(path)


# -- decoder probability shifts -------------------------------------------------------------------------------
def _decoder_input(source: DecoderSource) -> tuple[list[Mapping[str, Any]], Mapping[str, Any], Path | None]:
    if isinstance(source, (str, os.PathLike)):
        loaded = load_decoder(source)
        return loaded["grid"], loaded, experiment_root(source)
    if isinstance(source, Mapping):
        if "grid" not in source:
            raise ValueError("decoder results have no 'grid'; pass the dict evaluate_decoder() returned")
        return list(source["grid"]), source, None
    return list(source), {}, None


def probability_shifts_figure(grid: Sequence[Mapping[str, Any]], target_class: str,
                              selected: Mapping[str, Any] | None = None, *, lms_ratio: float = _LMS_RATIO,
                              show: bool = False, title: str | bool | None = True,
                              figsize: tuple[float, float] | None = None, converged: bool | None = None) -> Figure:
    """P(target-class tokens) on each class's rows and LMS against the learning rate, one line per
    feature factor; the base model dashed, the selected candidate starred; `converged=False` marks the title."""
    base = next((r for r in grid if r["feature_factor"] is None), None)
    if base is None:
        raise ValueError("The decoder grid has no base-model record (feature_factor None)")
    classes = list(base["probs"])
    if target_class not in classes:
        raise ValueError(f"Unknown target_class {target_class!r}; the grid has classes {classes}")
    others = [c for c in classes if c != target_class]
    factors = sorted({r["feature_factor"] for r in grid if r["feature_factor"] is not None})
    fig = _new_figure(_check_figsize(figsize) or (4.4 * (len(classes) + 1), 3.7), show)
    axes = fig.subplots(1, len(classes) + 1)
    panels = [*others, target_class]

    def series(ff: float) -> list[Mapping[str, Any]]:
        return sorted((r for r in grid if r["feature_factor"] == ff), key=lambda r: r["learning_rate"])

    for ax, dataset in zip(axes[:-1], panels, strict=True):
        for ff in factors:
            recs = series(ff)
            ax.plot([r["learning_rate"] for r in recs], [r["probs"][dataset][target_class] for r in recs],
                    marker="o", label=f"feature factor {ff:g}")
        ax.axhline(base["probs"][dataset][target_class], color="grey", ls="--", label="base model")
        ax.set(xscale="log", xlabel="learning rate", ylabel=f"P({target_class} tokens)",
               title=f"P({target_class}) on {dataset} rows")
    ax_lms = axes[-1]
    for ff in factors:
        recs = series(ff)
        ax_lms.plot([r["learning_rate"] for r in recs], [r["lms"] for r in recs], marker="o",
                    label=f"feature factor {ff:g}")
    ax_lms.axhline(base["lms"], color="grey", ls="--", label="base model")
    ax_lms.axhline(lms_ratio * base["lms"], color="tab:red", ls=":", label=f"{lms_ratio:g} × base LMS")
    ax_lms.set(xscale="log", xlabel="learning rate", ylabel="LMS", title="Language-modelling score (neutral)")
    if selected:
        selected = selected if isinstance(selected, DecoderSelection) else DecoderSelection.from_json(selected)
        strengthen = selected.strengthen is not False  # absent: a strengthen goal
        # strengthen: metric is P(target) on another class's rows; weaken: 1 − P(target) on its own rows
        star_ax = axes[0] if strengthen and others else axes[len(others)]
        star_y = selected.value if strengthen else 1.0 - selected.value
        label = f"selected ({selected.id or ''})"
        star_ax.scatter([selected.learning_rate], [star_y], marker="*", s=220, color="gold", edgecolor="black",
                        zorder=5, label=label)
        ax_lms.scatter([selected.learning_rate], [selected.lms], marker="*", s=220, color="gold",
                       edgecolor="black", zorder=5, label=label)
    for ax in axes:
        ax.legend(fontsize=7)
    goal = "" if not selected else (" (strengthen)" if strengthen else " (weaken)")
    _set_title(fig, title, f"Decoder probability shifts: {target_class}{goal}{_convergence_mark(converged)}")
    fig.tight_layout()
    return fig


def plot_probability_shifts(source: DecoderSource, target_class: str, increase_target_probabilities: bool = True,
                            output: str | os.PathLike | None = None, *, directory: str | os.PathLike | None = None,
                            show: bool = False, img_format: str = "png", dpi: int = 120,
                            lms_ratio: float = _LMS_RATIO, title: str | bool | None = True,
                            figsize: tuple[float, float] | None = None, return_fig_ax: bool = False,
                            converged: bool | None = None) -> Any:
    """Save the probability-shift plot; `source`: experiment directory, evaluate_decoder()'s dict, or
    the grid records. Default file: `<experiment_dir>/decoder_probability_shifts_<class>[_weaken].<fmt>`."""
    grid, results, found = _decoder_input(source)
    key = target_class if increase_target_probabilities else f"{target_class}_weaken"
    selected = results.get(key)
    if results and selected is None and not isinstance(source, (str, os.PathLike)):
        available = sorted(k for k in results if k not in ("grid", "plot_path", "plot_paths"))
        raise KeyError(f"No decoder summary {key!r} in the results; available: {available}")
    path = _output(output, directory or found, f"decoder_probability_shifts_{key}", img_format, return_fig_ax)
    fig = probability_shifts_figure(grid, target_class, selected, lms_ratio=lms_ratio, show=show, title=title,
                                    figsize=figsize, converged=converged)
    return _finish(fig, path, show, dpi, return_fig_ax)


# -- top-k overlap -------------------------------------------------------------------------------------
def _topk_payload(models: Any, topk: int | float, part: str, value: str) -> Mapping[str, Any]:
    """A `topk_overlap` payload: given as it is, or computed from models / paths / sets."""
    from gradiend.topk import topk_overlap

    if isinstance(models, Mapping) and "model_ids" in models and "sets" in models:
        return models
    return topk_overlap(models, topk, part=part, value=value)  # type: ignore[arg-type]


def topk_overlap_heatmap_figure(payload: Mapping[str, Any], *, value: str | None = None, title: str | None = None,
                                figsize: tuple[float, float] | None = None, annot: bool = True, cmap: str = "viridis",
                                show: bool = False) -> Figure:
    """Heatmap of a `topk_overlap` payload (`value`: intersection, intersection_frac or jaccard)."""
    value = value or payload["value"]
    if value not in ("intersection", "intersection_frac", "jaccard"):
        raise ValueError(f"value must be 'intersection', 'intersection_frac' or 'jaccard', got {value!r}")
    ids = list(payload["model_ids"])
    matrix = np.asarray(payload[value], dtype=float)
    n = len(ids)
    fig = _new_figure(figsize or (1.2 * n + 2.5, 1.0 * n + 1.8), show)
    ax = fig.subplots()
    vmax = float(matrix.max()) if value == "intersection" else 1.0
    image = ax.imshow(matrix, cmap=cmap, vmin=0.0, vmax=vmax or 1.0)
    ax.set_xticks(range(n), ids, rotation=45, ha="right")
    ax.set_yticks(range(n), ids)
    if annot:
        for i in range(n):
            for j in range(n):
                text = f"{int(matrix[i, j])}" if value == "intersection" else f"{matrix[i, j]:.2f}"
                dark = matrix[i, j] < 0.5 * (vmax or 1.0)
                ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label=value.replace("_", " "))
    ax.set_title(title or f"Top-{payload['topk']} overlap ({payload['part']})")
    fig.tight_layout()
    return fig


def plot_topk_overlap_heatmap(models: Any, topk: int | float = 1000, *, part: str = "decoder-weight",
                              value: str = "intersection", output: str | os.PathLike | None = None,
                              show: bool = False, title: str | None = None, figsize: tuple[float, float] | None = None,
                              annot: bool = True, cmap: str = "viridis", img_format: str = "png",
                              dpi: int = 120) -> str:
    """Save a heatmap of the pairwise overlap of the models' top-k weight sets; returns the file path.

    `models`: what `gradiend.topk.topk_overlap` takes (a list or dict of models, checkpoint or
    experiment paths, trainers, coordinate sets) or its payload. `output` is required (a file or
    directory): there is no single experiment directory for several models.
    """
    payload = _topk_payload(models, topk, part, value)
    stem = f"topk_overlap_{payload['part']}_{payload['topk']}"
    path = resolve_output(output, None, stem, img_format)
    fig = topk_overlap_heatmap_figure(payload, value=value, title=title, figsize=figsize, annot=annot, cmap=cmap,
                                      show=show)
    return _save(fig, path, show, dpi)


_VENN_LAYOUT = {2: ((-0.5, 0.0), (0.5, 0.0)), 3: ((-0.5, 0.3), (0.5, 0.3), (0.0, -0.55))}


def _venn_regions(sets: Sequence[frozenset]) -> dict[tuple[bool, ...], int]:
    """Size of every non-empty Venn region, keyed by membership (in set i or not)."""
    universe = frozenset().union(*sets)
    counts = {key: 0 for key in itertools.product((True, False), repeat=len(sets)) if any(key)}
    for item in universe:
        key = tuple(item in s for s in sets)
        counts[key] += 1
    return counts


def topk_venn_figure(payload: Mapping[str, Any], *, title: str | None = None,
                     figsize: tuple[float, float] | None = None, show: bool = False) -> Figure:
    """Venn diagram (2 or 3 circles, drawn with matplotlib only) of a `topk_overlap` payload's sets."""
    from matplotlib.patches import Circle

    ids = list(payload["model_ids"])
    if len(ids) not in _VENN_LAYOUT:
        raise ValueError(f"A Venn diagram shows 2 or 3 sets, got {len(ids)}; use plot_topk_overlap_heatmap for more")
    sets = [payload["sets"][i] for i in ids]
    centers = _VENN_LAYOUT[len(ids)]
    radius = 0.8
    fig = _new_figure(figsize or (6.0, 5.5), show)
    ax = fig.subplots()
    for k, ((x, y), name) in enumerate(zip(centers, ids, strict=True)):
        ax.add_patch(Circle((x, y), radius, alpha=0.3, color=_COLORS[k], lw=1.5))
        ax.text(x + (x * 0.9), y + (0.95 if y >= 0 else -1.0), f"{name}\n({len(sets[k])})", ha="center",
                va="center", fontsize=10, color=_COLORS[k], fontweight="bold")
    for key, count in _venn_regions(sets).items():
        inside = [centers[i] for i, member in enumerate(key) if member]
        outside = [centers[i] for i, member in enumerate(key) if not member]
        x0, y0 = float(np.mean([c[0] for c in inside])), float(np.mean([c[1] for c in inside]))
        # push the label away from the circles the region lies outside of
        cx = x0 + sum(0.25 * (x0 - ox) for ox, _ in outside)
        cy = y0 + sum(0.25 * (y0 - oy) for _, oy in outside)
        ax.text(cx, cy, str(count), ha="center", va="center", fontsize=11)
    ax.set_xlim(-1.7, 1.7)
    ax.set_ylim(-1.7, 1.7)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title or f"Top-{payload['topk']} weights ({payload['part']})")
    return fig


def plot_topk_overlap_venn(models: Any, topk: int | float = 1000, *, part: str = "decoder-weight",
                           output: str | os.PathLike | None = None, show: bool = False, title: str | None = None,
                           figsize: tuple[float, float] | None = None, img_format: str = "png",
                           dpi: int = 120) -> str:
    """Save a Venn diagram of 2 or 3 models' top-k weight sets (region sizes printed); returns the path.

    `models` as for `plot_topk_overlap_heatmap`; `output` (file or directory) is required.
    """
    payload = _topk_payload(models, topk, part, "intersection")
    path = resolve_output(output, None, f"topk_venn_{payload['part']}_{payload['topk']}", img_format)
    return _save(topk_venn_figure(payload, title=title, figsize=figsize, show=show), path, show, dpi)


def plot_seed_stability_topk(experiment_dir: str | os.PathLike, topk: int | float = 1000, *,
                             part: str = "decoder-weight", selection: str = "all_convergent",
                             output: str | os.PathLike | None = None, show: bool = False,
                             img_format: str = "png", dpi: int = 120) -> str:
    """Save the Jaccard heatmap of the seeds' top-k sets of a multi-seed run (default file in the experiment dir)."""
    from gradiend.experiment import ExperimentDir
    from gradiend.topk import seed_stability_topk

    payload = seed_stability_topk(experiment_dir, topk, part=part, selection=selection)  # type: ignore[arg-type]
    path = resolve_output(output, ExperimentDir.find(experiment_dir).root, f"seed_stability_topk_{topk}", img_format)
    title = (f"Top-{topk} stability across seeds (mean Jaccard {payload['mean_pairwise_jaccard']:.2f}, "
             f"{payload['common_to_all']} common)")
    fig = topk_overlap_heatmap_figure(payload, value="jaccard", title=title, show=show)
    return _save(fig, path, show, dpi)
