"""Where the training loop's gradients come from: the base model's engine behind an optional cache.

`GradientSource` serves one batch's source/target gradients into the loop's buffers: from the
`GradientStore` when the batch is cached, else from a base-model pass (timed, checked for
NaN/inf, and stored when the batch will be needed again). The loop only sees the
`GradientProvider` protocol, so a test can inject synthetic gradients without a language model.

Several processes (`gradiend.distributed`): each rank computes the batch-mean gradient of its
`shard_range` share of the batch's rows, weighted by share / batch size (an odd batch splits
unevenly; a rank with no row contributes zeros), and the flat vectors are summed over ranks:
all-reduced into `out`, or with `sharded=True` reduced chunk by chunk to the rank owning each chunk, so
`out` holds this rank's `shard_range` slice of the coordinates (`out` has the longest slice's length
⌈n / world_size⌉; a shorter slice is padded with zeros) and no rank builds a full-length vector. A batch is served
from the cache only when every rank has it (one scalar all-reduce), and each rank keys its entries
by its rank, so a disk cache shared by the ranks never mixes their slices.
"""

from __future__ import annotations

import bisect
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
    from gradiend.params import ParamMap

logger = logging.getLogger(__name__)

REDUCE_CHUNK = 1 << 24
"""Entries per reduction of a sharded run's gradients (64 MB in float32): the only scratch a rank needs."""


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
        lo, hi = distributed.my_share(len(texts))
        if self.sharded:
            return self._reduced_slices(step, texts[lo:hi], factual[lo:hi], alternative[lo:hi], len(texts), out)
        if hi > lo:
            self.engine.gradients(texts[lo:hi], factual[lo:hi], alternative[lo:hi], list(out), out=out)
            if hi - lo != len(texts):
                for vec in out.values():
                    vec.mul_((hi - lo) / len(texts))  # mean over the share → its part of the batch mean
        else:
            for vec in out.values():
                vec.zero_()
        for kind, vec in out.items():
            distributed.all_reduce_(vec, f"all-reduce of the {kind} gradient")
        return out

    def _reduced_slices(self, step: int, texts: Sequence[str], factual: Sequence[str], alternative: Sequence[str],
                        batch_size: int, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each rank's slice of the summed gradients in `out`, reduced chunk by chunk from the per-parameter
        gradients (`_ChunkReducer`): no rank ever holds a full-length flat vector."""
        reducer = _ChunkReducer(self.engine.param_map, next(iter(out.values())), len(texts) / batch_size)
        if texts:
            self.engine.parameter_gradients(texts, factual, alternative, list(out),
                                            lambda kind, grads: reducer.reduce(kind, grads, out[kind]))
        else:  # no row on this rank: it still takes part in every reduction, with zeros
            for kind, vec in out.items():
                reducer.reduce(kind, [None] * len(self.engine.param_map.specs), vec)
        m = reducer.hi - reducer.lo
        finite = all(bool(torch.isfinite(v[:m].sum())) or bool(torch.isfinite(v[:m]).all()) for v in out.values())
        if not distributed.all_agree(finite, "finiteness check"):
            raise FloatingPointError(f"Non-finite gradient at step {step} on some rank (batch starting "
                                     f"{(texts[0] if texts else '')[:60]!r}); nothing was saved. Check the base "
                                     f"model's dtype (use float32) and the data of this batch.")
        return out


class _ChunkReducer:
    """Sums per-parameter gradients over ranks into each rank's `shard_range` slice of the flat coordinates.

    The flat space is cut at the ranks' slice boundaries and every `REDUCE_CHUNK` entries; each chunk is
    filled from the parameters it covers (weighted by this rank's share of the batch) and reduced to the one
    rank that owns it, straight into that rank's slice. Extra memory per rank: one chunk of scratch.
    """

    def __init__(self, param_map: ParamMap, like: torch.Tensor, weight: float) -> None:
        ctx = distributed.context()
        self.param_map, self.weight, self.rank = param_map, weight, ctx.rank
        n = param_map.size
        self.bounds = [distributed.shard_range(n, r, ctx.world_size) for r in range(ctx.world_size)]
        self.lo, self.hi = self.bounds[ctx.rank]
        self.chunk = max(1, int(REDUCE_CHUNK))
        width = min(self.chunk, max(b - a for a, b in self.bounds))
        self.scratch = torch.empty(width, dtype=like.dtype, device=like.device)
        self.starts = [spec.rows.start for spec in param_map.specs]

    def reduce(self, kind: str, grads: Sequence[torch.Tensor | None], slice_out: torch.Tensor) -> None:
        """This rank's slice of the sum over ranks of `grads` (flattened, weighted) into `slice_out`."""
        slice_out[self.hi - self.lo:].zero_()  # padding to the longest slice
        for owner, (a, b) in enumerate(self.bounds):
            for c0 in range(a, b, self.chunk):
                c1 = min(b, c0 + self.chunk)
                buf = slice_out[c0 - self.lo:c1 - self.lo] if owner == self.rank else self.scratch[:c1 - c0]
                self._fill(grads, c0, c1, buf)
                distributed.reduce_to_(buf, owner, f"reduce of the {kind} gradient")

    def _fill(self, grads: Sequence[torch.Tensor | None], c0: int, c1: int, buf: torch.Tensor) -> None:
        """buf ← the weighted flat entries [c0, c1) of `grads`."""
        first = max(0, bisect.bisect_right(self.starts, c0) - 1)
        for spec, grad in zip(self.param_map.specs[first:], grads[first:], strict=True):
            start, stop = spec.rows.start, spec.rows.stop
            if start >= c1:
                break
            a, b = max(c0, start), min(c1, stop)
            if a >= b:
                continue
            view = buf[a - c0:b - c0]
            if grad is None:
                view.zero_()
            elif spec.index is None:
                view.copy_(grad.reshape(-1)[a - start:b - start])
            else:
                view.copy_(grad.reshape(-1)[spec.index[a - start:b - start].to(grad.device)])
        if self.weight != 1.0:
            buf.mul_(self.weight)  # mean over the share → its part of the batch mean
