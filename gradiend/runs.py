"""One training run: the untrained template, pre-pruning, one or several seeds, the saved checkpoint.

Also the run cache: a finished run whose fingerprint (arguments that change learning, base model,
data) matches is reused instead of retrained. The Trainer calls `prepare_run` and `train_run`;
everything here is a plain function of its inputs.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradiend.arguments import ReferenceArgs
from gradiend.base_identity import base_model_fingerprint, local_model_dir, resolve_base_model
from gradiend.calibration import run_calibrator
from gradiend.data import prepare_rows
from gradiend.experiment import TRAINING_STATS, atomic_directory, atomic_write_json, fingerprint, read_json, short_hash
from gradiend.gradient_cache import GradientStore
from gradiend.loaded_base import LoadedBase
from gradiend.memory import plan_for_model
from gradiend.model import CONFIG_FILE, is_checkpoint
from gradiend.pruning import post_prune, pre_prune
from gradiend.records import RunConfig, TrainingRecord
from gradiend.resume import SEEDS_MARKER, ResumeCheckpoint, clean_resume_root, resume_root
from gradiend.seeds import SeedTraining, run_seeds_in
from gradiend.sharded_model import ShardedModelWithGradiend, evaluation_scope, holds_slices, load_sharded
from gradiend.training import (
    TrainingCallback,
    TrainingOutcome,
    capped_rows,
    check_trainable_dtype,
    evaluate_during_training,
    train_gradiend,
)

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from gradiend.arguments import GradientCacheArgs, PrePruneConfig, TrainingArguments
    from gradiend.experiment import ExperimentDir
    from gradiend.model_with_gradiend import ModelWithGradiend
    from gradiend.records import SeedReport

logger = logging.getLogger(__name__)

# Arguments that do not change what a run learns (excluded from the run fingerprint).
_NOT_LEARNING = {"experiment_dir", "output_dir", "use_cache", "show_progress", "fail_on_non_convergence",
                 "eval_batch_size", "encoder_eval_max_size", "metadata", "keep_seed_runs", "saved_seed_runs",
                 "seed_runs_dir", "gradient_cache", "gradient_cache_max_gb", "overwrite_output_dir", "save_steps",
                 "resume_from_checkpoint", "device", "analyze_seed_stability", "highlight_non_convergence",
                 "distributed_timeout", "shard_gradiend", "sharded_final_weights", "include_other_classes",
                 "overlap_step"}
# the reference (0.2.x) spellings are aliases of settings keyed above or accepted only at gradiend's behaviour;
# the clm_mlm_head slot head's settings and the supervised baselines do change what is learnt
_NOT_LEARNING |= {name for name in ReferenceArgs.field_names()
                  if not name.startswith(("decoder_mlm_head_", "supervised_"))}

BaseModel = str | LoadedBase
"""A base model id/path (loaded by the run), or a model already in memory with its tokenizer (used as it is)."""


def base_name(base_model: BaseModel) -> str:
    """What records and stats name the base model by: the id/path, or a loaded model's `name_or_path`."""
    return base_model.name if isinstance(base_model, LoadedBase) else base_model


def rows_hash(rows: pd.DataFrame) -> str:
    """Content hash of a rows frame (cache keys)."""
    return short_hash(rows.to_csv(index=False))


def run_fingerprint(args: TrainingArguments, base_model: BaseModel, rows: pd.DataFrame,
                    explicit_pre_prune: dict[str, Any] | None) -> str:
    """Key of everything that changes what a run learns (the device does not: a run is reused on another).

    The base model is keyed by content, not by the path string: a local model by `base_model_fingerprint`
    (its weight files' headers, sizes and modification times), so new weights saved at the same path make a
    new run; a loaded model by a digest of its weights in memory (`loaded_base.weights_fingerprint`).
    """
    learning = {k: v for k, v in args.to_dict().items()
                if k not in _NOT_LEARNING and not k.startswith("decoder_eval_")}
    key = base_model.fingerprint() if isinstance(base_model, LoadedBase) else base_model_fingerprint(base_model)
    return fingerprint({"args": learning, "base_model": key, "data": rows_hash(rows),
                        "explicit_pre_prune": explicit_pre_prune})


