"""The GRADIEND training loop: gradients in, AdamW steps, periodic encoder evaluation.

Evaluation runs at step 0, every `eval_steps` and at the end on the validation split. After
each evaluation the feature sign is normalised (class A positive), the best checkpoint by
correlation is kept in memory, and the run's statistics are returned for `training.json`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from gradiend.allocator import reuse_large_blocks
from gradiend.arguments import TrainingArguments
from gradiend.data import BatchSchedule, cap_per_class
from gradiend.encoder_eval import pearson
from gradiend.gradient_cache import GradientStore, batch_key
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.pruning import memory_estimate
from gradiend.step import FusedLoss

logger = logging.getLogger(__name__)

# Scale rule (see `estimate_scales`): the encoder input is scaled to this mean L1 norm and the
# decoder target to this root-mean-square value per coordinate.
INPUT_L1_NORM = 1e4
TARGET_RMS = 0.01


class TrainingCallback:
    """Hooks into the loop; subclass and override what you need (the defaults do nothing)."""

    def on_train_begin(self, model: ModelWithGradiend, optimizer: torch.optim.Optimizer,
                       args: TrainingArguments) -> None:
        """Once per run (per seed), before the first step: inspect or adjust model and optimizer."""

    def on_step_end(self, step: int, loss: float) -> None:
        """After every optimizer step."""

    def on_evaluate(self, step: int, metrics: dict[str, Any]) -> None:
        """After every in-training evaluation (metrics already sign-normalised)."""


@dataclass
class TrainingOutcome:
    """What a finished run hands back: the selected weights and the statistics."""

    state: dict[str, torch.Tensor]
    stats: dict[str, Any]
    converged: bool
    failure_reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def estimate_scales(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Input and target scales from a few (source, target) gradient batches, consumed one at a time.

    Adam moves every weight by about the learning rate per step, so what a step does to
    `w_e · x` grows with the L1 norm of x, and how fast the decoder can fit y depends on the
    size of y's coordinates. Scaling x to an L1 norm of `INPUT_L1_NORM` and y to a per-coordinate
    RMS of `TARGET_RMS` makes one learning rate (1e-3) work across models, layers and features.
    """
    l1_norms, rms_values = [], []
    for source, target in pairs:  # statistics only: no batch is kept (each is n floats per kind)
        l1_norms.append(float(source.abs().sum()))
        rms_values.append(float(target.pow(2).mean().sqrt()))
    l1 = sum(l1_norms) / max(len(l1_norms), 1)
    rms = sum(rms_values) / max(len(rms_values), 1)
    if not (math.isfinite(l1) and l1 > 0 and math.isfinite(rms) and rms > 0):
        raise FloatingPointError(f"Cannot estimate gradient scales (input L1 {l1}, target RMS {rms}): the "
                                 f"first batches have zero or non-finite gradients. Check the selected "
                                 f"parameters and the target tokens.")
    return l1 / INPUT_L1_NORM, rms / TARGET_RMS


def _batch_lists(rows: pd.DataFrame, indices: Sequence[int]) -> tuple[list[str], list[str], list[str]]:
    sub = rows.iloc[list(indices)]
    return list(sub["masked"]), list(sub["factual"]), list(sub["alternative"])


def _check_finite(step: int, tensors: dict[str, torch.Tensor], texts: Sequence[str]) -> None:
    for kind, vec in tensors.items():
        # a NaN or inf anywhere makes the sum non-finite; the sum is 20x cheaper than an elementwise
        # check, which then only confirms (a finite vector can still overflow the float sum)
        if not torch.isfinite(vec.sum()) and not torch.isfinite(vec).all():
            raise FloatingPointError(
                f"Non-finite {kind} gradient at step {step} (batch starting {texts[0][:60]!r}); nothing was "
                f"saved. Check the base model's dtype (use float32) and the data of this batch.")


def evaluate_during_training(model: ModelWithGradiend, rows: pd.DataFrame, pair: Sequence[str],
                             batch_size: int) -> dict[str, Any]:
    """Correlation and class means of the source encodings of `rows` (validation)."""
    h = model.encode(list(rows["masked"]), list(rows["factual"]), list(rows["alternative"]),
                     batch_size=batch_size)[:, 0]
    labels = rows["label"].to_numpy()
    means = {c: float(h[(rows["factual_class"] == c).to_numpy()].mean()) for c in pair}
    return {"correlation": pearson(h, labels), "mean_by_class": means, "n": len(rows)}


