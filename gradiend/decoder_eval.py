"""Decoder evaluation: score a grid of rewrites θ + lr·dec(ff) and pick one per goal.

Each candidate is applied in place to the selected parameters, scored (class probabilities on
training-like rows, LMS on neutral text) and undone bitwise; the base model is never copied.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from gradiend.allocator import reuse_large_blocks
from gradiend.data import MASK, cap_per_class, prepare_rows, rows_with_context, unify
from gradiend.experiment import atomic_write_json, fingerprint, read_json, short_hash
from gradiend.params import NonFiniteUpdateError
from gradiend.records import DecoderSelection, DecoderSummaries
from gradiend.rewrite import ParameterSnapshot
from gradiend.scoring import LMSData, class_piece_sets, class_probabilities, lm_score, prepare_lms

if TYPE_CHECKING:
    from gradiend.arguments import TrainingArguments
    from gradiend.model_with_gradiend import ModelWithGradiend

logger = logging.getLogger(__name__)

DEFAULT_LRS = (100.0, 50.0, 20.0, 10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
LMS_RATIO = 0.99
LMS_SEED = 42

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


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool) \
        and math.isfinite(value)


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
                except NonFiniteUpdateError as err:  # never scored, so never selected
                    logger.warning("Decoder grid: skipping ff=%g, lr=%g: %s", ff, lr, err)
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
        if not _finite(base["lms"]):
            raise ValueError(f"The base model's LMS is {base['lms']} (not finite); the base model itself gives "
                             f"NaN/inf probabilities. Check its weights and torch_dtype.")
        finite = [c for c in candidates if _finite(c["lms"]) and _finite(c["value"])]
        if not finite:
            raise ValueError("Every decoder-grid candidate has a non-finite LMS or probability (NaN/inf); use "
                             "smaller learning rates or feature factors, or check the GRADIEND weights for NaN")
        keep = [c for c in finite if c["lms"] >= ratio * base["lms"]]
        if keep:
            return max(keep, key=lambda c: c["value"])
        return min(finite, key=lambda c: abs(c["learning_rate"]))

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


def other_class(pair: Sequence[str], cls: str) -> str:
    return pair[1] if cls == pair[0] else pair[0]


@dataclass
class DecoderRequest:
    """What one decoder evaluation scores and how it selects (defaults: the full grid, LMS ≥ 0.99·base)."""

    classes: Sequence[str]
    strengthen: bool = True
    learning_rates: Sequence[float] = DEFAULT_LRS
    feature_factors: Sequence[float] | None = None  # None: the sign that reaches each goal
    training_like: pd.DataFrame | None = None  # unified rows to score (default: the test split)
    neutral_texts: Sequence[str] | None = None  # LMS texts (default: the training-like texts, slot filled)
    max_size_training_like: int | None = None
    max_size_neutral: int | None = None
    batch_size: int = 32
    seed: int | None = 0
    selector: Selector = field(default_factory=lambda: lms_threshold_selector())
    summary_extractor: SummaryExtractor | None = None
    show_progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"eval_batch_size must be a positive int, got {self.batch_size!r}")
        for name, values in (("learning_rates", self.learning_rates), ("feature_factors", self.feature_factors)):
            if values is None:
                continue
            bad = [v for v in values if not _finite(v)]
            if bad or not len(values):
                raise ValueError(f"decoder grid {name} must be a non-empty list of finite numbers, got {list(values)!r}"
                                 f" (bad: {bad})")

    @classmethod
    def from_arguments(cls, args: TrainingArguments, classes: Sequence[str], *, strengthen: bool = True,
                       lrs: Sequence[float] | None = None, feature_factors: Sequence[float] | None = None,
                       max_size_training_like: int | None = None, max_size_neutral: int | None = None,
                       batch_size: int | None = None, **options: Any) -> DecoderRequest:
        """A request whose unset values come from the run's `TrainingArguments` (decoder_eval_* fields)."""
        return cls(classes, strengthen, list(lrs if lrs is not None else args.decoder_eval_lrs or DEFAULT_LRS),
                   feature_factors if feature_factors is not None else args.decoder_eval_feature_factors,
                   max_size_training_like=max_size_training_like or args.decoder_eval_max_size_training_like,
                   max_size_neutral=max_size_neutral or args.decoder_eval_max_size_neutral,
                   batch_size=batch_size if batch_size is not None else args.eval_batch_size, seed=args.seed,
                   show_progress=args.show_progress, **options)


@dataclass(frozen=True)
class DecoderCache:
    """Where the grid and the selections are kept, and what identifies the model that made them."""

    grid: Path
    summaries: Path
    model_identity: Mapping[str, Any]
    use: bool = True


def selection_key(cls: str, strengthen: bool) -> str:
    """The key of a selection in results: the class, or `<class>_weaken`."""
    return cls if strengthen else f"{cls}_weaken"


