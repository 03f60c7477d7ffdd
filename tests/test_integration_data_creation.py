"""Integration: mine the shipped public-domain sentences for 3SG/3PL and train on them end to end."""

from __future__ import annotations

import pytest

from gradiend import (
    TextFilterConfig,
    TextPredictionDataCreator,
    TextPredictionTrainer,
    TrainingArguments,
    embedded_model_path,
)
from gradiend.demo_data import load_demo_data, load_demo_neutral

pytestmark = pytest.mark.integration


def shipped_sentences() -> list[str]:
    """The raw sentences behind the shipped demo tables (Austen and Moby Dick)."""
    rows = load_demo_data()
    pronoun = [m.replace("[MASK]", label, 1) for m, label in zip(rows["masked"], rows["label"], strict=True)]
    return pronoun + list(load_demo_neutral()["text"])


def test_mined_3sg_vs_3pl_trains(tmp_path) -> None:
    creator = TextPredictionDataCreator(
        shipped_sentences(),
        feature_targets=[TextFilterConfig(targets=["he", "she", "it"], id="3SG"), TextFilterConfig(target="they",
                                                                                                   id="3PL")],
        seed=0, show_progress=False, min_left_context_words=0)  # the shipped rows include sentence-initial pronouns
    training = creator.generate_training_data(max_size_per_class=500, balance_targets=True)
    neutral = creator.generate_neutral_data(additional_excluded_words=["i", "we", "you", "him", "her", "them"],
                                            max_size=500)
    assert {c: len(df) for c, df in training.items()} == {"3SG": 500, "3PL": 500}
    # the last layer only: a backward pass through one layer keeps this test cheap in CI
    args = TrainingArguments(experiment_dir=str(tmp_path / "exp"), train_batch_size=8, max_steps=50, eval_steps=25,
                             learning_rate=1e-3, seed=0, show_progress=False, encoder_eval_train_max_size=60,
                             params=["encoder.layer.4.*"])
    trainer = TextPredictionTrainer(model=embedded_model_path("mlm"), data=training, args=args,
                                    eval_neutral_data=neutral)
    trainer.train()
    result = trainer.evaluate_encoder(split="test", max_size=100)
    assert abs(result["correlation"]) >= 0.85, result
    assert result["mean_by_class"]["3SG"] > 0 > result["mean_by_class"]["3PL"], result
    for kind, value in result["neutral_mean_by_type"].items():
        assert abs(value) <= 0.4, (kind, value)
