"""Trainer facades (import paths follow the reference API)."""

from gradiend.trainer.text.prediction.trainer import TextPredictionTrainer
from gradiend.trainer.trainer import Trainer
from gradiend.training import TrainingCallback

__all__ = ["TextPredictionTrainer", "Trainer", "TrainingCallback"]