def finished_run(directory: Path, key: str, mode: bool | str) -> bool:
    """Whether `directory` holds a finished run that `use_cache=mode` allows to reuse."""
    stats_path = directory / TRAINING_STATS
    if not mode or not is_checkpoint(directory) or not stats_path.is_file():
        return False
    if mode == "always":
        return True
    if read_json(directory / CONFIG_FILE, "GRADIEND config").get("fingerprint") != key:
        logger.info("Existing run in %s has other settings or data; retraining", directory)
        return False
    if mode == "only_convergent":
        return bool(TrainingRecord.from_json(read_json(stats_path, "training stats")).converged)
    return True


def new_template(base_model: BaseModel, args: TrainingArguments, rows: pd.DataFrame, pair: tuple[str, str],
                 device: torch.device | None = None) -> ModelWithGradiend:
    """An untrained, weightless (meta) GRADIEND over the base model: the template every seed starts from.

    `base_model`: an id/path, loaded onto `device`, or a loaded model (moved there when it is elsewhere).
    Every target token is looked up once here, so an unknown word fails before any training.
    """
    from gradiend.model_with_gradiend import ModelWithGradiend

    if isinstance(base_model, LoadedBase):
        check_trainable_dtype(base_model.dtype_name)
    else:
        check_trainable_dtype(args.torch_dtype)  # before the base model is loaded
        check_memory_before_loading(base_model, args, device)
    model = ModelWithGradiend.create(
        base_model, params=args.params, latent_dim=args.latent_dim, activation_encoder=args.activation_encoder,
        bias_decoder=args.bias_decoder, torch_dtype=args.torch_dtype, gradiend_dtype=args.gradiend_dtype,
        feature_classes=pair, source=args.source,
        target=args.target, seed=args.seed, max_length=args.max_length, trust_remote_code=args.trust_remote_code,
        device=device, objective=args.objective,
        objective_options={"min_left_context_tokens": args.min_left_context_tokens}, shape_only=True)
    for token in sorted(set(rows["factual"]) | set(rows["alternative"])):
        model.objective.pieces(token)
    model.objective.check_rows_fit(rows["masked"])  # a slot beyond max_length fails now, not mid-training
    model.fit_objective(rows, pair, args)  # clm_mlm_head: its slot head, trained once for every seed (no-op else)
    return model


def check_memory_before_loading(base_model: str, args: TrainingArguments, device: torch.device | None = None) -> None:
    """Refuse a run that cannot fit before its base model is loaded: the plan from the model's config on the meta
    device (`InsufficientMemoryError` naming the levers). A config that cannot be read here is left to the
    loader's own error; the plan is checked again once the template exists (`prepare_run`)."""
    from gradiend.arguments import DTYPES
    from gradiend.devices import resolve_device
    from gradiend.memory import plan_memory, run_shape
    from gradiend.model_with_gradiend import meta_base_model
    from gradiend.params import ParamMap

    try:
        meta = meta_base_model(base_model, args.torch_dtype, args.trust_remote_code, args.objective)
    except (OSError, ValueError, TypeError, RuntimeError, NotImplementedError) as err:
        # no readable config, or a (remote-code) model that cannot be built on the meta device: the loader
        # reports the former; the latter is planned once loaded
        logger.info("No memory plan before loading %s (%s: %s); it is checked once the model is loaded", base_model,
                    type(err).__name__, err)
        return
    param_map = ParamMap.select(meta, args.params)
    shape = run_shape(meta, param_map, args, latent_dim=args.latent_dim, bias_decoder=args.bias_decoder,
                      gradiend_bytes=DTYPES[args.gradiend_dtype].itemsize, base_loaded=False,
                      cache_bytes=_cache_bytes(args), shards=_shards(args))
    shape = dataclasses.replace(shape, gather_to_main_host=final_weights(args) == "rank0_host")
    cfg = args.pre_prune_config
    if cfg is not None:  # the GRADIEND is built at the pruned size: plan that (a threshold keeps an unknown count)
        kept = 1 if cfg.threshold is not None else cfg.topk if isinstance(cfg.topk, int) else round(
            cfg.topk * shape.n_inputs)
        shape = dataclasses.replace(shape, n_inputs=max(1, min(kept, shape.n_inputs)))
    plan_memory(shape).check(resolve_device(device))


