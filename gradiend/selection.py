"""Decoder selection policies and named summary metrics (the reference's `selector=` / `summary_metrics=`).

Two selector protocols are accepted by `Trainer.evaluate_decoder(selector=...)`:

* a callable `selector(candidates, base) -> record` over grid records (each candidate carries the
  goal's `value`; see `gradiend.decoder_eval.LMSThresholdSelector`), and
* a policy object with `select(metric, candidates, ctx) -> Candidate | None` (gradiend 0.2.x's
  `SelectionPolicy`): `Candidate(id, lms, metrics)` and `BaseContext(base_lms)`.

`as_selector` turns either into the callable form. `LMSThresholdPolicy` is served by the adaptive
search (it needs nothing above the LMS bound); any other policy scores the full grid.

`summary_metrics=["bpi", ...]` selects one candidate per named metric (the key of the result). The
metrics of a grid record (`candidate_metrics`): `<class>` = P(class tokens) on the other class's
rows (what strengthening the class maximises), `<class>_factual` = P(class tokens) on its own rows,
`<class>_weaken` = 1 − that, plus every numeric top-level field of the record. Metrics the grid does
not hold (e.g. the paper's bpi/fpi/mpi) come from `metrics_fn(record) -> {name: value}`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

Record = dict[str, Any]
MetricsFn = Callable[[Mapping[str, Any]], Mapping[str, float]]
_NOT_METRICS = frozenset({"lms", "lms_at_least", "feature_factor", "learning_rate", "probs", "id", "value"})


@dataclass(frozen=True)
class Candidate:
    """One decoder-grid candidate as a policy sees it: its id, LMS and scalar metrics."""

    id: Any
    lms: float
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class BaseContext:
    """What a policy knows about the unmodified model."""

    base_lms: float | None


@runtime_checkable
class SelectionPolicy(Protocol):
    """Select the candidate for `metric` (None: no candidate qualifies)."""

    def select(self, metric: str, candidates: Sequence[Candidate], ctx: BaseContext) -> Candidate | None: ...


@dataclass(frozen=True)
class LMSThresholdPolicy:
    """Best `metric` among candidates with LMS ≥ ratio·base LMS; none: the smallest |learning rate|."""

    ratio: float = 0.99

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not math.isfinite(self.ratio) \
                or self.ratio < 0:
            raise ValueError(f"ratio must be a finite number >= 0, got {self.ratio!r}")

    def select(self, metric: str, candidates: Sequence[Candidate], ctx: BaseContext) -> Candidate | None:
        if ctx.base_lms is None:
            raise ValueError("LMSThresholdPolicy needs the base model's LMS (BaseContext.base_lms is None)")
        usable = [c for c in candidates if _finite(c.metrics.get(metric)) and _finite(c.lms)]
        passing = [c for c in usable if c.lms >= self.ratio * ctx.base_lms]
        if passing:
            return max(passing, key=lambda c: c.metrics[metric])
        return min(usable, key=lambda c: abs(_learning_rate(c.id)), default=None)


@dataclass(frozen=True)
class LMSTimesMetricPolicy:
    """The candidate maximising metric × LMS (trades the effect against language-modelling quality)."""

    def select(self, metric: str, candidates: Sequence[Candidate], ctx: BaseContext) -> Candidate | None:
        usable = [c for c in candidates if _finite(c.metrics.get(metric)) and _finite(c.lms)]
        return max(usable, key=lambda c: c.metrics[metric] * c.lms, default=None)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _learning_rate(candidate_id: Any) -> float:
    """Learning rate of a candidate id: a dict (as `_as_candidate` builds) or a (feature factor, lr) tuple."""
    return float(candidate_id["learning_rate"] if isinstance(candidate_id, Mapping) else candidate_id[1])


def candidate_metrics(record: Mapping[str, Any], metrics_fn: MetricsFn | None = None) -> dict[str, float]:
    """The named metrics of one grid record (see the module doc)."""
    probs: Mapping[str, Mapping[str, float]] = record.get("probs") or {}
    metrics: dict[str, float] = {}
    for cls in probs:
        others = [d for d in probs if d != cls]
        if len(others) == 1:
            metrics[str(cls)] = float(probs[others[0]][cls])
        metrics[f"{cls}_factual"] = float(probs[cls][cls])
        metrics[f"{cls}_weaken"] = 1.0 - float(probs[cls][cls])
    metrics.update({k: float(v) for k, v in record.items()
                    if k not in _NOT_METRICS and _finite(v)})
    if metrics_fn is not None:
        extra = metrics_fn(record)
        if not isinstance(extra, Mapping):
            raise TypeError(f"metrics_fn must return a dict of metric name -> value, got {type(extra).__name__}")
        metrics.update({str(k): float(v) for k, v in extra.items()})
    return metrics


def _as_candidate(record: Mapping[str, Any], metrics: Mapping[str, float]) -> Candidate:
    lms = record["lms"] if record["lms"] is not None else record.get("lms_at_least", math.nan)
    ident = {"id": record["id"], "feature_factor": record["feature_factor"], "learning_rate": record["learning_rate"]}
    return Candidate(ident, float(lms), dict(metrics))


def _choose(policy: SelectionPolicy, metric: str, records: Sequence[Record], metrics: Sequence[Mapping[str, float]],
            base: Mapping[str, Any]) -> Record:
    candidates = [_as_candidate(r, m) for r, m in zip(records, metrics, strict=True)]
    chosen = policy.select(metric, candidates, BaseContext(base.get("lms")))
    if chosen is None:
        raise ValueError(f"The selection policy {type(policy).__name__} selected no candidate for {metric!r}")
    by_id = {r["id"]: r for r in records}
    key = chosen.id.get("id") if isinstance(chosen, Candidate) and isinstance(chosen.id, Mapping) else None
    if key not in by_id:
        raise TypeError(f"{type(policy).__name__}.select must return one of the Candidates it was given, "
                        f"got {chosen!r}")
    return by_id[key]


class PolicySelector:
    """A `SelectionPolicy` in the callable selector form (records carry the goal's metric as `value`)."""

    def __init__(self, policy: SelectionPolicy) -> None:
        self.policy = policy

    def __call__(self, candidates: list[Record], base: Record) -> Record:
        return _choose(self.policy, "value", candidates, [{"value": c["value"]} for c in candidates], base)


def as_selector(selector: Any) -> Any:
    """The callable selector for `selector` (None → the default LMS threshold); clear error otherwise."""
    from gradiend.decoder_eval import LMSThresholdSelector, lms_threshold_selector

    if selector is None:
        return lms_threshold_selector()
    if isinstance(selector, LMSThresholdPolicy):
        return LMSThresholdSelector(selector.ratio)  # same rule, and the adaptive search can serve it
    if isinstance(selector, SelectionPolicy):
        return PolicySelector(selector)
    if callable(selector):
        return selector
    raise TypeError(f"selector must be a callable (candidates, base) -> record or an object with "
                    f"select(metric, candidates, ctx), got {type(selector).__name__}")


def select_metrics(records: Sequence[Record], metric_names: Sequence[str], selector: Any = None,
                   metrics_fn: MetricsFn | None = None) -> dict[str, Record]:
    """One selection per named metric: `{metric: summary}` (value, feature_factor, learning_rate, id, lms, …)."""
    base = next((r for r in records if r["feature_factor"] is None), None)
    if base is None:
        raise ValueError("The decoder grid has no base-model record (feature_factor None)")
    grid = [r for r in records if r["feature_factor"] is not None]
    metrics = [candidate_metrics(r, metrics_fn) for r in grid]
    base_metrics = candidate_metrics(base, metrics_fn)
    available = sorted(set().union(*metrics)) if metrics else []
    policy = selector if isinstance(selector, SelectionPolicy) else None
    out: dict[str, Record] = {}
    for name in metric_names:
        if not isinstance(name, str) or name not in available:
            raise ValueError(f"Unknown summary metric {name!r}; the grid has {available}. Metrics the grid does not "
                             f"hold (e.g. bpi) need metrics_fn=lambda record: {{{name!r}: ...}}")
        if policy is not None:
            chosen = _choose(policy, name, grid, metrics, base)
        else:
            values = [{**r, "value": m[name]} for r, m in zip(grid, metrics, strict=True)]
            chosen = as_selector(selector)(values, {**base, "value": base_metrics.get(name)})
        value = metrics[[r["id"] for r in grid].index(chosen["id"])][name]
        out[name] = {"value": value, "feature_factor": chosen["feature_factor"],
                     "learning_rate": chosen["learning_rate"], "id": chosen["id"], "strengthen": None,
                     "lms": chosen["lms"], "base_lms": base["lms"], "base_value": base_metrics.get(name)}
    return out
