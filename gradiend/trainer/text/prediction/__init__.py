"""Masked- and next-token prediction trainers, imported lazily on first access."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradiend._lazy import lazy_exports

if TYPE_CHECKING:
    from gradiend.trainer.text.prediction.inputs import TextPredictionConfig
    from gradiend.trainer.text.prediction.trainer import TextPredictionTrainer

__getattr__, __dir__ = lazy_exports(globals(), {
    "TextPredictionConfig": "gradiend.trainer.text.prediction.inputs",
    "TextPredictionTrainer": "gradiend.trainer.text.prediction.trainer",
})

__all__ = ["TextPredictionConfig", "TextPredictionTrainer"]