def _cache_bytes(args: TrainingArguments) -> int:
    """Host bytes an in-memory gradient cache may take (0 for none or a disk cache)."""
    return int(args.gradient_cache_max_gb * 1024**3) if args.gradient_cache == "memory" else 0


def final_weights(args: TrainingArguments) -> str:
    """Where a run's trained weights go (`training.FINAL_WEIGHTS`): `sharded_final_weights` for a sharded run,
    else every rank's device (the only place there is, or a data-parallel run's full copy per rank)."""
    return args.sharded_final_weights if args.shard_gradiend else "every_rank"


def _shards(args: TrainingArguments) -> int:
    from gradiend.distributed import env_world_size

    return env_world_size() if args.shard_gradiend else 1


def gradient_store(settings: GradientCacheArgs, directory: Path, shared: bool) -> GradientStore | None:
    """The per-batch gradient cache a run asks for (None when off); disk entries go to `directory`.

    `shared`: keep every batch for later seeds from the start (else only once one is certain to run).
    """
    if settings.gradient_cache == "off" or settings.gradient_cache_max_gb == 0:
        return None
    store = GradientStore(settings.gradient_cache, int(settings.gradient_cache_max_gb * 1024**3),
                          settings.gradient_cache_dtype, directory if settings.gradient_cache == "disk" else None)
    store.shared = shared
    return store


@dataclass
class RunInputs:
    """What every seed of one run shares."""

    template: ModelWithGradiend
    args: TrainingArguments
    train_rows: pd.DataFrame
    eval_rows: pd.DataFrame | None
    pair: tuple[str, str]
    base_model: str
    key: str
    callbacks: Sequence[TrainingCallback] = ()


@dataclass
class RunResult:
    """A finished run: the selected model (when still in memory), its verdict, the seed report."""

    model: ModelWithGradiend | None
    converged: bool
    reason: str | None
    seed_report: SeedReport | None = None


def prepare_run(template: ModelWithGradiend, args: TrainingArguments, rows: pd.DataFrame, pair: tuple[str, str],
                base_model: BaseModel, key: str, callbacks: Sequence[TrainingCallback] = (),
                pre_pruned: bool = False) -> RunInputs:
    """Training and validation rows the objective can score; pre-pruning of the template if configured."""
    if args.post_prune_config is not None and not args.post_prune_config.inplace:
        raise ValueError("post_prune_config.inplace=False makes no sense when train() post-prunes: the pruned "
                         "model is what train() saves. Use inplace=True, or call "
                         "trainer.post_prune(PostPruneConfig(..., inplace=False)) after training for a copy.")
    if args.post_prune_config is not None and holds_slices(args):
        raise ValueError("post_prune_config needs the whole trained GRADIEND on every rank, but with shard_gradiend "
                         "and sharded_final_weights='rank0_host' the ranks keep only their slices. Use "
                         "sharded_final_weights='every_rank', or post-prune the saved model in one process.")
    train_rows = prepare_rows(rows, "train", pair, template.objective, "training")
    eval_rows = (prepare_rows(rows, "validation", pair, template.objective, "in-training evaluation")
                 if args.do_eval else None)
    if not pre_pruned and args.pre_prune_config is not None:
        pre_prune(template, train_rows, pair, args.pre_prune_config, args.show_progress)
    plan_for_model(template, args, cache_bytes=_cache_bytes(args), final_weights=final_weights(args)).check(
        template.device)  # refuse before allocating
    return RunInputs(template, args, train_rows, eval_rows, pair, base_name(base_model), key, tuple(callbacks))


def _recalibrate(model: ModelWithGradiend, inputs: RunInputs, args: TrainingArguments, stats: dict[str, Any]) -> None:
    """Post-pruning drops coordinates and so shrinks the encoder's projections: refit the calibration on the
    pruned model (the same held-in rows as after training), recorded under `post_prune`."""
    calibrate = run_calibrator(model, *capped_rows(inputs.train_rows, inputs.eval_rows, args), inputs.pair, args)
    if calibrate is None:
        return
    record = calibrate(model.gradiend.state_dict())  # the state's tensors are the model's: refitted in place
    stats["time"]["calibration_after_post_prune"] = record.pop("seconds", 0.0)
    stats["post_prune"]["calibration"] = record


