"""The GRADIEND training loop: gradients in, AdamW steps, periodic encoder evaluation.

Evaluation runs at step 0, every `eval_steps` and at the end on the validation split. After
each evaluation the feature sign is normalised (class A positive), the best checkpoint by
correlation is kept in memory, and the run's statistics are returned for `training.json`.

`TrainingLoop` is one run with its parts injected: the gradient source (`GradientProvider`),
the evaluation and the callbacks. `train_gradiend` wires it to a `ModelWithGradiend`: the base
model's engine behind the optional gradient cache, and encoder evaluation on validation rows.
Nothing here touches process-wide random state: data order comes from the data seed's own
generators and the GRADIEND's initial weights from the model's (see `ModelWithGradiend.create`).
That is also what makes resuming exact: given a `ResumeCheckpoint`, the loop saves its state every
`save_steps` steps and a rerun restores it and skips the batches already consumed (`gradiend.resume`).

Several processes (`gradiend.distributed`): every rank runs the same loop on the same batches; the
gradient source sums the ranks' shares of each batch, so the ranks take bitwise the same steps, and
validation rows are split across ranks and gathered. With `shard_gradiend` each rank trains only its
slice of the coordinates (`gradiend.sharding.Shard`: weights, AdamW state, gradient buffers and cache
entries are 1/world_size of the full ones); the step exchanges a few scalars (`FusedLoss(reduce=...)`),
evaluation sums the slices' partial encodings (no rank holds the full encoder), and the finished weights
are gathered on every rank's device (`final_weights="every_rank"`: each rank's slice broadcast into one
preallocated full tensor, `distributed.all_gather_into_`) or, as the trainer does by default
(`sharded_final_weights="rank0_host"`), only the best weights into rank 0's host memory (`gradiend.sharded_model`).
A sharded run's resume checkpoint holds every rank's slice (`sharding.ShardedCheckpoint`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from gradiend import distributed
from gradiend.allocator import reuse_large_blocks
from gradiend.calibration import Calibrator, run_calibrator
from gradiend.data import Batch, BatchSchedule, cap_per_class
from gradiend.diagnostics import LearningMonitor
from gradiend.gradient_source import GradientProvider, GradientSource
from gradiend.memory import memory_estimate
from gradiend.metrics import pearson
from gradiend.overlap import StepWorker
from gradiend.resume import TrainingState
from gradiend.sharding import Shard, ShardedCheckpoint, active_shard
from gradiend.step import (
    ClassTargetMeans,
    FusedLoss,
    class_mean_decoder,
    class_sums_dtype,
    decoder_refit_skipped,
    scale_norms,
)
from gradiend.supervised import SupervisedLoss, supervised_mode

if TYPE_CHECKING:
    from gradiend.arguments import OptimizationArgs, TrainingArguments
    from gradiend.gradient_cache import GradientStore
    from gradiend.model import GradiendModel
    from gradiend.model_with_gradiend import ModelWithGradiend
    from gradiend.resume import ResumeCheckpoint

logger = logging.getLogger(__name__)

FINAL_WEIGHTS = ("every_rank", "rank0_host")
"""Where a sharded run's trained weights go: the full weights on every rank's device (evaluation and rewrites
in every process), or the best weights gathered into rank 0's host memory only (saved from there; the other
ranks keep their slice, `TrainingOutcome.shard`, and never hold the full model: `gradiend.sharding`)."""

Evaluator = Callable[[], dict[str, Any]]
"""Validation metrics of the current weights: {"correlation", "mean_by_class": {class: mean}, "n": rows}."""


class HasGradiend(Protocol):
    """Anything holding the GRADIEND being trained (a `ModelWithGradiend`, or a bare holder in tests)."""

    gradiend: GradiendModel


class TrainingCallback:
    """Hooks into the loop (gradiend 0.2.x's lifecycle plus `on_evaluate`); override what you need.

    Hooks are called with keyword arguments and receive the ones their signature names (every one
    with `**kwargs`): `model` (the ModelWithGradiend), `optimizer`, `args` (TrainingArguments),
    `config` (the arguments as a dict), `step`, `epoch`, `loss`, `losses` (every step's loss so
    far) and `metrics`. So both `on_step_end(self, step, loss)` and the reference's
    `on_step_end(self, step, loss, model, config, **kwargs)` work. The defaults do nothing.
    """

    def on_train_begin(self, model: ModelWithGradiend, optimizer: torch.optim.Optimizer, args: TrainingArguments,
                       **kwargs: Any) -> None:
        """Once per run (per seed), before the first step: inspect or adjust model and optimizer.

        A resumed run calls it too, before restoring the saved state (which holds the changes made
        by the interrupted run's call), so hooks and references it sets up stay valid."""

    def on_train_end(self, config: dict[str, Any], **kwargs: Any) -> None:
        """Once per run, after the last step and its evaluation."""

    def on_epoch_begin(self, epoch: int, config: dict[str, Any], **kwargs: Any) -> None:
        """Before the first step of each epoch (0-based) this run trains."""

    def on_epoch_end(self, epoch: int, model: ModelWithGradiend, config: dict[str, Any], **kwargs: Any) -> None:
        """After the last step of each epoch this run trains (its evaluation included)."""

    def on_step_begin(self, step: int, config: dict[str, Any], **kwargs: Any) -> None:
        """Before every optimizer step (1-based), before its gradients are computed."""

    def on_step_end(self, step: int, loss: float, **kwargs: Any) -> None:
        """After every optimizer step."""

    def on_evaluate(self, step: int, metrics: dict[str, Any], **kwargs: Any) -> None:
        """After every in-training evaluation (metrics already sign-normalised)."""


@functools.lru_cache(maxsize=256)
def _hook_parameters(hook: Callable[..., Any]) -> frozenset[str] | None:
    """Keyword names a hook accepts; None when it takes **kwargs (every name)."""
    import inspect

    params = inspect.signature(hook).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def notify(callbacks: Sequence[TrainingCallback], hook: str, **available: Any) -> None:
    """Call `hook` on every callback with the keyword arguments its signature names."""
    for cb in callbacks:
        method = getattr(cb, hook)
        accepted = _hook_parameters(getattr(method, "__func__", method))
        method(**(available if accepted is None else {k: v for k, v in available.items() if k in accepted}))


@dataclass
class TrainingOutcome:
    """What a finished run hands back: the selected weights and the statistics."""

    state: dict[str, torch.Tensor]
    stats: dict[str, Any]
    converged: bool
    failure_reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    shard: Shard | None = None  # a sharded run: this rank's slice (its `module` holds the best slice)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA): a helper for user code; the library never calls it."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def estimate_scales(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], learning_rate: float) -> tuple[float, float]:
    """Input and target scales from a few (source, target) gradient batches, consumed one at a time.

    The input is scaled to the L1 norm and the target to the per-coordinate RMS given by
    `gradiend.step.scale_norms(learning_rate)`, so that one Adam step moves the encoder's
    pre-activation by at most `ENCODER_STEP` and the decoder fits its target in the same number of
    steps, whatever the learning rate (see gradiend/step.py).
    """
    l1_norms, rms_values = [], []
    for source, target in pairs:  # statistics only: no batch is kept (each is n floats per kind)
        l1_norms.append(float(source.abs().sum()))
        rms_values.append(float(target.pow(2).mean().sqrt()))
    return _scales(l1_norms, rms_values, learning_rate)


def estimate_scales_sharded(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], n_total: int,
                            learning_rate: float) -> tuple[float, float]:
    """`estimate_scales` of coordinate slices: the L1 norm and the sum of squares are summed over the ranks."""
    l1_norms, rms_values = [], []
    for source, target in pairs:
        sums = torch.stack([source.abs().sum(), target.pow(2).sum()]).double()
        l1, squares = distributed.all_reduce_(sums, "scale estimation").tolist()
        l1_norms.append(l1)
        rms_values.append(math.sqrt(squares / n_total))
    return _scales(l1_norms, rms_values, learning_rate)


def _scales(l1_norms: list[float], rms_values: list[float], learning_rate: float) -> tuple[float, float]:
    l1 = sum(l1_norms) / max(len(l1_norms), 1)
    rms = sum(rms_values) / max(len(rms_values), 1)
    if not (math.isfinite(l1) and l1 > 0 and math.isfinite(rms) and rms > 0):
        raise FloatingPointError(f"Cannot estimate gradient scales (input L1 {l1}, target RMS {rms}): the "
                                 f"first batches have zero or non-finite gradients. Check the selected "
                                 f"parameters and the target tokens.")
    l1_target, rms_target = scale_norms(learning_rate)
    return l1 / l1_target, rms / rms_target


def evaluate_during_training(model: ModelWithGradiend, rows: pd.DataFrame, pair: Sequence[str],
                             batch_size: int) -> dict[str, Any]:
    """Correlation and class means of the source encodings of `rows` (validation); rows split across ranks."""
    h = encode_rows(model, rows, batch_size)[:, 0]
    labels = rows["label"].to_numpy()
    means = {c: float(h[(rows["factual_class"] == c).to_numpy()].mean()) for c in pair}
    return {"correlation": pearson(h, labels), "mean_by_class": means, "n": len(rows)}


def encode_rows(model: ModelWithGradiend, rows: pd.DataFrame, batch_size: int) -> np.ndarray:
    """Source encodings (rows × latent_dim) of `rows`; with several processes each rank encodes its share
    (in a sharded run's evaluation every rank encodes every row with its slice, `Shard.encode_rows`)."""
    shard = active_shard()
    if shard is not None:
        return shard.encode_rows(model, list(rows["masked"]), list(rows["factual"]), list(rows["alternative"]),
                                 batch_size)
    if not distributed.context().enabled:
        return model.encode(list(rows["masked"]), list(rows["factual"]), list(rows["alternative"]),
                            batch_size=batch_size)
    lo, hi = distributed.my_share(len(rows))
    part = rows.iloc[lo:hi]
    local = (model.encode(list(part["masked"]), list(part["factual"]), list(part["alternative"]), batch_size=batch_size)
             if hi > lo else np.zeros((0, model.config.latent_dim), dtype=np.float32))
    return distributed.gather_rows(local, len(rows))


def make_optimizer(params: Iterable[torch.nn.Parameter], args: OptimizationArgs,
                   fused: bool | None = None) -> torch.optim.Optimizer:
    """AdamW (or Adam) for the GRADIEND weights, with torch's fused kernel where it exists.

    The fused kernel updates the 3n weights in one pass instead of several elementwise passes
    (same arithmetic; equal to the plain one within float rounding). `fused=None` picks it when
    the parameters' device supports it, `False` forces the plain implementation.
    """
    params = list(params)
    optim_cls = torch.optim.AdamW if args.optim == "adamw" else torch.optim.Adam
    kwargs = {"lr": args.learning_rate, "weight_decay": args.weight_decay, "eps": args.adam_epsilon}
    if fused is None:
        fused = all(p.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) for p in params)
    if fused:
        try:
            return optim_cls(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError) as exc:  # device or torch build without the kernel
            logger.debug("Fused %s unavailable (%s); using the plain one", optim_cls.__name__, exc)
    return optim_cls(params, **kwargs)


