"""Early warnings for a GRADIEND run that is not learning: saturated, not moving, or diverging.

Training records after every evaluation the correlation, the class means, the encoder weight norm
and every step's loss (`training_stats` in `training.json`). `diagnose` reads that history and
names what went wrong, so a run that cannot converge says so at its first evaluations instead of
finishing silently:

* **diverging**: a non-finite loss, class mean or correlation; or the loss grew ≥ `LOSS_GROWTH`×
  from its first steps; or the encoder norm grew ≥ `NORM_GROWTH`× from initialisation.
* **saturated**: both class means at |h| ≥ `SATURATED` with the same sign: every row encodes to
  the same end of tanh, so the feature cannot separate the classes.
* **not moving**: after at least `MIN_STEPS` steps the class means are still within ±`QUIET` and
  the encoder norm changed by less than `STILL` (relative): the steps are too small.

`LearningMonitor` wraps it for the training loop: it logs each cause once (a `logging` warning
naming the cause and the fix) and keeps the list for `training.json`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

Cause = Literal["diverging", "saturated", "not_moving"]

LOSS_GROWTH = 10.0
NORM_GROWTH = 1e3
SATURATED = 0.98
QUIET = 0.05
STILL = 0.01
MIN_STEPS = 10


@dataclass(frozen=True)
class Diagnosis:
    """One reason a run is not learning, at the step it was seen."""

    cause: Cause
    step: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _by_step(values: Mapping[str, Any]) -> list[tuple[int, Any]]:
    return sorted((int(k), v) for k, v in values.items())


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _diverging(step: int, losses: Sequence[float], norms: list[tuple[int, float]], corr: float,
               means: Mapping[str, float]) -> str | None:
    bad = [x for x in (*losses[-1:], corr, *means.values()) if not _finite(x)]
    if bad:
        return f"non-finite values at step {step} (loss, correlation or class means: {bad[:3]})"
    head = [x for x in losses[:5] if _finite(x)]
    if len(losses) >= 10 and head:
        first, recent = sum(head) / len(head), sum(losses[-5:]) / len(losses[-5:])
        if first > 0 and recent >= LOSS_GROWTH * first:
            return f"the loss grew from {first:.3g} to {recent:.3g} ({recent / first:.0f}x)"
    if len(norms) >= 2 and norms[0][1] > 0 and norms[-1][1] >= NORM_GROWTH * norms[0][1]:
        return f"the encoder norm grew from {norms[0][1]:.3g} to {norms[-1][1]:.3g}"
    return None


def _saturated(means: Mapping[str, float]) -> str | None:
    values = list(means.values())
    if len(values) == 2 and min(abs(v) for v in values) >= SATURATED and values[0] * values[1] > 0:
        return f"both classes encode to {values[0]:+.2f} / {values[1]:+.2f}: tanh is saturated"
    return None


def _not_moving(step: int, norms: list[tuple[int, float]], means: Mapping[str, float]) -> str | None:
    if step < MIN_STEPS or len(norms) < 2 or not means:
        return None
    start, now = norms[0][1], norms[-1][1]
    change = abs(now - start) / start if start > 0 else math.inf
    if max(abs(v) for v in means.values()) < QUIET and change < STILL:
        return (f"after {step} steps the class means are {', '.join(f'{v:+.3f}' for v in means.values())} and "
                f"the encoder norm changed by {100 * change:.2g} %")
    return None


FIXES: dict[Cause, str] = {
    "diverging": "lower learning_rate, check the data of the failing batches, or train in float32",
    "saturated": "lower learning_rate, or check that the two classes' rows really differ in the target word",
    "not_moving": "raise learning_rate or max_steps, or check that the selected parameters affect the target "
                  "words (params)",
}


def diagnose(scores: Mapping[str, float], mean_by_class: Mapping[str, Mapping[str, float]],
             encoder_norms: Mapping[str, float], losses: Sequence[float]) -> list[Diagnosis]:
    """What is wrong at the latest evaluation of this history (keys are steps as strings); [] when fine.

    Diverging is reported alone (the other checks read values it already distrusts).
    """
    if not scores:
        return []
    step, corr = _by_step(scores)[-1]
    means = dict(_by_step(mean_by_class)[-1][1]) if mean_by_class else {}
    norms = _by_step(encoder_norms)
    reason = _diverging(step, losses, norms, corr, means)
    if reason is not None:
        return [Diagnosis("diverging", step, reason)]
    found = []
    for cause, text in (("saturated", _saturated(means)), ("not_moving", _not_moving(step, norms, means))):
        if text is not None and step > 0:
            found.append(Diagnosis(cause, step, text))
    return found


class LearningMonitor:
    """Calls `diagnose` after each evaluation and warns once per cause (with the fix)."""

    def __init__(self, learning_rate: float | None = None) -> None:
        self.learning_rate = learning_rate
        self.found: list[Diagnosis] = []

    def check(self, scores: Mapping[str, float], mean_by_class: Mapping[str, Mapping[str, float]],
              encoder_norms: Mapping[str, float], losses: Sequence[float]) -> list[Diagnosis]:
        """New diagnoses of the latest evaluation (each cause reported once per run)."""
        seen = {d.cause for d in self.found}
        new = [d for d in diagnose(scores, mean_by_class, encoder_norms, losses) if d.cause not in seen]
        lr = f" (learning_rate={self.learning_rate:g})" if self.learning_rate is not None else ""
        for d in new:
            logger.warning("GRADIEND is not learning at step %d: %s — %s%s. Fix: %s.", d.step,
                           d.cause.replace("_", " "), d.message, lr, FIXES[d.cause])
        self.found.extend(new)
        return new

    def to_json(self) -> list[dict[str, Any]]:
        return [d.to_json() for d in self.found]