def train_seed(inputs: RunInputs, args: TrainingArguments, directory: Path, key: str,
               store: GradientStore | None, checkpoint: ResumeCheckpoint | None = None, *,
               overwrite: bool = False) -> SeedTraining:
    """Train one GRADIEND (fresh weights from `args.seed`), post-prune it if configured, save it atomically.

    `checkpoint`: the run's resume checkpoint (continued from when it matches, removed once the model is saved).
    """
    model = inputs.template.with_new_gradiend(args.seed)
    outcome = train_gradiend(model, inputs.train_rows, inputs.eval_rows, inputs.pair, args, inputs.callbacks, store,
                             checkpoint, final_weights=final_weights(args))
    if outcome.shard is not None and final_weights(args) == "rank0_host":
        model = _sharded_outcome(model, outcome, inputs, args)
    else:
        model.gradiend.load_state_dict(outcome.state)
    stats = {**outcome.stats, "training_args": args.to_dict(), "fingerprint": key, "base_model": inputs.base_model,
             "base_model_resolved": resolve_base_model(inputs.base_model),
             "base_model_fingerprint": model.config.base_model_fingerprint,
             "pair": list(inputs.pair), "n_inputs": model.param_map.size}
    if args.post_prune_config is not None:
        before = model.param_map.size
        post_prune(model, args.post_prune_config)
        stats["post_prune"] = {"config": args.post_prune_config.to_dict(), "inputs_before": before,
                               "inputs_after": model.param_map.size}
        _recalibrate(model, inputs, args, stats)
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, extra_json={"fingerprint": key})
        atomic_write_json(tmp / TRAINING_STATS, stats)
    if checkpoint is not None:
        checkpoint.remove()
    record = TrainingRecord.from_json(stats)
    logger.info("Saved GRADIEND to %s (best correlation %s)", directory, record.best_correlation)
    return SeedTraining(record, outcome.converged, outcome.failure_reason, used_cache=False, model=model)


def _sharded_outcome(model: ModelWithGradiend, outcome: TrainingOutcome, inputs: RunInputs,
                     args: TrainingArguments) -> ShardedModelWithGradiend:
    """The trained model of a `rank0_host` run, split over the ranks (rank 0 also holds it in host memory), with the
    encoder calibration a one-process run gets inside `train_gradiend`, done on the slices (recorded the same way)."""
    sharded = ShardedModelWithGradiend(model, outcome.shard)
    record = sharded.calibrate(*capped_rows(inputs.train_rows, inputs.eval_rows, args), inputs.pair, args)
    if record is not None:
        if "seconds" in record:
            outcome.stats["time"]["calibration"] = record.pop("seconds")
        outcome.stats["calibration"] = record
    return sharded


def train_run(inputs: RunInputs, experiment: ExperimentDir) -> RunResult:
    """Train the run's seed(s) into `experiment.model`; the gradient cache lives for this call only."""
    args = inputs.args
    # a later seed reuses every batch, but with min_convergent_seeds=1 the usual run stops after
    # seed 0: keep batches for later seeds only once one is certain to run (see _Seeds.train)
    store = gradient_store(args, experiment.gradient_cache, shared=args.min_convergent_seeds > 1)
    clean_resume_root(experiment.root)
    try:
        if args.max_seeds == 1:
            checkpoint = ResumeCheckpoint(resume_root(experiment.root) / "model", inputs.key, args.save_steps,
                                          args.resume_from_checkpoint)
            result = train_seed(inputs, args, experiment.model, inputs.key, store, checkpoint,
                                overwrite=args.overwrite_output_dir)
            return RunResult(result.model, result.converged, result.reason)
        seeds = _Seeds(inputs, store, resume_root(experiment.root))
        report = run_seeds_in(experiment, args, seeds.train, seeds.eval_correlation)
        seeds.finished_run_marker.unlink(missing_ok=True)
        # usually the last seed trained is the best: keep it; else its GRADIEND joins the base model in memory
        best = seeds.last_model if seeds.last_seed == report.best_seed else None
        seeds.last_model = None  # one GRADIEND in memory at a time
        best = best or with_saved_gradiend(inputs.template, experiment.model, args.max_length, holds_slices(args))
        return RunResult(best, report.convergent_count > 0, f"none of the seeds {report.seeds_tried} converged",
                         report)
    finally:
        if store is not None:
            logger.info("Gradient cache: %s", store.summary())
            store.clear()


