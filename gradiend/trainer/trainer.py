"""`Trainer`: the facade users drive (train → evaluate → inspect), delegating every step.

It holds only the state the API promises (base model, arguments, experiment directory, the
loaded model); data handling lives in subclasses (`TextPredictionTrainer`).
"""

from __future__ import annotations

import abc
import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from gradiend._version import __version__
from gradiend.arguments import PostPruneConfig, PrePruneConfig, TrainingArguments
from gradiend.data import MASK, cap_per_class, require_split, unify
from gradiend.decoder_eval import (
    DEFAULT_LRS,
    Selector,
    SummaryExtractor,
    lms_threshold_selector,
    run_grid,
    strengthen_factor,
    summarize,
)
from gradiend.encoder_eval import build_encoder_frame, encode_frame, encoder_metrics
from gradiend.experiment import (
    TRAINING_STATS,
    atomic_directory,
    atomic_write_json,
    atomic_write_with,
    encoder_cache_path,
    experiment_lock,
    fingerprint,
    model_dir,
    read_json,
)
from gradiend.gradient_cache import GradientStore
from gradiend.model import CONFIG_FILE, is_checkpoint
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.pruning import post_prune, pre_prune
from gradiend.rewrite import save_rewritten
from gradiend.scoring import class_piece_sets, prepare_lms
from gradiend.seeds import SeedTraining, run_seeds
from gradiend.training import TrainingCallback, evaluate_during_training, train_gradiend

logger = logging.getLogger(__name__)

DECODER_GRID = "decoder_grid.json"
DECODER_SUMMARIES = "decoder_summaries.json"
LMS_SEED = 42

# Arguments that do not change what a run learns (excluded from the cache fingerprint).
_NOT_FINGERPRINTED = {"experiment_dir", "output_dir", "use_cache", "show_progress", "fail_on_non_convergence",
                      "eval_batch_size", "encoder_eval_max_size", "metadata", "keep_seed_runs", "saved_seed_runs",
                      "seed_runs_dir", "gradient_cache", "gradient_cache_max_gb"} | {
    f for f in TrainingArguments.__dataclass_fields__ if f.startswith("decoder_eval_")}


