"""Issue 15: a GRADIEND run is the same at every learning rate (the rate sets the unit of the weights)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import make_rows

from gradiend import TrainingArguments
from gradiend.data import unify
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.training import train_gradiend


def _run(model_dir: str, lr: float, **options: object) -> tuple[np.ndarray, torch.Tensor, dict]:
    """Encodings of the test rows (uncalibrated: the trained weights themselves), dec(+1) − dec(−1) in raw
    gradient units, and the run's stats."""
    rows, pair = unify(make_rows(), ["3SG", "3PL"], seed=0)
    model = ModelWithGradiend.create(model_dir, params=["encoder.layer.1.*"], feature_classes=pair, seed=0)
    args = TrainingArguments(train_batch_size=4, max_steps=24, eval_steps=8, learning_rate=lr, weight_decay=0.0,
                             show_progress=False, scale_estimation_batches=2, calibrate_encoder=False, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        outcome = train_gradiend(model, rows[rows["split"] == "train"], rows[rows["split"] == "validation"], pair,
                                 args)
    model.gradiend.load_state_dict(outcome.state)
    test = rows[rows["split"] == "test"]
    h = model.encode(list(test["masked"]), list(test["factual"]), list(test["alternative"]))[:, 0]
    with torch.no_grad():
        dec = model.gradiend.decode(1.0) - model.gradiend.decode(-1.0)
    return h, dec, outcome.stats


def test_runs_at_lr_1e5_and_1e2_give_the_same_encodings_and_decoded_update(tiny_mlm_dir: str) -> None:
    h_low, dec_low, stats_low = _run(tiny_mlm_dir, 1e-5)
    h_high, dec_high, stats_high = _run(tiny_mlm_dir, 1e-2)
    # the scales follow the learning rate: the same gradients, in units 1000x apart
    assert stats_low["gradient_scales"]["input_l1_norm"] == pytest.approx(1000 * stats_high["gradient_scales"][
        "input_l1_norm"])
    assert np.abs(h_low).max() > 0.3, "the run at lr 1e-5 moved (before issue 15 it stayed at h ≈ 0)"
    # the encoder bias is the one weight not rescaled: it moves pre-activations by up to lr per step (0.01 at
    # lr 1e-2, 1e-5 at lr 1e-5), which shifts h by a few hundredths here (measured; Adam's ε is not the cause)
    np.testing.assert_allclose(h_low, h_high, atol=0.1)
    assert np.corrcoef(h_low, h_high)[0, 1] > 0.99
    cos = torch.nn.functional.cosine_similarity(dec_low, dec_high, dim=0)
    assert float(cos) > 0.95 and float(dec_low.norm() / dec_high.norm()) == pytest.approx(1.0, abs=0.25)
    assert stats_low["best_score_checkpoint"]["global_step"] == stats_high["best_score_checkpoint"]["global_step"]
    # healthy at both rates: the early warning stays silent
    assert stats_low["diagnostics"] == [] and stats_high["diagnostics"] == []


def test_a_stuck_run_is_reported_early(tiny_mlm_dir: str) -> None:
    # raw gradients (no scaling) at lr 1e-8: a step moves a pre-activation by at most 1e-8·‖x‖₁, so it stays at 0
    h, _, stats = _run(tiny_mlm_dir, 1e-8, standardize_gradients=False)
    assert np.abs(h).max() < 0.1
    causes = [(d["cause"], d["step"]) for d in stats["diagnostics"]]
    assert causes == [("not_moving", 24)]