class _Seeds:
    """The two callbacks `run_seeds` needs: train one seed, score a converged one on validation rows.

    Resume: each seed keeps its own checkpoint (`<resume>/seed_<n>`), and `<resume>/seeds.json` lists
    the seeds this run finished, so after a crash in seed 2 a rerun reuses seeds 0 and 1 (their saved
    runs, whatever `use_cache` says), continues seed 2 from its checkpoint, then goes on as usual.
    The list is removed when the run completes: a later run retrains unless `use_cache` says otherwise.
    Neither is written with `save_steps=0`, nor read with `resume_from_checkpoint=False`.
    """

    def __init__(self, inputs: RunInputs, store: GradientStore | None, resume: Path) -> None:
        args = inputs.args
        self.inputs, self.store, self.resume = inputs, store, resume
        self.finished_run_marker = resume / SEEDS_MARKER
        self.base_seed = args.seed if args.seed is not None else 0
        self.data_seed = args.data_seed if args.data_seed is not None else self.base_seed
        self.selection_cap = args.seed_selection_eval_max_size or args.encoder_eval_max_size
        self.training_cap = args.encoder_eval_train_max_size or args.encoder_eval_max_size
        self.last_seed: int | None = None
        self.last_model: ModelWithGradiend | None = None  # one GRADIEND in memory at most

    def train(self, seed: int, directory: Path) -> SeedTraining:
        args = self.inputs.args
        seed_args = args.replace(seed=seed, data_seed=self.data_seed)
        seed_key = fingerprint({"run": self.inputs.key, "seed": seed})
        if (args.use_cache and finished_run(directory, seed_key, args.use_cache)) or self._finished_before(
                seed, directory, seed_key):
            logger.info("Seed %d: reusing the finished run in %s", seed, directory)
            record = TrainingRecord.from_json(read_json(directory / TRAINING_STATS, "training stats"))
            info = record.convergence_info
            self._mark_finished(seed)
            return SeedTraining(record, bool(record.converged), info.reason if info else None, used_cache=True)
        logger.info("Seed %d: training into %s", seed, directory)
        if self.store is not None and seed > self.base_seed:
            self.store.shared = seed < self.base_seed + args.max_seeds - 1  # another seed may follow this one
        self.last_seed, self.last_model = None, None  # drop the previous seed before the next one trains
        checkpoint = ResumeCheckpoint(self.resume / f"seed_{seed}", seed_key, args.save_steps,
                                      args.resume_from_checkpoint)
        result = train_seed(self.inputs, seed_args, directory, seed_key, self.store, checkpoint)
        self.last_seed, self.last_model = seed, result.model
        self._mark_finished(seed)
        return result

    def _finished_seeds(self) -> list[int]:
        """The seeds an interrupted run with this key finished ([] when there is none)."""
        path = self.finished_run_marker
        if not path.is_file():
            return []
        try:
            data = read_json(path, "finished seeds")
        except ValueError as err:
            logger.warning("%s; retraining every seed", err)
            return []
        if not isinstance(data, dict) or data.get("key") != self.inputs.key:
            return []
        return [int(s) for s in data.get("finished", [])]

    def _finished_before(self, seed: int, directory: Path, seed_key: str) -> bool:
        """Whether an interrupted run of the same key finished `seed` and its saved run is intact."""
        if not self.inputs.args.resume_from_checkpoint or seed not in self._finished_seeds():
            return False
        if finished_run(directory, seed_key, True):
            logger.info("Seed %d: finished before the run was interrupted", seed)
            return True
        return False

    def _mark_finished(self, seed: int) -> None:
        finished = self._finished_seeds()
        if self.inputs.args.save_steps > 0 and seed not in finished:
            atomic_write_json(self.finished_run_marker, {"key": self.inputs.key, "finished": [*finished, seed]})

    def eval_correlation(self, directory: Path, result: SeedTraining) -> tuple[float | None, str | None]:
        inputs = self.inputs
        if inputs.eval_rows is None:
            return None, None
        if self.selection_cap == self.training_cap and inputs.args.post_prune_config is None:
            # the best checkpoint was chosen on exactly these rows with exactly these weights
            return result.stats.best_correlation, "training"
        from gradiend.data import cap_per_class

        model = result.model or with_saved_gradiend(inputs.template, directory, inputs.args.max_length,
                                                    holds_slices(inputs.args))
        rows = cap_per_class(inputs.eval_rows, self.selection_cap, self.data_seed).reset_index(drop=True)
        with evaluation_scope(model):
            metrics = evaluate_during_training(model, rows, inputs.pair, inputs.args.eval_batch_size)
        return metrics["correlation"], "validation"


