"""Early warnings for runs that are not learning (gradiend.diagnostics)."""

from __future__ import annotations

import logging

import pytest

from gradiend.diagnostics import LearningMonitor, diagnose


def _history(means: list[tuple[float, float]], norms: list[float], losses: list[float] | None = None,
             scores: list[float] | None = None, every: int = 25):
    steps = [str(i * every) for i in range(len(means))]
    return ({s: (scores or [0.0] * len(means))[i] for i, s in enumerate(steps)},
            {s: {"A": a, "B": b} for s, (a, b) in zip(steps, means, strict=True)},
            dict(zip(steps, norms, strict=True)), losses if losses is not None else [1e-4] * (every * (len(means) - 1)))


def test_healthy_run_has_no_diagnosis() -> None:
    history = _history([(0.0, 0.0), (0.6, -0.5), (0.95, -0.93)], [0.57, 0.9, 1.4], scores=[0.1, 0.8, 0.99])
    assert diagnose(*history) == []


def test_not_moving_names_the_step_and_the_tiny_change() -> None:
    found = diagnose(*_history([(0.002, 0.001), (0.003, -0.001)], [0.5774, 0.5775]))
    assert [d.cause for d in found] == ["not_moving"] and found[0].step == 25
    assert "+0.003" in found[0].message
    # the weight norm does not excuse quiet encodings (training starts from weights one Adam step in size)
    assert [d.cause for d in diagnose(*_history([(0.002, 0.001), (0.09, -0.05)], [0.001, 0.7]))] == ["not_moving"]
    # a learning run is well past ±0.1 by step 25 (the embedded models: ±0.5–0.7), so it stays silent
    assert diagnose(*_history([(0.0, 0.0), (0.12, -0.02)], [0.001, 0.7])) == []
    # too early to judge at step 15
    assert diagnose(*_history([(0.0, 0.0), (0.0, 0.0)], [0.5, 0.5], every=15)) == []


def test_saturated_when_both_classes_sit_at_the_same_end() -> None:
    found = diagnose(*_history([(0.0, 0.0), (0.999, 0.995)], [0.5, 40.0]))
    assert [d.cause for d in found] == ["saturated"]
    assert diagnose(*_history([(0.0, 0.0), (0.999, -0.995)], [0.5, 40.0], scores=[0, 0.99])) == []


@pytest.mark.parametrize("case", ["nan_loss", "loss_growth", "nan_mean"])
def test_diverging(case: str) -> None:
    means, norms, losses = [(0.0, 0.0), (0.5, -0.5)], [0.5, 0.6], [1e-4] * 25
    if case == "nan_loss":
        losses[-1] = float("nan")
    elif case == "loss_growth":
        losses = [1e-4] * 5 + [5e-3] * 20
    else:
        means = [(0.0, 0.0), (float("nan"), -0.5)]
    found = diagnose(*_history(means, norms, losses))
    assert [d.cause for d in found] == ["diverging"], found


def test_monitor_warns_once_per_cause_with_the_fix(caplog: pytest.LogCaptureFixture) -> None:
    monitor = LearningMonitor(learning_rate=1e-5)
    with caplog.at_level(logging.WARNING, logger="gradiend.diagnostics"):
        first = monitor.check(*_history([(0.001, 0.0), (0.001, 0.0)], [0.5, 0.5]))
        again = monitor.check(*_history([(0.001, 0.0), (0.001, 0.0), (0.001, 0.0)], [0.5, 0.5, 0.5]))
    assert [d.cause for d in first] == ["not_moving"] and again == []
    assert len(caplog.records) == 1
    text = caplog.records[0].getMessage()
    assert "not moving" in text and "learning_rate=1e-05" in text and "standardize_gradients is on" in text
    assert monitor.to_json() == [{"cause": "not_moving", "step": 25, "message": first[0].message}]
