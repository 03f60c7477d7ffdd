"""Encoder calibration: fit the feature neuron's gain and offset so that the two classes read ±1 and
neutral text reads 0.

Why. The reconstruction loss pulls the class encodings towards ±1 (the decoder's output is linear in h,
so a larger |h| fits the target gradient better), and once the class pre-activations are deep in tanh's
saturation the loss no longer pins the pre-activation's scale: it keeps growing, and the pre-activation
of text without the feature grows with it. A neuron trained that way reads ±0.99 on the classes and
also ±0.7 on neutral text (issue 15). The *direction* w separates the two (neutral projections are a
small fraction of the class projections); only the gain is off. So after training we refit the two
numbers the loss leaves free, the gain a > 0 and offset c of the pre-activation,
``h = tanh(a·(w·x/s_in + b) + c)``, by least squares on held-in rows: the validation rows of the two
classes (target ±1) and training-split texts with another word masked (`gradiend.data.neutral_rows`,
target 0), each of the three groups weighted equally. The test split and the neutral corpus stay unseen.

What it changes. Only the encoder: ``w ← a·w``, ``b ← a·b + c``, stored in the checkpoint as ordinary
weights (no new format). The decoder, and so every rewrite ``decode(h)``, is unchanged. What it costs:
one encoding pass over the held-in rows (about two in-training evaluations) after training.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from gradiend import distributed
from gradiend.allocator import reuse_large_blocks
from gradiend.data import DataError, cap_per_class, length_batches, neutral_rows

if TYPE_CHECKING:
    from gradiend.arguments import TrainingArguments
    from gradiend.model_with_gradiend import ModelWithGradiend
    from gradiend.objectives import LMObjective

logger = logging.getLogger(__name__)

# coarse search grid: gains from e^-6 to e^5 over the projections' spread (any unit of w), refined by
# Gauss-Newton steps
_LOG_GAINS = np.linspace(-6.0, 5.0, 111)
_OFFSET_STEPS = 41


@dataclass(frozen=True)
class CalibrationFit:
    """The fitted gain and offset, with what they did on the held-in rows."""

    gain: float
    offset: float
    loss_before: float
    loss_after: float
    class_means_before: dict[str, float]
    class_means_after: dict[str, float]
    neutral_abs_mean_before: float
    neutral_abs_mean_after: float
    n_class_rows: int
    n_neutral_rows: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _loss(pre: np.ndarray, targets: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Mean over groups of each group's mean squared error; `pre` may carry leading grid axes."""
    err = (np.tanh(pre) - targets) ** 2
    return np.mean([err[..., groups == g].mean(axis=-1) for g in np.unique(groups)], axis=0)


