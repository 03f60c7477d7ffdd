"""Several processes (`torchrun --nproc-per-node N -m gradiend train run.yaml`): torch.distributed, no wrapper.

The engine takes base-model gradients with `autograd.grad` into flat buffers, so plain collectives
on those buffers are all a data-parallel run needs: each rank computes its share of every batch,
weighted so the sum over ranks is the one-process batch mean, and the flat gradients are
all-reduced (or, with `shard_gradiend`, reduced chunk by chunk to the rank owning each chunk: each rank
keeps its slice of the coordinates, `gradiend.gradient_source`, `gradiend.sharding`). Evaluation rows
and decoder-grid candidates are split across ranks and gathered. Only rank 0 writes files and holds the
experiment lock (`gradiend.experiment`); the others wait at a barrier when it takes and releases the
lock, then read what it wrote (the one exception: each rank writes its slice of a sharded run's resume
checkpoint, `gradiend.sharding.ShardedCheckpoint`).

Evaluating a GRADIEND that stays split over the ranks (`gradiend.sharded_model`) is the exception to splitting
work: its encoding and decoding are collectives over the slices, so inside `replicated()` every rank does all of
the work itself, and `same_on_every_rank` checks that the ranks make the same calls.

Nothing changes in one process: without `WORLD_SIZE > 1` in the environment every helper here is
the identity (`rank 0 of 1`). With it, the process group is initialised from torchrun's variables
(`init_from_env`; NCCL for CUDA tensors, gloo for CPU ones) on first use. A collective that fails
(a peer died) or does not complete within `distributed_timeout` seconds (a peer hangs) raises
`DistributedError` naming the rank and the fix, instead of hanging.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
"""Seconds a collective may wait for the other ranks (`TrainingArguments.distributed_timeout`)."""

_T = TypeVar("_T")
_STATE = threading.local()  # rank_local_writes() and replicated() nesting


class DistributedError(RuntimeError):
    """A collective failed or timed out: another rank died, hangs, or took another code path."""


@dataclass(frozen=True)
class Context:
    """This process's place in the run: rank `rank` of `world_size` (0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_SINGLE = Context()
_current: Context | None = None


def env_world_size() -> int:
    """`WORLD_SIZE` as torchrun sets it (1 when unset); a value that is not a positive integer is an error."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"WORLD_SIZE={raw!r} is not a positive integer; launch with `torchrun --nproc-per-node N`")
    return size


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.isdigit():
        raise ValueError(f"WORLD_SIZE > 1 but {name}={raw!r} is not set to a rank; launch with `torchrun "
                         f"--nproc-per-node N -m gradiend train run.yaml` (it sets RANK, LOCAL_RANK, MASTER_ADDR, "
                         f"MASTER_PORT)")
    return int(raw)


def _backend() -> str:
    """gloo for CPU tensors, plus NCCL for CUDA tensors where CUDA exists (each rank on its local GPU)."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init_from_env(timeout_s: float = DEFAULT_TIMEOUT_S) -> Context:
    """Join the process group torchrun describes (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_*`); idempotent.

    One process (no `WORLD_SIZE > 1`): nothing happens. On CUDA each rank uses `cuda:LOCAL_RANK`
    (`torch.cuda.set_device`), so device `"cuda"` means the rank's own GPU. `timeout_s` bounds every
    collective: a rank that dies or hangs makes the others raise `DistributedError` after at most that long.
    """
    global _current
    if not (timeout_s > 0 and timeout_s < float("inf")):
        raise ValueError(f"distributed_timeout must be a positive number of seconds, got {timeout_s!r}")
    if _current is not None:
        if _current.enabled and _current.timeout_s != timeout_s:
            logger.info("Process group already initialised with timeout %.0f s; keeping it", _current.timeout_s)
        return _current
    world = env_world_size()
    if world == 1:
        return _SINGLE
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    backend = _backend()
    if "nccl" in backend:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), rank=rank, world_size=world)
    _current = Context(dist.get_rank(), dist.get_world_size(), local_rank, float(timeout_s))
    logger.info("Distributed run: rank %d of %d (%s, collectives time out after %.0f s)", _current.rank,
                _current.world_size, backend, timeout_s)
    return _current


def context() -> Context:
    """The current context; initialises the process group from the environment on first use (default timeout)."""
    if _current is not None:
        return _current
    return init_from_env() if env_world_size() > 1 else _SINGLE


def shutdown() -> None:
    """Leave the process group (end of a run); a no-op in one process."""
    global _current
    if _current is not None and _current.enabled and dist.is_initialized():
        dist.destroy_process_group()
    _current = None


