"""Early warnings for a GRADIEND run that is not learning: saturated, not moving, or diverging.

Training records after every evaluation the correlation, the class means, the encoder weight norm
and every step's loss (`training_stats` in `training.json`). `diagnose` reads that history and
names what went wrong, so a run that cannot converge says so at its first evaluations instead of
finishing silently:

* **diverging**: a non-finite loss, class mean or correlation; or the loss grew ≥ `LOSS_GROWTH`×
  from its first steps.
* **saturated**: both class means at |h| ≥ `SATURATED` with the same sign: every row encodes to
  the same end of tanh, so the feature cannot separate the classes.
* **not moving**: after at least `MIN_STEPS` steps both class means are still within ±`QUIET`. A
  healthy run moves them by far more: one Adam step moves a row's pre-activation by up to
  `gradiend.step.ENCODER_STEP` (0.1), and on the embedded models the class means reach ±0.5–0.7 by
  step 25 at every learning rate in [1e-5, 1e-2]. The encoder norm cannot tell: training starts
  from weights one Adam step in size, so the norm grows many-fold in every run, stuck or not.

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
SATURATED = 0.98
QUIET = 0.1
MIN_STEPS = 20


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


def _diverging(step: int, losses: Sequence[float], corr: float, means: Mapping[str, float]) -> str | None:
    bad = [x for x in (*losses[-1:], corr, *means.values()) if not _finite(x)]
    if bad:
        return f"non-finite values at step {step} (loss, correlation or class means: {bad[:3]})"
    head = [x for x in losses[:5] if _finite(x)]
    if len(losses) >= 10 and head:
        first, recent = sum(head) / len(head), sum(losses[-5:]) / len(losses[-5:])
        if first > 0 and recent >= LOSS_GROWTH * first:
            return f"the loss grew from {first:.3g} to {recent:.3g} ({recent / first:.0f}x)"
    return None


def _saturated(means: Mapping[str, float]) -> str | None:
    values = list(means.values())
    if len(values) == 2 and min(abs(v) for v in values) >= SATURATED and values[0] * values[1] > 0:
        return f"both classes encode to {values[0]:+.2f} / {values[1]:+.2f}: tanh is saturated"
    return None


def _not_moving(step: int, means: Mapping[str, float]) -> str | None:
    if step < MIN_STEPS or not means:
        return None
    if max(abs(v) for v in means.values()) < QUIET:
        return (f"after {step} steps the class means are {', '.join(f'{v:+.3f}' for v in means.values())} "
                f"(a learning run is past ±0.5 by step 25)")
    return None


FIXES: dict[Cause, str] = {
    "diverging": "lower learning_rate, check the data of the failing batches, or train in float32",
    "saturated": "check that the two classes' rows really differ in the target word (with "
                 "standardize_gradients=False: lower learning_rate)",
    "not_moving": "check that the selected parameters affect the target words (params) and that "
                  "standardize_gradients is on, or raise max_steps",
}


def diagnose(scores: Mapping[str, float], mean_by_class: Mapping[str, Mapping[str, float]],
             encoder_norms: Mapping[str, float], losses: Sequence[float]) -> list[Diagnosis]:
    """What is wrong at the latest evaluation of this history (keys are steps as strings); [] when fine.

    Diverging is reported alone (the other checks read values it already distrusts). `encoder_norms` is
    accepted for the history's shape but not judged (see the module doc).
    """
    if not scores:
        return []
    step, corr = _by_step(scores)[-1]
    means = dict(_by_step(mean_by_class)[-1][1]) if mean_by_class else {}
    reason = _diverging(step, losses, corr, means)
    if reason is not None:
        return [Diagnosis("diverging", step, reason)]
    found = []
    for cause, text in (("saturated", _saturated(means)), ("not_moving", _not_moving(step, means))):
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
