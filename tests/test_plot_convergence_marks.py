"""highlight_non_convergence marks every trainer plot of a run that did not converge, as in 0.2.x (issue 19)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import tiny_experiment

from gradiend import plots

pytest.importorskip("matplotlib")
MARK = "(not converged) †"


@pytest.fixture(scope="module")
def experiment(tiny_mlm_dir, tmp_path_factory):
    exp = tmp_path_factory.mktemp("marks_exp")
    return exp, tiny_experiment.build(tiny_mlm_dir, exp)


def _titles(trainer) -> dict[str, str]:
    dist, _ = trainer.plot_encoder_distributions(show=False, return_fig_ax=True)
    shifts, _ = trainer.plot_probability_shifts(show=False, return_fig_ax=True)
    return {"distributions": dist._suptitle.get_text(), "shifts": shifts._suptitle.get_text()}


@pytest.mark.parametrize("converged", [False, True, None])
def test_trainer_plots_mark_a_run_that_did_not_converge(experiment, monkeypatch, converged) -> None:
    _, trainer = experiment
    record = None if converged is None else SimpleNamespace(converged=converged)
    monkeypatch.setattr(trainer, "get_training_record", lambda *a, **k: record)
    titles = _titles(trainer)
    for name, title in titles.items():
        assert title.endswith(MARK) == (converged is False), (name, title)
    if converged is False:
        # switched off per call, and by TrainingArguments.highlight_non_convergence
        dist, _ = trainer.plot_encoder_distributions(show=False, return_fig_ax=True, highlight_non_convergence=False)
        assert MARK not in dist._suptitle.get_text()
        monkeypatch.setattr(trainer, "_args", trainer._args.replace(highlight_non_convergence=False))
        assert not any(MARK in t for t in _titles(trainer).values())


def test_plot_functions_take_the_verdict(experiment, tmp_path) -> None:
    _, trainer = experiment
    frame = trainer.get_encodings(split="test")
    assert plots.encoder_distributions_figure(frame, converged=False)._suptitle.get_text().endswith(MARK)
    assert MARK not in plots.encoder_distributions_figure(frame)._suptitle.get_text()
    pytest.importorskip("plotly")
    assert plots.encoder_scatter_figure(frame, converged=False).layout.title.text.endswith(MARK)
    path = trainer.plot_encoder_scatter(output=str(tmp_path / "s.html"), show=False)
    assert path.endswith("s.html")
