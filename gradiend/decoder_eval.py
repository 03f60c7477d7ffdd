"""Decoder evaluation: score a grid of rewrites θ + lr·dec(ff) and pick one per goal.

Each candidate is applied in place to the selected parameters, scored (class probabilities on
training-like rows, LMS on neutral text) and undone bitwise; the base model is never copied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from gradiend.allocator import reuse_large_blocks
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.rewrite import ParameterSnapshot
from gradiend.scoring import LMSData, class_probabilities, lm_score

logger = logging.getLogger(__name__)

DEFAULT_LRS = (100.0, 50.0, 20.0, 10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
LMS_RATIO = 0.99

Record = dict[str, Any]
Selector = Callable[[list[Record], Record], Record]
SummaryExtractor = Callable[[list[Record], str, bool], Record]


def strengthen_factor(target: str, direction: Mapping[str, int], cls: str) -> float:
    """Feature factor whose decoded update makes class `cls` more likely.

    Rows are labelled by their factual class (class C's rows encode to direction[C]), so dec(direction[C])
    reconstructs the target gradient of C's rows. Adding a factual or diff (g_f − g_a) gradient raises
    the loss of C's own token, i.e. favours the other class; adding an alternative gradient favours C.
    """
    sign = direction[cls]
    if sign == 0:
        raise ValueError(f"Class {cls!r} has no encoding direction; it is not one of the trained pair")
    return float(sign if target == "alternative" else -sign)


def candidate_id(feature_factor: float | None, learning_rate: float | None) -> str:
    return "base" if feature_factor is None else f"ff={feature_factor:g},lr={learning_rate:g}"


def run_grid(model: ModelWithGradiend, rows: pd.DataFrame, pieces_by_class: Mapping[str, set[tuple[int, ...]]],
             lms_data: LMSData, feature_factors: Sequence[float], learning_rates: Sequence[float],
             batch_size: int = 32, show_progress: bool = True) -> list[Record]:
    """Score the base model and every (feature factor, learning rate) candidate.

    Each record: id, feature_factor, learning_rate, lms and `probs[dataset_class][class]`, the
    mean probability of each class's tokens on the rows of each dataset class.
    """
    texts = list(rows["masked"])
    dataset_classes = rows["factual_class"].to_numpy()
    classes = list(pieces_by_class)
    base_model, objective = model.base_model, model.objective

    def score(ff: float | None, lr: float | None) -> Record:
        probs = class_probabilities(base_model, objective, texts, pieces_by_class, batch_size)
        by_dataset = {str(d): {c: float(probs[dataset_classes == d, ci].mean()) for ci, c in enumerate(classes)}
                      for d in dict.fromkeys(dataset_classes)}
        return {"id": candidate_id(ff, lr), "feature_factor": ff, "learning_rate": lr,
                "lms": lm_score(base_model, objective, lms_data), "probs": by_dataset}

    with reuse_large_blocks():  # decoded update slices are tens of MB per candidate
        return _score_grid(model, score, feature_factors, learning_rates, show_progress)


def _score_grid(model: ModelWithGradiend, score: Callable[[float | None, float | None], Record],
                feature_factors: Sequence[float], learning_rates: Sequence[float], show_progress: bool
                ) -> list[Record]:
    snapshot = ParameterSnapshot(model.base_model, model.param_map)
    total = 1 + len(feature_factors) * len(learning_rates)
    records = []
    with tqdm(total=total, desc="Decoder grid", disable=not show_progress, leave=False) as bar:
        records.append(score(None, None))
        bar.update(1)
        for ff in feature_factors:
            update = model.lazy_update(float(ff))
            for lr in learning_rates:
                try:
                    snapshot.add(update, float(lr))
                    records.append(score(float(ff), float(lr)))
                finally:
                    snapshot.restore()
                bar.update(1)
    return records


def metric_value(record: Record, cls: str, other: str, strengthen: bool) -> float:
    """Strengthen: P(cls tokens) on the other class's rows. Weaken: 1 − P(cls tokens) on cls's rows."""
    if strengthen:
        return record["probs"][other][cls]
    return 1.0 - record["probs"][cls][cls]


def lms_threshold_selector(ratio: float = LMS_RATIO) -> Selector:
    """Best metric among candidates keeping LMS ≥ ratio·base LMS; else the smallest |learning rate|."""

    def select(candidates: list[Record], base: Record) -> Record:
        if not candidates:
            raise ValueError("The decoder grid has no candidates to select from")
        keep = [c for c in candidates if c["lms"] >= ratio * base["lms"]]
        if keep:
            return max(keep, key=lambda c: c["value"])
        return min(candidates, key=lambda c: abs(c["learning_rate"]))

    return select


def summarize(records: list[Record], cls: str, other: str, strengthen: bool, wanted_factor: float,
              selector: Selector) -> Record:
    """The selected candidate for one goal (strengthen or weaken `cls`)."""
    base = next(r for r in records if r["feature_factor"] is None)
    candidates = [{**r, "value": metric_value(r, cls, other, strengthen)} for r in records
                  if r["feature_factor"] is not None and np.sign(r["feature_factor"]) == np.sign(wanted_factor)]
    if not candidates:
        raise ValueError(f"The grid has no candidate with a feature factor of sign {np.sign(wanted_factor):+g}, "
                         f"needed to {'strengthen' if strengthen else 'weaken'} {cls!r}; add it to feature_factors")
    chosen = selector(candidates, base)
    return {"value": chosen["value"], "feature_factor": chosen["feature_factor"],
            "learning_rate": chosen["learning_rate"], "id": chosen["id"], "strengthen": strengthen,
            "lms": chosen["lms"], "base_lms": base["lms"], "base_value": metric_value(base, cls, other, strengthen)}
