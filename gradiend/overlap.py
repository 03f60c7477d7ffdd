"""Run the GRADIEND step on a worker while the next batch's base-model gradients are computed.

The base gradients do not depend on the GRADIEND, so step t can run while batch t+1's gradients are
written into a second buffer. The steps themselves still run one after the other, in the same order
and with the same arithmetic; only when they run changes, so training stays bitwise the same as the
sequential loop (`TrainingLoop._run` joins the step before anything that reads the GRADIEND).

CPU: a worker thread runs the step with the caller's intra-op thread count (a new thread would
otherwise get OpenMP's default count, and reductions split by thread count round differently).
CUDA: the step runs on a side stream that first waits for the caller's stream (the gradients are
written); joining makes the caller's stream wait for the side stream in turn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

import torch

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class StepWorker(Generic[_T]):
    """One background thread for one job at a time: `submit(fn)`, later `join()` for its result.

    `join` re-raises the job's exception. `busy` accumulates the seconds the jobs ran on the worker
    and `waited` the seconds `join` blocked the caller (the part of the jobs not hidden behind the
    caller's own work). `close` waits for a pending job (its result or error is dropped) and ends the thread.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._threads = torch.get_num_threads()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradiend-step")
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._pending: Future[tuple[_T, float]] | None = None
        self.busy = 0.0
        self.waited = 0.0

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def submit(self, fn: Callable[[], _T]) -> None:
        """Start `fn()` on the worker; the previous job must have been joined."""
        if self._pending is not None:
            raise RuntimeError("StepWorker runs one job at a time: join() the previous one first")
        ready = torch.cuda.current_stream(self.device).record_event() if self._stream is not None else None
        self._pending = self._pool.submit(self._run, fn, ready)

    def _run(self, fn: Callable[[], _T], ready: torch.cuda.Event | None) -> tuple[_T, float]:
        t0 = time.perf_counter()
        if torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)
        if self._stream is None:
            return fn(), time.perf_counter() - t0
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(ready)
            result = fn()
        self._stream.synchronize()
        return result, time.perf_counter() - t0

    def join(self) -> _T:
        """The pending job's result (its exception re-raised); the caller's stream then follows the worker's."""
        if self._pending is None:
            raise RuntimeError("StepWorker.join: no job was submitted")
        job, self._pending = self._pending, None
        t0 = time.perf_counter()
        try:
            result, seconds = job.result()
        finally:
            self.waited += time.perf_counter() - t0
        self.busy += seconds
        if self._stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self._stream)
        return result

    def close(self) -> None:
        """Wait for a pending job (dropping its outcome: the caller is already handling an error) and stop."""
        if self._pending is not None:
            job, self._pending = self._pending, None
            error = job.exception()
            if error is not None:
                logger.debug("Dropped the error of an unjoined GRADIEND step: %s", error)
        self._pool.shutdown(wait=True)
