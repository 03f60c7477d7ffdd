"""One self-contained static HTML report of an experiment directory (plots embedded as PNG).

The report reads only saved results (see `gradiend.results`), fetches nothing from the network
and needs no JavaScript: configuration, data summary, training convergence, encoder metrics and
plots, the decoder grid, the selected rewrites, timings and versions.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import html
import importlib.metadata
import logging
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gradiend._version import __version__
from gradiend.experiment import atomic_write_bytes
from gradiend.records import BestCheckpoint, ConvergenceInfo, DecoderSelection, SeedReport, TrainingRecord
from gradiend.results import (
    MissingResultError,
    OutputNotWritableError,
    StaleResultError,
    encoder_results,
    experiment_root,
    load_decoder,
    load_encodings,
    load_model_config,
    load_run_config,
    load_seed_report,
    load_seed_stability,
    load_training,
    rewritten_models,
)

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
_PACKAGES = ("torch", "transformers", "numpy", "pandas", "safetensors", "matplotlib", "plotly")
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
h3{margin-bottom:.3rem}.meta{color:#666;font-size:.9rem}nav a{margin-right:1rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.88rem}
th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:#f5f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.selected td{background:#fff6d5}summary{cursor:pointer;color:#0645ad}
img{max-width:100%;height:auto;border:1px solid #eee}.note{color:#8a5300}.ok{color:#1a7f37}.bad{color:#b42318}
.cols{display:flex;flex-wrap:wrap;gap:2rem}code{background:#f5f5f7;padding:0 .2rem}
"""


# -- small HTML helpers --------------------------------------------------------------------------------
def _esc(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _num_class(value: Any) -> str:
    return ' class="num"' if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], row_classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td{_num_class(v)}>{_esc(_fmt(v))}</td>" for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv(items: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> str:
    pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
    return _table(["quantity", "value"], pairs)


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<p><img alt="{_esc(alt)}" src="data:image/png;base64,{data}"></p>'


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


class _Plots:
    """Renders report figures to PNG; degrades to a note when matplotlib is missing."""

    def __init__(self, enabled: bool, dpi: int) -> None:
        self.enabled, self.dpi, self.missing = enabled, dpi, False

    def render(self, build: Any, alt: str, *args: Any, **kwargs: Any) -> str:
        if not self.enabled:
            return ""
        from gradiend import plots

        try:
            fig = build(*args, **kwargs)
        except ImportError:
            self.missing = True
            return _note(plots.PLOT_HINT)
        return _image(plots.figure_png(fig, self.dpi), alt)


# -- sections ---------------------------------------------------------------------------------------------
def _configuration(training: TrainingRecord, config: Mapping[str, Any] | None,
                   run_config: Mapping[str, Any] | None) -> str:
    from gradiend.arguments import TrainingArguments

    pair = training.pair or (config or {}).get("feature_classes")
    rows: list[tuple[str, Any]] = [("base model", training.base_model or (config or {}).get("base_model")),
                                   ("target classes (+1, −1)", pair)]
    if config:
        n_entries = sum(int(_prod(p.get("shape", []))) for p in config.get("param_map", []))
        rows += [("gradient source → target", f"{config.get('source')} → {config.get('target')}"),
                 ("objective", config.get("objective")),
                 ("GRADIEND input dim", config.get("input_dim")),
                 ("parameter tensors (entries)", f"{len(config.get('param_map', []))} ({n_entries:,})"),
                 ("latent dim / activation", f"{config.get('latent_dim')} / {config.get('activation_encoder')}"),
                 ("encoding direction", config.get("feature_class_encoding_direction"))]
    if run_config:
        rows += [(f"{k} (command line)", v) for k, v in run_config.items() if k != "training_args"]
    args = training.training_args or {}
    defaults = {f.name: f.default for f in dataclasses.fields(TrainingArguments)
                if f.default is not dataclasses.MISSING}
    arg_rows = sorted(args.items())
    changed = [(k, v) for k, v in arg_rows if k in defaults and _fmt(defaults[k]) != _fmt(v)]
    return (f'<div class="cols"><div><h3>Run</h3>{_kv(rows)}</div>'
            f"<div><h3>TrainingArguments that differ from the defaults</h3>"
            f"{_table(['field', 'value'], changed)}</div></div>"
            f"<details><summary>All {len(arg_rows)} TrainingArguments</summary>"
            f"{_table(['field', 'value'], arg_rows)}</details>")


