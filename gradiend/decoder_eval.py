"""Decoder evaluation: score a grid of rewrites θ + lr·dec(ff) and pick one per goal.

Each candidate is applied in place to the selected parameters, scored (class probabilities on
training-like rows, LMS on neutral text) and undone bitwise; the base model is never copied.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from gradiend import distributed
from gradiend.allocator import reuse_large_blocks
from gradiend.data import MASK, cap_per_class, prepare_rows, rows_with_context, unify
from gradiend.experiment import atomic_write_bytes, atomic_write_json, fingerprint, read_json, short_hash
from gradiend.params import NonFiniteUpdateError
from gradiend.records import DecoderSelection, DecoderSummaries
from gradiend.rewrite import ParameterSnapshot
from gradiend.scoring import (
    LMSData,
    LMSOutcome,
    RowTargets,
    class_piece_sets,
    class_probabilities,
    lm_score_bounded,
    prepare_lms,
    row_piece_sets,
    row_probabilities,
)

if TYPE_CHECKING:
    from gradiend.arguments import TrainingArguments
    from gradiend.model import GradiendModel
    from gradiend.model_with_gradiend import ModelWithGradiend

logger = logging.getLogger(__name__)

# Rewrite learning rates: 1-2-5 steps over eight decades. Since issue 15 the decoded update is in raw gradient
# units and far larger than before (on MiniLM the demo's selection lies below 1e-3), so the grid reaches 1e-6;
# the adaptive search bisects it, so the extra decades cost about one LMS pass per feature factor.
DEFAULT_LRS = (100.0, 50.0, 20.0, 10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001,
               5e-4, 2e-4, 1e-4, 5e-5, 2e-5, 1e-5, 5e-6, 2e-6, 1e-6)
LMS_RATIO = 0.99
LMS_SEED = 42
SEARCH_MODES = ("adaptive", "grid")
#: Largest decoded update (bytes, float32) kept in memory for the fast per-candidate rewrite.
FAST_UPDATE_MAX_BYTES = 1 << 30
FLOAT32_MAX = torch.finfo(torch.float32).max

Record = dict[str, Any]
_R = TypeVar("_R")
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


class GridRun:
    """Scores the base model's current weights and rewrites of it, counting model forwards.

    Class probabilities (training-like rows) and LMS (neutral texts) of θ + lr·dec(ff); every
    rewrite is applied in place and restored bitwise. LMS passes may stop early against a bound.
    `pieces_by_class`: every row scored on each class's word set, or `RowTargets` (row-wise: each row on its
    own words, see `grid_targets`).
    """

    def __init__(self, model: ModelWithGradiend, rows: pd.DataFrame,
                 pieces_by_class: Mapping[str, set[tuple[int, ...]]] | RowTargets, lms_data: LMSData,
                 batch_size: int = 32) -> None:
        self.model, self.pieces, self.lms_data, self.batch_size = model, pieces_by_class, lms_data, batch_size
        self.rows = rows.reset_index(drop=True)
        self.texts = list(rows["masked"])
        self.dataset_classes = rows["factual_class"].to_numpy()
        self.snapshot = ParameterSnapshot(model.base_model, model.param_map)
        self.stats: dict[str, Any] = {"candidates_scored": 0, "probability_passes": 0, "lms_passes": 0,
                                      "lms_stopped_early": 0, "forwards": 0, "skipped": [], "full_grid_factors": []}
        self._updates: dict[float, list[tuple[Any, torch.Tensor]]] = {}
        self._peaks: dict[str, tuple[float, float]] = {}
        self._defer = False  # inside `deferred_restores`
        self._stale = False  # the weights still hold a rewrite that `rewritten` left in place

    def _count(self, *_: Any) -> None:
        self.stats["forwards"] += 1

    @contextlib.contextmanager
    def rewritten(self, ff: float | None, lr: float | None) -> Iterator[None]:
        """The base model rewritten by lr·dec(ff) inside the block (None: the base model), forwards counted."""
        hook = self.model.base_model.base_model.register_forward_pre_hook(self._count)
        keep = False
        try:
            if ff is None or lr == 0:
                self._restore_stale()
            else:
                keep = self._apply(ff, float(lr)) and self._defer
            yield
        except BaseException:
            keep = False
            raise
        finally:
            hook.remove()
            if keep:
                self._stale = True
            elif ff is not None:
                self.snapshot.restore()
                self._stale = False

    @contextlib.contextmanager
    def deferred_restores(self) -> Iterator[None]:
        """Inside the block, a rewrite that overwrote every selected tensor from the saved weights stays when its
        `rewritten` block ends: the next rewrite overwrites it anyway, so each candidate saves a full copy of the
        selected weights (issue 17). The base weights are back when this block ends, errors included."""
        self._defer = True
        try:
            yield
        finally:
            self._defer = False
            self._restore_stale()

    def _restore_stale(self) -> None:
        if self._stale:
            self.snapshot.restore()
            self._stale = False

    def _apply(self, ff: float, lr: float) -> bool:
        """θ ← θ_saved + lr·dec(ff): the decoded update of the last factor is kept (one decode per factor,
        not per candidate) and written as one fused pass per tensor from the saved weights. Entries the
        fast pass cannot take (pruned, low precision, near the dtype's range) go through `add_to`, on the
        saved weights. True when every tensor was written from the saved weights by the fast pass."""
        if self.model.param_map.size * 4 > FAST_UPDATE_MAX_BYTES:
            self._restore_stale()
            self.snapshot.add(self.model.lazy_update(ff), lr)
            return False
        if ff not in self._updates:
            update = self.model.lazy_update(ff)
            self._updates = {ff: [(spec, update(spec.rows)) for spec in self.model.param_map.specs]}
            self._peaks = {spec.name: (float(torch.linalg.vector_norm(delta, ord=math.inf)),
                                       float(torch.linalg.vector_norm(saved, ord=math.inf)))
                           for (spec, delta), saved in zip(self._updates[ff], self.snapshot.saved, strict=True)}
        every = True
        for (spec, delta), param, saved in zip(self._updates[ff], self.snapshot.params, self.snapshot.saved,
                                               strict=True):
            peak_delta, peak_param = self._peaks[spec.name]
            fast = (spec.index is None and param.dtype == torch.float32 and param.is_contiguous()
                    and math.isfinite(peak_delta) and peak_delta * abs(lr) + peak_param <= FLOAT32_MAX)
            with torch.no_grad():
                if fast:
                    torch.add(saved.view(-1), delta.to(param.device), alpha=lr, out=param.view(-1))
                    continue
                if self._stale:  # add_to adds to the current weights: this tensor's saved ones first
                    param.copy_(saved)
            self.model.param_map.add_to(param, spec, delta, lr)
            every = False
        return every

    def row_matrix(self) -> tuple[list[str], np.ndarray]:
        """(classes, (rows, classes) probabilities) of the current weights, one row per scored row."""
        model = self.model
        if isinstance(self.pieces, RowTargets):
            classes = list(self.pieces.classes)
            probs = row_probabilities(model.base_model, model.objective, self.texts, self.pieces, self.batch_size)
        else:
            classes = list(self.pieces)
            probs = class_probabilities(model.base_model, model.objective, self.texts, self.pieces, self.batch_size)
        self.stats["probability_passes"] += 1
        return classes, probs

    def probabilities(self) -> dict[str, dict[str, float]]:
        """`probs[dataset_class][class]` of the current weights."""
        classes, probs = self.row_matrix()
        return {str(d): {c: float(probs[self.dataset_classes == d, ci].mean()) for ci, c in enumerate(classes)}
                for d in dict.fromkeys(self.dataset_classes)}

    def lms(self, stop_below: float | None = None) -> LMSOutcome:
        outcome = lm_score_bounded(self.model.base_model, self.model.objective, self.lms_data, stop_below)
        self.stats["lms_passes"] += 1
        self.stats["lms_stopped_early"] += not outcome.complete
        return outcome

    def score(self, ff: float | None, lr: float | None) -> Record | None:
        """The full record of one candidate; None when its update is not finite (never scored, never selected)."""
        try:
            with self.rewritten(ff, lr):
                record = {"id": candidate_id(ff, lr), "feature_factor": ff, "learning_rate": lr,
                          "lms": self.lms().value, "probs": self.probabilities()}
        except NonFiniteUpdateError as err:
            logger.warning("Decoder grid: skipping ff=%g, lr=%g: %s", ff, lr, err)
            return None
        self.stats["candidates_scored"] += 1
        return record


def run_grid(model: ModelWithGradiend, rows: pd.DataFrame,
             pieces_by_class: Mapping[str, set[tuple[int, ...]]] | RowTargets,
             lms_data: LMSData, feature_factors: Sequence[float], learning_rates: Sequence[float],
             batch_size: int = 32, show_progress: bool = True, search: str = "grid",
             lms_ratio: float = LMS_RATIO) -> list[Record]:
    """Score the base model and the (feature factor, learning rate) candidates (see `search_grid`).

    Each record: id, feature_factor, learning_rate, lms and `probs[dataset_class][class]`, the
    mean probability of each class's tokens on the rows of each dataset class.
    """
    run = GridRun(model, rows, pieces_by_class, lms_data, batch_size)
    with run.deferred_restores():
        return search_grid(run, feature_factors, learning_rates, search, lms_ratio, show_progress)


def search_grid(run: GridRun, feature_factors: Sequence[float], learning_rates: Sequence[float], search: str,
                lms_ratio: float, show_progress: bool = True) -> list[Record]:
    """The base record, then per feature factor the records of its learning rates, in grid order.

    `search="grid"` scores every candidate. `"adaptive"` bisects the learning rates (sorted by
    |lr|, midpoints in log space) for the largest one whose LMS keeps ≥ lms_ratio × base LMS, with
    LMS passes that stop once they cannot reach it; candidates with a smaller |lr| get class
    probabilities and `lms: None` with `lms_at_least` (LMS falls with |lr|, so they keep the bound;
    `verify_selection` measures whichever gets selected). Candidates above the boundary are absent.
    Several processes: grid candidates (adaptive: feature factors) are split across ranks and gathered.
    """
    if search not in SEARCH_MODES:
        raise ValueError(f"search must be one of {SEARCH_MODES}, got {search!r}")
    total = 1 + len(feature_factors) * len(learning_rates)
    with reuse_large_blocks(), tqdm(total=total, desc="Decoder grid", disable=not show_progress, leave=False) as bar:
        if search != "adaptive" and distributed.splits_work():
            return _split_grid(run, feature_factors, learning_rates, bar)
        base = _shared_map(run, [None], lambda _: run.score(None, None))[0]
        if base is None:
            raise ValueError("The base model's own weights are not finite")
        records = [base]
        bar.update(1)
        bound = lms_ratio * base["lms"] if search == "adaptive" and _finite(base["lms"]) else None

        def factor_records(ff: float) -> list[Record]:
            if bound is None:
                found = [r for r in (run.score(float(ff), float(lr)) for lr in learning_rates) if r is not None]
            else:
                found = _search_factor(run, float(ff), [float(lr) for lr in learning_rates], bound)
            bar.update(len(learning_rates))
            return found

        for found in _shared_map(run, list(feature_factors), factor_records):
            records += found
    return records


def _shared_map(run: GridRun, items: list[Any], fn: Callable[[Any], _R]) -> list[_R]:
    """`[fn(item) for item in items]`; with several processes each rank maps its share (`distributed.split_items`)
    and every rank gets all results in order, the ranks' statistics in `run.stats` summed."""
    if not distributed.splits_work():  # one process, or every rank evaluates every candidate (`replicated`)
        return [fn(item) for item in items]
    before = {k: (list(v) if isinstance(v, list) else v) for k, v in run.stats.items()}
    local = [fn(item) for item in distributed.split_items(items)]
    added = {k: (v[len(before[k]):] if isinstance(v, list) else v - before[k]) for k, v in run.stats.items()}
    parts = distributed.all_gather_objects((local, added), "gather of decoder-grid candidates")
    for key, value in before.items():
        extra = [part[1][key] for part in parts]
        run.stats[key] = value + [x for e in extra for x in e] if isinstance(value, list) else value + sum(extra)
    return [result for part in parts for result in part[0]]


def _split_grid(run: GridRun, feature_factors: Sequence[float], learning_rates: Sequence[float],
                bar: tqdm) -> list[Record]:
    """`search="grid"` with several processes: the base and every candidate split across ranks, in grid order."""
    candidates = [(None, None)] + [(float(ff), float(lr)) for ff in feature_factors for lr in learning_rates]

    def score(candidate: tuple[float | None, float | None]) -> Record | None:
        bar.update(1)
        return run.score(*candidate)

    scored = _shared_map(run, candidates, score)
    if scored[0] is None:
        raise ValueError("The base model's own weights are not finite")
    return [record for record in scored if record is not None]


def _log_midpoint(steps: Sequence[float], lo: int, hi: int) -> int:
    """The index strictly between lo and hi nearest the middle of their log steps (at the ends: the index middle)."""
    if lo < 0 or hi >= len(steps) or steps[lo] == 0:
        return (lo + hi) // 2
    middle = (math.log(steps[lo]) + math.log(steps[hi])) / 2
    return min(range(lo + 1, hi), key=lambda i: abs(math.log(steps[i]) - middle))


def _search_factor(run: GridRun, ff: float, lrs: list[float], bound: float) -> list[Record]:
    """Adaptive records of one feature factor (see `search_grid`), in the grid's learning-rate order."""
    order = sorted(range(len(lrs)), key=lambda i: (abs(lrs[i]), i))
    steps = [abs(lrs[i]) for i in order]
    measured: dict[int, float] = {}  # position in `order` → complete LMS
    lo, hi = -1, len(order)  # order[:lo + 1] keep the bound, order[hi:] do not
    while hi - lo > 1:
        mid = _log_midpoint(steps, lo, hi)
        lr = lrs[order[mid]]
        try:
            with run.rewritten(ff, lr):
                outcome = run.lms(stop_below=bound)
        except NonFiniteUpdateError as err:
            logger.warning("Decoder grid: skipping ff=%g, lr=%g: %s", ff, lr, err)
            outcome = None
        if outcome is not None and outcome.complete:
            measured[mid] = outcome.value
        if outcome is not None and outcome.complete and outcome.value >= bound:
            lo = mid
        else:  # not finite, or LMS below the bound (complete: its value; stopped early: an upper bound)
            run.stats["skipped"].append({"id": candidate_id(ff, lr), "lms": None if outcome is None else outcome.value,
                                         "complete": outcome is not None and outcome.complete})
            hi = mid
    if lo < 0:  # no step keeps the LMS: the selection falls back to the smallest finite one
        return _smallest_finite(run, ff, lrs, order, measured)
    found = {order[pos]: record for pos in range(lo + 1)
             if (record := _record(run, ff, lrs[order[pos]], measured.get(pos), bound)) is not None}
    return [found[i] for i in sorted(found)]


def _record(run: GridRun, ff: float, lr: float, lms: float | None, lms_at_least: float | None = None
            ) -> Record | None:
    """A candidate's record with a known LMS (None: inferred ≥ `lms_at_least`); None when not finite."""
    try:
        with run.rewritten(ff, lr):
            record = {"id": candidate_id(ff, lr), "feature_factor": ff, "learning_rate": lr,
                      "lms": run.lms().value if lms is None and lms_at_least is None else lms,
                      "probs": run.probabilities()}
    except NonFiniteUpdateError as err:
        logger.warning("Decoder grid: skipping ff=%g, lr=%g: %s", ff, lr, err)
        return None
    if record["lms"] is None:
        record["lms_at_least"] = lms_at_least
    run.stats["candidates_scored"] += 1
    return record


def _smallest_finite(run: GridRun, ff: float, lrs: list[float], order: list[int], measured: Mapping[int, float]
                     ) -> list[Record]:
    """Full records in ascending |lr| up to the first with finite LMS and probabilities, in grid order."""
    found: dict[int, Record] = {}
    for pos, i in enumerate(order):
        record = _record(run, ff, lrs[i], measured.get(pos))
        if record is None:
            continue
        found[i] = record
        probs = [p for by_class in record["probs"].values() for p in by_class.values()]
        if _finite(record["lms"]) and all(_finite(p) for p in probs):
            break
    return [found[i] for i in sorted(found)]


def full_factor(run: GridRun, records: list[Record], ff: float, lrs: Sequence[float]) -> list[Record]:
    """`records` with every candidate of factor `ff` scored in full (the adaptive search's fallback)."""
    logger.info("Decoder grid: the LMS of ff=%g does not fall monotonically with |lr|; scoring its full grid", ff)
    run.stats["full_grid_factors"].append(ff)
    fresh = [r for r in (run.score(ff, float(lr)) for lr in lrs) if r is not None]
    out, placed = [], False
    for record in records:
        if record["feature_factor"] != ff:
            out.append(record)
        elif not placed:
            out += fresh
            placed = True
    return out if placed else out + fresh


def metric_value(record: Record, cls: str, other: str, strengthen: bool, on_other_class: bool = True) -> float:
    """Strengthen: P(cls tokens) on the other class's rows (`on_other_class=False`: the mean over both classes'
    rows, each class weighted equally). Weaken: 1 − P(cls tokens) on cls's rows."""
    if strengthen:
        if on_other_class:
            return record["probs"][other][cls]
        return float(np.mean([record["probs"][d][cls] for d in (cls, other)]))
    return 1.0 - record["probs"][cls][cls]


def _kept(candidate: Record, bound: float) -> bool:
    """LMS ≥ bound, measured or known from the adaptive search (`lms_at_least`)."""
    if candidate["lms"] is None:
        return candidate.get("lms_at_least", -math.inf) >= bound
    return candidate["lms"] >= bound


class LMSThresholdSelector:
    """Best metric among candidates keeping LMS ≥ ratio·base LMS; else the smallest |learning rate|.

    The only selector the adaptive search may serve: it needs nothing above the LMS boundary.
    """

    def __init__(self, ratio: float = LMS_RATIO) -> None:
        if not _finite(ratio) or ratio < 0:
            raise ValueError(f"The LMS ratio must be a finite number ≥ 0, got {ratio!r}")
        self.ratio = float(ratio)

    def __call__(self, candidates: list[Record], base: Record) -> Record:
        if not candidates:
            raise ValueError("The decoder grid has no candidates to select from")
        if not _finite(base["lms"]):
            raise ValueError(f"The base model's LMS is {base['lms']} (not finite); the base model itself gives "
                             f"NaN/inf probabilities. Check its weights and torch_dtype.")
        bound = self.ratio * base["lms"]
        finite = [c for c in candidates if (_finite(c["lms"]) or _kept(c, bound)) and _finite(c["value"])]
        if not finite:
            raise ValueError("Every decoder-grid candidate has a non-finite LMS or probability (NaN/inf); use "
                             "smaller learning rates or feature factors, or check the GRADIEND weights for NaN")
        keep = [c for c in finite if _kept(c, bound)]
        if keep:
            return max(keep, key=lambda c: c["value"])
        return min(finite, key=lambda c: abs(c["learning_rate"]))


def lms_threshold_selector(ratio: float = LMS_RATIO) -> Selector:
    """Best metric among candidates keeping LMS ≥ ratio·base LMS; else the smallest |learning rate|."""
    return LMSThresholdSelector(ratio)


def summarize(records: list[Record], cls: str, other: str, strengthen: bool, wanted_factor: float,
              selector: Selector, on_other_class: bool = True) -> Record:
    """The selected candidate for one goal (strengthen or weaken `cls`)."""
    base = next(r for r in records if r["feature_factor"] is None)
    candidates = [{**r, "value": metric_value(r, cls, other, strengthen, on_other_class)} for r in records
                  if r["feature_factor"] is not None and np.sign(r["feature_factor"]) == np.sign(wanted_factor)]
    if not candidates:
        raise ValueError(f"The grid has no candidate with a feature factor of sign {np.sign(wanted_factor):+g}, "
                         f"needed to {'strengthen' if strengthen else 'weaken'} {cls!r}; add it to feature_factors")
    chosen = selector(candidates, base)
    return {"value": chosen["value"], "feature_factor": chosen["feature_factor"],
            "learning_rate": chosen["learning_rate"], "id": chosen["id"], "strengthen": strengthen,
            "lms": chosen["lms"], "base_lms": base["lms"],
            "base_value": metric_value(base, cls, other, strengthen, on_other_class)}


def other_class(pair: Sequence[str], cls: str) -> str:
    return pair[1] if cls == pair[0] else pair[0]


@dataclass
class DecoderRequest:
    """What one decoder evaluation scores and how it selects (defaults: adaptive search, LMS ≥ 0.99·base)."""

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
    search: str = "adaptive"  # "grid": score every candidate (also used for custom selectors/extractors)
    targets: Mapping[str, Sequence[str]] | None = None  # words scored per class (None: the data's words of the pair)
    ignore_tokens: Sequence[str] | None = None  # words the LMS never masks (None: every scored word)
    prob_on_other_class: bool = True  # strengthen metric: P(class) on the other class's rows (False: on both)
    # True: each row scored on its own words (the reference's decoder_eval_targets="label"); None: row-wise when the
    # pair's data words are shared by both classes (see `use_row_wise`); False: always per-class word sets
    row_wise: bool | None = None
    # a CSV of each scored row's P(factual) and P(alternative) under the base model and each selected rewrite
    # (the reference's decoder_eval_export_row_wise_csv); None: not written
    export_rows: Path | None = None

    def __post_init__(self) -> None:
        if self.row_wise is not None and not isinstance(self.row_wise, bool):
            raise TypeError(f"row_wise must be True, False or None (decide from the data), got {self.row_wise!r}")
        if self.search not in SEARCH_MODES:
            raise ValueError(f"decoder search must be one of {SEARCH_MODES}, got {self.search!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"eval_batch_size must be a positive int, got {self.batch_size!r}")
        for name, values in (("learning_rates", self.learning_rates), ("feature_factors", self.feature_factors)):
            if values is None:
                continue
            bad = [v for v in values if not _finite(v)]
            if bad or not len(values):
                raise ValueError(f"decoder grid {name} must be a non-empty list of finite numbers, got {list(values)!r}"
                                 f" (bad: {bad})")
            if len(set(values)) != len(values):  # a candidate's id is (factor, lr): a repeat would be scored twice
                raise ValueError(f"decoder grid {name} has repeated values: {list(values)!r}; list each once")
        check_targets(self.targets, self.ignore_tokens)

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


def check_targets(targets: Any, ignore_tokens: Any) -> None:
    """`targets`: class → non-empty list of words; `ignore_tokens`: a list of words (a bare string is an error)."""
    if targets is not None:
        if not isinstance(targets, Mapping):
            raise TypeError(f"decoder_eval_targets must map class names to lists of words, got {targets!r}")
        for cls, words in targets.items():
            if isinstance(words, str) or not isinstance(words, Sequence) or not words \
                    or not all(isinstance(w, str) and w.strip() for w in words):
                raise ValueError(f"decoder_eval_targets[{cls!r}] must be a non-empty list of words, got {words!r}")
    if ignore_tokens is not None and (isinstance(ignore_tokens, str) or not isinstance(ignore_tokens, Sequence)
                                      or not all(isinstance(w, str) for w in ignore_tokens)):
        raise TypeError(f"decoder_eval_ignore_tokens must be a list of words, got {ignore_tokens!r}")


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
    inputs = GridInputs.build(model, rows, pair, request)
    like, neutral, tokens, ignored = inputs.like, inputs.neutral, inputs.tokens, inputs.ignored
    mode, ratio = _search_mode(request)
    key = fingerprint({**(cache.model_identity if cache else {}), "rows": short_hash(like.to_csv(index=False)),
                       "lrs": lrs, "factors": factors, "neutral": short_hash("\n".join(neutral)),
                       "tokens": {c: sorted(t) for c, t in tokens.items()}, "lms_seed": LMS_SEED, "search": mode,
                       **({"row_wise": True} if inputs.row_wise else {}),
                       **({"lms_ratio": ratio} if mode == "adaptive" else {}),
                       **({"lms_ignored": sorted(ignored)} if request.ignore_tokens is not None else {})})
    runs: list[GridRun] = []

    def grid_run() -> GridRun:  # built on first use: a cached, verified grid needs no model passes
        if not runs:
            runs.append(inputs.grid_run(model, request.batch_size))
        return runs[0]

    records = _cached_grid(cache.grid, key) if cache is not None and cache.use else None
    if records is None:
        with grid_run().deferred_restores():
            records = search_grid(runs[0], factors, lrs, mode, ratio, request.show_progress)
    result, records = _select_verified(records, request, pair, goal_factor, lrs, ratio, grid_run)
    if runs:
        stats = {"mode": mode, "grid_size": len(factors) * len(lrs), "row_wise": inputs.row_wise, **runs[0].stats}
        logger.info("Decoder %s search: %d of %d candidates scored, %d model forwards, %d LMS passes (%d stopped "
                    "early)", mode, stats["candidates_scored"] - 1, stats["grid_size"], stats["forwards"],
                    stats["lms_passes"], stats["lms_stopped_early"])
        if cache is not None:
            atomic_write_json(cache.grid, {"fingerprint": key, "records": records, "search": stats})
    if cache is not None:
        store_selections(cache, dict(result))
    if request.export_rows is not None:
        export_row_scores(request.export_rows, grid_run(), inputs.row_wise, result)
    result["grid"] = records
    return result


def export_row_scores(path: Path, run: GridRun, row_wise: bool, selections: Mapping[str, Any]) -> pd.DataFrame:
    """Write (CSV, atomically) and return each scored row's P(factual) and P(alternative) under the base model and
    each selected rewrite: one line per (model, row). `scoring` says what a probability sums: the row's own word
    (`row_wise`) or every word of its class (`class`). One probability pass per model."""
    chosen = {s["id"]: (s["feature_factor"], s["learning_rate"]) for s in selections.values()
              if isinstance(s, Mapping) and s.get("id") not in (None, "base")}
    frames = []
    for cid, (ff, lr) in {"base": (None, None), **chosen}.items():
        with run.rewritten(ff, lr):
            classes, probs = run.row_matrix()
        column = {c: i for i, c in enumerate(classes)}
        frame = run.rows[["masked", "factual_class", "alternative_class", "factual", "alternative"]].copy()
        frame.insert(0, "candidate", cid)
        frame.insert(1, "feature_factor", ff)
        frame.insert(2, "learning_rate", lr)
        for name, source in (("P_factual", "factual_class"), ("P_alternative", "alternative_class")):
            frame[name] = [probs[r, column[c]] if c in column else np.nan for r, c in enumerate(frame[source])]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True).assign(scoring="row_wise" if row_wise else "class")
    atomic_write_bytes(path, table.to_csv(index=False).encode("utf-8"))
    logger.info("Saved the decoder's per-row scores to %s", path)
    return table


def grid_tokens(rows: pd.DataFrame, pair: Sequence[str], request: DecoderRequest
                ) -> tuple[dict[str, set[str]], set[str]]:
    """(words scored per class, words the LMS never masks).

    The words of a class are `request.targets[class]`, or the data's: its factual words and the alternatives
    of the other class's rows. The pair's classes are always scored; `targets` may add more classes, whose
    probabilities the grid records too. The LMS ignores `request.ignore_tokens`, or every scored word.
    """
    given = dict(request.targets or {})
    tokens = {c: set(map(str, given[c])) if c in given else set(rows.loc[rows["factual_class"] == c, "factual"]) | set(
        rows.loc[rows["alternative_class"] == c, "alternative"]) for c in pair}
    tokens.update({str(c): set(map(str, words)) for c, words in given.items() if c not in pair})
    ignored = set(request.ignore_tokens) if request.ignore_tokens is not None else set().union(*tokens.values())
    return tokens, ignored


def use_row_wise(tokens: Mapping[str, set[str]], pair: Sequence[str], request: DecoderRequest) -> bool:
    """Whether the pair's classes are scored row-wise (each row on its own factual and counterfactual word).

    `request.row_wise` decides when set. Otherwise a word both pair classes use (compared case-insensitively,
    as scoring sums case variants; e.g. German "der", masculine nominative and feminine dative) makes the
    per-class word sets ambiguous: P(class) would count it for both classes, so the data's words are scored
    row-wise instead (logged). Shared words the caller gave in `targets` are kept as given, with a warning.
    """
    given = [c for c in pair if c in (request.targets or {})]
    if request.row_wise:
        if given:
            raise ValueError(f"Row-wise decoder scoring (decoder_eval_targets='label') scores each row's own words, "
                             f"but words for {given} were given too; pass either 'label' or class -> words")
        return True
    shared = sorted({w.lower() for w in tokens[pair[0]]} & {w.lower() for w in tokens[pair[1]]})
    if request.row_wise is False or not shared:
        return False
    if given:
        logger.warning("decoder_eval_targets gives both %s and %s the words %s, so each class's probability "
                       "counts them; decoder_eval_targets='label' scores each row's own words instead",
                       pair[0], pair[1], shared)
        return False
    logger.info("Decoder evaluation: %s and %s share the words %s; scoring each row on its own words "
                "(row-wise, as decoder_eval_targets='label')", pair[0], pair[1], shared)
    return True


def grid_targets(objective: Any, like: pd.DataFrame, pair: Sequence[str], tokens: Mapping[str, set[str]],
                 row_wise: bool) -> Mapping[str, set[tuple[int, ...]]] | RowTargets:
    """What the grid scores: each class's word set on every row, or (`row_wise`) each row's own word per pair
    class (its factual word for its class, its counterfactual for the other) and every other class's word set."""
    if not row_wise:
        return class_piece_sets(objective, tokens)
    classes = list(tokens)

    def words(row: Any, cls: str) -> set[str]:
        if cls not in pair:
            return tokens[cls]
        if cls == row.factual_class:
            return {str(row.factual)}
        if cls == row.alternative_class:
            return {str(row.alternative)}
        raise ValueError(f"Row-wise decoder scoring: a row of class {row.factual_class!r} has no word of class "
                         f"{cls!r} (its counterfactual is of class {row.alternative_class!r})")

    return row_piece_sets(objective, classes, [[words(row, c) for c in classes] for row in like.itertuples()])


@dataclass
class GridInputs:
    """The decoder grid's inputs: the scored rows, the LMS texts, the words per class, the LMS's ignored
    words and whether the pair is scored row-wise (see `use_row_wise`)."""

    pair: tuple[str, str]
    like: pd.DataFrame
    neutral: list[str]
    tokens: dict[str, set[str]]
    ignored: set[str]
    row_wise: bool

    @classmethod
    def build(cls, model: ModelWithGradiend, rows: pd.DataFrame, pair: Sequence[str],
              request: DecoderRequest) -> GridInputs:
        like, neutral = _grid_texts(model, rows, pair, request)
        tokens, ignored = grid_tokens(rows, pair, request)
        return cls((pair[0], pair[1]), like, neutral, tokens, ignored, use_row_wise(tokens, pair, request))

    def grid_run(self, model: ModelWithGradiend, batch_size: int) -> GridRun:
        """A `GridRun` over these inputs (tokenises the LMS texts and the scored words)."""
        lms_data = prepare_lms(model.objective, self.neutral, ignore_tokens=self.ignored, seed=LMS_SEED,
                               batch_size=batch_size)
        targets = grid_targets(model.objective, self.like, self.pair, self.tokens, self.row_wise)
        return GridRun(model, self.like, targets, lms_data, batch_size)


def base_record(model: ModelWithGradiend, rows: pd.DataFrame, pair: Sequence[str], request: DecoderRequest
                ) -> Record:
    """The grid's base record (the unmodified model's LMS and class probabilities) on the request's inputs."""
    inputs = GridInputs.build(model, rows, pair, request)
    return inputs.grid_run(model, request.batch_size).score(None, None)


def _search_mode(request: DecoderRequest) -> tuple[str, float]:
    """("adaptive", LMS ratio) when the request allows it, else ("grid", default ratio)."""
    if request.search == "adaptive":
        if request.summary_extractor is None and isinstance(request.selector, LMSThresholdSelector):
            return "adaptive", request.selector.ratio
        logger.info("Decoder evaluation: a custom selector or summary extractor may need every candidate; "
                    "scoring the full grid")
    return "grid", LMS_RATIO


def _select_verified(records: list[Record], request: DecoderRequest, pair: Sequence[str],
                     goal_factor: Mapping[str, float], lrs: Sequence[float], ratio: float,
                     grid_run: Callable[[], GridRun]) -> tuple[dict[str, Any], list[Record]]:
    """Select per class; a selected candidate whose LMS the adaptive search only inferred is measured
    first, and where it breaks the bound after all, its feature factor's full grid is scored."""
    while True:
        result: dict[str, Any] = {}
        for cls in request.classes:
            result[selection_key(cls, request.strengthen)] = (
                request.summary_extractor(records, cls, request.strengthen) if request.summary_extractor
                else summarize(records, cls, other_class(pair, cls), request.strengthen, goal_factor[cls],
                               request.selector, request.prob_on_other_class))
        pending = {s["id"] for s in result.values() if isinstance(s, dict) and s.get("id") is not None
                   and s.get("lms", 0.0) is None}
        if not pending:
            return result, records
        run, bound = grid_run(), ratio * records[0]["lms"]
        for record in [r for r in records if r["id"] in pending]:
            with run.rewritten(record["feature_factor"], record["learning_rate"]):
                record["lms"] = run.lms().value
            del record["lms_at_least"]
            if not record["lms"] >= bound:
                records = full_factor(run, records, record["feature_factor"], lrs)


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


@torch.no_grad()
def keep_top_decoder_fraction(gradiend: GradiendModel, fraction: float) -> int:
    """Restrict the decoded update to the `fraction` of coordinates the decoder weights most (largest |W_d|).

    The decoder weight and bias are zeroed everywhere else (in place), so dec(h) changes only the kept
    coordinates; returns how many are kept (at least one). An edit axis next to the learning rate: the
    rewrite then leaves the rest of the model as it is (bench/edit_frontier.py measures the trade-off).
    """
    if not (_finite(fraction) and 0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if gradiend.config.latent_dim != 1:
        raise ValueError(f"keep_top_decoder_fraction needs one feature neuron, got latent_dim="
                         f"{gradiend.config.latent_dim}")
    weight = gradiend.decoder_weight[:, 0]
    keep = max(1, round(fraction * weight.numel()))
    if keep >= weight.numel():
        return weight.numel()
    mask = torch.zeros_like(weight, dtype=torch.bool)
    mask[weight.abs().topk(keep).indices] = True
    weight.masked_fill_(~mask, 0.0)
    if gradiend.decoder_bias is not None:
        gradiend.decoder_bias.masked_fill_(~mask, 0.0)
    return keep