def make_optimizer(params: Iterable[torch.nn.Parameter], args: TrainingArguments,
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


def _flip(model: ModelWithGradiend, optimizer: torch.optim.Optimizer) -> None:
    """Negate the feature and the matching Adam first moments (an exact symmetry of training)."""
    g = model.gradiend
    g.flip_sign()
    for param in (g.encoder_weight, g.encoder_bias, g.decoder_weight):
        state = optimizer.state.get(param)
        if state and "exp_avg" in state:
            state["exp_avg"].neg_()


def check_convergence(best: dict[str, Any] | None, args: TrainingArguments,
                      final_loss: float | None = None) -> tuple[bool, str | None]:
    """`convergent_metric="correlation"`: converged iff a step > 0 reached |ρ| ≥ threshold with class
    means of opposite sign, each ≥ `convergent_mean_by_class_threshold` (None: not checked).
    `"loss"`: converged iff the best checkpoint's (else the final) loss ≤ threshold."""
    if args.convergent_metric == "loss":
        loss = best["loss"] if best is not None and best.get("loss") is not None else final_loss
        if loss is None:
            return False, "no training loss recorded"
        if loss > args.convergent_score_threshold:
            return False, f"loss {loss:.4g} above convergent_score_threshold {args.convergent_score_threshold}"
        return True, None
    if best is None:
        return False, "no evaluation after step 0 (do_eval=False or max_steps too small)"
    corr, means = best["correlation"], list(best["mean_by_class"].values())
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


def train_gradiend(model: ModelWithGradiend, train_rows: pd.DataFrame, eval_rows: pd.DataFrame | None,
                   pair: Sequence[str], args: TrainingArguments, callbacks: Sequence[TrainingCallback] = (),
                   gradient_store: GradientStore | None = None) -> TrainingOutcome:
    """Train `model.gradiend` in place on `train_rows`; return the best weights and the stats.

    `gradient_store` (optional) serves and keeps per-batch base-model gradients, so repeated
    batches (later epochs, other seeds sharing it) skip the base-model pass. Large freed blocks
    are reused rather than returned to the OS while training (`gradiend.allocator`).
    """
    with reuse_large_blocks():
        return _train(model, train_rows, eval_rows, pair, args, callbacks, gradient_store)


def _train(model: ModelWithGradiend, train_rows: pd.DataFrame, eval_rows: pd.DataFrame | None,
           pair: Sequence[str], args: TrainingArguments, callbacks: Sequence[TrainingCallback],
           gradient_store: GradientStore | None) -> TrainingOutcome:
    t_start = time.perf_counter()
    if args.seed is not None:
        set_seed(args.seed)
    gradiend = model.gradiend
    data_seed = args.data_seed if args.data_seed is not None else args.seed
    train_rows = cap_per_class(train_rows, args.train_max_size, data_seed).reset_index(drop=True)
    schedule = BatchSchedule(train_rows["label"].to_numpy(), args.train_batch_size, data_seed)
    steps_per_epoch = -(-schedule.batches_per_epoch() // args.gradiend_batch_size)
    total_steps = args.max_steps if args.max_steps > 0 else args.num_train_epochs * steps_per_epoch
    kinds = list(dict.fromkeys([args.source, args.target]))
    n = model.param_map.size
    device = model.device
    memory = memory_estimate(n, args.latent_dim, args.bias_decoder, len(kinds), args.gradiend_batch_size)
    logger.info("GRADIEND memory: %.1f MB weights + %.1f MB optimizer state + %.1f MB gradient buffers "
                "= %.1f MB (besides the base model)", memory["gradiend_weights"] / 1e6,
                memory["optimizer_state"] / 1e6, memory["gradient_buffers"] / 1e6, memory["total"] / 1e6)
    buffers = {k: torch.empty(args.gradiend_batch_size, n, device=device) for k in kinds}

    # Keep every batch's gradients only when batches repeat (several epochs, or seeds sharing the
    # store); the scale-estimation batches are always kept since training starts with them.
    keep_all = gradient_store is not None and (gradient_store.shared
                                               or total_steps * args.gradiend_batch_size > schedule.batches_per_epoch())

    def batch_gradients(step: int, indices: Sequence[int], out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        texts, fac, alt = _batch_lists(train_rows, indices)
        key = batch_key(texts, fac, alt) if gradient_store is not None else ""
        # scale-estimation batches (step 0) are kept for the first training steps; without repeats
        # any other batch is not kept, and a cached one is served once, then dropped
        keep = keep_all or step == 0
        if gradient_store is not None and gradient_store.get(key, out, keep=keep):
            return out
        t_pass = time.perf_counter()
        grads = model.engine.gradients(texts, fac, alt, kinds, out=out)
        timings["base_passes"] += time.perf_counter() - t_pass
        _check_finite(step, grads, texts)
        if gradient_store is not None and keep:
            gradient_store.put(key, grads)
        return grads
    do_eval = args.do_eval and eval_rows is not None
    if do_eval:
        eval_rows = cap_per_class(eval_rows, args.encoder_eval_train_max_size or args.encoder_eval_max_size,
                                  args.seed).reset_index(drop=True)

    batches = schedule.iterate(total_steps * args.gradiend_batch_size)
    # base_passes: time inside the base model's forward/backward for training batches (scale
    # estimation included; cache hits excluded): the floor no GRADIEND-side work can remove.
    timings = {"gradients": 0.0, "gradiend": 0.0, "eval": 0.0, "scale": 0.0, "base_passes": 0.0}

    if args.standardize_gradients:
        t0 = time.perf_counter()
        probe = BatchSchedule(train_rows["label"].to_numpy(), args.train_batch_size, data_seed)
        probe_out = {k: buffers[k][0] for k in kinds}

        def probe_pairs() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for _, batch in probe.iterate(args.scale_estimation_batches):
                grads = batch_gradients(0, batch.indices, probe_out)
                yield grads[args.source], grads[args.target]

        s_in, s_out = estimate_scales(probe_pairs())
        gradiend.input_scale.fill_(s_in)
        gradiend.target_scale.fill_(s_out)
        timings["scale"] = time.perf_counter() - t0
        logger.info("Gradient scales: input %.3g (L1 → %g), target %.3g (RMS → %g)", s_in, INPUT_L1_NORM,
                    s_out, TARGET_RMS)

    optimizer = make_optimizer(gradiend.parameters(), args)
    fused = FusedLoss(gradiend, args.gradiend_batch_size)
    for cb in callbacks:
        cb.on_train_begin(model, optimizer, args)

    scores: dict[str, float] = {}
    means_by_step: dict[str, dict[str, float]] = {}
    losses: list[float] = []
    encoder_norms: dict[str, float] = {}
    best: dict[str, Any] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    flips: list[int] = []

    def run_eval(step: int, epoch: int) -> None:
        nonlocal best, best_state
        t0 = time.perf_counter()
        gradiend.eval()
        metrics = evaluate_during_training(model, eval_rows, pair, args.eval_batch_size)
        if args.normalize_gradiend and args.latent_dim == 1 and metrics["correlation"] < 0:
            _flip(model, optimizer)
            flips.append(step)
            metrics["correlation"] = -metrics["correlation"]
            metrics["mean_by_class"] = {c: -v for c, v in metrics["mean_by_class"].items()}
        scores[str(step)] = metrics["correlation"]
        means_by_step[str(step)] = metrics["mean_by_class"]
        encoder_norms[str(step)] = float(gradiend.encoder_weight.detach().norm())
        if step > 0 and (best is None or abs(metrics["correlation"]) > abs(best["correlation"])):
            best = {"correlation": metrics["correlation"], "global_step": step, "epoch": epoch,
                    "mean_by_class": metrics["mean_by_class"], "loss": losses[-1] if losses else None}
            best_state = {k: v.detach().clone() for k, v in gradiend.state_dict().items()}
        for cb in callbacks:
            cb.on_evaluate(step, metrics)
        gradiend.train()
        timings["eval"] += time.perf_counter() - t0
        logger.info("step %d: correlation %.4f, class means %s", step, metrics["correlation"],
                    {c: round(v, 3) for c, v in metrics["mean_by_class"].items()})

    if do_eval:
        run_eval(0, 0)
    gradiend.train()
    bar = tqdm(total=total_steps, desc="GRADIEND training", disable=not args.show_progress)
    epoch = 0
    for step in range(1, total_steps + 1):
        t0 = time.perf_counter()
        for slot in range(args.gradiend_batch_size):
            epoch, batch = next(batches)
            batch_gradients(step, batch.indices, {k: buffers[k][slot] for k in kinds})
        t1 = time.perf_counter()
        loss, _ = fused.loss_and_grad(buffers[args.source], buffers[args.target])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"GRADIEND loss became {loss.item()} at step {step}; nothing was saved. "
                                     f"Lower learning_rate.")
        optimizer.step()
        losses.append(float(loss.detach()))
        timings["gradients"] += t1 - t0
        timings["gradiend"] += time.perf_counter() - t1
        for cb in callbacks:
            cb.on_step_end(step, losses[-1])
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3g}", corr=f"{scores[max(scores, key=int)]:.3f}" if scores else "-")
        if do_eval and (step % args.eval_steps == 0 or step == total_steps):
            run_eval(step, epoch)
    bar.close()
    gradiend.eval()

    if best_state is None:
        best_state = {k: v.detach().clone() for k, v in gradiend.state_dict().items()}
    converged, reason = check_convergence(best, args, losses[-1] if losses else None)
    timings["total"] = time.perf_counter() - t_start
    stats = {
        "training_stats": {
            "global_step": total_steps, "steps_per_epoch": steps_per_epoch, "epochs": epoch + 1,
            "correlation": scores[max(scores, key=int)] if scores else None,
            "scores": scores, "mean_by_class": means_by_step, "encoder_norms": encoder_norms,
            "sign_flips_at_steps": flips, "n_train_rows": len(train_rows),
            "n_eval_rows": len(eval_rows) if do_eval else 0,
        },
        "best_score_checkpoint": best,
        "losses": losses,
        "gradient_scales": {"input": float(gradiend.input_scale), "target": float(gradiend.target_scale),
                            "input_l1_norm": INPUT_L1_NORM, "target_rms": TARGET_RMS},
        "convergence_info": {
            "converged": converged, "reason": reason,
            "convergent_score_threshold": args.convergent_score_threshold,
            "convergent_mean_by_class_threshold": args.convergent_mean_by_class_threshold,
        },
        "time": {**timings, "seconds_per_step": (timings["gradients"] + timings["gradiend"]) / total_steps},
        "memory_estimate_bytes": memory,
    }
    if gradient_store is not None:
        stats["gradient_cache"] = gradient_store.summary()
    return TrainingOutcome(best_state, stats, converged, reason, timings)
