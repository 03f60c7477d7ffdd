"""Where the training loop's gradients come from: the base model's engine behind an optional cache.

`GradientSource` serves one batch's source/target gradients into the loop's buffers: from the
`GradientStore` when the batch is cached, else from a base-model pass (timed, checked for
NaN/inf, and stored when the batch will be needed again). The loop only sees the
`GradientProvider` protocol, so a test can inject synthetic gradients without a language model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import torch

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
    the floor no GRADIEND-side work can remove.
    """

    def __init__(self, engine: GradientEngine, store: GradientStore | None = None) -> None:
        self.engine = engine
        self.store = store
        self.base_passes = 0.0

    def gradients(self, step: int, texts: Sequence[str], factual: Sequence[str], alternative: Sequence[str],
                  out: dict[str, torch.Tensor], keep: bool) -> dict[str, torch.Tensor]:
        """The batch's gradients in `out` (cache hit) or fresh from the engine; see the class doc."""
        store = self.store
        if store is not None:
            keep = keep or store.shared
            key = batch_key(texts, factual, alternative)
            if store.get(key, out, keep=keep):
                return out
        t_pass = time.perf_counter()
        grads = self.engine.gradients(texts, factual, alternative, list(out), out=out)
        self.base_passes += time.perf_counter() - t_pass
        check_finite(step, grads, texts)
        if store is not None and keep:
            store.put(key, grads)
        return grads