def _prod(shape: Iterable[int]) -> int:
    out = 1
    for dim in shape:
        out *= int(dim)
    return out


def _data(training: TrainingRecord, root: Path) -> str:
    stats = training.training_stats
    rows: list[tuple[str, Any]] = [("training rows", stats.get("n_train_rows")),
                                   ("validation rows (in-training evaluation)", stats.get("n_eval_rows"))]
    for result in encoder_results(root):
        try:
            frame = load_encodings(root, result.split)
        except MissingResultError as err:  # e.g. made by an earlier model in this directory
            rows.append((f"encoder evaluation ({result.split})", str(err)))
            continue
        except (OSError, ValueError) as err:
            rows.append((f"encoder evaluation ({result.split})", f"unreadable: {err}"))
            continue
        counts = frame.groupby(["type", "factual_class"]).size()
        for (kind, cls), n in counts.items():
            label = f"{result.split} split: {cls}" if kind == "training" else f"{result.split} split: {kind}"
            rows.append((label + (f" (capped at {result.max_size})" if result.max_size else ""), int(n)))
    return _kv(rows)


def _training(training: TrainingRecord, plots: _Plots) -> str:
    from gradiend.plots import training_convergence_figure

    best = training.best_score_checkpoint or BestCheckpoint()
    info = training.convergence_info or ConvergenceInfo()
    stats, scales = training.training_stats, training.gradient_scales or {}
    verdict = ('<p class="ok">Converged.</p>' if info.converged else
               f'<p class="bad">Not converged: {_esc(info.reason or "unknown reason")}</p>')
    rows = [("steps (epochs)", f"{stats.get('global_step')} ({stats.get('epochs')})"),
            ("best step", best.global_step), ("best validation correlation", best.correlation),
            ("class means at best step", best.mean_by_class),
            ("sign flips at steps", stats.get("sign_flips_at_steps")),
            ("convergence thresholds (|ρ|, |class mean|)",
             f"{info.convergent_score_threshold}, {info.convergent_mean_by_class_threshold}"),
            ("gradient scales (input, target)", f"{_fmt(scales.get('input'))}, {_fmt(scales.get('target'))}")]
    return verdict + _kv(rows) + plots.render(training_convergence_figure, "training convergence", training)


def _seeds(report: SeedReport, stability: Mapping[str, Any] | None = None) -> str:
    keys = ["seed", "converged", "training_score", "eval_correlation", "selection_score",
            "best_checkpoint_global_step", "seconds", "reason"]
    summary = {k: report[k] for k in ("max_seeds", "min_convergent_seeds", "seeds_tried", "convergent_count",
                                      "best_seed", "best_seed_selection_strategy", "early_stop_reason")
               if k in report}
    html = (_kv(summary) + _table(keys, [[r.get(k) for k in keys] for r in report.runs],
                                  ["selected" if r.seed == report.best_seed else "" for r in report.runs]))
    return html + (_stability(stability) if stability else "")


def _stability(stability: Mapping[str, Any]) -> str:
    """The top-k overlap of the convergent seeds (`seeds/seed_stability_topk.json`)."""
    names = list(stability["model_ids"])
    head = f"<h3>Top-{_esc(stability['topk'])} stability of the {_esc(stability['part'])} weights</h3>"
    summary = _kv([("seeds", ", ".join(names)), ("mean pairwise Jaccard", stability["mean_pairwise_jaccard"]),
                   ("min pairwise Jaccard", stability["min_pairwise_jaccard"]),
                   ("common to all seeds", stability["common_to_all"]), ("union", stability["union_size"])])
    rows = [[name, *row] for name, row in zip(names, stability["jaccard"], strict=True)]
    return head + summary + _table(["Jaccard", *names], rows)