def _flip(model: HasGradiend, optimizer: torch.optim.Optimizer) -> None:
    """Negate the feature and the matching Adam first moments (an exact symmetry of training)."""
    g = model.gradiend
    g.flip_sign()
    for param in (g.encoder_weight, g.encoder_bias, g.decoder_weight):
        state = optimizer.state.get(param)
        if state and "exp_avg" in state:
            state["exp_avg"].neg_()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_convergence(best: dict[str, Any] | None, args: TrainingArguments,
                      final_loss: float | None = None) -> tuple[bool, str | None]:
    """`convergent_metric="correlation"`: converged iff a step > 0 reached |ρ| ≥ threshold with class
    means of opposite sign, each ≥ `convergent_mean_by_class_threshold` (None: not checked).
    `"loss"`: converged iff the best checkpoint's (else the final) loss ≤ threshold.

    A non-finite metric (NaN or inf) is never success: every comparison with NaN is False, so it is
    rejected explicitly, with the reason.
    """
    if args.convergent_metric == "loss":
        loss = best["loss"] if best is not None and best.get("loss") is not None else final_loss
        if loss is None:
            return False, "no training loss recorded"
        if not _finite(loss):
            return False, f"training loss is {loss} (not finite)"
        if loss > args.convergent_score_threshold:
            return False, f"loss {loss:.4g} above convergent_score_threshold {args.convergent_score_threshold}"
        return True, None
    if best is None:
        return False, ("no evaluation after step 0 with a finite correlation (do_eval=False, max_steps too small, "
                       "or every evaluation gave NaN)")
    corr, means = best["correlation"], list(best["mean_by_class"].values())
    if not _finite(corr):
        return False, f"correlation is {corr} (not finite)"
    if not all(_finite(m) for m in means):
        return False, f"class means {best['mean_by_class']} are not all finite"
    if abs(corr) < args.convergent_score_threshold:
        return False, f"correlation {corr:.3f} below convergent_score_threshold {args.convergent_score_threshold}"
    if args.convergent_mean_by_class_threshold is None:
        return True, None
    if min(abs(m) for m in means) < args.convergent_mean_by_class_threshold:
        return False, (f"class means {best['mean_by_class']} below convergent_mean_by_class_threshold "
                       f"{args.convergent_mean_by_class_threshold}")
    if means[0] * means[1] >= 0:
        return False, f"class means {best['mean_by_class']} have the same sign"
    return True, None


