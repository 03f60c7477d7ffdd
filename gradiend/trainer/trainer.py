"""`Trainer`: the facade users drive (train → evaluate → rewrite → plot).

It holds only the state the API promises (base model, arguments, experiment directory, the loaded
model) and hands every step to a plain function: `runs` (training), `encoder_eval`, `decoder_eval`,
`rewrite`, `plots` (the evaluation and plot methods are in `evaluation.py` and `plotting.py`). Data
handling lives in subclasses (`TextPredictionTrainer`).
"""

from __future__ import annotations

import abc
import inspect
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradiend.arguments import PostPruneConfig, PrePruneConfig, TrainingArguments
from gradiend.trainer.analysis import AnalysisMethods
from gradiend.trainer.evaluation import EvaluationMethods
from gradiend.trainer.plotting import PlotMethods

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from gradiend.experiment import ExperimentDir
    from gradiend.loaded_base import LoadedBase
    from gradiend.model_with_gradiend import ModelWithGradiend
    from gradiend.records import TrainingRecord
    from gradiend.training import TrainingCallback

logger = logging.getLogger(__name__)


class Trainer(EvaluationMethods, PlotMethods, AnalysisMethods, abc.ABC):
    """Train, evaluate and inspect a GRADIEND for one pair of feature classes.

    Training, pruning and model state live here; evaluation/rewriting and plot methods in the two mixins."""

    _layout: TrainingArguments | None = None  # see `_layout_args`

    def __init__(self, model: str | os.PathLike | ModelWithGradiend | Any, target_classes: Sequence[str] | None = None,
                 args: TrainingArguments | None = None, run_id: str | None = None, n_features: int = 1, *,
                 tokenizer: Any = None) -> None:
        """`model`: a base model id/path (loaded on first use), a loaded Hugging Face model with its `tokenizer=`
        (PEFT style: used as it is, never reloaded), or a `ModelWithGradiend` (its base model and tokenizer are
        used the same way; before training, `get_model()` returns it; `train()` builds new GRADIENDs from the
        arguments). Models load onto `args.device` (see `to()`), else a loaded model's device, else cuda when
        available, else cpu."""
        if run_id is not None and not isinstance(run_id, str):
            raise TypeError(f"run_id must be a str or None, got {type(run_id).__name__}")
        _check_run_id(run_id)
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
            raise ValueError(f"n_features must be a positive int, got {n_features!r}")
        if args is not None and not isinstance(args, TrainingArguments):
            raise TypeError(f"args must be TrainingArguments, got {type(args).__name__}")
        from gradiend.model_with_gradiend import ModelWithGradiend

        self._base: LoadedBase | None = _loaded_base(model, tokenizer)  # a model passed in as an object
        self._base_model_arg = self._base.name if self._base is not None else os.fspath(model)
        self._model_instance: ModelWithGradiend | None = model if isinstance(model, ModelWithGradiend) else None
        self._model_path = self._base_model_arg
        self._target_classes = list(target_classes) if target_classes is not None else None
        args = args or TrainingArguments()
        self._args = args.replace(latent_dim=n_features) if n_features != 1 and args.latent_dim == 1 else args
        self.run_id = run_id
        self._temp_dir: tempfile.TemporaryDirectory | None = None
        self._pre_pruned: ModelWithGradiend | None = None
        self._explicit_pre_prune: dict[str, Any] | None = None  # config of pre_prune() for the next train()
        self._prune_revision = 0  # in-memory post-prunes since the model was loaded (cache keys)

    @classmethod
    def from_experiment(cls, directory: str | os.PathLike, *, data: Any = None, eval_neutral_data: Any = None,
                        model: Any = None, tokenizer: Any = None, split_group_key: Any = None,
                        **overrides: Any) -> Trainer:
        """A trainer attached to the finished run in `directory` (or its `model/`); never trains.

        Inputs come from `run_config.json` and `training.json` (`data=` for in-memory training data); the
        saved data options (column names, drawn splits with their ratios and seed, ...) rebuild the same rows
        in the same splits. `split_group_key=`: the run's held-out grouping functions (never saved);
        `model=` another base model id/path, or the loaded base model (with `tokenizer=`, used as it is);
        `overrides` replace `TrainingArguments` fields (e.g. `show_progress=False`, `device="cuda:1"`).
        """
        from gradiend.experiment import MODEL_DIR, ExperimentDir
        from gradiend.runs import reattach_settings
        from gradiend.trainer.text.prediction.trainer import TextPredictionTrainer

        experiment = ExperimentDir.find(directory)
        settings = reattach_settings(experiment, data, eval_neutral_data, model, **overrides)
        settings.update(_saved_data_options(experiment, split_group_key, settings["data"] is not None))
        if tokenizer is not None:
            settings["tokenizer"] = tokenizer
        trainer = (TextPredictionTrainer if inspect.isabstract(cls) else cls)(**settings)
        # `model/` caught mid-swap (see ExperimentDir.find): hold its previous version in memory, since the
        # next writer restores or removes the moved-aside copy
        in_swap = experiment.model.name != MODEL_DIR
        trainer._attach(experiment.model, trainer.load_model(experiment.model) if in_swap else None)
        return trainer

    # -- subclass hooks -------------------------------------------------------------------------
    @abc.abstractmethod
    def unified_data(self) -> tuple[pd.DataFrame, tuple[str, str]]:
        """(unified rows, target pair) of the training data."""

    @abc.abstractmethod
    def neutral_texts(self) -> list[str] | None:
        """Feature-free texts for the neutral encoder variant, if any."""

    def post_training(self, model_with_gradiend: ModelWithGradiend, **kwargs: Any) -> None:
        """Called after training with the selected model; override to add steps (default: nothing)."""

    # -- state ----------------------------------------------------------------------------------
    @property
    def training_args(self) -> TrainingArguments:
        return self._args

    @property
    def _layout_args(self) -> TrainingArguments:
        """The arguments that say where the trainer's model and results live: the last `train()` call's, when
        that call moved them (`output_dir=`, `experiment_dir=`, `seed_runs_dir=` overrides), else the trainer's."""
        return self._layout or self._args

    @property
    def experiment_dir(self) -> str:
        """`experiment_dir` (plus `run_id`); a temporary directory when none was given."""
        base = self._layout_args.experiment_dir
        if base is None:
            if self._temp_dir is None:
                self._temp_dir = tempfile.TemporaryDirectory(prefix="gradiend-")
                logger.warning("No experiment_dir given; writing to temporary %s", self._temp_dir.name)
            base = self._temp_dir.name
        return str(Path(base) / self.run_id) if self.run_id else str(base)

    @property
    def experiment(self) -> ExperimentDir:
        """The experiment directory's layout, reads, writes and lock."""
        return self._experiment_of(self._layout_args)

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

    # -- training -------------------------------------------------------------------------------
    def train(self, output_dir: str | os.PathLike | None = None,
              model: str | os.PathLike | ModelWithGradiend | None = None,
              callbacks: Sequence[TrainingCallback] | None = None, **overrides: Any
              ) -> Trainer | dict[int, ModelWithGradiend]:
        """Train the GRADIEND; keyword overrides replace `TrainingArguments` fields for this call only.

        `output_dir`: the GRADIEND checkpoint directory of this run (default `<experiment_dir>/model`);
        `model`: another base model id/path (or a ModelWithGradiend's base model) for this run.
        With `max_seeds > 1` seeds seed, seed+1, … are trained until `min_convergent_seeds`
        converged; the best is linked into the model directory and `seeds/seed_report.json` is
        written. Returns the trainer, or `{seed: model}` when `keep_seed_runs=True`.
        """
        from gradiend import distributed, runs

        args = self._args.replace(**overrides) if overrides else self._args
        distributed.init_from_env(args.distributed_timeout)  # under torchrun: join the ranks (no-op otherwise)
        if output_dir is not None:
            args = args.replace(output_dir=_output_dir(output_dir))
        base = self._base_source if model is None else _base_model_of(model)
        if not isinstance(base, (str, os.PathLike)):
            base = base.pinned()  # a loaded model's weights are hashed once for this call
        (rows, pair), experiment = self.unified_data(), self._experiment_of(args)
        key = runs.run_fingerprint(args, base, rows, self._explicit_pre_prune)
        with experiment.lock():
            if runs.finished_run(experiment.model, key, args.use_cache):
                logger.info("Reusing the finished run in %s (use_cache=%r)", experiment.model, args.use_cache)
                self._attach(experiment.model, None)
                self._layout = args if _layout_of(args) != _layout_of(self._args) else None
                return self
            _check_model_dir(experiment.model, args.overwrite_output_dir)  # before training, not after it
            template = self._pre_pruned or runs.new_template(base, args, rows, pair, self._device(args, base))
            inputs = runs.prepare_run(template, args, rows, pair, base, key, callbacks or (),
                                      pre_pruned=self._pre_pruned is not None)
            self._pre_pruned = self._explicit_pre_prune = None
            result = runs.train_run(inputs, experiment)
        self._attach(experiment.model, result.model)
        self._layout = args if _layout_of(args) != _layout_of(self._args) else None
        if args.max_seeds == 1:
            self.post_training(result.model)
        self._autosave_training_convergence()
        runs.report_verdict(result, args, experiment.model)
        if args.max_seeds > 1:
            self.post_training(self.get_model())
            if args.keep_seed_runs:
                return self._seed_models(result.seed_report.runs)
        return self

    def _seed_models(self, runs: Sequence[Any]) -> dict[int, ModelWithGradiend]:
        """Every seed's model (`keep_seed_runs`), all on one base model: the trainer's, else the best seed's."""
        from gradiend.model_with_gradiend import ModelWithGradiend
        from gradiend.sharded_model import holds_slices, load_sharded

        best = self.get_model()
        models: dict[int, ModelWithGradiend] = {}
        for run in runs:
            if holds_slices(self._args):  # each rank reads its slice of every seed's GRADIEND
                models[run.seed] = load_sharded(run.output_dir, best.base_model, best.tokenizer, self._args.max_length)
                continue
            models[run.seed] = ModelWithGradiend.from_pretrained(
                run.output_dir, base_model=best.base_model, tokenizer=best.tokenizer, device=self._device(),
                max_length=self._args.max_length)
        return models

    def _experiment_of(self, args: TrainingArguments) -> ExperimentDir:
        """The experiment directory layout `args` describe (the trainer's own: `experiment`)."""
        from gradiend.experiment import ExperimentDir

        if args.experiment_dir is None:
            root = self.experiment_dir  # the trainer's temporary directory
        else:
            root = str(Path(args.experiment_dir) / self.run_id) if self.run_id else args.experiment_dir
        return ExperimentDir(root, model_dir=args.output_dir, seeds_dir=args.seed_runs_dir)

    def _attach(self, directory: Path, model: ModelWithGradiend | None) -> None:
        self._model_path, self._model_instance, self._prune_revision = str(directory), model, 0

    # -- pruning --------------------------------------------------------------------------------
    def pre_prune(self, pre_cfg: PrePruneConfig | None = None, *, inplace: bool = True) -> Trainer | ModelWithGradiend:
        """Prune an untrained GRADIEND by gradient importance (in memory; nothing is saved).

        `inplace=True`: the next `train()` builds its GRADIEND(s) on this pruned parameter map; returns
        the trainer (as `post_prune` does). `inplace=False`: returns the pruned model and leaves the
        trainer unchanged.
        """
        from gradiend.runs import pruned_template

        if pre_cfg is None and not inplace and self._args.pre_prune_config is not None:
            raise ValueError("pre_prune(inplace=False) with the config from TrainingArguments makes no sense: "
                             "train() would prune again on its own. Use inplace=True, or pass pre_cfg= explicitly "
                             "to get a pruned copy.")
        cfg = pre_cfg or self._args.pre_prune_config
        if cfg is None:
            raise ValueError("Pre-prune config required: pass pre_cfg=PrePruneConfig(...) or set "
                             "TrainingArguments.pre_prune_config")
        model = pruned_template(self._base_source, self._args, *self.unified_data(), cfg, self._device())
        if not inplace:
            return model
        self._pre_pruned, self._explicit_pre_prune = model, cfg.to_dict()
        return self

    def post_prune(self, post_cfg: PostPruneConfig | None = None) -> Trainer | ModelWithGradiend:
        """Prune the trained GRADIEND by weight importance, in memory (not saved).

        `post_cfg.inplace=True` (default) prunes the trainer's model, which later evaluations use,
        and returns the trainer; `inplace=False` returns a pruned copy and leaves the trainer's model as is.
        """
        from gradiend.pruning import post_prune

        cfg = post_cfg or self._args.post_prune_config
        if cfg is None:
            raise ValueError("Post-prune config required: pass post_cfg=PostPruneConfig(...) or set "
                             "TrainingArguments.post_prune_config")
        if not cfg.inplace:
            copy = self.load_model(self._model_path)
            post_prune(copy, cfg)
            return copy
        post_prune(self.get_model(), cfg)
        self._prune_revision += 1
        return self

    # -- models ---------------------------------------------------------------------------------
    @property
    def _base_source(self) -> str | LoadedBase:
        """The base model runs start from: the loaded one passed in, else its id/path."""
        return self._base if self._base is not None else self._base_model_arg

    def _device(self, args: TrainingArguments | None = None, base: str | LoadedBase | None = None) -> torch.device:
        """Where models load: `args.device` (set by `to()`/`cuda()`/`cpu()` too), else the loaded base model's
        device, else cuda when available, else cpu."""
        from gradiend.devices import resolve_device
        from gradiend.loaded_base import LoadedBase

        base = self._base_source if base is None else base
        return resolve_device((args or self._args).device, base.device if isinstance(base, LoadedBase) else None)

    def get_model(self, use_cache: bool | None = None, *, load_directory: str | None = None) -> ModelWithGradiend:
        """The trained model (cached in memory); `load_directory` loads another checkpoint.

        A sharded run with `sharded_final_weights="rank0_host"` under torchrun gives a `ShardedModelWithGradiend` on
        every rank: encoding, decoding and rewrites work on every rank (collectives over the slices: call them on
        every rank alike), the whole weights (`.gradiend`) are in rank 0's host memory only."""
        from gradiend.model import is_checkpoint

        if load_directory is not None:
            return self.load_model(load_directory)
        if self._model_instance is None:
            if not is_checkpoint(self._model_path):
                raise RuntimeError(f"No trained GRADIEND yet for {self._model_path!r}; call train() first or "
                                   f"load a checkpoint with load_model(path)")
            self._model_instance = self.load_model(self._model_path)
        return self._model_instance

    def unload_model(self) -> Trainer:
        """Free the loaded GRADIEND and its base model (host and device memory); the next use reloads them.

        In-memory post-pruning is dropped with it (a warning says so); a model that exists only in memory
        (passed in, never saved) is not unloaded: there would be nothing to reload.
        """
        import gc

        import torch

        from gradiend.model import is_checkpoint

        if self._model_instance is None:
            return self
        if not is_checkpoint(self._model_path):
            raise RuntimeError(f"The trainer's model exists only in memory (no GRADIEND checkpoint at "
                               f"{self._model_path}); train() or save it first, then unload")
        if self._prune_revision:
            logger.warning("Unloading drops the in-memory post-pruning; the next use reloads %s unpruned",
                           self._model_path)
        self._model_instance, self._prune_revision = None, 0
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.info("Unloaded the model; the next use reloads %s", self._model_path)
        return self

    def load_model(self, load_directory: str | os.PathLike) -> ModelWithGradiend:
        """Load a GRADIEND checkpoint directory (without replacing the trainer's model) onto the trainer's device;
        a base model passed in as an object is reused, not reloaded. Under torchrun with `shard_gradiend` and
        `sharded_final_weights="rank0_host"` each rank reads only its slice (rank 0 also the whole GRADIEND, into
        host memory): a `sharding`-split `ShardedModelWithGradiend`."""
        from gradiend.model_with_gradiend import ModelWithGradiend
        from gradiend.sharded_model import from_pretrained_sharded, holds_slices

        if holds_slices(self._args):
            return from_pretrained_sharded(load_directory, base_model=self._base, device=self._device(),
                                           trust_remote_code=self._args.trust_remote_code,
                                           max_length=self._args.max_length)
        return ModelWithGradiend.from_pretrained(load_directory, base_model=self._base, device=self._device(),
                                                 trust_remote_code=self._args.trust_remote_code,
                                                 max_length=self._args.max_length)

    def to(self, device: torch.device | str | int) -> Trainer:
        """Move the models in memory to `device` and remember it (`training_args.device`): every later load
        and reload (train, a cached run, the best seed, get_model, load_model) lands there too."""
        from gradiend.devices import device_name, resolve_device

        name = device_name(device)
        target = resolve_device(name)
        self._args = self._args.replace(device=name)
        if self._base is not None:
            self._base.model.to(target)
        for model in {id(m): m for m in (self._model_instance, self._pre_pruned) if m is not None}.values():
            model.to(target)
        return self

    def cpu(self) -> Trainer:
        return self.to("cpu")

    def cuda(self, device: int | str | torch.device | None = None) -> Trainer:
        return self.to("cuda" if device is None else f"cuda:{device}" if isinstance(device, int) else device)

    def get_training_stats(self, model_path: str | None = None) -> dict[str, Any] | None:
        """`training.json` of a trained model as the dict it stores (None before training)."""
        record = self.get_training_record(model_path)
        return record.to_json() if record is not None else None

    def get_training_record(self, model_path: str | None = None) -> TrainingRecord | None:
        """`training.json` as a typed `TrainingRecord` (fields such as `best_correlation`, `converged`)."""
        from gradiend.experiment import TRAINING_STATS, read_json
        from gradiend.records import TrainingRecord

        path = Path(model_path or self._model_path) / TRAINING_STATS
        return TrainingRecord.from_json(read_json(path, "training stats")) if path.is_file() else None

    def __str__(self) -> str:
        return (f"{type(self).__name__}(model={self._base_model_arg!r}, run_id={self.run_id!r}, "
                f"target_classes={self._target_classes}, experiment_dir={self._args.experiment_dir!r}, "
                f"model_path={self._model_path!r})")