@contextlib.contextmanager
def session(timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Context]:
    """`init_from_env` for the block, the process group destroyed afterwards (also after an error)."""
    ctx = init_from_env(timeout_s)
    try:
        yield ctx
    finally:
        shutdown()


def is_main() -> bool:
    """Whether this process is rank 0 (always in one process)."""
    return context().is_main


def _depth(name: str) -> int:
    """How many blocks of the thread-local mode `name` this thread is inside."""
    return getattr(_STATE, name, 0)


@contextlib.contextmanager
def _inside(name: str) -> Iterator[None]:
    """Count this thread as inside one more block of the mode `name` (they nest)."""
    depth = _depth(name)
    setattr(_STATE, name, depth + 1)
    try:
        yield
    finally:
        setattr(_STATE, name, depth)


def rank_local_writes() -> contextlib.AbstractContextManager[None]:
    """Let this rank write inside the block (its own scratch files: a per-rank disk gradient cache)."""
    return _inside("depth")


def may_write() -> bool:
    """Whether this process writes files: rank 0, or any rank inside `rank_local_writes`."""
    return _depth("depth") > 0 or context().is_main


# ---------------------------------------------------------------- splitting work

def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi) of rank `rank`'s contiguous share of n items; shares differ by one item at most."""
    if n < 0 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"cannot split {n} items for rank {rank} of {world_size}")
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def replicated() -> contextlib.AbstractContextManager[None]:
    """Inside the block every rank does all of the work itself: `my_share`, `split_items`, `gather_rows` and
    `gather_items` act as in one process (`splits_work()` is False), while the collectives stay collectives.

    For evaluation of a sharded GRADIEND (`gradiend.sharding.ShardedModelWithGradiend`): encoding and decoding
    are collectives over the ranks' slices, so every rank must take part in every row and every decoder
    candidate, in the same order.
    """
    return _inside("replicated")


def splits_work() -> bool:
    """Whether rows and candidates are split across ranks: several processes, outside `replicated()`."""
    return context().enabled and not _depth("replicated")


def my_share(n: int) -> tuple[int, int]:
    """This rank's [lo, hi) of n items (all of them in one process or inside `replicated()`)."""
    if not splits_work():
        return 0, n
    ctx = context()
    return shard_range(n, ctx.rank, ctx.world_size)


def padded_shard(n: int, world_size: int) -> int:
    """The longest `shard_range` slice, ⌈n / world_size⌉: the width of every rank's (zero-padded) slice buffers."""
    return -(-n // world_size)


# ---------------------------------------------------------------- collectives

@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a failed or timed-out collective into `DistributedError` naming the rank and the fix."""
    try:
        yield
    except RuntimeError as err:  # gloo/NCCL errors (DistBackendError is one) after a peer died or hung
        ctx = context()
        raise DistributedError(
            f"rank {ctx.rank} of {ctx.world_size}: {what} failed, another rank died or did not reach it within "
            f"distributed_timeout={ctx.timeout_s:g} s ({str(err).splitlines()[0][:300]}). Check the other ranks' "
            f"logs; raise distributed_timeout if a rank legitimately needs longer (rank 0 saving a large model)."
        ) from err


def all_reduce_(tensor: torch.Tensor, what: str = "all-reduce") -> torch.Tensor:
    """Sum `tensor` over ranks, in place (every rank gets the same bits); the identity in one process."""
    if context().enabled:
        with _collective(what):
            dist.all_reduce(tensor)
    return tensor


def reduce_to_(tensor: torch.Tensor, dst: int, what: str = "reduce") -> torch.Tensor:
    """Sum `tensor` over ranks into rank `dst`'s `tensor`, in place (the others' are left undefined)."""
    if context().enabled:
        with _collective(what):
            dist.reduce(tensor, dst)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int, what: str = "broadcast") -> torch.Tensor:
    """`tensor` ← rank `src`'s `tensor`, in place on every rank; the identity in one process."""
    if context().enabled:
        with _collective(what):
            dist.broadcast(tensor, src)
    return tensor


def all_gather_slices(local: torch.Tensor, n: int, width: int = 1, what: str = "all-gather") -> torch.Tensor:
    """The full flat vector of n rows of `width` values from each rank's `shard_range` rows `local` (flat).

    A copy of `local` in one process. Every rank gets the same result (`all_gather_into_`).
    """
    if not context().enabled:
        return local.clone()
    return all_gather_into_(local, torch.empty(n * width, dtype=local.dtype, device=local.device), n, width, what)