def with_saved_gradiend(template: ModelWithGradiend, directory: Path, max_length: int,
                        sliced: bool = False) -> ModelWithGradiend:
    """The GRADIEND saved in `directory` on the template's base model (already in memory, never reloaded),
    read straight onto its device; `sliced`: split over the ranks (`sharded_model.load_sharded`)."""
    from gradiend.model import GradiendModel
    from gradiend.model_with_gradiend import ModelWithGradiend

    if sliced:
        return load_sharded(directory, template.base_model, template.tokenizer, max_length)

    gradiend = GradiendModel.from_pretrained(directory, device=template.device)
    return ModelWithGradiend(template.base_model, template.tokenizer, gradiend, max_length=max_length)


def pruned_template(base_model: BaseModel, args: TrainingArguments, rows: pd.DataFrame, pair: tuple[str, str],
                    config: PrePruneConfig, device: torch.device | None = None) -> ModelWithGradiend:
    """An untrained GRADIEND pre-pruned by gradient importance on the training rows (real weights, pruned size)."""
    model = new_template(base_model, args, rows, pair, device)
    pre_prune(model, prepare_rows(rows, "train", pair, model.objective, "pre-pruning"), pair, config,
              args.show_progress)
    return model.with_new_gradiend(args.seed)


def report_verdict(result: RunResult, args: TrainingArguments, model_dir: Path) -> None:
    """Warn about (or, with `fail_on_non_convergence`, raise on) a run that did not converge."""
    if result.converged:
        return
    message = f"GRADIEND training did not converge: {result.reason} (model saved in {model_dir})"
    if args.fail_on_non_convergence:
        raise RuntimeError(message + "; try more steps, more seeds or another learning_rate")
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def reattach_settings(experiment: ExperimentDir, data: Any = None, eval_neutral_data: Any = None,
                      model: Any = None, **overrides: Any) -> dict[str, Any]:
    """Trainer keyword arguments that rebuild a finished run's inputs from its directory (nothing is hashed).

    Model, data and classes come from `run_config.json` (written by `gradiend train`) and the
    checkpoint's `training.json`; explicit arguments win; `overrides` replace `TrainingArguments` fields.
    """
    from gradiend.arguments import TrainingArguments

    training = experiment.load_training()
    run = experiment.load_run_config() or RunConfig()
    data = data if data is not None else run.data
    if data is None:
        raise ValueError(f"{experiment.root} has no run_config.json (written by `gradiend train`); pass data= "
                         f"(CLI: --data) with the training data so its splits can be rebuilt")
    stored = dict(run.training_args or training.training_args)
    known = TrainingArguments.__dataclass_fields__
    dropped = sorted(set(stored) - set(known))
    if dropped:
        logger.warning("Ignoring saved arguments this version does not know: %s", dropped)
    # the device belongs to the machine that trained, not to the run: here it is the caller's (overrides) or auto
    stored = {k: v for k, v in stored.items() if k in known and k != "device"}
    args = TrainingArguments.from_dict({**stored, **TrainingArguments.flatten(overrides),
                                        "experiment_dir": str(experiment.root), "output_dir": None})
    recorded = run.model or training.base_model
    if recorded == training.base_model and training.base_model_resolved is not None \
            and local_model_dir(training.base_model_resolved) is not None:
        recorded = training.base_model_resolved  # a relative spelling means another model from another directory
    classes = {k: v for k, v in (("all_classes", run.all_classes), ("class_merge_map", run.class_merge_map))
               if v is not None}  # the run's class options rebuild the same pair rows
    return {"model": model if model is not None else recorded, "data": data, "args": args,
            "target_classes": run.target_classes or training.pair,
            "eval_neutral_data": eval_neutral_data if eval_neutral_data is not None else run.eval_neutral_data,
            **classes}