class Trainer(abc.ABC):
    """Train, evaluate and inspect a GRADIEND for one pair of feature classes."""

    def __init__(self, model: str | ModelWithGradiend, target_classes: Sequence[str] | None = None,
                 args: TrainingArguments | None = None, run_id: str | None = None, n_features: int = 1) -> None:
        if run_id is not None and not isinstance(run_id, str):
            raise TypeError(f"run_id must be a str or None, got {type(run_id).__name__}")
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
            raise ValueError(f"n_features must be a positive int, got {n_features!r}")
        if args is not None and not isinstance(args, TrainingArguments):
            raise TypeError(f"args must be TrainingArguments, got {type(args).__name__}")
        if isinstance(model, ModelWithGradiend):
            self._model_instance: ModelWithGradiend | None = model
            self._base_model_arg = model.base_model_path
        elif isinstance(model, (str, os.PathLike)):
            self._model_instance = None
            self._base_model_arg = str(model)
        else:
            raise TypeError(f"model must be a model id/path or a ModelWithGradiend, got {type(model).__name__}")
        self._model_path = self._base_model_arg
        self._target_classes = list(target_classes) if target_classes is not None else None
        args = args or TrainingArguments()
        if n_features != 1 and args.latent_dim == 1:
            args = args.replace(latent_dim=n_features)
        self._args = args
        self.run_id = run_id
        self._temp_dir: tempfile.TemporaryDirectory | None = None
        self._pre_pruned: ModelWithGradiend | None = None
        self._explicit_pre_prune: dict[str, Any] | None = None  # config of pre_prune() for the next train()
        self._prune_revision = 0  # in-memory post-prunes since the model was loaded (cache keys)

    # -- subclass hooks -------------------------------------------------------------------------
    @abc.abstractmethod
    def unified_data(self) -> tuple[pd.DataFrame, tuple[str, str]]:
        """(unified rows, target pair) of the training data."""

    @abc.abstractmethod
    def neutral_texts(self) -> list[str] | None:
        """Feature-free texts for the neutral encoder variant, if any."""

    def post_training(self, model_with_gradiend: ModelWithGradiend, **kwargs: Any) -> None:  # noqa: B027
        """Called after training with the selected model; override to add steps (default: nothing)."""

    # -- properties -----------------------------------------------------------------------------
    @property
    def training_args(self) -> TrainingArguments:
        return self._args

    @property
    def experiment_dir(self) -> str:
        """`experiment_dir` (plus `run_id`); a temporary directory when none was given."""
        base = self._args.experiment_dir
        if base is None:
            if self._temp_dir is None:
                self._temp_dir = tempfile.TemporaryDirectory(prefix="gradiend-")
                logger.warning("No experiment_dir given; writing to temporary %s", self._temp_dir.name)
            base = self._temp_dir.name
        return str(Path(base) / self.run_id) if self.run_id else str(base)

    @property
    def model_path(self) -> str:
        """The base model before training, the GRADIEND checkpoint directory after it."""
        return self._model_path

    @property
    def base_model_path(self) -> str:
        return self._base_model_arg

    @property
    def target_classes(self) -> list[str]:
        return list(self.pair)

    @property
    def pair(self) -> tuple[str, str]:
        return self.unified_data()[1]

    def _output_dir(self) -> Path:
        return Path(self._args.output_dir) if self._args.output_dir else model_dir(self.experiment_dir)

    # -- training -------------------------------------------------------------------------------
    def _fingerprint(self, rows: pd.DataFrame) -> str:
        data_hash = hashlib.sha256(rows.to_csv(index=False).encode("utf-8")).hexdigest()[:16]
        args = {k: v for k, v in self._args.to_dict().items() if k not in _NOT_FINGERPRINTED}
        return fingerprint({"args": args, "base_model": self._base_model_arg, "data": data_hash,
                            "explicit_pre_prune": self._explicit_pre_prune})

    def _cached_run(self, out: Path, key: str) -> bool:
        mode = self._args.use_cache
        if not mode or not is_checkpoint(out) or not (out / TRAINING_STATS).is_file():
            return False
        if mode == "always":
            return True
        if read_json(out / CONFIG_FILE, "GRADIEND config").get("fingerprint") != key:
            logger.info("Existing run in %s has other settings or data; retraining", out)
            return False
        if mode == "only_convergent":
            return bool(read_json(out / TRAINING_STATS, "training stats")["convergence_info"]["converged"])
        return True

    def train(self, callbacks: Sequence[TrainingCallback] = (), **overrides: Any
              ) -> Trainer | dict[int, ModelWithGradiend]:
        """Train the GRADIEND; keyword overrides replace `TrainingArguments` fields for this run.

        With `max_seeds > 1` seeds seed, seed+1, … are trained until `min_convergent_seeds`
        converged; the best is linked into the model directory and `seeds/seed_report.json` is
        written. Returns the trainer, or `{seed: model}` when `keep_seed_runs=True`.
        """
        if overrides:
            self._args = self._args.replace(**overrides)
        args = self._args
        if args.post_prune_config is not None and not args.post_prune_config.inplace:
            raise ValueError("post_prune_config.inplace=False makes no sense when train() post-prunes: the pruned "
                             "model is what train() saves. Use inplace=True, or call "
                             "trainer.post_prune(PostPruneConfig(..., inplace=False)) after training for a copy.")
        rows, pair = self.unified_data()
        out = self._output_dir()
        key = self._fingerprint(rows)
        with experiment_lock(self.experiment_dir):
            if self._cached_run(out, key):
                logger.info("Reusing the finished run in %s (use_cache=%r)", out, args.use_cache)
                self._model_path, self._model_instance = str(out), None
                return self
            train_rows = require_split(rows, "train", pair, "training")
            eval_rows = require_split(rows, "validation", pair, "in-training evaluation") if args.do_eval else None
            template = self._pre_pruned or self._new_model(args, rows, pair)
            train_rows = template.rows_with_context(train_rows, "training")
            eval_rows = template.rows_with_context(eval_rows, "validation") if eval_rows is not None else None
            if self._pre_pruned is None and args.pre_prune_config is not None:
                pre_prune(template, train_rows, pair, args.pre_prune_config, args.show_progress)
            self._pre_pruned = self._explicit_pre_prune = None
            self._prune_revision = 0
            store = self._gradient_store(args)
            try:
                if args.max_seeds == 1:
                    result = self._train_seed(template, args, train_rows, eval_rows, pair, out, key, callbacks, store)
                    self._model_path, self._model_instance = str(out), result.model
                    self.post_training(result.model)
                    converged, reason = result.converged, result.reason
                else:
                    report, last = self._train_seeds(template, args, train_rows, eval_rows, pair, out, key,
                                                     callbacks, store)
                    # usually the last seed trained is the best: keep it instead of reloading model/
                    best = last.model if last is not None and last.seed == report["best_seed"] else None
                    self._model_path, self._model_instance = str(out), best
                    converged = report["convergent_count"] > 0
                    reason = f"none of the seeds {report['seeds_tried']} converged"
            finally:
                if store is not None:
                    logger.info("Gradient cache: %s", store.summary())
                    store.clear()
        self._autosave_training_convergence()
        if not converged:
            message = f"GRADIEND training did not converge: {reason} (model saved in {out})"
            if args.fail_on_non_convergence:
                raise RuntimeError(message + "; try more steps, more seeds or another learning_rate")
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        if args.max_seeds > 1:
            self.post_training(self.get_model())
            if args.keep_seed_runs:
                return {run["seed"]: self.load_model(run["output_dir"]) for run in report["runs"]}
        return self

    def _new_model(self, args: TrainingArguments, rows: pd.DataFrame, pair: tuple[str, str]) -> ModelWithGradiend:
        """An untrained GRADIEND over the base model (the template every seed starts from)."""
        model = ModelWithGradiend.create(
            self._base_model_arg, params=args.params, latent_dim=args.latent_dim,
            activation_encoder=args.activation_encoder, bias_decoder=args.bias_decoder,
            torch_dtype=args.torch_dtype, feature_classes=pair, source=args.source, target=args.target,
            seed=args.seed, max_length=args.max_length, trust_remote_code=args.trust_remote_code,
            device=self._device(), objective=args.objective,
            objective_options={"min_left_context_tokens": args.min_left_context_tokens}, shape_only=True)
        for token in sorted(set(rows["factual"]) | set(rows["alternative"])):
            model.objective.pieces(token)
        return model

    def _gradient_store(self, args: TrainingArguments) -> GradientStore | None:
        if args.gradient_cache == "off" or args.gradient_cache_max_gb == 0:
            return None
        directory = Path(self.experiment_dir) / "cache" / "gradients" if args.gradient_cache == "disk" else None
        store = GradientStore(args.gradient_cache, int(args.gradient_cache_max_gb * 1024**3),
                              args.gradient_cache_dtype, directory)
        # a later seed reuses every batch, but with min_convergent_seeds=1 the usual run stops after
        # seed 0: keep batches for later seeds only once one is certain to run (see train_seed)
        store.shared = args.min_convergent_seeds > 1
        return store

    def _train_seed(self, template: ModelWithGradiend, args: TrainingArguments, train_rows: pd.DataFrame,
                    eval_rows: pd.DataFrame | None, pair: tuple[str, str], directory: Path, key: str,
                    callbacks: Sequence[TrainingCallback], store: GradientStore | None) -> SeedTraining:
        """Train one GRADIEND (fresh weights from `args.seed`), post-prune it if configured, save it."""
        model = template.with_new_gradiend(args.seed)
        outcome = train_gradiend(model, train_rows, eval_rows, pair, args, callbacks, store)
        model.gradiend.load_state_dict(outcome.state)
        stats = {**outcome.stats, "training_args": args.to_dict(), "fingerprint": key,
                 "base_model": self._base_model_arg, "pair": list(pair), "n_inputs": model.param_map.size}
        if args.post_prune_config is not None:
            before = model.param_map.size
            post_prune(model, args.post_prune_config)
            stats["post_prune"] = {"config": args.post_prune_config.to_dict(), "inputs_before": before,
                                   "inputs_after": model.param_map.size}
        with atomic_directory(directory) as tmp:
            model.save_pretrained(tmp, extra_json={"fingerprint": key})
            atomic_write_json(tmp / TRAINING_STATS, stats)
        logger.info("Saved GRADIEND to %s (best correlation %s)", directory,
                    (outcome.stats["best_score_checkpoint"] or {}).get("correlation"))
        return SeedTraining(stats, outcome.converged, outcome.failure_reason, used_cache=False, model=model)

    def _train_seeds(self, template: ModelWithGradiend, args: TrainingArguments, train_rows: pd.DataFrame,
                     eval_rows: pd.DataFrame | None, pair: tuple[str, str], out: Path, key: str,
                     callbacks: Sequence[TrainingCallback], store: GradientStore | None
                     ) -> tuple[dict[str, Any], _LastSeed | None]:
        """Run the seeds; return the seed report and the last trained seed's in-memory model."""
        base_seed = args.seed if args.seed is not None else 0
        last: list[_LastSeed] = []
        data_seed = args.data_seed if args.data_seed is not None else base_seed
        seeds_dir = Path(args.seed_runs_dir) if args.seed_runs_dir else Path(self.experiment_dir) / "seeds"

        def train_seed(seed: int, directory: Path) -> SeedTraining:
            seed_args = args.replace(seed=seed, data_seed=data_seed)
            seed_key = fingerprint({"run": key, "seed": seed})
            if args.use_cache and self._cached_run(directory, seed_key):
                logger.info("Seed %d: reusing the finished run in %s", seed, directory)
                stats = read_json(directory / TRAINING_STATS, "training stats")
                info = stats.get("convergence_info", {})
                return SeedTraining(stats, bool(info.get("converged")), info.get("reason"), used_cache=True)
            logger.info("Seed %d: training into %s", seed, directory)
            if store is not None and seed > base_seed:
                store.shared = seed < base_seed + args.max_seeds - 1  # another seed may follow this one
            result = self._train_seed(template, seed_args, train_rows, eval_rows, pair, directory, seed_key,
                                      callbacks, store)
            last[:] = [_LastSeed(seed, result.model)]  # holds one GRADIEND at most
            return result

        selection_cap = args.seed_selection_eval_max_size or args.encoder_eval_max_size
        training_cap = args.encoder_eval_train_max_size or args.encoder_eval_max_size

        def eval_correlation(directory: Path, result: SeedTraining) -> tuple[float | None, str | None]:
            if eval_rows is None:
                return None, None
            if selection_cap == training_cap and args.post_prune_config is None:
                # the best checkpoint was chosen on exactly these rows with exactly these weights
                return (result.stats.get("best_score_checkpoint") or {}).get("correlation"), "training"
            model = result.model or self.load_model(directory)
            rows = cap_per_class(eval_rows, selection_cap, data_seed).reset_index(drop=True)
            return evaluate_during_training(model, rows, pair, args.eval_batch_size)["correlation"], "validation"

        report = run_seeds(args, seeds_dir, out, train_seed, eval_correlation)
        return report, (last[0] if last else None)

    # -- pruning --------------------------------------------------------------------------------
    def pre_prune(self, pre_cfg: PrePruneConfig | None = None, *, inplace: bool = True) -> ModelWithGradiend:
        """Prune an untrained GRADIEND by gradient importance (in memory; nothing is saved).

        `inplace=True`: the next `train()` builds its GRADIEND(s) on this pruned parameter map.
        `inplace=False`: returns the pruned model and leaves the trainer unchanged.
        """
        if pre_cfg is None and not inplace and self._args.pre_prune_config is not None:
            raise ValueError("pre_prune(inplace=False) with the config from TrainingArguments makes no sense: "
                             "train() would prune again on its own. Use inplace=True, or pass pre_cfg= explicitly "
                             "to get a pruned copy.")
        cfg = pre_cfg or self._args.pre_prune_config
        if cfg is None:
            raise ValueError("Pre-prune config required: pass pre_cfg=PrePruneConfig(...) or set "
                             "TrainingArguments.pre_prune_config")
        rows, pair = self.unified_data()
        model = self._new_model(self._args, rows, pair)
        train_rows = model.rows_with_context(require_split(rows, "train", pair, "pre-pruning"), "pre-pruning")
        pre_prune(model, train_rows, pair, cfg, self._args.show_progress)
        model = model.with_new_gradiend(self._args.seed)  # real (untrained) weights at the pruned size
        if inplace:
            self._pre_pruned = model
            self._explicit_pre_prune = cfg.to_dict()
        return model

    def post_prune(self, post_cfg: PostPruneConfig | None = None) -> Trainer | ModelWithGradiend:
        """Prune the trained GRADIEND by weight importance, in memory (not saved).

        `post_cfg.inplace=True` (default) prunes the trainer's model, which later evaluations use,
        and returns the trainer; `inplace=False` returns a pruned copy and leaves the trainer's model as is.
        """
        cfg = post_cfg or self._args.post_prune_config
        if cfg is None:
            raise ValueError("Post-prune config required: pass post_cfg=PostPruneConfig(...) or set "
                             "TrainingArguments.post_prune_config")
        if not cfg.inplace:
            model = self.load_model(self._model_path)
            post_prune(model, cfg)
            return model
        post_prune(self.get_model(), cfg)
        self._prune_revision += 1
        return self

    # -- models ---------------------------------------------------------------------------------
    def _device(self) -> torch.device | None:
        return self._model_instance.device if self._model_instance is not None else None

    def get_model(self, use_cache: bool | None = None, *, load_directory: str | None = None) -> ModelWithGradiend:
        """The trained model (cached in memory); `load_directory` loads another checkpoint."""
        if load_directory is not None:
            return self.load_model(load_directory)
        if self._model_instance is None:
            if is_checkpoint(self._model_path):
                self._model_instance = ModelWithGradiend.from_pretrained(
                    self._model_path, trust_remote_code=self._args.trust_remote_code, max_length=self._args.max_length)
            else:
                raise RuntimeError(f"No trained GRADIEND yet for {self._model_path!r}; call train() first or "
                                   f"load a checkpoint with load_model(path)")
        return self._model_instance

    def load_model(self, load_directory: str | os.PathLike) -> ModelWithGradiend:
        """Load a GRADIEND checkpoint directory (without replacing the trainer's model)."""
        return ModelWithGradiend.from_pretrained(load_directory, trust_remote_code=self._args.trust_remote_code,
                                                 max_length=self._args.max_length)

    def to(self, device: torch.device | str) -> Trainer:
        """Move the loaded model (no-op when none is loaded)."""
        if self._model_instance is not None:
            self._model_instance.to(device)
        return self

    def cpu(self) -> Trainer:
        return self.to("cpu")

    def cuda(self, device: int | str | torch.device | None = None) -> Trainer:
        if device is None:
            return self.to("cuda")
        return self.to(f"cuda:{device}" if isinstance(device, int) else device)

    def _model_stamp(self) -> str | None:
        """Identity of the current model's weights for evaluation caches (on-disk stamp + in-memory prunes)."""
        stamp = _weights_stamp(self._model_path)
        return f"{stamp}+post-pruned-{self._prune_revision}" if self._prune_revision else stamp

    # -- statistics -----------------------------------------------------------------------------
    def get_training_stats(self, model_path: str | None = None) -> dict[str, Any] | None:
        """`training.json` of a trained model (None before training)."""
        path = Path(model_path or self._model_path) / TRAINING_STATS
        return read_json(path, "training stats") if path.is_file() else None

    # -- encoder evaluation ---------------------------------------------------------------------
    def evaluate_encoder(self, split: str = "test", max_size: int | None = None,
                         neutral_data_df: pd.DataFrame | None = None, use_cache: bool | None = None,
                         return_df: bool = False, encoder_df: pd.DataFrame | None = None,
                         model_with_gradiend: ModelWithGradiend | None = None, plot: bool = False,
                         show_progress: bool | None = None, plot_kwargs: dict[str, Any] | None = None,
                         ) -> dict[str, Any]:
        """Encode a split plus neutral variants; return correlation, class means, accuracies.

        `plot=True` also saves the encoder distribution plot (`result["plot_path"]`); `plot_kwargs`
        go to `plot_encoder_distributions` (`show` defaults to True, a no-op without a display).
        """
        if not isinstance(split, str):
            raise TypeError(f"split must be a str, got {type(split).__name__}")
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size <= 0):
            raise ValueError(f"max_size must be a positive int or None, got {max_size!r}")
        pair = self.pair
        if encoder_df is None:
            max_size = max_size if max_size is not None else self._args.encoder_eval_max_size
            use_cache = self._args.use_cache if use_cache is None else use_cache
            encoder_df = self._encoder_frame(split, max_size, neutral_data_df, bool(use_cache), model_with_gradiend,
                                             self._args.show_progress if show_progress is None else show_progress)
        result = encoder_metrics(encoder_df, pair)
        if plot:
            if plot_kwargs is not None and not isinstance(plot_kwargs, dict):
                raise TypeError(f"plot_kwargs must be a dict or None, got {type(plot_kwargs).__name__}")
            options = {"split": split, "show": True, **(plot_kwargs or {})}
            result["plot_path"] = self.plot_encoder_distributions(encoder_df=encoder_df, **options)
        if return_df:
            result["encoder_df"] = encoder_df
        return result

    def _encoder_frame(self, split: str, max_size: int | None, neutral_data_df: pd.DataFrame | None,
                       use_cache: bool, model: ModelWithGradiend | None, show_progress: bool) -> pd.DataFrame:
        rows, pair = self.unified_data()
        model = model or self.get_model()
        part = model.rows_with_context(require_split(rows, split, pair, f"encoder evaluation on {split!r}"),
                                       f"encoder evaluation on {split!r}")
        neutral = list(neutral_data_df["text"]) if neutral_data_df is not None else self.neutral_texts()
        key = fingerprint({"model": self._model_path, "weights": self._model_stamp(), "split": split,
                           "max_size": max_size, "rows": self._fingerprint(part), "seed": self._args.seed,
                           "neutral": hashlib.sha256("\n".join(neutral or []).encode()).hexdigest()[:16]})
        cache = encoder_cache_path(self.experiment_dir, split, max_size)
        meta = cache.with_suffix(".json")
        if use_cache and cache.is_file() and meta.is_file() and read_json(meta).get("fingerprint") == key:
            logger.info("Reusing cached encodings %s", cache)
            return pd.read_csv(cache, keep_default_na=False)
        frame = build_encoder_frame(part, pair, neutral_texts=neutral, max_size=max_size, seed=self._args.seed,
                                    excluded_words=_pronoun_like(rows), usable=model.objective.is_known,
                                    context_ok=model.objective.has_context)
        frame = encode_frame(model, frame, self._args.eval_batch_size, show_progress)
        atomic_write_with(cache, lambda tmp: frame.to_csv(tmp, index=False))
        atomic_write_json(meta, {"fingerprint": key, "metrics": encoder_metrics(frame, pair)})
        return frame

    def get_encoder_metrics(self, model_path: str | None = None, encoder_df: pd.DataFrame | None = None,
                            **kwargs: Any) -> dict[str, Any]:
        """Encoder metrics from `encoder_df`, or from a (cached) evaluation."""
        if model_path is not None and model_path != self._model_path:
            kwargs["model_with_gradiend"] = self.load_model(model_path)
        return self.evaluate_encoder(encoder_df=encoder_df, use_cache=kwargs.pop("use_cache", True), **kwargs)

    def get_encodings(self, model_path: str | None = None, **kwargs: Any) -> pd.DataFrame:
        """The per-row encoder DataFrame (text, encoded, label, type, …)."""
        if model_path is not None and model_path != self._model_path:
            kwargs["model_with_gradiend"] = self.load_model(model_path)
        return self.evaluate_encoder(return_df=True, use_cache=kwargs.pop("use_cache", True), **kwargs)["encoder_df"]

    def encode(self, texts: Sequence[str] | None = None, factual: Sequence[str] | None = None,
               alternative: Sequence[str] | None = None, *, split: str = "test", kind: str | None = None,
               max_size: int | None = None) -> list[float]:
        """Feature values of given rows, or of the pair rows of `split` when no texts are given."""
        model = self.get_model()
        if texts is None:
            rows, pair = self.unified_data()
            part = model.rows_with_context(require_split(rows, split, pair, f"encoding {split!r}"), "encoding")
            if max_size is not None:
                part = part.head(max_size)
            texts, factual, alternative = list(part["masked"]), list(part["factual"]), list(part["alternative"])
        if factual is None:
            raise ValueError("encode(texts=...) also needs factual= (the token that fills each slot)")
        return model.encode(list(texts), list(factual), None if alternative is None else list(alternative),
                            kind=kind, batch_size=self._args.eval_batch_size)[:, 0].tolist()

    # -- decoder evaluation and rewriting ------------------------------------------------------
    def evaluate_decoder(self, lrs: Sequence[float] | None = None, feature_factors: Sequence[float] | None = None,
                         use_cache: bool | None = None, max_size_training_like: int | None = None,
                         max_size_neutral: int | None = None, eval_batch_size: int | None = None,
                         training_like_df: pd.DataFrame | None = None, neutral_df: pd.DataFrame | None = None,
                         selector: Selector | None = None, summary_extractor: SummaryExtractor | None = None,
                         summary_metrics: Sequence[str] | None = None, target_class: str | None = None,
                         increase_target_probabilities: bool = True, plot: bool = False,
                         show: bool | None = None) -> dict[str, Any]:
        """Grid of rewrites (feature factor × learning rate) → the selected candidate per class.

        Returns `{class: summary}` (or `{class}_weaken`) with value, feature_factor, learning_rate,
        id, strengthen, lms, base_lms, base_value, plus `"grid"`: every candidate as a record.
        """
        args = self._args
        model = self.get_model()
        rows, pair = self.unified_data()
        classes = list(summary_metrics) if summary_metrics is not None else (
            [target_class] if target_class is not None else list(pair))
        for cls in classes:
            if cls not in pair:
                raise ValueError(f"Unknown target_class {cls!r}; available: {list(pair)}")
        batch_size = eval_batch_size if eval_batch_size is not None else args.eval_batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"eval_batch_size must be a positive int, got {batch_size!r}")
        direction = model.config.feature_class_encoding_direction
        goal = {c: c if increase_target_probabilities else _other(pair, c) for c in classes}
        goal_factor = {c: strengthen_factor(model.config.target, direction, goal[c]) for c in classes}
        lrs = list(lrs if lrs is not None else args.decoder_eval_lrs or DEFAULT_LRS)
        factors = list(feature_factors if feature_factors is not None else
                       args.decoder_eval_feature_factors or sorted(set(goal_factor.values())))
        if not lrs or not factors:
            raise ValueError(f"The decoder grid is empty (learning rates {lrs}, feature factors {factors})")
        like = (unify(training_like_df, pair, seed=args.seed)[0] if training_like_df is not None
                else require_split(rows, "test", pair, "decoder evaluation"))
        like = model.rows_with_context(like, "decoder evaluation")
        like = cap_per_class(like, max_size_training_like or args.decoder_eval_max_size_training_like, args.seed)
        neutral = list(neutral_df["text"]) if neutral_df is not None else self.neutral_texts()
        if neutral is None:  # fall back to training-like texts, slot filled; target words never scored
            neutral = [t.replace(MASK, f) for t, f in zip(like["masked"], like["factual"], strict=True)]
        cap = max_size_neutral or args.decoder_eval_max_size_neutral
        if cap is not None and len(neutral) > cap:
            picks = np.random.default_rng(args.seed).choice(len(neutral), size=cap, replace=False)
            neutral = [neutral[i] for i in sorted(picks)]
        tokens = {c: set(rows.loc[rows["factual_class"] == c, "factual"]) | set(
            rows.loc[rows["alternative_class"] == c, "alternative"]) for c in pair}
        key = fingerprint({"model": self._model_path, "weights": self._model_stamp(),
                           "rows": self._fingerprint(like), "lrs": lrs, "factors": factors,
                           "neutral": hashlib.sha256("\n".join(neutral).encode()).hexdigest()[:16],
                           "tokens": {c: sorted(t) for c, t in tokens.items()}, "lms_seed": LMS_SEED})
        cache = Path(self.experiment_dir) / DECODER_GRID
        records = self._load_grid_cache(cache, key) if (args.use_cache if use_cache is None else use_cache) else None
        if records is None:
            pieces = class_piece_sets(model.objective, tokens)
            lms_data = prepare_lms(model.objective, neutral, ignore_tokens=set().union(*tokens.values()),
                                   seed=LMS_SEED, batch_size=batch_size)
            records = run_grid(model, like, pieces, lms_data, factors, lrs, batch_size, args.show_progress)
            atomic_write_json(cache, {"fingerprint": key, "records": records})
        selector = selector or lms_threshold_selector()
        result: dict[str, Any] = {}
        for cls in classes:
            name = cls if increase_target_probabilities else f"{cls}_weaken"
            result[name] = (summary_extractor(records, cls, increase_target_probabilities) if summary_extractor
                            else summarize(records, cls, _other(pair, cls), increase_target_probabilities,
                                           goal_factor[cls], selector))
        self._store_summaries(key, {k: v for k, v in result.items()})
        result["grid"] = records
        if plot:
            result["plot_paths"] = [self.plot_probability_shifts(result, cls, increase_target_probabilities,
                                                                 show=True if show is None else bool(show))
                                    for cls in classes]
            if len(result["plot_paths"]) == 1:
                result["plot_path"] = result["plot_paths"][0]
        return result

    def _load_grid_cache(self, cache: Path, key: str) -> list[dict[str, Any]] | None:
        if not cache.is_file():
            return None
        try:
            data = read_json(cache, "decoder grid cache")
            if data["fingerprint"] == key:
                logger.info("Reusing decoder grid %s", cache)
                return list(data["records"])
            logger.info("Decoder grid cache %s belongs to another model, data or grid; recomputing", cache)
        except (ValueError, KeyError, TypeError) as err:
            warnings.warn(f"Ignoring unreadable decoder grid cache {cache} ({err}); recomputing", stacklevel=3)
        return None

    def _store_summaries(self, key: str, summaries: dict[str, Any]) -> None:
        path = Path(self.experiment_dir) / DECODER_SUMMARIES
        stored: dict[str, Any] = {}
        if path.is_file():
            try:
                stored = read_json(path, "decoder summaries")
            except ValueError as err:
                warnings.warn(f"Replacing unreadable {path} ({err})", stacklevel=3)
        model_key = self._model_stamp()
        if stored.get("model") != model_key:
            stored = {"model": model_key, "summaries": {}}
        stored["summaries"].update(summaries)
        atomic_write_json(path, stored)

    def evaluate(self, *, kwargs_encoder: dict[str, Any] | None = None, kwargs_decoder: dict[str, Any] | None = None,
                 ) -> dict[str, Any]:
        """Encoder and decoder evaluation: `{"encoder": ..., "decoder": ...}`."""
        for name, value in (("kwargs_encoder", kwargs_encoder), ("kwargs_decoder", kwargs_decoder)):
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"{name} must be a dict or None, got {type(value).__name__}")
        return {"encoder": self.evaluate_encoder(**(kwargs_encoder or {})),
                "decoder": self.evaluate_decoder(**(kwargs_decoder or {}))}

    def rewrite_base_model(self, decoder_results: dict[str, Any] | None = None,
                           target_class: str | Sequence[str] | None = None, increase_target_probabilities: bool = True,
                           output_dir: str | os.PathLike | None = None) -> Any:
        """Apply the selected (feature factor, learning rate) to a copy of the base model.

        One class: the rewritten HF model, or its saved path when `output_dir` is given. Several
        classes: saved under `experiment_dir/<key>`; returns the list of paths.
        """
        if output_dir is not None and not str(output_dir).strip():
            raise ValueError("output_dir is an empty string; pass a directory path or None")
        if decoder_results is None:
            decoder_results = self._load_summaries()
        classes = ([target_class] if isinstance(target_class, str) else list(target_class) if target_class
                   else list(self.pair))
        keys = [c if increase_target_probabilities else f"{c}_weaken" for c in classes]
        missing = [k for k in keys if k not in decoder_results]
        if missing:
            available = sorted(k for k in decoder_results if k not in ("grid", "plot_paths"))
            raise KeyError(f"No decoder result for {missing}; available: {available}. Run evaluate_decoder("
                           f"target_class=..., increase_target_probabilities={increase_target_probabilities}) first")
        if len(keys) > 1 and output_dir is None and self._args.experiment_dir is None:
            raise ValueError("Rewriting several classes saves each under experiment_dir/<class>; set "
                             "TrainingArguments.experiment_dir")
        model = self.get_model()
        paths, models = [], []
        for cls, key in zip(classes, keys, strict=True):
            summary = decoder_results[key]
            rewritten = model.rewrite_base_model(summary["learning_rate"], summary["feature_factor"])
            if output_dir is None and len(keys) == 1:
                models.append(rewritten)
                continue
            target = Path(output_dir) / key if output_dir is not None and len(keys) > 1 else Path(
                output_dir if output_dir is not None else Path(self.experiment_dir) / key)
            card = {**summary, "key": key, "target_class": cls, "base_model": self._base_model_arg,
                    "objective": model.objective.name,
                    "feature_classes": list(self.pair), "n_parameters": model.param_map.size,
                    "n_tensors": len(model.param_map.specs), "library_version": __version__}
            paths.append(save_rewritten(rewritten, model.tokenizer, target, card))
        if models:
            return models[0]
        return paths[0] if len(paths) == 1 else paths

    def _load_summaries(self) -> dict[str, Any]:
        path = Path(self.experiment_dir) / DECODER_SUMMARIES
        if not path.is_file():
            raise FileNotFoundError(f"No decoder results in {path}; run evaluate_decoder() first or pass "
                                    f"decoder_results=")
        stored = read_json(path, "decoder summaries")
        if stored.get("model") != self._model_stamp():
            raise ValueError(f"{path} belongs to another GRADIEND model; re-run evaluate_decoder()")
        return stored["summaries"]

    # -- plots (functions of saved results; see gradiend.plots) -------------------------------------
    def plot_probability_shifts(self, decoder_results: dict[str, Any] | None = None, target_class: str | None = None,
                                increase_target_probabilities: bool = True, output: str | None = None,
                                show: bool = False, img_format: str = "png", **kwargs: Any) -> str:
        """Target-class probability and LMS against the learning rate; the selected candidate starred.

        `decoder_results`: what `evaluate_decoder` returned (default: the results saved in the
        experiment directory). Default file: `decoder_probability_shifts_<class>[_weaken].<img_format>`.
        """
        from gradiend.plots import plot_probability_shifts

        source: Any = decoder_results if decoder_results is not None else self.experiment_dir
        if target_class is None:
            results = decoder_results if decoder_results is not None else {}
            suffix = "" if increase_target_probabilities else "_weaken"
            found = [c for c in self.pair if f"{c}{suffix}" in results]
            target_class = found[0] if found else self.pair[0]
        return plot_probability_shifts(source, target_class, increase_target_probabilities, output,
                                       directory=self.experiment_dir, show=show, img_format=img_format, **kwargs)

    def plot_training_convergence(self, output: str | None = None, show: bool = False, *,
                                  experiment_dir: str | None = None, img_format: str = "png", **kwargs: Any) -> str:
        """Correlation, class means and loss per step, the best step marked.

        Default file: `<experiment_dir>/training_convergence.<img_format>`.
        """
        from gradiend.plots import plot_training_convergence

        stats = self.get_training_stats()
        if stats is None:
            raise RuntimeError("No training statistics yet; call train() first (or `gradiend train`)")
        return plot_training_convergence(stats, output, directory=experiment_dir or self.experiment_dir, show=show,
                                         img_format=img_format, **kwargs)

    def plot_encoder_distributions(self, encoder_df: pd.DataFrame | None = None, output: str | None = None,
                                   show: bool = False, split: str = "test", img_format: str = "png",
                                   **kwargs: Any) -> str:
        """Distribution of encodings per class and neutral variant (default: the cached evaluation of `split`).

        Default file: `<experiment_dir>/encoder_analysis_split_<split>.<img_format>`.
        """
        from gradiend.plots import plot_encoder_distributions

        if encoder_df is None:
            encoder_df = self.get_encodings(split=split)
        return plot_encoder_distributions(encoder_df, self.pair, output, directory=self.experiment_dir, split=split,
                                          show=show, img_format=img_format, **kwargs)

    def plot_encoder_scatter(self, encoder_df: pd.DataFrame | None = None, output: str | None = None,
                             show: bool = False, split: str = "test", **kwargs: Any) -> str:
        """Interactive HTML scatter of the encodings; hovering shows the text (needs the `[interactive]` extra).

        Default file: `<experiment_dir>/encoder_scatter_split_<split>.html`.
        """
        from gradiend.plots import plot_encoder_scatter

        if encoder_df is None:
            encoder_df = self.get_encodings(split=split)
        return plot_encoder_scatter(encoder_df, self.pair, output, directory=self.experiment_dir, split=split,
                                    show=show, **kwargs)

    def _autosave_training_convergence(self) -> str | None:
        """Save the convergence plot after training when `experiment_dir` is set; never fails the run."""
        if self._args.experiment_dir is None:
            return None
        try:
            path = self.plot_training_convergence(show=False)
        except ImportError as err:
            logger.info("Training convergence plot skipped: %s", err)
            return None
        except Exception as err:  # a plot must never fail a finished training run
            logger.warning("Could not save the training convergence plot: %s", err)
            return None
        logger.info("Saved training convergence plot %s", path)
        return path

    def __str__(self) -> str:
        return (f"{type(self).__name__}(model={self._base_model_arg!r}, run_id={self.run_id!r}, "
                f"target_classes={self._target_classes}, experiment_dir={self._args.experiment_dir!r}, "
                f"model_path={self._model_path!r})")


@dataclass
class _LastSeed:
    seed: int
    model: ModelWithGradiend | None


def _weights_stamp(path: str) -> str | None:
    """Modification time + size of a checkpoint's weights (cache invalidation on retraining)."""
    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        return None
    st = weights.stat()
    return f"{st.st_mtime_ns}-{st.st_size}"


def _other(pair: Sequence[str], cls: str) -> str:
    return pair[1] if cls == pair[0] else pair[0]


def _pronoun_like(rows: pd.DataFrame) -> set[str]:
    """Words never masked in neutral variants: all target tokens of the data."""
    return {t.lower() for t in rows["factual"]} | {t.lower() for t in rows["alternative"]}