def _encoder(root: Path, plots: _Plots) -> str:
    from gradiend.plots import encoder_distributions_figure

    results = encoder_results(root)
    if not results:
        return _note(f"No encoder evaluation yet: run `gradiend evaluate {root} --encoder`.")
    parts = []
    for result in results:
        title = f"Split {result.split}" + (f" (at most {result.max_size} rows per class)" if result.max_size else "")
        parts.append(f"<h3>{_esc(title)}</h3>")
        try:
            frame = load_encodings(root, result.split)
        except StaleResultError:
            parts.append(_note(f"These encodings belong to an earlier model in this directory (retrained since); "
                               f"not shown. Run `gradiend evaluate {root} --encoder --split {result.split}`."))
            continue
        except (OSError, ValueError) as err:
            parts.append(_note(f"Encodings unreadable: {err}"))
            continue
        metrics = result.load().metrics if result.meta.is_file() else None
        if metrics:
            rows = [("correlation (target classes)", metrics.correlation),
                    ("accuracy (±0.5 boundaries)", metrics.accuracy),
                    ("correlation (all rows incl. neutral)", (metrics.all_data or {}).get("correlation")),
                    ("binary accuracy (target classes, sign)", (metrics.target_classes_only or {}).get("accuracy"))]
            rows += [(f"mean h ({c})", v) for c, v in (metrics.mean_by_class or {}).items()]
            rows += [(f"std h ({c})", v) for c, v in (metrics.std_by_class or {}).items()]
            rows += [(f"mean h ({t})", v) for t, v in (metrics.neutral_mean_by_type or {}).items()]
            rows += [(f"mean |h| ({t})", v) for t, v in (metrics.abs_mean_by_type or {}).items()]
            parts.append(_kv(rows))
        parts.append(plots.render(encoder_distributions_figure, f"encoder distributions ({result.split})", frame))
    return "".join(parts)


def _decoder(root: Path, plots: _Plots) -> tuple[str, Mapping[str, DecoderSelection]]:
    from gradiend.plots import probability_shifts_figure

    try:
        decoder = load_decoder(root)
    except StaleResultError:
        return _note(f"The decoder evaluation belongs to an earlier model in this directory (retrained since); not "
                     f"shown. Run `gradiend evaluate {root} --decoder`."), {}
    except FileNotFoundError:
        return _note(f"No decoder evaluation yet: run `gradiend evaluate {root} --decoder`."), {}
    grid = decoder["grid"]
    summaries = {k: v for k, v in decoder.items() if k != "grid"}
    parts = []
    if summaries:
        keys = ["value", "base_value", "feature_factor", "learning_rate", "lms", "base_lms"]
        parts.append("<h3>Selected candidates</h3>" + _table(["goal", *keys], [
            [name, *(s.get(k) for k in keys)] for name, s in summaries.items()]))
        parts.append('<p class="meta">strengthen C: value = P(C tokens) on the other class\'s rows; '
                     "weaken C: value = 1 − P(C tokens) on C's rows. Selection: best value with LMS ≥ 0.99 × base.</p>")
    classes = list(next((r["probs"] for r in grid if r["feature_factor"] is None), {}))
    header = ["candidate", "feature factor", "learning rate", "LMS",
              *[f"P({c}) on {d} rows" for d in classes for c in classes]]
    chosen = {s.id for s in summaries.values()}
    rows = [[r["id"], r["feature_factor"], r["learning_rate"], r["lms"],
             *[r["probs"].get(d, {}).get(c) for d in classes for c in classes]] for r in grid]
    parts.append("<h3>Grid</h3>" + _table(header, rows, ["selected" if r["id"] in chosen else "" for r in grid]))
    for name, summary in summaries.items():
        target = name.removesuffix("_weaken")
        if target in classes:
            parts.append(plots.render(probability_shifts_figure, f"probability shifts {name}", grid, target, summary))
    return "".join(parts), summaries


def _rewrites(root: Path, summaries: Mapping[str, DecoderSelection]) -> str:
    models = rewritten_models(root)
    if not models:
        return _note(f"No rewritten model in {root}: run `gradiend rewrite {root} --target-class CLASS --out DIR` "
                     "(rewritten models saved elsewhere are not listed).")
    rows = []
    for path in models:
        summary = summaries.get(path.name) or DecoderSelection()
        size = _size(path)
        rows.append([path.name, summary.feature_factor, summary.learning_rate, summary.value, summary.lms,
                     "–" if size is None else f"{size / 2**20:.1f} MiB"])
    return _table(["directory", "feature factor", "learning rate", "value", "LMS", "size"], rows)


def _size(directory: Path) -> int | None:
    """Bytes of the files in `directory`; None when a writer replaces it while we look."""
    try:
        return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return None


