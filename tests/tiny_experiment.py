"""A finished experiment directory (trained, encoder and decoder evaluated) on the tiny random BERT."""

from __future__ import annotations

import warnings
from pathlib import Path

from conftest import make_rows

from gradiend import TextPredictionTrainer, TrainingArguments

NEUTRAL = ["the man walked home and was happy .", "the sea was very old and the ship was little .",
           "the woman saw the house at night .", "then the children talked of the letter again ."]
LRS = [1.0, 0.1, 0.01]


def build(model_dir: str, experiment_dir: Path, *, encoder: bool = True, decoder: bool = True,
          max_seeds: int = 1) -> TextPredictionTrainer:
    """Train 6 steps (evaluations at 0, 3, 6); optionally evaluate the encoder and strengthen 3SG.

    `max_seeds` > 1 trains that many seeds (all must converge, so every one is tried) and writes the seed report.
    """
    args = TrainingArguments(experiment_dir=str(experiment_dir), train_batch_size=4, max_steps=6, eval_steps=3,
                             seed=0, show_progress=False, scale_estimation_batches=2, params=["encoder.layer.1.*"],
                             decoder_eval_lrs=LRS, max_seeds=max_seeds, min_convergent_seeds=max_seeds)
    trainer = TextPredictionTrainer(model=model_dir, data=make_rows(), args=args, target_classes=["3SG", "3PL"],
                                    eval_neutral_data=NEUTRAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 6 steps on a random model do not converge
        trainer.train()
    if encoder:
        trainer.evaluate_encoder()
    if decoder:
        trainer.evaluate_decoder(target_class="3SG")
    return trainer
