"""Where the training loop's gradients come from: the base model's engine behind an optional cache.

`GradientSource` serves one batch's source/target gradients into the loop's buffers: from the
`GradientStore` when the batch is cached, else from a base-model pass (timed, checked for
NaN/inf, and stored when the batch will be needed again). The loop only sees the
`GradientProvider` protocol, so a test can inject synthetic gradients without a language model.

Several processes (`gradiend.distributed`): each rank computes the batch-mean gradient of its
`shard_range` share of the batch's rows, weighted by share / batch size (an odd batch splits
unevenly; a rank with no row contributes zeros), and the flat vectors are summed over ranks:
all-reduced into `out`, or with `sharded=True` reduce-scattered, so `out` holds this rank's slice of
the coordinates (length ⌈n / world_size⌉, the last rank's padded with zeros). A batch is served
from the cache only when every rank has it (one scalar all-reduce), and each rank keys its entries
by its rank, so a disk cache shared by the ranks never mixes their slices.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import torch

from gradiend import distributed
from gradiend.gradient_cache import batch_key

if TYPE_CHECKING:
    from gradiend.gradient_cache import GradientStore
    from gradiend.gradients import GradientEngine

logger = logging.getLogger(__name__)


class GradientProvider(Protocol):
    """What the training loop needs from a gradient source."""

    base_passes: float  # seconds spent computing gradients (cache hits excluded)

    def gradients(self, step: int, texts: Sequence[str], factual: Sequence[str], alternative: Sequence[str],
                  out: dict[str, torch.Tensor], keep: bool) -> dict[str, torch.Tensor]:
        """The batch's gradient vector per kind of `out`, written into `out`'s buffers.

        `keep`: the batch will be drawn again (a cache should keep it after serving it)."""
        ...


def check_finite(step: int, tensors: dict[str, torch.Tensor], texts: Sequence[str]) -> None:
    """Raise FloatingPointError naming the step and batch when a gradient has a NaN or inf."""
    for kind, vec in tensors.items():
        # a NaN or inf anywhere makes the sum non-finite; the sum is 20x cheaper than an elementwise
        # check, which then only confirms (a finite vector can still overflow the float sum)
        if not torch.isfinite(vec.sum()) and not torch.isfinite(vec).all():
            raise FloatingPointError(
                f"Non-finite {kind} gradient at step {step} (batch starting {texts[0][:60]!r}); nothing was "
                f"saved. Check the base model's dtype (use float32) and the data of this batch.")


class GradientSource:
    """Base-model gradients (the kinds named by `out`'s keys), served from `store` when cached.

    Keep policy: a batch the caller marks `keep` (it will be drawn again), or any batch while
    the store is `shared` with a later run, is kept; any other cached batch is served once, then
    dropped. `base_passes` accumulates the time inside the base model's forward/backward passes,
    the floor no GRADIEND-side work can remove. `sharded` (several processes): serve this rank's
    slice of the coordinates instead of all of them (see the module doc).
    """

    def __init__(self, engine: GradientEngine, store: GradientStore | None = None, sharded: bool = False) -> None:
        self.engine = engine
        self.store = store
        self.base_passes = 0.0
        self.dist = distributed.context()
        self.sharded = sharded and self.dist.enabled

    def gradients(self, step: int, texts: Sequence[str], factual: Sequence[str], alternative: Sequence[str],
                  out: dict[str, torch.Tensor], keep: bool) -> dict[str, torch.Tensor]:
        """The batch's gradients in `out` (cache hit) or fresh from the engine; see the class doc."""
        store = self.store
        if store is not None:
            keep = keep or store.shared
            key = batch_key(texts, factual, alternative)
            if self.dist.enabled:
                key = f"{key}-rank{self.dist.rank}of{self.dist.world_size}"
            hit = store.get(key, out, keep=keep)
            if distributed.all_agree(hit, "gradient-cache lookup") if self.dist.enabled else hit:
                return out
        t_pass = time.perf_counter()
        if self.dist.enabled:
            grads = self._reduced(step, texts, factual, alternative, out)
        else:
            grads = self.engine.gradients(texts, factual, alternative, list(out), out=out)
        self.base_passes += time.perf_counter() - t_pass
        check_finite(step, grads, texts)
        if store is not None and keep:
            with distributed.rank_local_writes():  # each rank's own entries (a disk cache writes files)
                store.put(key, grads)
        return grads

    def _reduced(self, step: int, texts: Sequence[str], factual: Sequence[str], alternative: Sequence[str],
                 out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's weighted share of the batch, summed over ranks into `out` (all of it, or this rank's slice)."""
        n = self.engine.param_map.size
        # sharded: full-length vectors (zero padding to world_size × slice) that live for this call only, so
        # the memory is free again for what follows training (gathering the weights)
        full = {k: torch.zeros(v.numel() * self.dist.world_size, dtype=v.dtype, device=v.device)
                for k, v in out.items()} if self.sharded else {}
        local = {k: v[:n] for k, v in full.items()} if self.sharded else out
        lo, hi = distributed.my_share(len(texts))
        if hi > lo:
            self.engine.gradients(texts[lo:hi], factual[lo:hi], alternative[lo:hi], list(local), out=local)
            if hi - lo != len(texts):
                for vec in local.values():
                    vec.mul_((hi - lo) / len(texts))  # mean over the share → its part of the batch mean
        else:
            for vec in local.values():
                vec.zero_()
        if self.sharded:
            finite = all(bool(torch.isfinite(v.sum())) or bool(torch.isfinite(v).all()) for v in local.values())
            if not distributed.all_agree(finite, "finiteness check"):
                raise FloatingPointError(f"Non-finite gradient at step {step} on some rank (batch starting "
                                         f"{texts[0][:60]!r}); nothing was saved. Check the base model's dtype "
                                         f"(use float32) and the data of this batch.")
            for kind, vec in out.items():
                distributed.reduce_scatter_(full[kind], vec, f"reduce-scatter of the {kind} gradient")
        else:
            for kind, vec in out.items():
                distributed.all_reduce_(vec, f"all-reduce of the {kind} gradient")
        return out
