"""`TrainingArguments` (and its section configs) at the reference import path."""

from gradiend.arguments import (
    ConfigSection,
    ConvergenceArgs,
    DecoderEvalArgs,
    EvaluationArgs,
    GradiendArgs,
    GradientCacheArgs,
    MiscArgs,
    ObjectiveArgs,
    OptimizationArgs,
    OutputArgs,
    PostPruneConfig,
    PrePruneConfig,
    PruningArgs,
    SeedArgs,
    TrainingArguments,
)

__all__ = [
    "ConfigSection",
    "ConvergenceArgs",
    "DecoderEvalArgs",
    "EvaluationArgs",
    "GradiendArgs",
    "GradientCacheArgs",
    "MiscArgs",
    "ObjectiveArgs",
    "OptimizationArgs",
    "OutputArgs",
    "PostPruneConfig",
    "PrePruneConfig",
    "PruningArgs",
    "SeedArgs",
    "TrainingArguments",
]
