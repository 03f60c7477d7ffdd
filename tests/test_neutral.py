"""Neutral separation: the encoder metrics that show a neuron firing on neutral text."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gradiend.encoder_eval import NEUTRAL_DATASET, NEUTRAL_MASKED, TRAINING, encoder_metrics


def _frame(rows: list[tuple[str, str, int, float]]) -> pd.DataFrame:
    """(type, factual_class, label, encoded) rows in the encoder-frame layout."""
    return pd.DataFrame([{"type": t, "factual_class": c, "label": lab, "encoded": h} for t, c, lab, h in rows])


def test_neuron_firing_on_neutral_text_scores_low_on_all_data_metrics() -> None:
    # classes perfectly separated, but every neutral row saturates at ±1 (signed mean 0)
    frame = _frame([(TRAINING, "A", 1, 1.0), (TRAINING, "A", 1, 0.8), (TRAINING, "B", -1, -1.0),
                    (TRAINING, "B", -1, -0.6), (NEUTRAL_MASKED, "neutral", 0, 1.0),
                    (NEUTRAL_MASKED, "neutral", 0, -1.0), (NEUTRAL_DATASET, "neutral", 0, 0.9),
                    (NEUTRAL_DATASET, "neutral", 0, -0.1)])
    m = encoder_metrics(frame, ["A", "B"])
    assert m["accuracy"] == 1.0 and m["correlation"] > 0.97
    assert m["neutral_mean_by_type"][NEUTRAL_MASKED] == 0.0  # the signed mean hides the firing
    assert m["neutral_abs_mean_by_type"] == {NEUTRAL_MASKED: 1.0, NEUTRAL_DATASET: pytest.approx(0.5)}
    assert m["neutral_within_bounds_by_type"] == {NEUTRAL_MASKED: 0.0, NEUTRAL_DATASET: 0.5}
    # ternary reading: 4 class rows right, 1 of 4 neutral rows inside ±0.5 → 5 of 8
    assert m["all_data_accuracy"] == 5 / 8 == m["all_data"]["accuracy"]
    enc = np.array([1.0, 0.8, -1.0, -0.6, 1.0, -1.0, 0.9, -0.1])
    lab = np.array([1, 1, -1, -1, 0, 0, 0, 0])
    assert m["all_data_correlation"] == pytest.approx(np.corrcoef(enc, lab)[0, 1])
    assert m["all_data_correlation"] < 0.75


def test_quiet_neuron_reaches_all_data_targets_and_boundaries_are_exclusive() -> None:
    frame = _frame([(TRAINING, "A", 1, 0.95), (TRAINING, "B", -1, -0.95), (NEUTRAL_MASKED, "neutral", 0, 0.1),
                    (NEUTRAL_MASKED, "neutral", 0, -0.1), (NEUTRAL_DATASET, "neutral", 0, 0.5),
                    (NEUTRAL_DATASET, "neutral", 0, 0.0)])
    m = encoder_metrics(frame, ["A", "B"])
    assert m["neutral_abs_mean_by_type"][NEUTRAL_MASKED] == pytest.approx(0.1)
    # h = 0.5 reads as class A, so it is neither inside the neutral band nor correct
    assert m["neutral_within_bounds_by_type"][NEUTRAL_DATASET] == 0.5
    assert m["all_data_accuracy"] == pytest.approx(5 / 6)
    # Pearson by hand: mean h = 0.55/6, labels mean 0
    enc = np.array([0.95, -0.95, 0.1, -0.1, 0.5, 0.0])
    lab = np.array([1, -1, 0, 0, 0, 0])
    dx, dy = enc - enc.mean(), lab - lab.mean()
    expected = (dx * dy).sum() / math.sqrt((dx * dx).sum() * (dy * dy).sum())
    assert m["all_data_correlation"] == pytest.approx(expected)


def test_demo_table_shows_neutral_and_all_data_scores_next_to_the_class_correlation() -> None:
    from gradiend.demo import DEMOS, DemoResult, format_report
    from gradiend.records import TrainingRecord

    frame = _frame([(TRAINING, "M", 1, 0.9), (TRAINING, "F", -1, -0.9), (NEUTRAL_MASKED, "neutral", 0, 0.7),
                    (NEUTRAL_DATASET, "neutral", 0, -0.2)])
    decoder = {"base_value": 0.1, "value": 0.3, "feature_factor": 1.0, "learning_rate": 3.0, "base_lms": 0.5,
               "lms": 0.49}
    text = format_report(DemoResult("exp", "exp/model", encoder_metrics(frame, ["M", "F"]), TrainingRecord(), decoder,
                                    "exp/rewritten_F", {"training": 1.0, "encoder_evaluation": 1.0,
                                                        "decoder_evaluation": 1.0, "total": 3.0}, [],
                                    DEMOS["clm"].description, "F", "M"))
    lines = text.splitlines()
    assert lines[2].startswith("test correlation (M vs F)")
    assert any(line.startswith("neutral mean |h| (other word masked)") and "0.700" in line
               and "(0 % inside ±0.5)" in line for line in lines)
    assert any(line.startswith("neutral mean |h| (neutral corpus)") and "0.200" in line for line in lines)
    assert any(line.startswith("all-data accuracy (±0.5 boundaries)") and line.endswith("0.750") for line in lines)
    assert any(line.startswith("all-data correlation (neutral = 0)") for line in lines)