def _layout_of(args: TrainingArguments) -> tuple[str | None, str | None, str | None]:
    return args.experiment_dir, args.output_dir, args.seed_runs_dir


def _saved_data_options(experiment: ExperimentDir, split_group_key: Any, have_data: bool) -> dict[str, Any]:
    """The data options `run_config.json` recorded (none for runs written before they were saved)."""
    run = experiment.load_run_config()
    options = dict(run.data_options or {}) if run is not None else {}
    names = options.pop("split_group_key", None)
    if names is not None and split_group_key is None:
        raise ValueError(f"The run grouped its held-out split with split_group_key={names}; functions are not saved, "
                         f"so pass the same split_group_key= to from_experiment to rebuild its splits")
    if split_group_key is not None:
        options["split_group_key"] = split_group_key
    if have_data:  # data= (or the recorded data) replaces a Hub dataset
        for name in ("hf_dataset", "hf_subset", "hf_splits"):
            options.pop(name, None)
    return options


def _output_dir(output_dir: str | os.PathLike) -> str:
    if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir).strip():
        raise TypeError(f"output_dir must be a directory path or None, got {output_dir!r}")
    return os.fspath(output_dir)


def _base_model_of(model: str | os.PathLike | ModelWithGradiend) -> str | LoadedBase:
    """The base model `train(model=...)` names: an id/path, or a ModelWithGradiend's loaded base (not reloaded)."""
    from gradiend.model_with_gradiend import ModelWithGradiend

    if isinstance(model, ModelWithGradiend):
        return _loaded_base(model, None)
    if isinstance(model, (str, os.PathLike)) and str(model).strip():
        return os.fspath(model)
    raise TypeError(f"model must be a base model id/path or a ModelWithGradiend, got {model!r}")


