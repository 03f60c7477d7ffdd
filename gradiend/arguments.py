"""Typed, validated training configuration (`TrainingArguments`) and pruning configs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch

GRADIENT_KINDS = ("factual", "alternative", "diff")
USE_CACHE_MODES = (False, True, "always", "only_convergent")
SAVED_SEED_RUNS = ("best_only", "all_convergent", "all_tried")
CONVERGENT_METRICS = ("correlation", "loss")
GRADIENT_CACHE_MODES = ("off", "memory", "disk")
GRADIENT_CACHE_DTYPES = ("float32", "bfloat16")
PRUNE_PARTS = ("decoder-weight", "encoder-weight", "decoder-bias", "decoder-sum")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


def dtype_name(dtype: torch.dtype | str | None) -> str | None:
    """Canonical short name ('float32', …) of a torch dtype or dtype string."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if name not in DTYPES:
            raise ValueError(f"torch_dtype {dtype!r} is not supported; use one of {sorted(DTYPES)}")
        return name
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"torch_dtype {dtype!r} is not supported; use one of {sorted(DTYPES)}")


def _check_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_topk(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be an int count or a float fraction in (0, 1], got {value!r}")
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        raise ValueError(f"{name} as a fraction must be in (0, 1], got {value}")
    if isinstance(value, int) and value <= 0:
        raise ValueError(f"{name} as a count must be positive, got {value}")


@dataclass
class PrePruneConfig:
    """Keep the top-k input coordinates by |mean source gradient| before training."""

    n_samples: int = 8
    topk: int | float = 0.1
    threshold: float | None = None
    source: str = "alternative"
    batch_size: int = 8
    seed: int | None = None

    def __post_init__(self) -> None:
        _check_positive_int("PrePruneConfig.n_samples", self.n_samples)
        _check_positive_int("PrePruneConfig.batch_size", self.batch_size)
        _check_topk("PrePruneConfig.topk", self.topk)
        if self.source not in GRADIENT_KINDS:
            raise ValueError(f"PrePruneConfig.source must be one of {GRADIENT_KINDS}, got {self.source!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrePruneConfig:
        return cls(**data)


@dataclass
class PostPruneConfig:
    """Keep the top-k input coordinates by trained-weight importance after training."""

    topk: int | float = 0.01
    threshold: float | None = None
    part: str = "decoder-weight"
    inplace: bool = True

    def __post_init__(self) -> None:
        _check_topk("PostPruneConfig.topk", self.topk)
        if not isinstance(self.inplace, bool):
            raise ValueError(f"PostPruneConfig.inplace must be a bool, got {self.inplace!r}")
        if self.part not in PRUNE_PARTS:
            raise ValueError(f"PostPruneConfig.part must be one of {PRUNE_PARTS}, got {self.part!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PostPruneConfig:
        return cls(**data)


@dataclass
class TrainingArguments:
    """Everything that shapes a GRADIEND training run.

    `max_steps` (> 0) wins over `num_train_epochs`. `num_epochs` is accepted as an alias of
    `num_train_epochs` (the reference docs use both). Fields used by later features
    (decoder grid, multi-seed, pruning) are validated and stored now.

    `objective` forces the prediction objective ("mlm" masked token, "clm" next token);
    None picks it from the model. Causal LMs only see text left of the slot: training and
    evaluation rows with fewer than `min_left_context_tokens` tokens there are dropped (logged).
    """

    # where things go
    experiment_dir: str | None = None
    output_dir: str | None = None
    use_cache: bool | str = False
    # what is learned
    source: str = "alternative"
    target: str = "diff"
    params: list[str] | None = None
    latent_dim: int = 1
    activation_encoder: str = "tanh"
    bias_decoder: bool = True
    torch_dtype: Any = "float32"
    normalize_gradiend: bool = True
    standardize_gradients: bool = True
    scale_estimation_batches: int = 4
    add_identity_for_other_classes: bool = False
    # optimisation
    train_batch_size: int = 32
    gradiend_batch_size: int = 1
    train_max_size: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    optim: str = "adamw"
    num_train_epochs: int = 3
    num_epochs: int | None = None
    max_steps: int = -1
    seed: int | None = 0
    max_length: int = 256
    # prediction objective: None = "mlm" for masked LMs, "clm" for causal LMs (see README)
    objective: str | None = None
    min_left_context_tokens: int = 3
    # in-training evaluation and checkpoints
    do_eval: bool = True
    eval_steps: int = 250
    eval_batch_size: int = 32
    encoder_eval_train_max_size: int | None = None
    encoder_eval_max_size: int | None = None
    save_only_best: bool = True
    # convergence
    convergent_score_threshold: float = 0.5
    convergent_mean_by_class_threshold: float | None = 0.5  # None: correlation (or loss) alone decides
    fail_on_non_convergence: bool = False
    # multi-seed: seeds seed, seed+1, …; stop once min_convergent_seeds converged; best copied to model/
    max_seeds: int = 1
    min_convergent_seeds: int = 1
    convergent_metric: str = "correlation"
    seed_selection_eval_max_size: int | None = None
    seed_runs_dir: str | None = None
    keep_seed_runs: bool = False
    saved_seed_runs: str = "best_only"
    # seed of the batches (which rows, in which order; None: `seed`); multi-seed runs share it
    data_seed: int | None = None
    # per-batch base-model gradients reused across epochs and seeds ("off" | "memory" | "disk")
    gradient_cache: str = "memory"
    gradient_cache_max_gb: float = 2.0
    gradient_cache_dtype: str = "float32"
    # pruning
    pre_prune_config: PrePruneConfig | None = None
    post_prune_config: PostPruneConfig | None = None
    # decoder evaluation grid
    decoder_eval_lrs: list[float] | None = None
    decoder_eval_feature_factors: list[float] | None = None
    decoder_eval_max_size_training_like: int | None = None
    decoder_eval_max_size_neutral: int | None = None
    # misc
    trust_remote_code: bool = False
    show_progress: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_epochs is not None:
            self.num_train_epochs = self.num_epochs
            self.num_epochs = None
        self.torch_dtype = dtype_name(self.torch_dtype)
        if isinstance(self.pre_prune_config, dict):
            self.pre_prune_config = PrePruneConfig.from_dict(self.pre_prune_config)
        if isinstance(self.post_prune_config, dict):
            self.post_prune_config = PostPruneConfig.from_dict(self.post_prune_config)
        self._validate()

    def _validate(self) -> None:
        for name in ("source", "target"):
            if getattr(self, name) not in GRADIENT_KINDS:
                raise ValueError(f"{name} must be one of {GRADIENT_KINDS}, got {getattr(self, name)!r}")
        if self.use_cache not in USE_CACHE_MODES:
            raise ValueError(f"use_cache must be one of {USE_CACHE_MODES}, got {self.use_cache!r}")
        for name in ("train_batch_size", "gradiend_batch_size", "eval_batch_size", "latent_dim",
                     "num_train_epochs", "max_length", "scale_estimation_batches", "max_seeds",
                     "min_convergent_seeds"):
            _check_positive_int(name, getattr(self, name))
        for name in ("train_max_size", "encoder_eval_train_max_size", "encoder_eval_max_size",
                     "seed_selection_eval_max_size", "decoder_eval_max_size_training_like",
                     "decoder_eval_max_size_neutral"):
            _check_positive_int(name, getattr(self, name), allow_none=True)
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps == 0:
            raise ValueError(f"max_steps must be a positive integer (or -1 for epochs), got {self.max_steps!r}")
        if self.max_steps < -1:
            raise ValueError(f"max_steps must be a positive integer (or -1 for epochs), got {self.max_steps}")
        if self.do_eval:
            _check_positive_int("eval_steps", self.eval_steps)
        for name in ("learning_rate", "adam_epsilon"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.optim not in ("adamw", "adam"):
            raise ValueError(f"optim must be 'adamw' or 'adam', got {self.optim!r}")
        if self.activation_encoder not in ("tanh", "hardtanh"):
            raise ValueError(f"activation_encoder must be 'tanh' or 'hardtanh' (odd, bounded), "
                             f"got {self.activation_encoder!r}")
        if self.objective not in (None, "mlm", "clm"):
            raise ValueError(f"objective must be 'mlm', 'clm' or None (chosen from the model), got {self.objective!r}")
        _check_positive_int("min_left_context_tokens", self.min_left_context_tokens)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")
        for name in ("convergent_score_threshold", "convergent_mean_by_class_threshold"):
            value = getattr(self, name)
            if value is None and name == "convergent_mean_by_class_threshold":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if self.min_convergent_seeds > self.max_seeds:
            raise ValueError(f"min_convergent_seeds ({self.min_convergent_seeds}) exceeds max_seeds "
                             f"({self.max_seeds})")
        if self.convergent_metric not in CONVERGENT_METRICS:
            raise ValueError(f"convergent_metric must be one of {CONVERGENT_METRICS}, got {self.convergent_metric!r}")
        if self.gradient_cache not in GRADIENT_CACHE_MODES:
            raise ValueError(f"gradient_cache must be one of {GRADIENT_CACHE_MODES}, got {self.gradient_cache!r}")
        if self.gradient_cache_dtype not in GRADIENT_CACHE_DTYPES:
            raise ValueError(f"gradient_cache_dtype must be one of {GRADIENT_CACHE_DTYPES}, "
                             f"got {self.gradient_cache_dtype!r}")
        if (isinstance(self.gradient_cache_max_gb, bool) or not isinstance(self.gradient_cache_max_gb, (int, float))
                or not self.gradient_cache_max_gb >= 0):
            raise ValueError(f"gradient_cache_max_gb must be a number >= 0, got {self.gradient_cache_max_gb!r}")
        if self.data_seed is not None and (isinstance(self.data_seed, bool) or not isinstance(self.data_seed, int)):
            raise ValueError(f"data_seed must be an int or None, got {self.data_seed!r}")
        if not isinstance(self.keep_seed_runs, bool):
            raise ValueError(f"keep_seed_runs must be a bool, got {self.keep_seed_runs!r}")
        if self.saved_seed_runs not in SAVED_SEED_RUNS:
            raise ValueError(f"saved_seed_runs must be one of {SAVED_SEED_RUNS}, got {self.saved_seed_runs!r}")
        if self.params is not None:
            if isinstance(self.params, str):
                self.params = [self.params]
            if not self.params or not all(isinstance(p, str) and p for p in self.params):
                raise ValueError(f"params must be a non-empty list of parameter names/patterns, got {self.params!r}")
        for name in ("decoder_eval_lrs", "decoder_eval_feature_factors"):
            value = getattr(self, name)
            if value is not None and (not value or not all(isinstance(v, (int, float)) for v in value)):
                raise ValueError(f"{name} must be a non-empty list of numbers, got {value!r}")
        if not isinstance(self.metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(self.metadata).__name__}")

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype named by `torch_dtype`."""
        return DTYPES[self.torch_dtype]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field; `from_dict` restores an equal object."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (PrePruneConfig, PostPruneConfig)):
                value = value.to_dict()
            elif isinstance(value, (list, dict)):
                value = _json_copy(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingArguments:
        """Inverse of `to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown TrainingArguments field(s): {unknown}")
        return cls(**data)

    def replace(self, **overrides: Any) -> TrainingArguments:
        """A validated copy with `overrides` applied (unknown names are an error)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"Unknown TrainingArguments field(s): {unknown}")
        return dataclasses.replace(self, **overrides)

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style access used by older scripts."""
        return getattr(self, key, default)


def _json_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_copy(v) for v in value]
    return value
