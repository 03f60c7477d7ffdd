"""One GRADIEND optimizer step: autograd loss + backward vs the hand-derived `FusedLoss`.

Both variants run in this process on the same inputs, interleaved, and the script prints the
median seconds per step (loss+gradients, then the fused AdamW step) and the ratio.

    python bench/bench_gradiend_step.py --n 4370000 22600000 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gradiend.arguments import TrainingArguments
from gradiend.model import GradiendConfig, GradiendModel
from gradiend.step import FusedLoss
from gradiend.training import make_optimizer


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(n: int, batch: int, repeats: int) -> None:
    model = GradiendModel(GradiendConfig(input_dim=n), generator=torch.Generator().manual_seed(0))
    model.input_scale.fill_(1e-3)
    model.target_scale.fill_(1e-4)
    x = torch.randn(batch, n) * 1e-4
    y = torch.randn(batch, n) * 1e-4
    optimizer = make_optimizer(model.parameters(), TrainingArguments(learning_rate=1e-5))

    def autograd_step() -> None:
        model.zero_grad(set_to_none=True)
        model.loss(x, y)[0].backward()

    fused = FusedLoss(model, batch)

    def fused_step() -> None:
        fused.loss_and_grad(x, y)

    autograd_step()
    optimizer.step()  # allocate the optimizer state before timing
    results = {"autograd": [], "fused": [], "adamw": []}
    for _ in range(repeats):
        results["autograd"].append(_time(autograd_step, 1))
        results["fused"].append(_time(fused_step, 1))
        results["adamw"].append(_time(optimizer.step, 1))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"n={n:,} batch={batch} threads={torch.get_num_threads()}: loss+grad autograd {med['autograd']:.4f} s, "
          f"fused {med['fused']:.4f} s ({med['autograd'] / med['fused']:.2f}x); fused AdamW step {med['adamw']:.4f} s; "
          f"whole step {med['autograd'] + med['adamw']:.4f} -> {med['fused'] + med['adamw']:.4f} s "
          f"({(med['autograd'] + med['adamw']) / (med['fused'] + med['adamw']):.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4_370_000, 22_600_000])
    parser.add_argument("--batch", type=int, default=1, help="gradiend_batch_size")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0)
    ns = parser.parse_args()
    if ns.threads > 0:
        torch.set_num_threads(ns.threads)
    for n in ns.n:
        bench(n, ns.batch, ns.repeats)


if __name__ == "__main__":
    main()