def _loaded_base(model: Any, tokenizer: Any) -> LoadedBase | None:
    """The loaded base model (+ tokenizer) a trainer's `model` argument carries; None for an id/path."""
    from gradiend.loaded_base import LoadedBase
    from gradiend.model_with_gradiend import ModelWithGradiend

    if isinstance(model, (str, os.PathLike)):
        if tokenizer is not None:
            raise ValueError("tokenizer= goes with a loaded model object; a model id/path loads its own tokenizer. "
                             "Pass the loaded model with its tokenizer, or the path alone")
        if not str(model).strip():
            raise ValueError("model is an empty string; pass a model id/path or a loaded model")
        return None
    if isinstance(model, ModelWithGradiend):
        if tokenizer is not None and tokenizer is not model.tokenizer:
            raise ValueError("A ModelWithGradiend brings its own tokenizer; do not pass tokenizer= with it")
        return LoadedBase(model.base_model, model.tokenizer, model.base_model_path or model.base_model.name_or_path)
    return LoadedBase.of(model, tokenizer)


def _check_model_dir(model_dir: Path, overwrite: bool) -> None:
    """Refuse, before any training, a model directory (`output_dir`) holding files gradiend did not write."""
    from gradiend.experiment import check_replaceable, refuse_foreign_files

    if not overwrite:
        refuse_foreign_files(model_dir, "train into", "Choose another output_dir, move those files away, or pass "
                             "overwrite_output_dir=True (CLI: --overwrite-output-dir) to replace the directory as "
                             "a whole, deleting them")
    check_replaceable(model_dir, overwrite=overwrite)  # files, links and experiment directories: never


def _check_run_id(run_id: str | None) -> None:
    """A run id is a sub-directory of `experiment_dir`: relative, without `..`, not empty."""
    from pathlib import PurePath

    from gradiend.experiment import UnsafePathError

    if run_id is None:
        return
    parts = PurePath(run_id).parts
    if not run_id.strip() or PurePath(run_id).is_absolute() or ".." in parts or not parts:
        raise UnsafePathError(f"run_id {run_id!r} must name a sub-directory of experiment_dir (relative, without "
                              f"'..'), e.g. 'run1'")
