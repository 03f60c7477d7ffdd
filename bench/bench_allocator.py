"""What the opt-in malloc tuning (`gradiend.allocator.enable()`) is worth on base gradient passes.

glibc's threshold change is process-wide and permanent, so every measurement runs in its own
fresh process; tuned and untuned processes alternate. Each process times `--steps` training-step
gradient passes (alternative + diff gradients of one batch, inside `reuse_large_blocks()` as in
training) after one warm-up pass, and reports the median seconds per pass and the minor page
faults per pass. The script prints medians over `--repeats` processes per setting.

    python bench/bench_allocator.py                  # embedded MiniLM masked LM
    python bench/bench_allocator.py --model tiny     # random 2-layer BERT, hidden 128, MiniLM vocab
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _tiny_model(directory: Path, like: str) -> str:
    """Save a random 2-layer BERT MLM (hidden 128) with the tokenizer of `like` into `directory`."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(like)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512)
    BertForMaskedLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def _child(model: str, tuned: bool, steps: int, batch: int, threads: int) -> None:
    """One measurement process: prints {"seconds": median per pass, "faults": minor faults per pass}."""
    import torch

    from gradiend import allocator
    from gradiend.demo_data import load_demo_data
    from gradiend.model_with_gradiend import ModelWithGradiend

    torch.set_num_threads(threads)
    allocator.enable(tuned)
    mwg = ModelWithGradiend.create(model, feature_classes=["3SG", "3PL"], shape_only=True)
    rows = load_demo_data()
    sg = rows[rows["label_class"] == "3SG"].head(batch)
    texts, factual = list(sg["masked"]), list(sg["label"])
    alternative = ["they" if f.islower() else "They" for f in factual]
    times: list[float] = []
    with allocator.reuse_large_blocks():
        mwg.engine.gradients(texts, factual, alternative, ["alternative", "diff"])  # warm-up
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(steps):
            start = time.perf_counter()
            mwg.engine.gradients(texts, factual, alternative, ["alternative", "diff"])
            times.append(time.perf_counter() - start)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(json.dumps({"seconds": statistics.median(times), "faults": faults / steps}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="local masked LM, or 'tiny' (default: embedded MiniLM)")
    parser.add_argument("--steps", type=int, default=10, help="timed gradient passes per process")
    parser.add_argument("--repeats", type=int, default=3, help="processes per setting")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child is not None:
        _child(ns.model, ns.child == "on", ns.steps, ns.batch_size, ns.threads)
        return
    from gradiend.embedded import embedded_model_path

    with tempfile.TemporaryDirectory() as tmp:
        model = str(embedded_model_path("mlm")) if ns.model is None else ns.model
        if model == "tiny":
            model = _tiny_model(Path(tmp), str(embedded_model_path("mlm")))
        results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        for _ in range(ns.repeats):
            for setting in ("off", "on"):
                cmd = [sys.executable, __file__, "--child", setting, "--model", model, "--steps", str(ns.steps),
                       "--batch-size", str(ns.batch_size), "--threads", str(ns.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                results[setting].append(json.loads(out.strip().splitlines()[-1]))
    print(f"model: {ns.model or 'embedded MiniLM'}  batch {ns.batch_size}  threads {ns.threads}  "
          f"{ns.steps} passes x {ns.repeats} processes per setting")
    seconds = {s: statistics.median(r["seconds"] for r in runs) for s, runs in results.items()}
    for setting, runs in results.items():
        faults = statistics.median(r["faults"] for r in runs)
        print(f"tuning {setting:3s}: {seconds[setting]:.3f} s per gradient pass, {faults:,.0f} minor faults per pass")
    print(f"speed-up with tuning: {seconds['off'] / seconds['on']:.2f}x")


if __name__ == "__main__":
    main()
