"""Encoder calibration (issue 15): the refitted gain and offset of the feature neuron."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import make_rows

from gradiend import TrainingArguments
from gradiend.calibration import _loss, calibrate_state, fit_gain_offset, held_in_rows, projections
from gradiend.data import unify
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.training import train_gradiend


def _saturated(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class pre-activations deep in saturation (±6) and neutral ones spread around +1."""
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.normal(6, 1, 50), rng.normal(-6, 1, 50), rng.normal(1.0, 1.0, 100)])
    y = np.concatenate([np.ones(50), -np.ones(50), np.zeros(100)])
    return p, y


def test_fit_lowers_a_saturated_gain_and_centres_the_neutral_rows() -> None:
    p, y = _saturated()
    a, c = fit_gain_offset(p, y)
    before, after = np.tanh(p), np.tanh(a * p + c)
    assert 0.05 < a < 1.0  # the trained gain was too large
    assert c == pytest.approx(-a * 1.0, abs=0.1)  # neutral rows centred on 0
    assert np.abs(after[100:]).mean() < 0.5 * np.abs(before[100:]).mean()
    assert after[:50].mean() > 0.8 and after[50:100].mean() < -0.8
    assert _loss(a * p + c, y, y) < 0.5 * _loss(p, y, y)
    # a local optimum: small moves of either number do not lower the loss
    best = _loss(a * p + c, y, y)
    for da, dc in ((1.02, 0), (0.98, 0), (1, 0.02), (1, -0.02)):
        assert _loss(a * da * p + c + dc, y, y) >= best - 1e-9


def test_fit_is_invariant_to_the_projection_unit_and_rejects_bad_input() -> None:
    p, y = _saturated(1)
    a, c = fit_gain_offset(p, y)
    a2, c2 = fit_gain_offset(p * 1e-6, y)  # the same encoder in another unit: same encodings
    np.testing.assert_allclose(np.tanh(a * p + c), np.tanh(a2 * p * 1e-6 + c2), atol=1e-4)
    with pytest.raises(ValueError, match="one target per projection"):
        fit_gain_offset(p, y[:-1])
    with pytest.raises(FloatingPointError, match="cannot be calibrated"):
        fit_gain_offset(np.where(np.arange(len(p)) == 3, np.nan, p), y)


@pytest.fixture(scope="module")
def trained(tiny_mlm_dir: str) -> tuple[ModelWithGradiend, object, tuple[str, str], object]:
    rows, pair = unify(make_rows(), ["3SG", "3PL"], seed=0)
    model = ModelWithGradiend.create(tiny_mlm_dir, params=["encoder.layer.1.*"], feature_classes=pair, seed=0)
    args = TrainingArguments(train_batch_size=4, max_steps=6, eval_steps=3, show_progress=False,
                             scale_estimation_batches=2, calibrate_encoder=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        outcome = train_gradiend(model, rows[rows["split"] == "train"], rows[rows["split"] == "validation"], pair,
                                 args)
    return model, rows, pair, outcome


def test_calibrate_state_applies_the_fit_to_the_encoder_only(trained) -> None:
    model, rows, pair, outcome = trained
    state = {k: v.clone() for k, v in outcome.state.items()}
    val, train = rows[rows["split"] == "validation"], rows[rows["split"] == "train"]
    class_rows, neutral = held_in_rows(val, train, model.objective, seed=0)
    assert len(neutral) == len(class_rows) and set(neutral["label"]) == {0}
    fit = calibrate_state(model, state, class_rows, neutral, pair, batch_size=8)
    torch.testing.assert_close(state["encoder_weight"], outcome.state["encoder_weight"] * fit.gain)
    torch.testing.assert_close(state["encoder_bias"], outcome.state["encoder_bias"] * fit.gain + fit.offset)
    for name in ("decoder_weight", "decoder_bias", "input_scale", "target_scale"):
        assert torch.equal(state[name], outcome.state[name]), name
    assert fit.loss_after <= fit.loss_before
    # the record's "after" numbers are what the calibrated model encodes
    model.gradiend.load_state_dict(state)
    h = model.encode(list(class_rows["masked"]), list(class_rows["factual"]), list(class_rows["alternative"]))[:, 0]
    labels = class_rows["label"].to_numpy()
    assert fit.class_means_after[pair[0]] == pytest.approx(float(h[labels == 1].mean()), abs=1e-3)
    hn = model.encode(list(neutral["masked"]), list(neutral["factual"]), kind="factual")[:, 0]
    assert fit.neutral_abs_mean_after == pytest.approx(float(np.abs(hn).mean()), abs=1e-3)
    # projections are the raw directional derivatives: tanh(p + b) is the model's encoding
    model.gradiend.load_state_dict(outcome.state)
    direction = model.gradiend.encoder_directions().detach()
    p = projections(model, class_rows, "alternative", direction, 8)[:, 0]
    h0 = model.encode(list(class_rows["masked"]), list(class_rows["factual"]), list(class_rows["alternative"]))[:, 0]
    np.testing.assert_allclose(np.tanh(p + float(outcome.state["encoder_bias"][0])), h0, atol=1e-5)


def test_training_calibrates_the_selected_state_by_default(tiny_mlm_dir: str) -> None:
    rows, pair = unify(make_rows(), ["3SG", "3PL"], seed=0)
    train, val = rows[rows["split"] == "train"], rows[rows["split"] == "validation"]
    outcomes = {}
    for calibrate in (True, False):
        model = ModelWithGradiend.create(tiny_mlm_dir, params=["encoder.layer.1.*"], feature_classes=pair, seed=0)
        args = TrainingArguments(train_batch_size=4, max_steps=6, eval_steps=3, show_progress=False,
                                 scale_estimation_batches=2, calibrate_encoder=calibrate)
        assert TrainingArguments().calibrate_encoder is True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            outcomes[calibrate] = train_gradiend(model, train, val, pair, args)
    on, off = outcomes[True], outcomes[False]
    assert "calibration" not in off.stats
    record = on.stats["calibration"]
    assert record["n_class_rows"] == len(val) and record["n_neutral_rows"] == len(val)
    # the same training; only the encoder of the selected state is rescaled and shifted
    torch.testing.assert_close(on.state["encoder_weight"], off.state["encoder_weight"] * record["gain"])
    torch.testing.assert_close(on.state["encoder_bias"], off.state["encoder_bias"] * record["gain"] + record["offset"])
    assert torch.equal(on.state["decoder_weight"], off.state["decoder_weight"])
    assert on.stats["losses"] == off.stats["losses"]
