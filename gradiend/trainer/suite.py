"""The reference's import path of the suites (`from gradiend.trainer.suite import PositiveTrainerSuite`);
they live in `gradiend.suites`."""

from __future__ import annotations

from gradiend.suites import (
    PositiveFeatureDefinition,
    PositiveTrainerSuite,
    SymmetricTrainerSuite,
    TrainerCollection,
)

__all__ = ["PositiveFeatureDefinition", "PositiveTrainerSuite", "SymmetricTrainerSuite", "TrainerCollection"]
