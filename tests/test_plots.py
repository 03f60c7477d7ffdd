"""Plots drawn from the saved results of a tiny run: files, formats, series, errors, headless `show`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import tiny_experiment

from gradiend import plots
from gradiend.experiment import ExperimentDir
from gradiend.results import (
    MissingResultError,
    OutputNotWritableError,
    load_decoder,
    load_encodings,
    load_training,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def experiment(tiny_mlm_dir, tmp_path_factory):
    exp = tmp_path_factory.mktemp("plots_exp")
    return exp, tiny_experiment.build(tiny_mlm_dir, exp)


def _png(path: str | Path) -> bytes:
    data = Path(path).read_bytes()
    assert data.startswith(PNG_MAGIC), path
    assert len(data) > 5000, path
    return data


def _labels(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines()] + [c.get_label() for c in ax.collections]


def test_results_file_names_match_the_trainer(experiment) -> None:
    exp, trainer = experiment
    layout = ExperimentDir(exp)
    for path in (layout.training_stats, layout.decoder_grid, layout.decoder_summaries,
                 layout.encoder_csv("test", None), layout.encoder_meta("test", None)):
        assert path.is_file(), path
    assert Path(trainer.model_path) == layout.model


def test_training_convergence_from_directory_and_dict(experiment, tmp_path) -> None:
    exp, _ = experiment
    path = plots.plot_training_convergence(exp)
    assert path == str(exp / "training_convergence.png")
    _png(path)
    stats = load_training(exp)
    fig = plots.training_convergence_figure(stats)
    corr, means, loss = fig.axes
    steps = sorted(int(s) for s in stats["training_stats"]["scores"])
    assert steps == [0, 3, 6]
    best = stats["best_score_checkpoint"]["global_step"]
    assert {"validation correlation", f"best step {best}"} <= set(_labels(corr))
    line = next(ln for ln in corr.get_lines() if ln.get_label() == "validation correlation")
    assert list(line.get_xdata()) == steps
    assert list(line.get_ydata()) == [stats["training_stats"]["scores"][str(s)] for s in steps]
    assert {"mean h (3SG)", "mean h (3PL)"} <= set(_labels(means))
    assert len(loss.get_lines()[0].get_xdata()) == len(stats["losses"]) == 6
    # dict input needs an output path; the image format follows the suffix or img_format
    with pytest.raises(ValueError, match="output="):
        plots.plot_training_convergence(stats)
    svg = plots.plot_training_convergence(stats, tmp_path / "conv", img_format="svg")
    assert svg.endswith("conv.svg") and Path(svg).read_text().lstrip().startswith("<?xml")
    pdf = plots.plot_training_convergence(stats, tmp_path / "c.pdf")
    assert Path(pdf).read_bytes().startswith(b"%PDF")
    with pytest.raises(ValueError, match="Unsupported image format 'bmpx'"):
        plots.plot_training_convergence(stats, tmp_path / "c.bmpx")


def test_encoder_distributions_groups_and_splits(experiment, tmp_path) -> None:
    exp, _ = experiment
    _png(plots.plot_encoder_distributions(exp))
    assert (exp / "encoder_analysis_split_test.png").is_file()
    frame = load_encodings(exp, "test")
    fig = plots.encoder_distributions_figure(frame)
    (ax,) = fig.axes
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    n_sg = int(((frame["type"] == "training") & (frame["factual_class"] == "3SG")).sum())
    assert ticks[0] == f"3SG\n(n={n_sg})" and ticks[1].startswith("3PL")
    assert any(t.startswith("neutral text") for t in ticks) and any(t.startswith("neutral (masked") for t in ticks)
    assert ax.get_title() == "Encodings (split: test)"
    by_token = plots.encoder_distributions_figure(frame, target_and_neutral_only=False)
    assert {"3SG: he", "3SG: she", "3SG: it", "3PL: they"} <= {
        t.get_text().split("\n")[0] for t in by_token.axes[0].get_xticklabels()}
    # several splits side by side (one panel each)
    both = pd.concat([frame, frame.assign(eval_split="validation")], ignore_index=True)
    assert [a.get_title() for a in plots.encoder_distributions_figure(both).axes] == [
        "Encodings (split: test)", "Encodings (split: validation)"]
    assert plots.infer_pair(frame) == ("3SG", "3PL")


def test_probability_shifts_marks_base_and_selection(experiment, tmp_path) -> None:
    exp, _ = experiment
    path = plots.plot_probability_shifts(exp, "3SG")
    assert path == str(exp / "decoder_probability_shifts_3SG.png")
    _png(path)
    decoder = load_decoder(exp)
    selected = decoder["3SG"]
    fig = plots.probability_shifts_figure(decoder["grid"], "3SG", selected)
    other, own, lms = fig.axes
    assert other.get_title() == "P(3SG) on 3PL rows" and own.get_title() == "P(3SG) on 3SG rows"
    line = next(ln for ln in other.get_lines() if ln.get_label() == "feature factor -1")
    assert sorted(line.get_xdata()) == sorted(tiny_experiment.LRS)
    assert "base model" in _labels(other) and "0.99 × base LMS" in _labels(lms)
    star = next(c for c in other.collections if c.get_label().startswith("selected"))
    assert tuple(star.get_offsets()[0]) == pytest.approx((selected["learning_rate"], selected["value"]))
    # the dict evaluate_decoder returns works too; an absent goal is a clear error
    with pytest.raises(KeyError, match="3PL_weaken"):
        plots.plot_probability_shifts(decoder, "3PL", False, tmp_path / "x.png")
    with pytest.raises(ValueError, match="Unknown target_class 'XX'"):
        plots.probability_shifts_figure(decoder["grid"], "XX")


def test_trainer_plot_hooks(experiment, tmp_path) -> None:
    exp, trainer = experiment
    result = trainer.evaluate_encoder(plot=True, plot_kwargs={"show": False, "img_format": "svg"}, use_cache=True)
    assert result["plot_path"] == str(exp / "encoder_analysis_split_test.svg") and Path(result["plot_path"]).is_file()
    with pytest.raises(TypeError, match="plot_kwargs"):
        trainer.evaluate_encoder(plot=True, plot_kwargs=["show"])
    dec = trainer.evaluate_decoder(target_class="3SG", plot=True, show=False, use_cache=True)
    assert dec["plot_path"] == dec["plot_paths"][0] == str(exp / "decoder_probability_shifts_3SG.png")
    assert trainer.plot_probability_shifts(output=str(tmp_path / "p.png")) == str(tmp_path / "p.png")  # saved dir
    assert trainer.plot_training_convergence(img_format="jpg").endswith("training_convergence.jpg")


def test_missing_results_name_the_command(tmp_path, tiny_mlm_dir) -> None:
    with pytest.raises(MissingResultError, match="gradiend train"):
        plots.plot_training_convergence(tmp_path / "nowhere")
    tiny_experiment.build(tiny_mlm_dir, tmp_path / "trained", encoder=False, decoder=False)
    with pytest.raises(MissingResultError, match=r"gradiend evaluate .*trained --encoder"):
        plots.plot_encoder_distributions(tmp_path / "trained")
    with pytest.raises(MissingResultError, match=r"gradiend evaluate .*trained --encoder --split validation"):
        plots.plot_encoder_distributions(tmp_path / "trained", split="validation")
    with pytest.raises(MissingResultError, match=r"gradiend evaluate .*trained --decoder"):
        plots.plot_probability_shifts(tmp_path / "trained", "3SG")
    # the model/ directory is accepted in place of the experiment directory
    assert plots.plot_training_convergence(tmp_path / "trained" / "model").endswith("trained/training_convergence.png")


def test_unwritable_output_is_a_clear_error(experiment, tmp_path) -> None:
    exp, _ = experiment
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputNotWritableError, match=r"a_file/plot\.png.*writable output path"):
        plots.plot_training_convergence(exp, blocker / "plot.png")
    assert not list(tmp_path.glob(".*tmp"))


def test_missing_matplotlib_gives_the_install_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'gradiend\[plot\]'"):
        plots.training_convergence_figure({"training_stats": {"scores": {}, "mean_by_class": {}}})


def test_show_in_a_headless_process_returns(experiment, tmp_path) -> None:
    exp, _ = experiment
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    code = ("import matplotlib, sys; from gradiend import plots; "
            f"p = plots.plot_training_convergence({str(exp)!r}, {str(tmp_path / 's.png')!r}, show=True); "
            "print(matplotlib.get_backend(), p)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0].lower() == "agg" and (tmp_path / "s.png").is_file()


def test_encoder_scatter_is_self_contained_html(experiment, tmp_path) -> None:
    pytest.importorskip("plotly")
    exp, trainer = experiment
    path = trainer.plot_encoder_scatter()
    assert path == str(exp / "encoder_scatter_split_test.html")
    text = Path(path).read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith("<html") or text.lstrip().lower().startswith("<!doctype")
    assert "<script src=" not in text  # plotly.js embedded: opens offline
    frame = load_encodings(exp)
    assert "walked to the house" in text and f"h = {frame['encoded'].iloc[0]:+.3f}" in text  # hover texts
    fig = plots.encoder_scatter_figure(frame, max_points=8)
    names = [trace.name.rsplit(" (n=", 1)[0] for trace in fig.data]
    assert names == ["3SG", "3PL", "neutral (masked other word)", "neutral text"]
    assert all(len(trace.x) <= 2 for trace in fig.data)
    small = plots.plot_encoder_scatter(exp, output=tmp_path / "s.html", include_plotlyjs="cdn")
    assert Path(small).stat().st_size < 200_000


def test_missing_plotly_gives_the_install_hint(experiment, monkeypatch) -> None:
    exp, _ = experiment
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(ImportError, match=r"pip install 'gradiend\[interactive\]'"):
        plots.plot_encoder_scatter(exp)


def test_saved_json_is_what_the_plots_read(experiment) -> None:
    exp, _ = experiment
    grid = json.loads(ExperimentDir(exp).decoder_grid.read_text())["records"]
    assert load_decoder(exp)["grid"] == grid


def test_plot_names_from_hostile_class_names_stay_in_the_directory(tmp_path) -> None:
    from gradiend.plots import resolve_output

    path = resolve_output(None, tmp_path, "decoder_probability_shifts_../../X", "png")
    assert path.parent == tmp_path and "/" not in path.name and path.suffix == ".png"
    assert resolve_output(None, tmp_path, "training_convergence", "png") == tmp_path / "training_convergence.png"


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_topk_overlap_heatmap_shows_the_matrix(tmp_path) -> None:
    sets = {"a": {("p", i) for i in range(10)}, "b": {("p", i) for i in range(4, 14)}, "c": {("q", 0)}}
    payload = plots._topk_payload(sets, 10, "decoder-weight", "intersection")
    fig = plots.topk_overlap_heatmap_figure(payload)
    assert _texts(fig) == ["10", "6", "0", "6", "10", "0", "0", "0", "1"]
    assert fig.axes[0].get_images()[0].get_array().tolist() == [[10, 6, 0], [6, 10, 0], [0, 0, 1]]
    jaccard = plots.topk_overlap_heatmap_figure(payload, value="jaccard")
    assert _texts(jaccard)[1] == f"{6 / 14:.2f}"
    path = plots.plot_topk_overlap_heatmap(sets, output=tmp_path / "heat.png", title="overlap")
    _png(path)
    with pytest.raises(ValueError, match="pass output="):
        plots.plot_topk_overlap_heatmap(sets)


def test_topk_venn_counts_every_region(tmp_path) -> None:
    a, b, c = set(range(0, 10)), set(range(5, 15)), set(range(8, 20))
    payload = plots._topk_payload({"a": a, "b": b, "c": c}, 10, "decoder-weight", "intersection")
    fig = plots.topk_venn_figure(payload)
    counts = sorted(int(t) for t in _texts(fig) if t.isdigit())
    # only a: 0-4 (5), a&b: 5-7 (3), a&b&c: 8-9 (2), b&c: 10-14 (5), only c: 15-19 (5)
    assert counts == sorted([5, 3, 2, 5, 5, 0, 0])  # a&c only and b only are empty
    two = plots.topk_venn_figure(plots._topk_payload({"a": a, "b": b}, 10, "decoder-weight", "intersection"))
    assert sorted(int(t) for t in _texts(two) if t.isdigit()) == [5, 5, 5]
    _png(plots.plot_topk_overlap_venn({"a": a, "b": b, "c": c}, output=tmp_path / "venn"))
    assert (tmp_path / "venn.png").is_file()
    with pytest.raises(ValueError, match="2 or 3 sets"):
        plots.plot_topk_overlap_venn({str(i): {i} for i in range(4)}, output=tmp_path / "v4.png")


def test_plot_methods_take_the_reference_keywords_and_show_by_default(experiment, tmp_path) -> None:
    import inspect

    from gradiend.trainer.plotting import PlotMethods

    _, trainer = experiment
    for name in ("plot_training_convergence", "plot_encoder_distributions", "plot_encoder_scatter",
                 "plot_probability_shifts"):
        assert inspect.signature(getattr(PlotMethods, name)).parameters["show"].default is True, name
    fig, axes = trainer.plot_training_convergence(output=tmp_path / "c.png", title="My run", figsize=(7, 3),
                                                  return_fig_ax=True)
    assert fig._suptitle.get_text() == "My run" and tuple(fig.get_size_inches()) == (7.0, 3.0)
    assert len(axes) == 3 and (tmp_path / "c.png").is_file(), "return_fig_ax still saves the file"
    fig, axes = trainer.plot_training_convergence(output=tmp_path / "d.png", plot_mean_by_class=False, title=False,
                                                  return_fig_ax=True, label_name_mapping={"3SG": "singular"})
    assert len(axes) == 2 and fig._suptitle is None
    assert [ax.get_title() for ax in axes] == ["Correlation (validation)", "Training loss"]
    fig, axes = trainer.plot_training_convergence(output=tmp_path / "e.png", label_name_mapping={"3SG": "singular"},
                                                  return_fig_ax=True)
    assert "mean h (singular)" in [line.get_label() for line in axes[1].get_lines()]
    assert "singular vs 3PL" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="figsize"):
        trainer.plot_training_convergence(output=tmp_path / "f.png", figsize=(0, 3))
    with pytest.raises(TypeError, match="title"):
        trainer.plot_training_convergence(output=tmp_path / "f.png", title=3)


def _ticks(ax) -> list[str]:
    return [t.get_text().split("\n")[0] for t in ax.get_xticklabels()]


def test_encoder_distributions_split_modes_neutral_and_names(experiment, tmp_path) -> None:
    _, trainer = experiment
    frame = trainer.evaluate_encoder(split=["test", "validation"], return_df=True)["encoder_df"]
    fig, axes = trainer.plot_encoder_distributions(encoder_df=frame, output=tmp_path / "a.png", return_fig_ax=True)
    assert len(axes) == 2 and [ax.get_title() for ax in axes] == ["Encodings (split: test)",
                                                                   "Encodings (split: validation)"]
    assert _ticks(axes[0]) == ["3SG", "3PL"], "several splits: neutral rows hidden by default"
    _, axes = trainer.plot_encoder_distributions(encoder_df=frame, output=tmp_path / "b.png", include_neutral=True,
                                                 return_fig_ax=True)
    assert _ticks(axes[1]) == ["3SG", "3PL", "neutral (masked other word)", "neutral text"]
    fig, ax = trainer.plot_encoder_distributions(encoder_df=frame, output=tmp_path / "c.png", split_plot_mode="overlay",
                                                 label_name_mapping={"3SG": "sg", "3PL": "pl"}, title="T",
                                                 figsize=(9, 4), return_fig_ax=True)
    assert _ticks(ax) == ["test: sg", "test: pl", "validation: sg", "validation: pl"]
    assert fig._suptitle.get_text() == "T" and tuple(fig.get_size_inches()) == (9.0, 4.0)
    _, ax = trainer.plot_encoder_distributions(output=tmp_path / "d.png", return_fig_ax=True)
    assert _ticks(ax)[-2:] == ["neutral (masked other word)", "neutral text"], "one split: neutral shown"
    with pytest.raises(ValueError, match="split_plot_mode"):
        trainer.plot_encoder_distributions(encoder_df=frame, output=tmp_path / "e.png", split_plot_mode="dodge")
    path = trainer.plot_encoder_distributions(split="all", show=False)
    assert path.endswith("encoder_analysis_split_all.png") and Path(path).is_file()


def test_probability_shifts_title_size_and_axes(experiment, tmp_path) -> None:
    _, trainer = experiment
    fig, axes = trainer.plot_probability_shifts(target_class="3SG", output=tmp_path / "p.png", title="shift",
                                                figsize=(10, 3), return_fig_ax=True)
    assert fig._suptitle.get_text() == "shift" and tuple(fig.get_size_inches()) == (10.0, 3.0) and len(axes) == 3


def test_encoder_scatter_colour_groups_and_names(experiment) -> None:
    pytest.importorskip("plotly")
    exp, _ = experiment
    frame = load_encodings(exp)
    by_label = plots.encoder_scatter_figure(frame, color_by="label")
    assert [t.name.rsplit(" (n=", 1)[0] for t in by_label.data] == ["3PL", "neutral", "3SG"]
    assert sum(len(t.x) for t in by_label.data) == len(frame)
    by_token = plots.encoder_scatter_figure(frame, color_by="factual", label_name_mapping={"he": "HE"}, title=False)
    names = [t.name.rsplit(" (n=", 1)[0] for t in by_token.data]
    assert "HE" in names and len(names) == frame["factual"].nunique() and by_token.layout.title.text is None
    renamed = plots.encoder_scatter_figure(frame, label_name_mapping={"3SG": "singular"}, title="S")
    assert renamed.data[0].name.startswith("singular") and renamed.layout.title.text == "S"
    with pytest.raises(ValueError, match="color_by='nope'"):
        plots.encoder_scatter_figure(frame, color_by="nope")


def test_training_never_imports_matplotlib_and_the_plot_is_drawn_when_asked(tiny_mlm_dir, tmp_path) -> None:
    code = f"""
