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


def test_coordinate_sum_gives_the_sum_loss_gradients_and_keeps_the_reported_mse() -> None:
    import torch

    from gradiend.model import GradiendConfig, GradiendModel
    from gradiend.step import FusedLoss

    torch.manual_seed(0)
    for batch in (1, 3):  # the vector path and the matrix path
        config = GradiendConfig(input_dim=50, torch_dtype="float64")
        g = GradiendModel(config, torch.Generator().manual_seed(1)).double()
        g.input_scale.fill_(0.3)
        g.target_scale.fill_(2.0)
        x, y = torch.randn(batch, 50, dtype=torch.float64), torch.randn(batch, 50, dtype=torch.float64)
        ref = GradiendModel(GradiendConfig(input_dim=50, torch_dtype="float64")).double()
        ref.load_state_dict(g.state_dict())
        _, y_hat = ref(x)
        (((y_hat - y / ref.target_scale) ** 2).sum() / batch).backward()  # per-row sum over coordinates
        loss, _ = FusedLoss(g, batch, coordinate_sum=True).loss_and_grad(x, y)
        assert float(loss) == pytest.approx(float(ref.loss(x, y)[0].detach()), rel=1e-12)  # still the MSE
        for (name, mine), theirs in zip(g.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-10, atol=1e-14, msg=name)


def test_scale_norms_make_the_step_size_independent_of_the_learning_rate() -> None:
    from gradiend.step import DECODER_UNITS, ENCODER_STEP, scale_norms

    for lr in (1e-5, 1e-3, 1e-2):
        l1, rms = scale_norms(lr)
        assert lr * l1 == pytest.approx(ENCODER_STEP) and rms / lr == pytest.approx(DECODER_UNITS)
    with pytest.raises(ValueError, match="learning_rate must be a positive finite number"):
        scale_norms(0.0)


def test_neutral_rows_mask_another_word_and_never_a_target(tiny_mlm_dir: str) -> None:
    from conftest import make_rows

    from gradiend.data import NeutralSchedule, neutral_rows, prepare_rows, unify
    from gradiend.model_with_gradiend import load_model_for_objective, make_objective

    _, tokenizer, kind = load_model_for_objective(tiny_mlm_dir)
    objective = make_objective(kind, tokenizer)
    rows, pair = unify(make_rows(), ["3SG", "3PL"])
    train = prepare_rows(rows, "train", pair, objective, "training")
    neutral = neutral_rows(train, objective, seed=0)
    assert len(neutral) == len(train) and set(neutral["label"]) == {0}
    assert (neutral["factual"] == neutral["alternative"]).all()
    assert (neutral["masked"].str.count(r"\[MASK\]") == 1).all()
    targets = {"he", "she", "it", "they"}
    assert not set(neutral["factual"].str.lower()) & targets
    for masked, source, word in zip(neutral["masked"], train["masked"], neutral["factual"], strict=True):
        # the slot holds a target word now; putting the masked word back gives a filled training text
        filled = masked.replace("[MASK]", word)
        assert "[MASK]" in source and any(filled == source.replace("[MASK]", t) for t in targets | {"He", "They"})
    assert neutral_rows(train, objective, seed=0).equals(neutral)
    schedule = NeutralSchedule(5, 2, seed=0)
    drawn = [schedule.next() for _ in range(6)]
    assert all(len(b) == 2 and list(b) == sorted(b) for b in drawn)
    assert len({i for b in drawn[:2] for i in b}) == 4  # a pass draws without replacement


def test_scale_initial_weights_bounds_the_encoder_by_the_learning_rate() -> None:
    import torch

    from gradiend.model import GradiendConfig, GradiendModel

    fresh = GradiendModel(GradiendConfig(input_dim=400), torch.Generator().manual_seed(0))
    scaled = GradiendModel(GradiendConfig(input_dim=400), torch.Generator().manual_seed(0))
    scaled.scale_initial_weights(1e-5)
    top = float(scaled.encoder_weight.detach().abs().max())
    assert top <= 1e-5 < 2 * top
    for a, b in zip(fresh.parameters(), scaled.parameters(), strict=True):
        torch.testing.assert_close(b, a * (1e-5 * 20.0))  # √400 = 20: one factor for every weight
    with pytest.raises(ValueError, match="bound must be a positive finite number"):
        scaled.scale_initial_weights(float("nan"))
