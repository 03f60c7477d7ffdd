"""gradiend: learn, measure and rewrite a feature neuron from a language model's gradients."""

from gradiend._version import __version__
from gradiend.arguments import PostPruneConfig, PrePruneConfig, TrainingArguments
from gradiend.data import DataError
from gradiend.data_creation import TextFilterConfig, TextPredictionDataCreator, TextPreprocessConfig
from gradiend.embedded import embedded_model_path
from gradiend.model import GradiendConfig, GradiendModel
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.trainer import TextPredictionTrainer, Trainer, TrainingCallback
from gradiend.training import set_seed

__all__ = [
    "DataError",
    "GradiendConfig",
    "GradiendModel",
    "ModelWithGradiend",
    "PostPruneConfig",
    "PrePruneConfig",
    "TextFilterConfig",
    "TextPredictionDataCreator",
    "TextPredictionTrainer",
    "TextPreprocessConfig",
    "Trainer",
    "TrainingArguments",
    "TrainingCallback",
    "__version__",
    "embedded_model_path",
    "set_seed",
]
