"""gradiend: learn, measure and rewrite a feature neuron from a language model's gradients.

Public names are imported lazily on first access (PEP 562), so `import gradiend` does not pull in
transformers, datasets, pandas or matplotlib; `from gradiend import X` works as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradiend._lazy import lazy_exports
from gradiend._version import __version__

if TYPE_CHECKING:
    from gradiend.arguments import PostPruneConfig, PrePruneConfig, TrainingArguments
    from gradiend.data import DataError
    from gradiend.data_creation import (
        PairedTextFilterConfig,
        TextFilterConfig,
        TextPredictionDataCreator,
        TextPreprocessConfig,
    )
    from gradiend.embedded import embedded_model_path
    from gradiend.hub import push_to_hub
    from gradiend.model import GradiendConfig, GradiendModel
    from gradiend.model_with_gradiend import ModelWithGradiend
    from gradiend.plots import plot_topk_overlap_heatmap, plot_topk_overlap_venn
    from gradiend.reference_format import load_reference_checkpoint
    from gradiend.selection import LMSThresholdPolicy, LMSTimesMetricPolicy, SelectionPolicy
    from gradiend.suites import (
        GradiendCollection,
        GradiendSuite,
        PositiveFeatureDefinition,
        PositiveSuite,
        PositiveTrainerSuite,
        SymmetricSuite,
        SymmetricTrainerSuite,
        TrainerCollection,
    )
    from gradiend.topk import get_topk_weights, seed_stability_topk, topk_overlap
    from gradiend.trainer.text.prediction.inputs import TextPredictionConfig
    from gradiend.trainer.text.prediction.trainer import TextPredictionTrainer
    from gradiend.trainer.trainer import Trainer
    from gradiend.training import TrainingCallback, set_seed

_EXPORTS: dict[str, str] = {
    "DataError": "gradiend.data",
    "GradiendConfig": "gradiend.model",
    "GradiendModel": "gradiend.model",
    "ModelWithGradiend": "gradiend.model_with_gradiend",
    "PostPruneConfig": "gradiend.arguments",
    "PrePruneConfig": "gradiend.arguments",
    "TextFilterConfig": "gradiend.data_creation",
    "TextPredictionDataCreator": "gradiend.data_creation",
    "TextPredictionTrainer": "gradiend.trainer.text.prediction.trainer",
    "TextPredictionConfig": "gradiend.trainer.text.prediction.inputs",
    "TextPreprocessConfig": "gradiend.data_creation",
    "Trainer": "gradiend.trainer.trainer",
    "TrainingArguments": "gradiend.arguments",
    "TrainingCallback": "gradiend.training",
    "embedded_model_path": "gradiend.embedded",
    "set_seed": "gradiend.training",
    "PairedTextFilterConfig": "gradiend.data_creation",
    "load_reference_checkpoint": "gradiend.reference_format",
    "get_topk_weights": "gradiend.topk",
    "topk_overlap": "gradiend.topk",
    "seed_stability_topk": "gradiend.topk",
    "plot_topk_overlap_heatmap": "gradiend.plots",
    "plot_topk_overlap_venn": "gradiend.plots",
    "push_to_hub": "gradiend.hub",
    "LMSThresholdPolicy": "gradiend.selection",
    "LMSTimesMetricPolicy": "gradiend.selection",
    "SelectionPolicy": "gradiend.selection",
    "GradiendCollection": "gradiend.suites",
    "GradiendSuite": "gradiend.suites",
    "PositiveFeatureDefinition": "gradiend.suites",
    "PositiveSuite": "gradiend.suites",
    "PositiveTrainerSuite": "gradiend.suites",
    "SymmetricSuite": "gradiend.suites",
    "SymmetricTrainerSuite": "gradiend.suites",
    "TrainerCollection": "gradiend.suites",
}

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

__all__ = [
    "DataError",
    "GradiendCollection",
    "GradiendConfig",
    "GradiendModel",
    "GradiendSuite",
    "LMSThresholdPolicy",
    "LMSTimesMetricPolicy",
    "ModelWithGradiend",
    "PairedTextFilterConfig",
    "PositiveFeatureDefinition",
    "PositiveSuite",
    "PositiveTrainerSuite",
    "PostPruneConfig",
    "PrePruneConfig",
    "SelectionPolicy",
    "SymmetricSuite",
    "SymmetricTrainerSuite",
    "TextFilterConfig",
    "TextPredictionConfig",
    "TextPredictionDataCreator",
    "TextPredictionTrainer",
    "TextPreprocessConfig",
    "Trainer",
    "TrainerCollection",
    "TrainingArguments",
    "TrainingCallback",
    "__version__",
    "embedded_model_path",
    "get_topk_weights",
    "load_reference_checkpoint",
    "plot_topk_overlap_heatmap",
    "plot_topk_overlap_venn",
    "push_to_hub",
    "seed_stability_topk",
    "set_seed",
    "topk_overlap",
]
