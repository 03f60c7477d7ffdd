"""What a resume checkpoint costs: bytes per GRADIEND input, seconds per save and load, and the save
time as a multiple of one GRADIEND optimiser step (measured in the same process).

A GRADIEND with a decoder bias is trained one AdamW step (so the optimiser state exists), then its
state is saved `--repeats` times (best weights stored separately, the costlier case) and loaded back.

    python bench/bench_resume.py                       # inputs 25k (tiny test BERT layer), 1M, 10M
    python bench/bench_resume.py --inputs 1000000 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gradiend.arguments import TrainingArguments
from gradiend.model import GradiendConfig, GradiendModel
from gradiend.resume import TENSORS_FILE, ResumeCheckpoint, TrainingState
from gradiend.step import FusedLoss
from gradiend.training import make_optimizer


def _state(n: int) -> tuple[TrainingState, GradiendModel, torch.optim.Optimizer, float]:
    """A state after one step, and the median seconds of one optimiser step (loss, gradients, AdamW)."""
    gradiend = GradiendModel(GradiendConfig(input_dim=n, feature_classes=["A", "B"]), torch.Generator().manual_seed(0))
    optimizer = make_optimizer(gradiend.parameters(), TrainingArguments())
    fused = FusedLoss(gradiend, 1)
    x, y = torch.randn(1, n), torch.randn(1, n)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        fused.loss_and_grad(x, y)
        optimizer.step()
        times.append(time.perf_counter() - t0)
    history = {"scores": {"0": 0.1}, "mean_by_class": {}, "encoder_norms": {}, "losses": [0.1] * 500, "flips": [],
               "best": None, "epoch": 0, "n_eval_rows": 0}
    best = {k: v.clone() for k, v in gradiend.state_dict().items()}
    state = TrainingState("bench", 1, 10, 0, gradiend.state_dict(), optimizer.state_dict(), history, best, False, {})
    return state, gradiend, optimizer, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, nargs="+", default=[25_000, 1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'inputs':>10} {'MB':>8} {'B/input':>8} {'save s':>8} {'load s':>8} {'step s':>8} {'save/step':>9}")
    for n in args.inputs:
        state, gradiend, optimizer, step_s = _state(n)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = ResumeCheckpoint(Path(tmp) / "model", "bench", save_steps=1)
            saves, loads = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                checkpoint.save(state)
                saves.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                assert checkpoint.load(10, gradiend.state_dict(), optimizer) is not None
                loads.append(time.perf_counter() - t0)
            size = (checkpoint.directory / TENSORS_FILE).stat().st_size
        save_s, load_s = statistics.median(saves), statistics.median(loads)
        print(f"{n:>10} {size / 1e6:>8.2f} {size / n:>8.1f} {save_s:>8.4f} {load_s:>8.4f} {step_s:>8.4f} "
              f"{save_s / step_s:>9.1f}")


if __name__ == "__main__":
    main()
