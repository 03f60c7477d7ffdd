"""Benchmark: adaptive decoder search vs the full grid, in one process, on one trained GRADIEND.

Both searches score the same candidates the same way (in place, restored bitwise); the adaptive
one bisects the learning rates against the LMS bound, stops LMS passes that can no longer reach
it, and measures only what the selection needs. The script runs them alternately (grid, adaptive,
adaptive, grid, ...), prints per search: candidates scored, LMS passes (stopped early), model
forwards, seconds (best of its runs), the selections, and the ratios full grid / adaptive.

    python bench/bench_decoder_grid.py                          # the demo feature (trains it once, cached)
    python bench/bench_decoder_grid.py --experiment DIR --data training.csv --neutral neutral.csv
    python bench/bench_decoder_grid.py --lrs 100,10,1,0.1,0.01 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from gradiend import allocator
from gradiend.decoder_eval import DecoderCache, DecoderRequest, evaluate_decoder

SEARCHES = ("grid", "adaptive")


def demo_trainer(workdir: Path, max_steps: int) -> tuple[Any, str, list[float] | None]:
    """The demo's MiniLM 3SG/3PL run (trained once into `workdir`), its target class and learning rates."""
    from gradiend.demo import DEMOS, run_demo
    from gradiend.demo_data import load_demo_data, load_demo_neutral
    from gradiend.trainer.trainer import Trainer

    exp = workdir / f"demo-{max_steps}steps"
    if not (exp / "model" / "training.json").is_file():
        run_demo(str(exp), max_steps=max_steps, show_progress=False, plots=False)
    trainer = Trainer.from_experiment(exp, data=load_demo_data(), eval_neutral_data=load_demo_neutral(),
                                      show_progress=False)
    return trainer, DEMOS["mlm"].target, list(DEMOS["mlm"].lrs)


def run_search(trainer: Any, search: str, target: str, lrs: list[float] | None) -> dict[str, Any]:
    """One decoder evaluation (no cache reuse) → seconds, statistics and the selection."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = DecoderCache(Path(tmp) / "grid.json", Path(tmp) / "summaries.json", {"weights": "bench"}, use=False)
        request = DecoderRequest.from_arguments(trainer.training_args, [target], lrs=lrs,
                                                neutral_texts=trainer.neutral_texts(), search=search)
        start = time.perf_counter()
        result = evaluate_decoder(trainer.get_model(), *trainer.unified_data(), request, cache)
        seconds = time.perf_counter() - start
        stats = json.loads(cache.grid.read_text())["search"]
    chosen = result[target]
    return {"seconds": seconds, **{k: stats[k] for k in ("candidates_scored", "lms_passes", "lms_stopped_early",
                                                         "forwards", "grid_size", "full_grid_factors")},
            "selection": {k: chosen[k] for k in ("id", "value", "lms", "base_lms")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=None, help="a finished run (default: train the demo feature)")
    parser.add_argument("--data", default=None, help="training CSV of --experiment (if not in its run_config)")
    parser.add_argument("--neutral", default=None, help="neutral-text CSV (column text) of --experiment")
    parser.add_argument("--target-class", default=None)
    parser.add_argument("--lrs", default=None, help="comma-separated learning rates (default: the run's/demo's)")
    parser.add_argument("--max-steps", type=int, default=60, help="demo training steps (first run only)")
    parser.add_argument("--workdir", default=str(Path.home() / ".cache" / "gradiend" / "bench-decoder"))
    parser.add_argument("--repeats", type=int, default=1, help="rounds of (grid, adaptive, adaptive, grid)")
    ns = parser.parse_args()
    allocator.enable()
    if ns.experiment:
        from gradiend.trainer.trainer import Trainer

        trainer = Trainer.from_experiment(ns.experiment, data=pd.read_csv(ns.data) if ns.data else None,
                                          eval_neutral_data=pd.read_csv(ns.neutral) if ns.neutral else None,
                                          show_progress=False)
        target, lrs = ns.target_class or trainer.pair[0], None
    else:
        trainer, target, lrs = demo_trainer(Path(ns.workdir), ns.max_steps)
        target = ns.target_class or target
    lrs = [float(x) for x in ns.lrs.split(",")] if ns.lrs else lrs
    trainer.get_model()
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SEARCHES}
    for search in [*SEARCHES, *reversed(SEARCHES)] * ns.repeats:
        runs[search].append(run_search(trainer, search, target, lrs))
        print(f"{search:8s} {runs[search][-1]['seconds']:8.2f} s", flush=True)
    best = {s: min(r, key=lambda x: x["seconds"]) for s, r in runs.items()}
    print(f"\nexperiment: {trainer.experiment_dir}  target: {target}  grid: {best['grid']['grid_size']} candidates "
          f"+ base  learning rates: {lrs or 'run default'}")
    print(f"{'search':8s} {'seconds':>8s} {'scored':>7s} {'LMS passes':>10s} {'stopped':>8s} {'forwards':>9s}  "
          "selection")
    for search, r in best.items():
        print(f"{search:8s} {r['seconds']:8.2f} {r['candidates_scored']:7d} {r['lms_passes']:10d} "
              f"{r['lms_stopped_early']:8d} {r['forwards']:9d}  {r['selection']}")
    g, a = best["grid"], best["adaptive"]
    same = all(r["selection"] == g["selection"] for rs in runs.values() for r in rs)
    print(f"ratio full grid / adaptive: time {g['seconds'] / a['seconds']:.2f}x   candidates "
          f"{g['candidates_scored'] / a['candidates_scored']:.2f}x   forwards {g['forwards'] / a['forwards']:.2f}x   "
          f"same selection: {'yes' if same else 'NO'}"
          + (f"   (full-grid fallback for factors {a['full_grid_factors']})" if a["full_grid_factors"] else ""))


if __name__ == "__main__":
    main()
