"""Masked-token (and, later, next-token) prediction trainers, imported lazily on first access."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradiend._lazy import lazy_exports

if TYPE_CHECKING:
    from gradiend.trainer.text.prediction.trainer import TextPredictionTrainer

__getattr__, __dir__ = lazy_exports(globals(), {
    "TextPredictionTrainer": "gradiend.trainer.text.prediction.trainer",
})

__all__ = ["TextPredictionTrainer"]
