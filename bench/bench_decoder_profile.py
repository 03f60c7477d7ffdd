"""Where `evaluate_decoder`'s time goes: base-model forwards, LM head, rewrites, decoding, tokenisation.

Runs one decoder evaluation (no cache reuse) on a finished run and times, in the same process, every call of:
the backbone forward (`model.base_model`), the LM head at the scored positions, writing a candidate
(`GridRun._apply`: θ_saved + lr·dec(ff), one fused pass per tensor), undoing it (`ParameterSnapshot.restore`),
decoding the update (`ModelWithGradiend.lazy_update`), saving the weights (`ParameterSnapshot.__init__`) and
tokenising (`token_lengths`, `encode_pieces`, `prepare_lms`). "other" is the rest (softmax, argmax, selection,
records). Shares are of the evaluation's wall time; seconds depend on the machine's load, shares much less.
The best of `--repeats` evaluations is reported.

    python bench/bench_decoder_profile.py            # the compare_reference MiniLM workload's run (if present)
    python bench/bench_decoder_profile.py --experiment DIR --data training.csv --neutral neutral.csv --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

MINILM_WORK = Path.home() / ".cache" / "gradiend" / "bench-compare" / "minilm-60steps-3seeds"


class Timers:
    """Seconds and calls per component; only the outermost timed call of a component counts."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._active: set[str] = set()

    def wrap(self, owner: Any, name: str, component: str) -> Callable[[], None]:
        """Time `owner.name` as `component`; returns the function that undoes the patch."""
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if component in self._active:
                return original(*args, **kwargs)
            self._active.add(component)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._active.discard(component)
                self.seconds[component] = self.seconds.get(component, 0.0) + time.perf_counter() - start
                self.calls[component] = self.calls.get(component, 0) + 1

        own = isinstance(owner, type) or name in vars(owner)  # a class, or an instance attribute already
        setattr(owner, name, timed)
        return (lambda: setattr(owner, name, original)) if own else (lambda: delattr(owner, name))


@contextlib.contextmanager
def instrumented(model: Any, timers: Timers) -> Iterator[None]:
    """Patch the components of one decoder evaluation of `model` (a ModelWithGradiend)."""
    from gradiend import decoder_eval, rewrite, scoring

    backbone = model.base_model.base_model
    head = model.objective.head(model.base_model)
    undo = [timers.wrap(backbone, "forward", "backbone forward"), timers.wrap(head, "forward", "LM head"),
            timers.wrap(decoder_eval.GridRun, "_apply", "rewrite (decode + apply)"),
            timers.wrap(rewrite.ParameterSnapshot, "restore", "rewrite (restore)"),
            timers.wrap(rewrite.ParameterSnapshot, "__init__", "save weights"),
            timers.wrap(type(model), "lazy_update", "decode update"),
            timers.wrap(type(model.objective), "token_lengths", "tokenise"),
            timers.wrap(type(model.objective), "encode_pieces", "tokenise"),
            timers.wrap(scoring, "prepare_lms", "tokenise"), timers.wrap(decoder_eval, "prepare_lms", "tokenise")]
    try:
        yield
    finally:
        for fn in reversed(undo):
            fn()


def profile_once(trainer: Any, target: str, lrs: list[float] | None) -> tuple[float, Timers]:
    from gradiend.decoder_eval import DecoderCache, DecoderRequest, evaluate_decoder

    model = trainer.get_model()
    timers = Timers()
    with tempfile.TemporaryDirectory() as tmp, instrumented(model, timers):
        cache = DecoderCache(Path(tmp) / "grid.json", Path(tmp) / "summaries.json", {"weights": "bench"}, use=False)
        request = DecoderRequest.from_arguments(trainer.training_args, [target], lrs=lrs,
                                                neutral_texts=trainer.neutral_texts())
        start = time.perf_counter()
        evaluate_decoder(model, *trainer.unified_data(), request, cache)
        wall = time.perf_counter() - start
    return wall, timers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=str(MINILM_WORK / "ours" / "exp"))
    parser.add_argument("--data", default=str(MINILM_WORK / "training.csv"))
    parser.add_argument("--neutral", default=str(MINILM_WORK / "neutral.csv"))
    parser.add_argument("--target-class", default="3SG")
    parser.add_argument("--lrs", default=None, help="comma-separated learning rates (default: the run's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=2)
    ns = parser.parse_args()
    if not Path(ns.experiment).is_dir():
        raise SystemExit(f"No run at {ns.experiment}: run `python bench/compare_reference.py --workload minilm "
                         f"--sides ours` first, or pass --experiment/--data/--neutral")
    import torch

    from gradiend import allocator
    from gradiend.trainer.trainer import Trainer

    allocator.enable()
    if ns.threads > 0:
        torch.set_num_threads(ns.threads)
    trainer = Trainer.from_experiment(ns.experiment, data=pd.read_csv(ns.data), show_progress=False,
                                      eval_neutral_data=pd.read_csv(ns.neutral))
    lrs = [float(x) for x in ns.lrs.split(",")] if ns.lrs else None
    runs = [profile_once(trainer, ns.target_class, lrs) for _ in range(ns.repeats + 1)][1:]  # first: warm-up
    wall, timers = min(runs, key=lambda r: r[0])
    print(f"evaluate_decoder {wall:.3f} s ({torch.get_num_threads()} threads, best of {ns.repeats})")
    print("| component | seconds | share | calls |\n|---|---:|---:|---:|")
    for name, seconds in sorted(timers.seconds.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {seconds:.3f} | {seconds / wall:.0%} | {timers.calls[name]} |")
    other = wall - sum(timers.seconds.values())
    print(f"| other | {other:.3f} | {other / wall:.0%} | |")


if __name__ == "__main__":
    main()