def check_trainable_dtype(torch_dtype: str) -> None:
    """Refuse `torch_dtype="float16"` for training: there is no loss scaling, so gradients under/overflow."""
    if torch_dtype == "float16":
        raise ValueError("torch_dtype='float16' cannot train a GRADIEND: training has no loss scaling, so "
                         "float16 gradients underflow or overflow and every evaluation gives NaN. Use "
                         "torch_dtype='bfloat16' (same memory, float32 range) or 'float32'. A trained "
                         "checkpoint may still be loaded in float16 for evaluation or rewriting.")


def _batch_lists(rows: pd.DataFrame, indices: Sequence[int]) -> tuple[list[str], list[str], list[str]]:
    sub = rows.iloc[list(indices)]
    return list(sub["masked"]), list(sub["factual"]), list(sub["alternative"])


def _data_seed(args: TrainingArguments) -> int | None:
    return args.data_seed if args.data_seed is not None else args.seed


def _snapshot(gradiend: GradiendModel, into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The GRADIEND's weights on the host (a best checkpoint costs no device memory); copied into `into` when
    given, so a new best never holds two copies at once."""
    state = gradiend.state_dict()
    if into is None:
        return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
    for k, v in state.items():
        into[k].copy_(v.detach())
    return into


@dataclass(frozen=True)
class _Plan:
    """The batches of one run: the rows, their single-class batch order and the step count."""

    rows: pd.DataFrame
    data_seed: int | None
    schedule: BatchSchedule
    steps_per_epoch: int
    total_steps: int
    repeats: bool  # the run draws more batches than an epoch holds, so every batch comes again

    @classmethod
    def build(cls, rows: pd.DataFrame, args: TrainingArguments) -> _Plan:
        data_seed = _data_seed(args)
        schedule = BatchSchedule(rows["label"].to_numpy(), args.train_batch_size, data_seed)
        steps_per_epoch = -(-schedule.batches_per_epoch() // args.gradiend_batch_size)
        total_steps = args.max_steps if args.max_steps > 0 else args.num_train_epochs * steps_per_epoch
        repeats = total_steps * args.gradiend_batch_size > schedule.batches_per_epoch()
        return cls(rows, data_seed, schedule, steps_per_epoch, total_steps, repeats)


@dataclass
class _History:
    """What the run records, keyed by step (as a string, the `training.json` key)."""

    scores: dict[str, float] = field(default_factory=dict)
    mean_by_class: dict[str, dict[str, float]] = field(default_factory=dict)
    encoder_norms: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    flips: list[int] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    epoch: int = 0
    n_eval_rows: int = 0

    def latest_score(self) -> float | None:
        return self.scores[max(self.scores, key=int)] if self.scores else None

    def to_json(self) -> dict[str, Any]:
        """Everything but the best weights (those are tensors), for a resume checkpoint."""
        return {"scores": self.scores, "mean_by_class": self.mean_by_class, "encoder_norms": self.encoder_norms,
                "losses": self.losses, "flips": self.flips, "best": self.best, "epoch": self.epoch,
                "n_eval_rows": self.n_eval_rows}

    @classmethod
    def from_json(cls, data: dict[str, Any], best_state: dict[str, torch.Tensor] | None) -> _History:
        return cls(scores=dict(data["scores"]), mean_by_class=dict(data["mean_by_class"]),
                   encoder_norms=dict(data["encoder_norms"]), losses=list(data["losses"]), flips=list(data["flips"]),
                   best=data["best"], best_state=best_state, epoch=int(data["epoch"]),
                   n_eval_rows=int(data["n_eval_rows"]))


class TrainingLoop:
    """One GRADIEND training run: `fit` = scale estimation, then `step`s with periodic `evaluate`.

    `model` holds the GRADIEND (`.gradiend`, trained in place) and is what callbacks receive;
    `source` serves each batch's gradients; `evaluate` (None: no in-training evaluation) scores
    the current weights on validation data. From `args` the loop reads the step, batch, scale,
    optimiser, sign-normalisation and convergence settings. `checkpoint` (optional) is where the run's
    state is saved every `save_steps` steps and resumed from (`gradiend.resume`).
    """

    def __init__(self, model: HasGradiend, args: TrainingArguments, source: GradientProvider,
                 evaluate: Evaluator | None = None, callbacks: Sequence[TrainingCallback] = (),
                 checkpoint: ResumeCheckpoint | None = None, calibrate: Calibrator | None = None,
                 final_weights: str = "every_rank") -> None:
        if final_weights not in FINAL_WEIGHTS:
            raise ValueError(f"final_weights={final_weights!r}; use one of {FINAL_WEIGHTS}")
        self.final_weights = final_weights
        self.model = model
        self.gradiend = model.gradiend
        self.args = args
        self.source = source
        self.evaluator = evaluate
        self.callbacks = tuple(callbacks)
        self.kinds = list(dict.fromkeys([args.source, args.target]))
        self.history = _History()
        self.monitor = LearningMonitor(args.learning_rate)
        self.timings = {"gradients": 0.0, "gradiend": 0.0, "eval": 0.0, "scale": 0.0}
        self.checkpoint = checkpoint
        self.calibrate = calibrate  # refits the selected encoder's gain and offset at the end (gradiend.calibration)
        self._checkpoints = [0, 0.0]  # resume checkpoints written by this process, seconds spent
        self._before = {"base_passes": 0.0, "total": 0.0}  # of the interrupted run(s) this one resumes
        self._t_start, self._passes_start = 0.0, 0.0
        self.optimizer: torch.optim.Optimizer | None = None
        self._plan: _Plan | None = None
        self._buffers: dict[str, torch.Tensor] = {}
        self._fused: FusedLoss | None = None
        self._supervised: SupervisedLoss | None = None  # a supervised baseline replaces the GRADIEND loss
        self._config: dict[str, Any] = {}  # the arguments as a dict, for callbacks
        self._shard: Shard | None = None
        self._targets: ClassTargetMeans | None = None  # class sums of the training targets (`decoder_fit`)
        self.sharded = args.shard_gradiend and distributed.context().enabled
        self._worker: StepWorker[float] | None = None  # runs the GRADIEND steps with overlap_step (`_run`)
        self._pending: int | None = None  # the step running on the worker
        self._bar: tqdm | None = None

    def fit(self, train_rows: pd.DataFrame) -> TrainingOutcome:
        """Train on `train_rows` (masked, factual, alternative, label); the best weights and the stats."""
        if self._plan is not None:
            raise RuntimeError("A TrainingLoop trains once; build a new one for another run")
        self._t_start, self._passes_start = time.perf_counter(), self.source.base_passes
        args, config = self.args, self.gradiend.config
        check_trainable_dtype(config.torch_dtype)
        self._plan = _Plan.build(train_rows, args)
        if self.sharded:
            self._start_sharding()
        n_local = self.gradiend.encoder_weight.shape[1]
        refit = decoder_refit_skipped(args, config.latent_dim) is None
        memory = memory_estimate(n_local, config.latent_dim, config.bias_decoder, len(self.kinds),
                                 args.gradiend_batch_size, gradient_buffer_sets=self._buffer_sets(),
                                 class_target_sums=refit)
        logger.info("GRADIEND memory: %.1f MB weights + %.1f MB optimizer state + %.1f MB gradient buffers "
                    "= %.1f MB (besides the base model)", memory["gradiend_weights"] / 1e6,
                    memory["optimizer_state"] / 1e6, memory["gradient_buffers"] / 1e6, memory["total"] / 1e6)
        device = self.gradiend.encoder_weight.device
        width = self._shard.padded if self._shard is not None else n_local  # a slice: padded to the longest
        self._buffers = {k: torch.empty(args.gradiend_batch_size * self._buffer_sets(), width, device=device,
                                  dtype=self.gradiend.encoder_weight.dtype) for k in self.kinds}  # gradiend_dtype
        if refit:
            self._targets = ClassTargetMeans(n_local, device, class_sums_dtype(self.gradiend.encoder_weight.dtype))
        self.optimizer = make_optimizer(self.gradiend.parameters(), args)
        state = self._load_checkpoint()
        if state is None and supervised_mode(args) is None:  # fresh weights: one Adam step in size, whatever the lr
            self.gradiend.scale_initial_weights(args.learning_rate, self._shard.n if self._shard is not None else None)
        if state is None and args.standardize_gradients:
            self.standardize()
        self._config = args.to_dict()
        notify(self.callbacks, "on_train_begin", model=self.model, optimizer=self.optimizer, args=args,
               config=self._config)
        if state is not None:
            self._restore(state)  # after the callbacks: the saved state already holds their changes
        self._fused = self._fused_loss()  # reads the scales
        mode = supervised_mode(args)
        self._supervised = SupervisedLoss(self.gradiend, mode) if mode is not None else None
        if self.evaluator is not None and state is None:
            self.evaluate(0, 0)
        self._run(state.step if state is not None else 0)
        self._release_gradients()
        outcome = self._outcome(memory, self._timings())
        if self.calibrate is not None and (self._shard is None or self.final_weights == "every_rank"):
            calibration = self.calibrate(outcome.state)  # not where ranks keep only slices
            if "seconds" in calibration:  # timings live under "time": the rest is a deterministic result
                outcome.stats["time"]["calibration"] = calibration.pop("seconds")
            outcome.stats["calibration"] = calibration
        return outcome

    def _start_sharding(self) -> None:
        """Train this rank's slice instead of the full GRADIEND (resume checkpoints hold every rank's slice)."""
        if not (isinstance(self.source, GradientSource) and self.source.sharded):
            raise ValueError("shard_gradiend=True needs a gradient source that serves this rank's slice: "
                             "GradientSource(engine, store, sharded=True) (train_gradiend builds it)")
        self._shard = Shard(self.gradiend)
        self.gradiend = self._shard.module
        if self.checkpoint is not None:
            self.checkpoint = ShardedCheckpoint(self.checkpoint)

    def _fused_loss(self) -> FusedLoss:
        if self._shard is None:
            return FusedLoss(self.gradiend, self.args.gradiend_batch_size, coordinate_sum=True)
        return FusedLoss(self.gradiend, self.args.gradiend_batch_size, coordinate_sum=True,
                         reduce=functools.partial(distributed.all_reduce_, what="GRADIEND step"), n_total=self._shard.n)

    def _step_inputs(self, slot: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The source and target gradient rows the step reads from buffer set `slot` (without a slice's padding)."""
        n_local, rows = self.gradiend.encoder_weight.shape[1], self.args.gradiend_batch_size
        part = slice(slot * rows, (slot + 1) * rows)
        return self._buffers[self.args.source][part, :n_local], self._buffers[self.args.target][part, :n_local]

    def _release_gradients(self) -> None:
        """Free the GRADIEND's `.grad` buffers (12 B per input), which the fused loss references too."""
        for param in self.gradiend.parameters():
            param.grad = None
        self._fused = self._supervised = None
        self._bar = None

    def _load_checkpoint(self) -> TrainingState | None:
        """The state `checkpoint` holds for this run, None when there is none (or it is of another run)."""
        if self.checkpoint is None:
            return None
        if self._plan.data_seed is None:
            logger.info("No resume checkpoints: with seed=None and data_seed=None every run draws a new batch order")
            self.checkpoint = None
            return None
        state = self.checkpoint.load(self._plan.total_steps, self.gradiend.state_dict(), self.optimizer)
        if state is not None and (state.class_targets is None) != (self._targets is None):
            logger.warning("Ignoring the resume checkpoint in %s: it %s the class target sums the decoder refit "
                           "needs; starting from step 0", self.checkpoint.directory,
                           "lacks" if state.class_targets is None else "holds")
            return None
        return state

    def _restore(self, state: TrainingState) -> None:
        """Continue from `state`: weights and scales, optimiser state, history, best checkpoint, timings."""
        self.gradiend.load_state_dict(state.gradiend)
        self.optimizer.load_state_dict(state.optimizer)
        best_state = state.gradiend if state.best_is_current else state.best_state
        if best_state is not None:
            best_state = {k: v.to("cpu", copy=True) for k, v in best_state.items()}
        self.history = _History.from_json(state.history, best_state)
        if self._targets is not None:
            self._targets.load(*state.class_targets)
        timings = dict(state.timings)
        self._before = {"base_passes": timings.pop("base_passes", 0.0), "total": timings.pop("total", 0.0)}
        self.timings.update(timings)

    def _timings(self) -> dict[str, float]:
        """Seconds so far, the interrupted runs' included."""
        return {**self.timings,
                "base_passes": self.source.base_passes - self._passes_start + self._before["base_passes"],
                "total": time.perf_counter() - self._t_start + self._before["total"]}

    def _save_checkpoint(self, step: int) -> None:
        """Write the run's state after `step` (evaluation of `step` included) to `checkpoint`."""
        t0 = time.perf_counter()
        h = self.history
        best_is_current = h.best is not None and h.best["global_step"] == step  # snapshot taken just now
        timings = self._timings()
        self.checkpoint.save(TrainingState(
            key=self.checkpoint.key, step=step, total_steps=self._plan.total_steps, epoch=h.epoch,
            gradiend=self.gradiend.state_dict(), optimizer=self.optimizer.state_dict(), history=h.to_json(),
            best_state=None if best_is_current else h.best_state, best_is_current=best_is_current, timings=timings,
            class_targets=(self._targets.sums, list(self._targets.counts)) if self._targets is not None else None))
        self._checkpoints[0] += 1
        self._checkpoints[1] += time.perf_counter() - t0

    def standardize(self) -> None:
        """Set the input and target scales from the first `scale_estimation_batches` batches."""
        t0 = time.perf_counter()
        if self._shard is not None:
            s_in, s_out = estimate_scales_sharded(self._probe_pairs(), self._shard.n, self.args.learning_rate)
        else:
            s_in, s_out = estimate_scales(self._probe_pairs(), self.args.learning_rate)
        self.gradiend.input_scale.fill_(s_in)
        self.gradiend.target_scale.fill_(s_out)
        self.timings["scale"] = time.perf_counter() - t0
        l1_target, rms_target = scale_norms(self.args.learning_rate)
        logger.info("Gradient scales: input %.3g (L1 → %g), target %.3g (RMS → %g)", s_in, l1_target, s_out, rms_target)

    def _probe_pairs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(source, target) gradients of the batches training starts with, one at a time (kept: step 0)."""
        plan, args = self._plan, self.args
        probe = BatchSchedule(plan.rows["label"].to_numpy(), args.train_batch_size, plan.data_seed)
        out = {k: self._buffers[k][0] for k in self.kinds}
        for _, batch in probe.iterate(args.scale_estimation_batches):
            grads = self._gradients(0, batch, out)
            yield grads[args.source], grads[args.target]

    def _gradients(self, step: int, batch: Batch, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # scale-estimation batches (step 0) come again as the first training batches
        texts, factual, alternative = _batch_lists(self._plan.rows, batch.indices)
        return self.source.gradients(step, texts, factual, alternative, out, keep=step == 0 or self._plan.repeats)

    def _run(self, start: int = 0) -> None:
        """Steps start+1..total_steps, evaluating every `eval_steps` and after the last step, saving the
        state every `save_steps` (a resumed run skips the batches steps 1..start consumed).

        With `overlap_step` (`_overlaps`), step t's GRADIEND update runs on a worker (`gradiend.overlap`) while
        batch t+1's gradients are computed into the other buffer set; the update is joined before the next one
        starts and before anything that reads or changes the GRADIEND (evaluation, checkpoints, epoch hooks),
        so the updates run in the same order on the same inputs: bitwise the sequential loop's training."""
        args, total = self.args, self._plan.total_steps
        batches = self._plan.schedule.iterate(total * args.gradiend_batch_size)
        for _ in range(start * args.gradiend_batch_size):
            next(batches)
        self.gradiend.train()
        self._worker = StepWorker(self.gradiend.encoder_weight.device) if self._buffer_sets() == 2 else None
        with tqdm(total=total, initial=start, desc="GRADIEND training", disable=not args.show_progress) as bar:
            self._bar = bar
            try:
                for step in range(start + 1, total + 1):
                    drawn = [next(batches) for _ in range(args.gradiend_batch_size)]
                    self._enter_epoch(drawn[-1][0], step == start + 1)
                    self.history.epoch = drawn[-1][0]
                    notify(self.callbacks, "on_step_begin", step=step, config=self._config, model=self.model,
                           epoch=self.history.epoch, args=args)
                    self._launch(step, [batch for _, batch in drawn])
                    evaluate = self.evaluator is not None and (step % args.eval_steps == 0 or step == total)
                    save = self.checkpoint is not None and self.checkpoint.due(step, total)
                    if evaluate or save:
                        self._settle()
                    if evaluate:
                        self.evaluate(step, self.history.epoch)
                    if save:
                        self._save_checkpoint(step)
                self._settle()
            finally:
                self._close_worker()
        if total > start:
            notify(self.callbacks, "on_epoch_end", epoch=self.history.epoch, model=self.model, config=self._config,
                   losses=self.history.losses, args=args)
        notify(self.callbacks, "on_train_end", config=self._config, model=self.model, args=args,
               losses=self.history.losses)
        self.gradiend.eval()
        if self._checkpoints[0]:
            logger.info("Wrote %d resume checkpoints in %.2f s", *self._checkpoints)

    def _buffer_sets(self) -> int:
        """2 when the GRADIEND step overlaps the next base pass, else 1. Not with `shard_gradiend` (the step's
        all-reduces would interleave with the gradients'), nor with a callback that overrides `on_step_begin`
        (it would see step t+1 begin before step t ended)."""
        if not self.args.overlap_step or self.sharded:
            return 1
        custom = [cb for cb in self.callbacks if type(cb).on_step_begin is not TrainingCallback.on_step_begin]
        return 1 if custom else 2

    def _launch(self, step: int, batches: Sequence[Batch]) -> None:
        """Compute the batches' gradients, finish the previous step (overlap), start this step's update."""
        slot = step % 2 if self._worker is not None else 0
        t0 = time.perf_counter()
        for row, batch in enumerate(batches):
            self._gradients(step, batch, {k: v[slot * len(batches) + row] for k, v in self._buffers.items()})
        self.timings["gradients"] += time.perf_counter() - t0
        labels = [batch.label for batch in batches]
        if self._worker is None:
            t1 = time.perf_counter()
            value = self._update(step, slot, labels)
            self.timings["gradiend"] += time.perf_counter() - t1
            self._finish(step, value)
            return
        self._settle()
        self._worker.submit(functools.partial(self._update, step, slot, labels))
        self._pending = step

    def _update(self, step: int, slot: int, labels: Sequence[int]) -> float:
        """The GRADIEND's loss, gradients and optimizer step on buffer set `slot`; the loss (on the worker
        when overlapping: it touches nothing but the GRADIEND, its optimizer and that buffer set)."""
        inputs = self._step_inputs(slot)
        if self._supervised is not None:  # autograd saves x: a copy, as both sets share one version counter
            loss = self._supervised.loss_and_grad(*(t.clone() if self._worker else t for t in inputs), labels)
        else:
            loss, _ = self._fused.loss_and_grad(*inputs)
        if self._targets is not None:
            self._targets.add(inputs[1], labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"GRADIEND loss became {loss.item()} at step {step}; nothing was saved. "
                                     f"Lower learning_rate.")
        self.optimizer.step()
        return float(loss.detach())

    def _settle(self) -> None:
        """Join the step running on the worker, if any, and record it (its wait counts as GRADIEND time)."""
        if self._pending is None:
            return
        step, self._pending = self._pending, None
        t0 = time.perf_counter()
        value = self._worker.join()
        self.timings["gradiend"] += time.perf_counter() - t0
        self._finish(step, value)

    def _finish(self, step: int, value: float) -> None:
        """Record a finished step's loss: history, progress bar, `on_step_end`."""
        self.history.losses.append(value)
        self._bar.update(1)
        score = self.history.latest_score()
        self._bar.set_postfix(loss=f"{value:.3g}", corr=f"{score:.3f}" if score is not None else "-")
        notify(self.callbacks, "on_step_end", step=step, loss=value, model=self.model, config=self._config,
               epoch=self.history.epoch, losses=self.history.losses, optimizer=self.optimizer, args=self.args)

    def _close_worker(self) -> None:
        """Stop the worker (waiting for a step left running by an error) and log how much of the steps it hid."""
        worker, self._worker, self._pending = self._worker, None, None
        if worker is None:
            return
        worker.close()
        logger.info("GRADIEND steps: %.2f s on the worker, %.2f s of it not hidden behind base passes",
                    worker.busy, worker.waited)

    def _enter_epoch(self, epoch: int, first: bool) -> None:
        """on_epoch_end of the finished epoch and on_epoch_begin of `epoch`, when a step starts a new one
        (the previous step finished first: epoch hooks see the GRADIEND after it)."""
        if not first and epoch == self.history.epoch:
            return
        self._settle()
        if not first:
            notify(self.callbacks, "on_epoch_end", epoch=self.history.epoch, model=self.model, config=self._config,
                   losses=self.history.losses, args=self.args)
        notify(self.callbacks, "on_epoch_begin", epoch=epoch, config=self._config, model=self.model, args=self.args)

    def step(self, step: int, batches: Sequence[Batch]) -> float:
        """One optimizer step on `gradiend_batch_size` batches, sequentially (gradients, then the update);
        returns the loss. (`fit` runs the steps through `_launch`, overlapping them with `overlap_step`.)"""
        if self._worker is not None:
            raise RuntimeError("TrainingLoop.step cannot run while fit() overlaps the steps")
        with tqdm(total=1, disable=True) as self._bar:
            self._launch(step, batches)
        return self.history.losses[-1]

    def evaluate(self, step: int, epoch: int) -> dict[str, Any]:
        """Score the current weights, normalise the sign, record the metrics and the best checkpoint."""
        if self.evaluator is None:
            raise RuntimeError("This TrainingLoop has no evaluator (evaluate=None)")
        t0 = time.perf_counter()
        self.gradiend.eval()
        with self._shard.encoding() if self._shard is not None else contextlib.nullcontext():
            metrics = self.evaluator()
        # a supervised baseline fixed the sign by its labels (and a decoder baseline's encoder is random)
        flip = self.args.normalize_gradiend and self._supervised is None and self.gradiend.config.latent_dim == 1
        if flip and metrics["correlation"] < 0:
            self._normalise_sign(step, metrics)
        self._record(step, epoch, metrics)
        if self._supervised is None or self._supervised.mode == "encoder":  # a decoder baseline's encoder stays
            self.monitor.check(self.history.scores, self.history.mean_by_class, self.history.encoder_norms,
                               self.history.losses)
        notify(self.callbacks, "on_evaluate", step=step, metrics=metrics, model=self.model, config=self._config,
               epoch=epoch, args=self.args)
        self.gradiend.train()
        self.timings["eval"] += time.perf_counter() - t0
        logger.info("step %d: correlation %.4f, class means %s", step, metrics["correlation"],
                    {c: round(v, 3) for c, v in metrics["mean_by_class"].items()})
        return metrics

    def _normalise_sign(self, step: int, metrics: dict[str, Any]) -> None:
        """Flip the feature (class A positive) and the metrics that already measured it."""
        _flip(self, self.optimizer)  # the GRADIEND being trained: this rank's slice when sharded
        self.history.flips.append(step)
        metrics["correlation"] = -metrics["correlation"]
        metrics["mean_by_class"] = {c: -v for c, v in metrics["mean_by_class"].items()}

    def _record(self, step: int, epoch: int, metrics: dict[str, Any]) -> None:
        """Store the metrics of `step`; after step 0, keep the weights when |correlation| improved."""
        h = self.history
        h.scores[str(step)] = metrics["correlation"]
        h.mean_by_class[str(step)] = metrics["mean_by_class"]
        h.encoder_norms[str(step)] = (self._shard.encoder_norm() if self._shard is not None
                                      else float(self.gradiend.encoder_weight.detach().norm()))
        h.n_eval_rows = metrics["n"]
        finite = _finite(metrics["correlation"]) and all(_finite(m) for m in metrics["mean_by_class"].values())
        if not finite:
            logger.warning("step %d: non-finite evaluation (correlation %s, class means %s); not a best checkpoint",
                           step, metrics["correlation"], metrics["mean_by_class"])
        if step > 0 and finite and (h.best is None or abs(metrics["correlation"]) > abs(h.best["correlation"])):
            h.best = {"correlation": metrics["correlation"], "global_step": step, "epoch": epoch,
                      "mean_by_class": metrics["mean_by_class"], "loss": h.losses[-1] if h.losses else None}
            h.best_state = _snapshot(self.gradiend, h.best_state)

    def _outcome(self, memory: dict[str, int], timings: dict[str, float]) -> TrainingOutcome:
        h, plan, args = self.history, self._plan, self.args
        final_loss = h.losses[-1] if h.losses else None
        converged, reason = check_convergence(h.best, args, final_loss)
        stats = {
            "training_stats": {
                "global_step": plan.total_steps, "steps_per_epoch": plan.steps_per_epoch, "epochs": h.epoch + 1,
                "correlation": h.latest_score(), "scores": h.scores, "mean_by_class": h.mean_by_class,
                "encoder_norms": h.encoder_norms, "sign_flips_at_steps": h.flips, "n_train_rows": len(plan.rows),
                "n_eval_rows": h.n_eval_rows,
            },
            "best_score_checkpoint": h.best,
            "losses": h.losses,
            "gradient_scales": {"input": float(self.gradiend.input_scale), "target": float(self.gradiend.target_scale),
                                **dict(zip(("input_l1_norm", "target_rms"), scale_norms(args.learning_rate),
                                           strict=True))},
            "convergence_info": {
                "converged": converged, "reason": reason,
                "convergent_score_threshold": args.convergent_score_threshold,
                "convergent_mean_by_class_threshold": args.convergent_mean_by_class_threshold,
            },
            "time": {**timings, "seconds_per_step": (timings["gradients"] + timings["gradiend"]) / plan.total_steps},
            "memory_estimate_bytes": memory,
            "diagnostics": self.monitor.to_json(),
        }
        best_state = h.best_state if h.best_state is not None else _snapshot(self.gradiend)
        stats["decoder_fit"] = self._fit_decoder(best_state)  # on this rank's slice when sharded
        if self._shard is not None:  # the full weights on every rank, or in rank 0's host memory only
            self.optimizer.state.clear()  # its slices' AdamW state is not needed any more: room for the full weights
            best_state = self._shard.finish(self.gradiend.state_dict(), best_state,
                                            main_host_only=self.final_weights == "rank0_host")
        return TrainingOutcome(best_state, stats, converged, reason, timings, shard=self._shard)

    def _fit_decoder(self, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Refit `state`'s decoder to the class-mean targets (`decoder_fit="class_means"`); the record for
        training.json. The decoder plays no part in choosing the checkpoint, so refitting the kept one is exact."""
        targets, self._targets = self._targets, None  # the sums are freed once used
        if targets is None:
            return {"mode": "trained", "reason": decoder_refit_skipped(self.args, self.gradiend.config.latent_dim)}
        if min(targets.counts) == 0:
            logger.warning("The decoder is kept as trained: training saw target rows of one class only (%s); "
                           "train more steps for the class-mean decoder", targets.counts)
            return {"mode": "trained", "reason": f"rows of one class only: {targets.counts}"}
        sign = self._class_a_sign(state, targets)
        class_mean_decoder(self.gradiend, targets, state, sign)
        return {"mode": "class_means", "rows": list(targets.counts), "class_a_sign": int(sign)}

    def _class_a_sign(self, state: dict[str, torch.Tensor], targets: ClassTargetMeans) -> float:
        """+1 when class A encodes positively in `state`: the kept checkpoint's correlation sign, or without an
        evaluation the sign of the trained decoder along the class-mean difference (summed over the slices)."""
        if self.history.best is not None:
            return 1.0 if self.history.best["correlation"] >= 0 else -1.0
        mean_a, mean_b = targets.means()
        weight = state["decoder_weight"][:, 0].to(mean_a.device, mean_a.dtype)
        along = torch.dot(weight, mean_a - mean_b).reshape(1)
        if self._shard is not None:
            along = distributed.all_reduce_(along, "decoder sign")
        return 1.0 if float(along) >= 0 else -1.0


def capped_rows(train_rows: pd.DataFrame, eval_rows: pd.DataFrame | None,
                args: TrainingArguments) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The rows a run trains on and evaluates with, capped per class as `args` say (None: no evaluation)."""
    train_rows = cap_per_class(train_rows, args.train_max_size, _data_seed(args)).reset_index(drop=True)
    if not args.do_eval or eval_rows is None:
        return train_rows, None
    cap = args.encoder_eval_train_max_size or args.encoder_eval_max_size
    return train_rows, cap_per_class(eval_rows, cap, args.seed).reset_index(drop=True)


def train_gradiend(model: ModelWithGradiend, train_rows: pd.DataFrame, eval_rows: pd.DataFrame | None,
                   pair: Sequence[str], args: TrainingArguments, callbacks: Sequence[TrainingCallback] = (),
                   gradient_store: GradientStore | None = None,
                   checkpoint: ResumeCheckpoint | None = None,
                   final_weights: str = "every_rank") -> TrainingOutcome:
    """Train `model.gradiend` in place on `train_rows`; return the best weights and the stats.

    Rows are capped per class (`train_max_size`, `encoder_eval_*_max_size`); the loop's gradients
    come from the base model's engine. `gradient_store` (optional) serves and keeps per-batch
    gradients, so repeated batches (later epochs, other seeds sharing it) skip the base-model pass.
    Large freed blocks are reused rather than returned to the OS while training (`gradiend.allocator`).
    `checkpoint` (optional): save the state every `save_steps` steps there, resume from it if it matches.
    `final_weights` (a sharded run; see `FINAL_WEIGHTS`): where the trained weights are gathered.
    """
    with reuse_large_blocks():
        train_rows, eval_rows = capped_rows(train_rows, eval_rows, args)
        evaluate = None
        if eval_rows is not None:
            evaluate = functools.partial(evaluate_during_training, model, eval_rows, pair, args.eval_batch_size)
        distributed.init_from_env(args.distributed_timeout)  # several processes: the group the run uses
        source = GradientSource(model.engine, gradient_store, sharded=args.shard_gradiend)
        calibrate = run_calibrator(model, train_rows, eval_rows, pair, args)
        loop = TrainingLoop(model, args, source, evaluate, callbacks, checkpoint, calibrate,
                            final_weights=final_weights)
        outcome = loop.fit(train_rows)
    if gradient_store is not None:
        outcome.stats["gradient_cache"] = gradient_store.summary()
    return outcome
