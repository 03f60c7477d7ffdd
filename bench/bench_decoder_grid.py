"""Benchmark: decoder grid in place (apply + bitwise restore) vs a deep copy of the base model per
candidate, same grid, same scoring, one process. Prints wall time and peak RSS growth of each.

    python bench/bench_decoder_grid.py [--model PATH] [--lrs 5] [--rows 64] [--neutral 64]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from gradiend.decoder_eval import DEFAULT_LRS, run_grid
from gradiend.demo_data import load_demo_data, load_demo_neutral
from gradiend.embedded import embedded_model_path
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.rewrite import add_update
from gradiend.scoring import class_piece_sets, class_probabilities, masked_lm_lms, prepare_lms


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not found in /proc/self/status (Linux only)")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def current_rss_mb() -> float:
    return _status_mb("VmRSS")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--lrs", type=int, default=5, help="how many learning rates of the default grid")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--neutral", type=int, default=64)
    ns = parser.parse_args()
    torch.manual_seed(0)
    mwg = ModelWithGradiend.create(ns.model or embedded_model_path("mlm"), feature_classes=["3SG", "3PL"])
    data = load_demo_data()
    rows = data[data["split"] == "test"].groupby("label_class").head(ns.rows // 2).rename(
        columns={"label_class": "factual_class"})
    pieces = class_piece_sets(mwg.objective, {"3SG": {"he", "she", "it"}, "3PL": {"they"}})
    lms_data = prepare_lms(mwg.objective, list(load_demo_neutral()["text"][:ns.neutral]),
                           ignore_tokens={"he", "she", "it", "they"})
    lrs = list(DEFAULT_LRS[-ns.lrs:])
    factors = [-1.0]

    reset_peak()
    base_rss = current_rss_mb()
    t0 = time.perf_counter()
    ours = run_grid(mwg, rows, pieces, lms_data, factors, lrs, show_progress=False)
    t_ours, rss_ours = time.perf_counter() - t0, peak_rss_mb() - base_rss

    def deep_copy_grid() -> list[float]:
        texts = list(rows["masked"])
        out = [masked_lm_lms(mwg.base_model, mwg.objective, lms_data)]
        class_probabilities(mwg.base_model, mwg.objective, texts, pieces)
        for ff in factors:
            update = mwg.update_vector(ff)
            for lr in lrs:
                model = copy.deepcopy(mwg.base_model)
                add_update(model, mwg.param_map, update, lr)
                class_probabilities(model, mwg.objective, texts, pieces)
                out.append(masked_lm_lms(model, mwg.objective, lms_data))
                del model
        return out

    reset_peak()
    base_rss = current_rss_mb()
    t0 = time.perf_counter()
    naive_lms = deep_copy_grid()
    t_naive, rss_naive = time.perf_counter() - t0, peak_rss_mb() - base_rss
    assert [r["lms"] for r in ours] == naive_lms, "both grids must score identically"
    n = len(ours)
    print(f"model: {mwg.base_model_path}  candidates: {n} (base + {n - 1})  rows: {len(rows)}  "
          f"neutral texts: {ns.neutral}")
    print(f"in place:   {t_ours:7.2f} s   peak RSS growth {rss_ours:7.1f} MB")
    print(f"deep copy:  {t_naive:7.2f} s   peak RSS growth {rss_naive:7.1f} MB")
    print(f"ratio deep copy / in place:  time {t_naive / t_ours:.2f}x   peak RSS growth "
          f"{rss_naive / max(rss_ours, 1e-9):.2f}x")


if __name__ == "__main__":
    main()