def evaluate_decoder(model: ModelWithGradiend, rows: pd.DataFrame, pair: Sequence[str], request: DecoderRequest,
                     cache: DecoderCache | None = None) -> dict[str, Any]:
    """Score the grid (or reuse a cached one) and select one candidate per class.

    Returns `{key: summary}` for every requested class plus `"grid"`: every candidate as a record.
    """
    unknown = [c for c in request.classes if c not in pair]
    if unknown:
        raise ValueError(f"Unknown target_class {unknown[0]!r}; available: {list(pair)}")
    direction = model.config.feature_class_encoding_direction
    goal_factor = {c: strengthen_factor(model.config.target, direction,
                                        c if request.strengthen else other_class(pair, c)) for c in request.classes}
    lrs = list(request.learning_rates)
    factors = list(request.feature_factors if request.feature_factors is not None
                   else sorted(set(goal_factor.values())))
    if not lrs or not factors:
        raise ValueError(f"The decoder grid is empty (learning rates {lrs}, feature factors {factors})")
    like, neutral = _grid_texts(model, rows, pair, request)
    tokens = {c: set(rows.loc[rows["factual_class"] == c, "factual"]) | set(
        rows.loc[rows["alternative_class"] == c, "alternative"]) for c in pair}
    key = fingerprint({**(cache.model_identity if cache else {}), "rows": short_hash(like.to_csv(index=False)),
                       "lrs": lrs, "factors": factors, "neutral": short_hash("\n".join(neutral)),
                       "tokens": {c: sorted(t) for c, t in tokens.items()}, "lms_seed": LMS_SEED})
    records = _cached_grid(cache.grid, key) if cache is not None and cache.use else None
    if records is None:
        lms_data = prepare_lms(model.objective, neutral, ignore_tokens=set().union(*tokens.values()), seed=LMS_SEED,
                               batch_size=request.batch_size)
        records = run_grid(model, like, class_piece_sets(model.objective, tokens), lms_data, factors, lrs,
                           request.batch_size, request.show_progress)
        if cache is not None:
            atomic_write_json(cache.grid, {"fingerprint": key, "records": records})
    result: dict[str, Any] = {}
    for cls in request.classes:
        result[selection_key(cls, request.strengthen)] = (
            request.summary_extractor(records, cls, request.strengthen) if request.summary_extractor
            else summarize(records, cls, other_class(pair, cls), request.strengthen, goal_factor[cls],
                           request.selector))
    if cache is not None:
        store_selections(cache, dict(result))
    result["grid"] = records
    return result


def _grid_texts(model: ModelWithGradiend, rows: pd.DataFrame, pair: Sequence[str], request: DecoderRequest
                ) -> tuple[pd.DataFrame, list[str]]:
    """Training-like rows to score and the neutral texts of the LMS, both capped (seeded)."""
    if request.training_like is not None:  # every row of the given frame, whatever its split
        like = rows_with_context(unify(request.training_like, pair, seed=request.seed)[0], model.objective,
                                 "decoder evaluation")
    else:
        like = prepare_rows(rows, "test", pair, model.objective, "decoder evaluation")
    like = cap_per_class(like, request.max_size_training_like, request.seed)
    if request.neutral_texts is not None:
        neutral = list(request.neutral_texts)
    else:  # the training-like texts with the slot filled; target words are never scored
        neutral = [t.replace(MASK, f) for t, f in zip(like["masked"], like["factual"], strict=True)]
    cap = request.max_size_neutral
    if cap is not None and len(neutral) > cap:
        picks = np.random.default_rng(request.seed).choice(len(neutral), size=cap, replace=False)
        neutral = [neutral[i] for i in sorted(picks)]
    return like, neutral


def _cached_grid(path: Path, key: str) -> list[Record] | None:
    if not path.is_file():
        return None
    try:
        data = read_json(path, "decoder grid cache")
        if data["fingerprint"] == key:
            logger.info("Reusing decoder grid %s", path)
            return list(data["records"])
        logger.info("Decoder grid cache %s belongs to another model, data or grid; recomputing", path)
    except (ValueError, KeyError, TypeError) as err:
        warnings.warn(f"Ignoring unreadable decoder grid cache {path} ({err}); recomputing", stacklevel=3)
    return None


def store_selections(cache: DecoderCache, selections: dict[str, Record]) -> None:
    """Merge `selections` into the saved ones of the same model (another model's are replaced)."""
    model_key = cache.model_identity.get("weights")
    stored = DecoderSummaries(model=model_key)
    if cache.summaries.is_file():
        try:
            stored = DecoderSummaries.from_json(read_json(cache.summaries, "decoder summaries"))
        except ValueError as err:
            warnings.warn(f"Replacing unreadable {cache.summaries} ({err})", stacklevel=3)
    if stored.model != model_key:
        stored = DecoderSummaries(model=model_key)
    stored.summaries.update({key: DecoderSelection.from_json(value) for key, value in selections.items()})
    atomic_write_json(cache.summaries, stored)


def load_selections(cache: DecoderCache) -> dict[str, Record]:
    """The saved selections of this model; errors say which call produces them."""
    if not cache.summaries.is_file():
        raise FileNotFoundError(f"No decoder results in {cache.summaries}; run evaluate_decoder() first or pass "
                                f"decoder_results=")
    stored = DecoderSummaries.from_json(read_json(cache.summaries, "decoder summaries"))
    if stored.model != cache.model_identity.get("weights"):
        raise ValueError(f"{cache.summaries} belongs to another GRADIEND model; re-run evaluate_decoder()")
    return stored.summaries