def fit_gain_offset(projections: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(a > 0, c) minimising the group-balanced squared error of tanh(a·p + c) against `targets`
    (+1, −1, 0; each value is one group, weighted equally).

    A coarse grid over log a and c (c in units of a·p's spread), then Gauss-Newton steps from the best point.
    """
    p = np.asarray(projections, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if p.shape != y.shape or p.ndim != 1 or not len(p):
        raise ValueError(f"need one target per projection, got {p.shape} and {y.shape}")
    if not np.isfinite(p).all():
        raise FloatingPointError("non-finite encoder pre-activations; the GRADIEND cannot be calibrated")
    spread = float(np.abs(p - np.median(p)).mean()) or 1.0
    gains = np.exp(_LOG_GAINS)[:, None, None] / spread
    offsets = np.linspace(-3.0, 3.0, _OFFSET_STEPS)[None, :, None] * gains * spread
    grid = _loss(gains * p + offsets, y, y)
    i, j = np.unravel_index(int(np.argmin(grid)), grid.shape)
    a, c = float(gains[i, 0, 0]), float(offsets[i, j, 0])
    return _refine(p, y, a, c)


def _refine(p: np.ndarray, y: np.ndarray, a: float, c: float, steps: int = 50) -> tuple[float, float]:
    """Damped Gauss-Newton on (log a, c) for the group-balanced loss; never accepts a worse point."""
    weights = np.zeros_like(y)
    for g in np.unique(y):
        weights[y == g] = 1.0 / (y == g).sum()
    theta = np.array([math.log(a), c])

    def loss(t: np.ndarray) -> float:
        return float(np.sum(weights * (np.tanh(math.exp(t[0]) * p + t[1]) - y) ** 2))

    current, damping = loss(theta), 1e-3
    for _ in range(steps):
        h = np.tanh(math.exp(theta[0]) * p + theta[1])
        slope = 1.0 - h * h
        jac = np.stack([slope * math.exp(theta[0]) * p, slope], axis=1)
        res = h - y
        jtj = jac.T @ (weights[:, None] * jac)
        grad = jac.T @ (weights * res)
        trial = theta - np.linalg.solve(jtj + damping * np.eye(2) * (np.trace(jtj) + 1e-12), grad)
        value = loss(trial)
        if value < current:
            theta, improvement, current = trial, current - value, value
            damping = max(damping / 3, 1e-9)
            if improvement < 1e-12:
                break
        else:
            damping *= 10
    return math.exp(theta[0]), float(theta[1])


def held_in_rows(eval_rows: pd.DataFrame, train_rows: pd.DataFrame, objective: LMObjective,
                 seed: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(class rows, neutral rows) to fit on: `eval_rows` (validation, both classes) and as many neutral rows
    (training-split texts, another word masked) as there are class rows."""
    neutral = neutral_rows(train_rows, objective, seed)
    return eval_rows, cap_per_class(neutral, len(eval_rows), seed).reset_index(drop=True)


def projections(model: ModelWithGradiend, rows: pd.DataFrame, kind: str, directions: torch.Tensor,
                batch_size: int) -> np.ndarray:
    """`directions · ∇loss` of each single row (no activation, no bias); rows split across processes."""
    lo, hi = distributed.my_share(len(rows)) if distributed.context().enabled else (0, len(rows))
    part = rows.iloc[lo:hi]
    texts, factual, alternative = list(part["masked"]), list(part["factual"]), list(part["alternative"])
    out = np.zeros((len(part), directions.shape[0]), dtype=np.float64)
    with reuse_large_blocks():
        for idx in length_batches(model.objective.token_lengths(texts), batch_size):
            proj = model.engine.directional([texts[i] for i in idx], [factual[i] for i in idx],
                                            [alternative[i] for i in idx], kind, directions)
            out[idx] = proj.double().cpu().numpy()
    if distributed.context().enabled:
        return distributed.gather_rows(out.astype(np.float32), len(rows)).astype(np.float64)
    return out


def calibrate_state(model: ModelWithGradiend, state: dict[str, torch.Tensor], class_rows: pd.DataFrame,
                    neutral: pd.DataFrame, pair: Sequence[str], batch_size: int) -> CalibrationFit:
    """Fit gain and offset of the one-neuron GRADIEND in `state` (a state dict) and apply them to it in place."""
    weight, bias = state["encoder_weight"], state["encoder_bias"]
    if weight.shape[0] != 1:
        raise ValueError("calibration fits one feature neuron; this GRADIEND has latent_dim "
                         f"{weight.shape[0]}. Turn calibrate_encoder off for latent_dim > 1.")
    directions = (weight.float() / state["input_scale"].float()).to(model.engine.device)
    b = float(bias[0])
    p_class = projections(model, class_rows, model.config.source, directions, batch_size)[:, 0] + b
    p_neutral = projections(model, neutral, "factual", directions, batch_size)[:, 0] + b
    labels = class_rows["label"].to_numpy(dtype=np.float64)
    p = np.concatenate([p_class, p_neutral])
    y = np.concatenate([labels, np.zeros(len(p_neutral))])
    gain, offset = fit_gain_offset(p, y)
    with torch.no_grad():
        weight.mul_(gain)
        bias.mul_(gain).add_(offset)
    fit = CalibrationFit(
        gain=gain, offset=offset, loss_before=float(_loss(p, y, y)), loss_after=float(_loss(gain * p + offset, y, y)),
        class_means_before=_class_means(np.tanh(p_class), labels, pair),
        class_means_after=_class_means(np.tanh(gain * p_class + offset), labels, pair),
        neutral_abs_mean_before=float(np.abs(np.tanh(p_neutral)).mean()),
        neutral_abs_mean_after=float(np.abs(np.tanh(gain * p_neutral + offset)).mean()),
        n_class_rows=len(p_class), n_neutral_rows=len(p_neutral))
    logger.info("Encoder calibration: gain %.3g, offset %+.3g; held-in class means %s → %s, neutral |h| %.3f → %.3f",
                gain, offset, fit.class_means_before, fit.class_means_after, fit.neutral_abs_mean_before,
                fit.neutral_abs_mean_after)
    return fit


def _class_means(h: np.ndarray, labels: np.ndarray, pair: Sequence[str]) -> dict[str, float]:
    return {str(c): round(float(h[labels == v].mean()), 4) for c, v in zip(pair, (1, -1), strict=True)
            if (labels == v).any()}


Calibrator = Callable[[dict[str, torch.Tensor]], dict[str, Any]]
"""Calibrates a finished run's selected state in place; returns the record for `training.json`."""


def run_calibrator(model: ModelWithGradiend, train_rows: pd.DataFrame, eval_rows: pd.DataFrame | None,
                   pair: Sequence[str], args: TrainingArguments) -> Calibrator | None:
    """The calibration step `train_gradiend` hands the loop, or None when the run has nothing to calibrate:
    `calibrate_encoder` off, no validation rows, several feature neurons, or a supervised baseline."""
    from gradiend.supervised import supervised_mode

    if not args.calibrate_encoder or eval_rows is None or len(eval_rows) == 0:
        return None
    if model.config.latent_dim != 1 or supervised_mode(args) is not None:
        logger.info("Encoder calibration skipped: it fits one unsupervised feature neuron")
        return None

    def calibrate(state: dict[str, torch.Tensor]) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            class_rows, neutral = held_in_rows(eval_rows, train_rows, model.objective, args.data_seed
                                               if args.data_seed is not None else args.seed)
        except DataError as err:
            logger.warning("Encoder calibration skipped: %s", err)
            return {"skipped": str(err)}
        fit = calibrate_state(model, state, class_rows, neutral, pair, args.eval_batch_size)
        return {**fit.to_json(), "seconds": time.perf_counter() - t0}

    return calibrate