def _timings(training: TrainingRecord) -> str:
    times = training.time or {}
    labels = {"scale": "gradient scale estimation", "gradients": "base-model gradients",
              "gradiend": "GRADIEND updates", "eval": "in-training evaluation", "total": "training total",
              "seconds_per_step": "seconds per step"}
    rows = [(labels.get(k, k) + ("" if k == "seconds_per_step" else " (s)"), v) for k, v in times.items()]
    return _kv(rows) if rows else _note("No timings recorded.")


def _versions(config: Mapping[str, Any] | None) -> str:
    rows: list[tuple[str, Any]] = [("gradiend (that trained the model)", (config or {}).get("library_version")),
                                   ("gradiend (that wrote this report)", __version__),
                                   ("python", platform.python_version()), ("platform", platform.platform())]
    for name in _PACKAGES:
        try:
            rows.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return _kv(rows)


# -- entry point --------------------------------------------------------------------------------------------
def default_title(training: Mapping[str, Any]) -> str:
    """`GRADIEND report: <class> vs <class> on <model>` from a `TrainingRecord` (or training.json dict)."""
    record = training if isinstance(training, TrainingRecord) else TrainingRecord.from_json(training)
    pair = record.pair or ["?", "?"]
    base = str(record.base_model or "unknown model").rstrip("/")
    return f"GRADIEND report: {pair[0]} vs {pair[1]} on {Path(base).name or base}"


def build_report(experiment_dir: str | os.PathLike, *, title: str | None = None, plots: bool = True,
                 dpi: int = 90) -> str:
    """The report's HTML text. Needs training results; missing evaluations appear as notes."""
    root = experiment_root(experiment_dir)
    training = load_training(root)
    config = load_model_config(root)
    title = title or default_title(training)
    renderer = _Plots(plots, dpi)
    seed_report = load_seed_report(root)
    decoder_html, summaries = _decoder(root, renderer)
    sections = [
        ("configuration", "Configuration", _configuration(training, config, load_run_config(root))),
        ("data", "Data", _data(training, root)),
        ("training", "Training convergence", _training(training, renderer)),
        *([("seeds", "Seeds", _seeds(seed_report, load_seed_stability(root)))] if seed_report else []),
        ("encoder", "Encoder", _encoder(root, renderer)),
        ("decoder", "Decoder grid", decoder_html),
        ("rewrite", "Rewritten models", _rewrites(root, summaries)),
        ("timings", "Timings", _timings(training)),
        ("versions", "Versions", _versions(config)),
    ]
    if renderer.missing:
        logger.warning("Report without plots: matplotlib is missing (pip install 'gradiend[plot]')")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = " ".join(f'<a href="#{sid}">{_esc(name)}</a>' for sid, name, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{_esc(name)}</h2>{content}</section>' for sid, name, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_esc(title)}</h1><p class=\"meta\">Experiment <code>{_esc(root.resolve())}</code>; "
            f"written {stamp} by gradiend {__version__}.</p><nav>{nav}</nav>{body}</body></html>\n")


def _write_beside_writers(path: Path, data: bytes, attempts: int = 3) -> None:
    """`atomic_write_bytes`, without the experiment lock (a report may be written while a run trains): a run
    that takes the lock at that instant removes unfinished temp files in the directory, so a vanished temp
    file is written again."""
    for attempt in range(attempts):
        try:
            atomic_write_bytes(path, data)
            return
        except FileNotFoundError:
            if attempt == attempts - 1 or not path.parent.is_dir():
                raise
            logger.info("The report's temp file was removed by a run starting in %s; writing it again", path.parent)


def write_report(experiment_dir: str | os.PathLike, output: str | os.PathLike | None = None, *,
                 title: str | None = None, plots: bool = True, dpi: int = 90) -> str:
    """Write the report (default `<experiment_dir>/report.html`, atomically) and return its path."""
    root = experiment_root(experiment_dir)
    path = Path(output) if output is not None else root / REPORT_FILE
    if path.is_dir():
        path = path / REPORT_FILE
    text = build_report(root, title=title, plots=plots, dpi=dpi)
    try:
        _write_beside_writers(path, text.encode("utf-8"))
    except OSError as err:
        raise OutputNotWritableError.wrap(path, err, also="or pass another --out path") from err
    logger.info("Wrote report %s (%.0f kB)", path, len(text) / 1000)
    return str(path)
