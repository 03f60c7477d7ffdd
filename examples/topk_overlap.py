"""Top-k overlap: which base-model weights two GRADIENDs use most, and how stable that set is across seeds.

Trains a 3SG-vs-3PL GRADIEND with two seeds (both kept) and an he-vs-she GRADIEND on the demo
sentences, then compares their top-k decoder weights: the overlap between the two features
(`topk_overlap`, heatmap and Venn diagram) and between the two seeds of one feature
(`seed_stability_topk`). A feature that is learnt reliably has a much larger seed overlap than
the overlap between different features.

    python examples/topk_overlap.py --topk 1000 --params "bert.encoder.layer.4.*"
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_matrix, model_path, parser, report, setup_logging, training_args

from gradiend import TextPredictionTrainer, plot_topk_overlap_heatmap, plot_topk_overlap_venn
from gradiend.demo_data import demo_gender_data, load_demo_data
from gradiend.topk import seed_stability_topk, topk_overlap


def sample(data: pd.DataFrame, rows_per_class: int | None, seed: int) -> pd.DataFrame:
    """At most `rows_per_class` rows per (class, split), seeded."""
    if rows_per_class is None:
        return data
    shuffled = data.sample(frac=1.0, random_state=seed)
    return shuffled.groupby(["label_class", "split"]).head(rows_per_class).sort_index().reset_index(drop=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0], steps=100, experiment_dir="runs/topk_overlap")
    p.add_argument("--topk", type=float, default=1000, help="top-k size: a count, or a fraction in (0, 1)")
    p.add_argument("--rows-per-class", type=int, default=None, help="rows per class and split (default: all)")
    ns = p.parse_args(argv)
    setup_logging(ns)
    topk: int | float = int(ns.topk) if ns.topk >= 1 else ns.topk
    root = Path(ns.experiment_dir)
    features = {"3SG_3PL": (load_demo_data(), ["3SG", "3PL"]), "M_F": (demo_gender_data(), ["M", "F"])}
    trainers = {}
    for name, (data, pair) in features.items():
        seeds = {"max_seeds": 2, "min_convergent_seeds": 2, "saved_seed_runs": "all_tried"} if name == "3SG_3PL" else {}
        args = training_args(ns, str(root / name), **seeds)
        rows = sample(data, ns.rows_per_class, ns.seed)
        trainers[name] = TextPredictionTrainer(model=model_path(ns.model), data=rows, args=args, target_classes=pair)
        trainers[name].train()
    across = topk_overlap(trainers, topk, value="intersection_frac")
    seeds = seed_stability_topk(trainers["3SG_3PL"].experiment_dir, topk, selection="all")
    plots = [plot_topk_overlap_heatmap(trainers, topk, value="intersection_frac", output=root / "topk_overlap"),
             plot_topk_overlap_venn(trainers, topk, output=root / "topk_venn")]
    report(ns, format_matrix(f"Top-{topk} overlap (share of the smaller set) between features",
                             {**across, "column_ids": across["model_ids"]}))
    report(ns, format_matrix(f"Top-{topk} Jaccard overlap between the seeds of 3SG_3PL",
                             {"model_ids": seeds["seeds"], "column_ids": seeds["seeds"], "matrix": seeds["jaccard"]}))
    report(ns, f"common to all seeds: {seeds['common_to_all']} of {seeds['union_size']}; plots: {plots}")
    return {"trainers": trainers, "features": across, "seeds": seeds, "plots": plots}


if __name__ == "__main__":
    main()