import sys, warnings
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import make_rows
from gradiend import TextPredictionTrainer, TrainingArguments, TrainingCallback

class Probe(TrainingCallback):
    seen = []
    def on_step_end(self, step, loss):
        self.seen.append("matplotlib" in sys.modules)

args = TrainingArguments(experiment_dir={str(tmp_path / "exp")!r}, train_batch_size=4, max_steps=2, eval_steps=2,
                         seed=0, show_progress=False, scale_estimation_batches=1, params=["encoder.layer.1.*"])
trainer = TextPredictionTrainer(model={tiny_mlm_dir!r}, data=make_rows(), args=args, target_classes=["3SG", "3PL"])
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    trainer.train(callbacks=[Probe()])
print("during", any(Probe.seen), len(Probe.seen))
print("after_train", "matplotlib" in sys.modules)
import pathlib
print("file_after_train", pathlib.Path({str(tmp_path / "exp" / "training_convergence.png")!r}).exists())
print("plot", trainer.plot_training_convergence(show=False))
print("after_plot", "matplotlib" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert lines["during"] == "False 2" and lines["after_train"] == "False", "training imported matplotlib"
    assert lines["file_after_train"] == "False", "train() drew no plot"
    assert lines["plot"] == str(tmp_path / "exp" / "training_convergence.png") and lines["after_plot"] == "True"
    _png(lines["plot"])


def test_highlight_non_convergence_marks_the_title(experiment) -> None:
    exp, trainer = experiment
    stats = load_training(exp)
    failed = {**stats, "convergence_info": {**(stats.get("convergence_info") or {}), "converged": False}}
    assert plots.training_convergence_figure(failed)._suptitle.get_text().endswith("(not converged) †")
    quiet = plots.training_convergence_figure(failed, highlight_non_convergence=False)._suptitle.get_text()
    assert "converged" not in quiet and "†" not in quiet
    # the trainer's plot takes TrainingArguments.highlight_non_convergence as its default
    args = trainer._args
    try:
        trainer._args = args.replace(highlight_non_convergence=False)
        fig, _ = trainer.plot_training_convergence(show=False, return_fig_ax=True)
        assert "converged" not in fig._suptitle.get_text()
    finally:
        trainer._args = args
    fig, _ = trainer.plot_training_convergence(show=False, return_fig_ax=True)
    assert "converged" in fig._suptitle.get_text()
