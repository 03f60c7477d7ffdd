"""Benchmark: multi-seed training with and without the per-batch gradient cache, and a pre-pruned
vs an unpruned GRADIEND (checkpoint size, seconds per training step), on the embedded model.

Each configuration runs in its own subprocess (fresh process, same data and arguments); the
script prints wall times and the ratios.

    python bench/bench_seeds_pruning.py [--model PATH] [--steps 20] [--seeds 3] [--topk 0.01]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_config(ns: argparse.Namespace, config: dict) -> dict:
    """Train once in this process with `config` overrides; report time, stats and checkpoint size."""
    import warnings

    from gradiend import PrePruneConfig, TextPredictionTrainer, TrainingArguments, embedded_model_path
    from gradiend.demo_data import load_demo_data

    warnings.simplefilter("ignore")
    overrides = dict(config)
    if "pre_prune_topk" in overrides:
        overrides["pre_prune_config"] = PrePruneConfig(n_samples=16, topk=overrides.pop("pre_prune_topk"),
                                                       source="diff")
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(experiment_dir=tmp, train_batch_size=8, max_steps=ns.steps,
                                 eval_steps=max(1, ns.steps // 2), seed=0, show_progress=False,
                                 encoder_eval_train_max_size=32, gradient_cache_max_gb=8.0, **overrides)
        trainer = TextPredictionTrainer(model=ns.model or embedded_model_path("mlm"), data=load_demo_data(),
                                        args=args, target_classes=["3SG", "3PL"])
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        model_dir = Path(trainer.model_path)
        stats = json.loads((model_dir / "training.json").read_text())
        size = sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file())
        report = Path(tmp) / "seeds" / "seed_report.json"
        seeds = json.loads(report.read_text())["seeds_tried"] if report.is_file() else [0]
    return {"seconds": seconds, "checkpoint_bytes": size, "n_inputs": stats["n_inputs"],
            "seconds_per_step": stats["time"]["seconds_per_step"], "correlation":
            (stats["best_score_checkpoint"] or {}).get("correlation"), "seeds": seeds,
            "gradient_cache": stats.get("gradient_cache")}


def spawn(ns: argparse.Namespace, config: dict) -> dict:
    cmd = [sys.executable, __file__, "--steps", str(ns.steps), "--config", json.dumps(config)]
    if ns.model:
        cmd += ["--model", ns.model]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--topk", type=float, default=0.01)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.config is not None:
        print(json.dumps(run_config(ns, json.loads(ns.config))))
        return
    seeds = dict(max_seeds=ns.seeds, min_convergent_seeds=ns.seeds)
    uncached = spawn(ns, {**seeds, "gradient_cache": "off"})
    cached = spawn(ns, {**seeds, "gradient_cache": "memory"})
    print(f"{ns.seeds} seeds x {ns.steps} steps (batch 8), embedded MLM, all backbone parameters")
    print(f"  no gradient cache: {uncached['seconds']:7.1f} s   (best corr {uncached['correlation']:.3f})")
    print(f"  memory cache:      {cached['seconds']:7.1f} s   (best corr {cached['correlation']:.3f}; "
          f"{cached['gradient_cache']})")
    print(f"  speed-up: {uncached['seconds'] / cached['seconds']:.2f}x")
    full = spawn(ns, {"gradient_cache": "off"})
    pruned = spawn(ns, {"gradient_cache": "off", "pre_prune_topk": ns.topk})
    print(f"pre-pruning topk={ns.topk} vs unpruned, 1 seed x {ns.steps} steps")
    for name, r in (("unpruned", full), ("pre-pruned", pruned)):
        print(f"  {name:10s} inputs {r['n_inputs']:>11,}  checkpoint {r['checkpoint_bytes'] / 1e6:8.2f} MB  "
              f"{r['seconds_per_step']:.3f} s/step  best corr {r['correlation']:.3f}")
    print(f"  checkpoint size ratio {full['checkpoint_bytes'] / pruned['checkpoint_bytes']:.1f}x, "
          f"step time ratio {full['seconds_per_step'] / pruned['seconds_per_step']:.2f}x")


if __name__ == "__main__":
    main()
