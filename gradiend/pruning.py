"""Pruning GRADIEND inputs: keep the parameter coordinates that matter for the feature.

Pre-pruning ranks coordinates by |mean source gradient| over a few class-stratified rows, before
the GRADIEND exists, so a big model's GRADIEND is built at the pruned size. Post-pruning ranks
them by the trained weights. Both end in `ModelWithGradiend.prune(keep)`: encoder columns,
decoder rows and bias entries are sliced, and the parameter map records the kept coordinates,
so a rewrite of a pruned model touches only those.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from gradiend import distributed
from gradiend.arguments import PostPruneConfig, PrePruneConfig
from gradiend.model import GradiendModel
from gradiend.model_with_gradiend import ModelWithGradiend

logger = logging.getLogger(__name__)


def select_top(importance: torch.Tensor, topk: int | float, threshold: float | None = None) -> torch.Tensor:
    """Boolean keep-mask (on the CPU): importance ≥ `threshold` when one is given, else the top-k entries
    (int = count, float in (0, 1] = fraction). Ties go to the lower index (deterministic).

    The selection runs where `importance` lives, without sorting: the k-th largest value is found by a
    selection kernel, every entry above it is kept, and the ties at it are filled by index order. An argsort
    would take an n-sized int64 index vector plus a sort on the host (n is the GRADIEND's input count).
    """
    importance = importance.detach().reshape(-1).float()
    n = importance.numel()
    if not bool(torch.isfinite(importance).all()):
        raise FloatingPointError("Pruning importance has non-finite entries (NaN/inf gradients or weights); "
                                 "check the base model's dtype and the data")
    if threshold is not None:
        keep = importance >= threshold
        if not bool(keep.any()):
            raise ValueError(f"threshold {threshold} keeps no coordinate (max importance "
                             f"{float(importance.max()):.3g}); lower it")
        return keep.cpu()
    if isinstance(topk, float):
        count = max(1, round(topk * n))
    else:
        if topk > n:
            raise ValueError(f"topk={topk} exceeds the number of GRADIEND inputs ({n}); use a count ≤ {n} or a "
                             f"fraction in (0, 1]")
        count = topk
    return _top_count(importance, count).cpu()


def _top_count(importance: torch.Tensor, count: int) -> torch.Tensor:
    """Mask of the `count` largest entries, ties at the cut broken toward the lower index."""
    cut = _kth_largest(importance, count)
    keep = importance > cut
    missing = count - int(keep.sum())
    if missing > 0:  # entries equal to the cut value, first by index (nonzero returns them sorted)
        tied = torch.nonzero(importance == cut).view(-1)[:missing]
        keep[tied] = True
    return keep


def _kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry (k = 1: the maximum), by a selection kernel on the values' device."""
    try:
        return torch.kthvalue(values, values.numel() - k + 1).values
    except NotImplementedError:  # a device without the kernel (e.g. MPS): select on the host
        logger.debug("kthvalue unavailable on %s; selecting on the CPU", values.device)
        return torch.kthvalue(values.cpu(), values.numel() - k + 1).values.to(values.device)


def weight_importance(gradiend: GradiendModel, part: str) -> torch.Tensor:
    """Per-input importance from trained weights (see `PostPruneConfig.part`)."""
    with torch.no_grad():
        if part == "decoder-weight":
            return gradiend.decoder_weight.abs().sum(dim=1)
        if part == "encoder-weight":
            return gradiend.encoder_weight.abs().sum(dim=0)
        if part in ("decoder-bias", "decoder-sum"):
            if gradiend.decoder_bias is None:
                raise ValueError(f"part={part!r} needs a decoder bias, but this GRADIEND has bias_decoder=False; "
                                 f"use part='decoder-weight'")
            if part == "decoder-bias":
                return gradiend.decoder_bias.abs()
            return (gradiend.decoder_weight.sum(dim=1) + gradiend.decoder_bias).abs()
    raise ValueError(f"Unknown prune part {part!r}")


def stratified_rows(rows: pd.DataFrame, pair: Sequence[str], n_samples: int, seed: int | None) -> pd.DataFrame:
    """`n_samples` rows split evenly over the two classes (all rows of a class when it has fewer)."""
    rng = np.random.default_rng(seed)
    per_class = [n_samples // 2 + (i < n_samples % 2) for i in range(2)]
    parts = []
    for cls, want in zip(pair, per_class, strict=True):
        pool = rows.index[rows["factual_class"] == cls].to_numpy()
        if len(pool) == 0:
            raise ValueError(f"Pre-pruning needs training rows of class {cls!r}; there are none")
        if want > len(pool):
            logger.warning("Pre-pruning: n_samples asks for %d rows of %r but the training split has %d; using all",
                           want, cls, len(pool))
            want = len(pool)
        parts.append(rows.loc[np.sort(rng.choice(pool, size=want, replace=False))])
    return pd.concat(parts)


def gradient_importance(model: ModelWithGradiend, rows: pd.DataFrame, pair: Sequence[str], cfg: PrePruneConfig,
                        show_progress: bool = True) -> torch.Tensor:
    """|mean source gradient| per GRADIEND input over `cfg.n_samples` class-stratified rows.

    Rows are processed in single-class batches of `cfg.batch_size`; each batch gradient is the
    batch mean, weighted by its size, so the result is the mean over rows. Under torchrun each rank passes
    over its share of the batches and the sums are all-reduced, so every rank gets the same importance (and
    keep-mask) in 1/N of the time.
    """
    sample = stratified_rows(rows, pair, cfg.n_samples, cfg.seed)
    total = torch.zeros(model.param_map.size, dtype=torch.float32, device=model.device)
    buffer = torch.empty_like(total)
    batches = [group.iloc[s:s + cfg.batch_size] for _, group in sample.groupby("factual_class", sort=False)
               for s in range(0, len(group), cfg.batch_size)]
    for batch in tqdm(distributed.split_items(batches), desc="Pre-prune gradients", disable=not show_progress,
                      leave=False):
        grad = model.engine.gradients(list(batch["masked"]), list(batch["factual"]), list(batch["alternative"]),
                                      [cfg.source], out={cfg.source: buffer})[cfg.source]
        total.add_(grad, alpha=len(batch))
    distributed.all_reduce_(total, "sum of the pre-pruning gradients")
    return total.div_(len(sample)).abs_()  # in place: no n-sized temporaries


def pre_prune(model: ModelWithGradiend, rows: pd.DataFrame, pair: Sequence[str], cfg: PrePruneConfig,
              show_progress: bool = True) -> torch.Tensor:
    """Prune an untrained GRADIEND in place by gradient importance; returns the keep-mask."""
    keep = select_top(gradient_importance(model, rows, pair, cfg, show_progress), cfg.topk, cfg.threshold)
    before = model.param_map.size
    model.prune(keep)
    logger.info("Pre-prune kept %d of %d GRADIEND inputs (%.2f%%, source=%s)", model.param_map.size, before,
                100 * model.param_map.size / before, cfg.source)
    return keep


def post_prune(model: ModelWithGradiend, cfg: PostPruneConfig) -> torch.Tensor:
    """Prune a trained GRADIEND in place by weight importance; returns the keep-mask."""
    keep = select_top(weight_importance(model.gradiend, cfg.part), cfg.topk, cfg.threshold)
    before = model.param_map.size
    model.prune(keep)
    logger.info("Post-prune kept %d of %d GRADIEND inputs (%.2f%%, part=%s)", model.param_map.size, before,
                100 * model.param_map.size / before, cfg.part)
    return keep

