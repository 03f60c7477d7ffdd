"""Trainer facades (import paths follow the reference API), imported lazily on first access."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradiend._lazy import lazy_exports

if TYPE_CHECKING:
    from gradiend.suites import (
        PositiveFeatureDefinition,
        PositiveTrainerSuite,
        SymmetricTrainerSuite,
        TrainerCollection,
    )
    from gradiend.trainer.text.prediction.trainer import TextPredictionTrainer
    from gradiend.trainer.trainer import Trainer
    from gradiend.training import TrainingCallback

__getattr__, __dir__ = lazy_exports(globals(), {
    "PositiveFeatureDefinition": "gradiend.suites",
    "PositiveTrainerSuite": "gradiend.suites",
    "SymmetricTrainerSuite": "gradiend.suites",
    "TrainerCollection": "gradiend.suites",
    "TextPredictionTrainer": "gradiend.trainer.text.prediction.trainer",
    "Trainer": "gradiend.trainer.trainer",
    "TrainingCallback": "gradiend.training",
})

__all__ = ["PositiveFeatureDefinition", "PositiveTrainerSuite", "SymmetricTrainerSuite", "TextPredictionTrainer",
           "Trainer", "TrainerCollection", "TrainingCallback"]
