"""Benchmark: the GRADIEND step overlapped with the next base pass (`overlap_step`) vs the sequential loop.

Trains the same run (embedded MiniLM by default, the MiniLM workload's data, one epoch so every step
needs a base pass) with `overlap_step=True` and `False`, alternating (on, off, off, on, ...) in one
process, and prints per setting the best train() wall time, seconds per step, the GRADIEND time
the loop waited for (`time.gradiend`), the base passes' share of train() and whether both settings
learnt bitwise the same weights. Ratios only: absolute seconds depend on the machine's load.

    python bench/bench_overlap.py                        # MiniLM, 20 steps, 2 repeats per setting
    python bench/bench_overlap.py --steps 40 --repeats 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def train_once(model: str, data: Any, neutral: Any, work: Path, overlap: bool, steps: int) -> dict[str, Any]:
    """One train() → wall seconds, training.json's `time` and the weights' digest."""
    import hashlib

    from safetensors.torch import load_file

    from gradiend import TextPredictionTrainer, TrainingArguments

    exp = work / f"overlap-{overlap}-{time.perf_counter_ns()}"
    args = TrainingArguments(experiment_dir=str(exp), train_batch_size=8, max_steps=steps, eval_steps=steps,
                             learning_rate=1e-3, num_train_epochs=10_000, max_seeds=1, seed=0, show_progress=False,
                             overlap_step=overlap, use_cache=False)
    trainer = TextPredictionTrainer(model=model, data=data, eval_neutral_data=neutral, args=args)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    record = json.loads((exp / "model" / "training.json").read_text())
    tensors = load_file(exp / "model" / "model.safetensors")  # the tensors: the file's header order may vary
    digest = hashlib.sha256(b"".join(tensors[k].numpy().tobytes() for k in sorted(tensors))).hexdigest()[:16]
    return {"wall": wall, "time": record["time"], "weights": digest, "losses": record["losses"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--model", default=None, help="model path (default: the embedded MiniLM)")
    ns = parser.parse_args()

    import pandas as pd
    import torch
    from compare_reference import write_dataset

    from gradiend import allocator
    from gradiend.embedded import embedded_model_path

    allocator.enable()
    if ns.threads > 0:
        torch.set_num_threads(ns.threads)
    model = ns.model or embedded_model_path("mlm")
    results: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data_path, neutral_path = write_dataset(work, {"train": 240, "validation": 15, "test": 15}, 12)
        data, neutral = pd.read_csv(data_path), pd.read_csv(neutral_path)
        train_once(model, data, neutral, work, False, 2)  # warm-up: imports, kernels, page cache
        order = [True, False, False, True] * ns.repeats
        for overlap in order[:2 * ns.repeats]:
            run = train_once(model, data, neutral, work, overlap, ns.steps)
            results[overlap].append(run)
            print(f"overlap_step={overlap}: train {run['wall']:.2f} s", flush=True)
    best = {k: min(v, key=lambda r: r["wall"]) for k, v in results.items()}
    print(f"\n{ns.steps} steps, {torch.get_num_threads()} torch threads, best of {ns.repeats} per setting")
    print("| overlap_step | train (s) | s/step | GRADIEND wait (s) | base passes (s) | base-pass share |")
    print("|---|---:|---:|---:|---:|---:|")
    for overlap in (False, True):
        r = best[overlap]
        t = r["time"]
        print(f"| {overlap} | {r['wall']:.2f} | {t['seconds_per_step']:.3f} | {t['gradiend']:.2f} "
              f"| {t['base_passes']:.2f} | {t['base_passes'] / r['wall']:.0%} |")
    same = len({r["weights"] for rs in results.values() for r in rs}) == 1
    losses = len({tuple(r["losses"]) for rs in results.values() for r in rs}) == 1
    print(f"train() speed-up {best[False]['wall'] / best[True]['wall']:.2f}x; same weights in every run: {same}; "
          f"same losses: {losses}")


if __name__ == "__main__":
    main()
