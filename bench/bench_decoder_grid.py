"""Benchmark: decoder grid in place (apply + bitwise restore) vs a deep copy of the base model per
candidate — same grid, same scoring. Each variant runs in its own fresh subprocess (so peak RSS is
not shared), in both orders; the script prints wall time and peak RSS of each and the ratios.

    python bench/bench_decoder_grid.py [--model PATH] [--lrs 5] [--rows 64] [--neutral 64]
                                       [--params 'encoder.layer.4.*'] [--repeats 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from gradiend.decoder_eval import DEFAULT_LRS, run_grid
from gradiend.demo_data import load_demo_data, load_demo_neutral
from gradiend.embedded import embedded_model_path
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.rewrite import add_update
from gradiend.scoring import class_piece_sets, class_probabilities, masked_lm_lms, prepare_lms

VARIANTS = ("in_place", "deep_copy")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not found in /proc/self/status (Linux only)")


def run_variant(ns: argparse.Namespace) -> dict:
    """One grid in this process; returns wall time, RSS before/peak and the LMS list."""
    torch.manual_seed(0)
    mwg = ModelWithGradiend.create(ns.model or embedded_model_path("mlm"), feature_classes=["3SG", "3PL"],
                                   params=ns.params or None)
    data = load_demo_data()
    rows = data[data["split"] == "test"].groupby("label_class").head(ns.rows // 2).rename(
        columns={"label_class": "factual_class"})
    pieces = class_piece_sets(mwg.objective, {"3SG": {"he", "she", "it"}, "3PL": {"they"}})
    lms_data = prepare_lms(mwg.objective, list(load_demo_neutral()["text"][:ns.neutral]),
                           ignore_tokens={"he", "she", "it", "they"})
    lrs = list(DEFAULT_LRS[-ns.lrs:])
    factors = [-1.0]
    texts = list(rows["masked"])
    # Warm-up outside the timed region: one scoring pass so lazy allocations count for neither.
    class_probabilities(mwg.base_model, mwg.objective, texts[:4], pieces)
    before = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    if ns.variant == "in_place":
        lms = [r["lms"] for r in run_grid(mwg, rows, pieces, lms_data, factors, lrs, show_progress=False)]
    else:
        lms = [masked_lm_lms(mwg.base_model, mwg.objective, lms_data)]
        class_probabilities(mwg.base_model, mwg.objective, texts, pieces)
        for ff in factors:
            update = mwg.lazy_update(ff)
            for lr in lrs:
                model = copy.deepcopy(mwg.base_model)
                add_update(model, mwg.param_map, update, lr)
                class_probabilities(model, mwg.objective, texts, pieces)
                lms.append(masked_lm_lms(model, mwg.objective, lms_data))
                del model
    seconds = time.perf_counter() - t0
    return {"variant": ns.variant, "seconds": seconds, "rss_before_mb": before,
            "peak_growth_mb": _status_mb("VmHWM") - before, "lms": lms, "candidates": len(lms),
            "gradiend_inputs": mwg.param_map.size, "model": str(mwg.base_model_path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--params", nargs="*", default=None, help="parameter patterns the GRADIEND covers")
    parser.add_argument("--lrs", type=int, default=5, help="how many learning rates of the default grid")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--neutral", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of (in place, deep copy, deep copy, in place)")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.variant:
        print(json.dumps(run_variant(ns)))
        return
    forwarded = [a for a in sys.argv[1:]]
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    order = [*VARIANTS, *reversed(VARIANTS)] * ns.repeats
    for variant in order:
        out = subprocess.run([sys.executable, __file__, *forwarded, "--variant", variant],
                             check=True, capture_output=True, text=True).stdout
        results[variant].append(json.loads(out.strip().splitlines()[-1]))
    lms_sets = {json.dumps(r["lms"]) for runs in results.values() for r in runs}
    if len(lms_sets) != 1:
        raise SystemExit("the variants scored differently — the in-place grid is not equivalent")
    first = results["in_place"][0]
    print(f"model: {first['model']}  GRADIEND inputs: {first['gradiend_inputs']:,}  candidates: "
          f"{first['candidates']} (base + {first['candidates'] - 1})  rows: {ns.rows}  neutral texts: {ns.neutral}")
    summary = {}
    for variant, runs in results.items():
        seconds = min(r["seconds"] for r in runs)
        growth = min(r["peak_growth_mb"] for r in runs)
        summary[variant] = (seconds, growth)
        times = ", ".join(f"{r['seconds']:.2f}" for r in runs)
        print(f"{variant:10s} best {seconds:7.2f} s (runs: {times})   peak RSS growth {growth:7.1f} MB "
              f"(process RSS before {runs[0]['rss_before_mb']:.0f} MB)")
    (t_in, m_in), (t_dc, m_dc) = summary["in_place"], summary["deep_copy"]
    print(f"ratio deep copy / in place:  time {t_dc / t_in:.2f}x   peak RSS growth {m_dc / max(m_in, 1e-9):.2f}x")


if __name__ == "__main__":
    main()