def all_gather_into_(local: torch.Tensor, out: torch.Tensor, n: int, width: int = 1,
                     what: str = "all-gather") -> torch.Tensor:
    """`out` (flat, n · width) ← every rank's `shard_range` rows, each rank's `local` broadcast into its place.

    Nothing beyond `out` is allocated (no padded copies, no list of parts to concatenate), so gathering a
    large GRADIEND at the end of a sharded run needs the full weights once, not twice.
    """
    ctx = context()
    lo, hi = shard_range(n, ctx.rank, ctx.world_size)
    if out.numel() != n * width or local.numel() != (hi - lo) * width:
        raise ValueError(f"all_gather_into_: {local.numel()} local and {out.numel()} output entries do not fit "
                         f"rank {ctx.rank}'s rows {lo}..{hi} of {n} x {width}")
    out[lo * width:hi * width].copy_(local.reshape(-1))
    if ctx.enabled:
        with _collective(what):
            for rank in range(ctx.world_size):
                a, b = shard_range(n, rank, ctx.world_size)
                if b > a:
                    dist.broadcast(out[a * width:b * width], src=rank)
    return out


def gather_rows(local: np.ndarray, n: int, what: str = "gather of encodings") -> np.ndarray:
    """Stack each rank's `my_share(n)` rows (first axis) into all n rows on every rank (float32)."""
    if not splits_work():
        return local
    width = int(np.prod(local.shape[1:])) if local.ndim > 1 else 1
    flat = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32)).reshape(-1)
    return all_gather_slices(flat, n, width, what).numpy().reshape((n, *local.shape[1:]))


def all_gather_objects(obj: _T, what: str = "gather") -> list[_T]:
    """`obj` of every rank, in rank order (records and small JSON-like data; never files)."""
    ctx = context()
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    with _collective(what):
        dist.all_gather_object(out, obj)
    return out


def all_agree(flag: bool, what: str = "agreement") -> bool:
    """True on every rank iff `flag` is True on every rank (e.g. a batch every rank has cached)."""
    ctx = context()
    if not ctx.enabled:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    with _collective(what):
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def same_on_every_rank(values: Sequence[float], what: str = "agreement") -> bool:
    """True on every rank iff every rank passed the same `values` (one max-reduction of [v, -v], float64)."""
    if not context().enabled:
        return True
    mine = torch.tensor(list(values), dtype=torch.float64)
    both = torch.cat([mine, -mine])
    with _collective(what):
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
    # where the ranks differ, max != min, so no rank's values equal both: every rank sees the disagreement
    return bool(torch.equal(both[:len(mine)], mine) and torch.equal(-both[len(mine):], mine))


def barrier(what: str = "barrier") -> None:
    """Wait until every rank gets here (bounded by the timeout); a no-op in one process."""
    ctx = context()
    if ctx.enabled:
        with _collective(what):
            # a CPU tensor all-reduce, not dist.barrier(): gloo honours the timeout for it and
            # NCCL's barrier would need a device
            dist.all_reduce(torch.zeros(1))


def split_items(items: Sequence[_T]) -> list[_T]:
    """This rank's contiguous share of `items`."""
    lo, hi = my_share(len(items))
    return list(items[lo:hi])


def gather_items(local: list[_T], what: str = "gather") -> list[_T]:
    """The shares of `split_items` put back together in the original order, on every rank."""
    if not splits_work():
        return list(local)
    return [item for part in all_gather_objects(local, what) for item in part]


def gather_to_main(local: torch.Tensor, n: int, width: int = 1, chunk: int = 1 << 24,
                   what: str = "gather to rank 0") -> torch.Tensor | None:
    """Rank 0: a host tensor (flat, n · width) of every rank's `shard_range` rows `local`; the others: None.

    Each rank sends its rows to rank 0 in host chunks of at most `chunk` entries (point to point, gloo), so
    no rank but 0 holds more than its rows plus one chunk, and rank 0 holds the full vector in host memory
    only. In one process: a host copy of `local`.
    """
    ctx = context()
    flat = local.detach().reshape(-1)
    lo, hi = shard_range(n, ctx.rank, ctx.world_size)
    if flat.numel() != (hi - lo) * width:
        raise ValueError(f"gather_to_main: {flat.numel()} local entries do not fit rank {ctx.rank}'s rows "
                         f"{lo}..{hi} of {n} x {width}")
    if not ctx.enabled:
        return flat.to("cpu", copy=True)
    step = max(1, int(chunk))
    with _collective(what):
        if not ctx.is_main:
            for start in range(0, flat.numel(), step):
                dist.send(flat[start:start + step].to("cpu").contiguous(), dst=0)
            return None
        out = torch.empty(n * width, dtype=flat.dtype, device="cpu")
        out[lo * width:hi * width].copy_(flat)
        for rank in range(1, ctx.world_size):
            a, b = shard_range(n, rank, ctx.world_size)
            for start in range(a * width, b * width, step):
                dist.recv(out[start:min(b * width, start + step)], src=rank)
        return out
