"""Masked-token (and, later, next-token) prediction trainers."""

from gradiend.trainer.text.prediction.trainer import TextPredictionTrainer

__all__ = ["TextPredictionTrainer"]
