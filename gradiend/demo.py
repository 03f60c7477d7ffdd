"""The offline demo: learn a pronoun feature of an embedded model, evaluate encoder and decoder,
write a rewritten model, the plots and the HTML report.

`model="mlm"`: 3SG (he/she/it) vs 3PL (they) on the embedded MiniLM masked LM, rewritten to
favour 3SG. `model="clm"`: M (he) vs F (she) on the embedded SmolLM2 causal LM, rewritten to favour F.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gradiend.arguments import TrainingArguments
from gradiend.demo_data import demo_gender_data, load_demo_data, load_demo_neutral
from gradiend.embedded import embedded_model_path
from gradiend.records import BestCheckpoint, TrainingRecord
from gradiend.trainer.text.prediction.trainer import TextPredictionTrainer

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

# The embedded MiniLM's useful edits are small: with the class-mean decoder (raw gradient units) its LMS on the
# demo's neutral texts falls below 0.99 x base already at 2e-4 (0.987 x), and P(3SG) on 3PL rows doubles near 1e-3.
DEMO_LRS = (2e-3, 1e-3, 5e-4, 2e-4, 1e-4, 5e-5, 2e-5, 1e-5)


@dataclass(frozen=True)
class DemoSetup:
    """What one demo learns: data, classes, the class to strengthen, the decoder grid, extra arguments."""

    description: str
    data: Callable[[], pd.DataFrame]
    classes: tuple[str, str]
    target: str
    lrs: tuple[float, ...]
    train_batch_size: int
    args: dict[str, Any] = field(default_factory=dict)


DEMOS: dict[str, DemoSetup] = {
    "mlm": DemoSetup("3SG (he/she/it) vs 3PL (they) on the embedded MiniLM masked LM", load_demo_data,
                     ("3SG", "3PL"), "3SG", DEMO_LRS, 8),
    # the causal LM (135M parameters) learns from one MLP block; its edits need larger learning rates
    "clm": DemoSetup("M (he) vs F (she) on the embedded SmolLM2 causal LM", demo_gender_data, ("M", "F"), "F",
                     (30.0, 10.0, 3.0, 1.0), 6,
                     {"params": ["model.layers.25.mlp.*"], "scale_estimation_batches": 2,
                      "encoder_eval_train_max_size": 24, "eval_batch_size": 16,
                      "decoder_eval_max_size_training_like": 32, "decoder_eval_max_size_neutral": 32}),
}


@dataclass
class DemoResult:
    """What the demo measured, and where it left its files."""

    experiment_dir: str
    model_path: str
    encoder: dict[str, Any]
    training: TrainingRecord
    decoder: dict[str, Any]
    rewritten_path: str
    seconds: dict[str, float]
    plots: list[str]
    description: str = DEMOS["mlm"].description
    target_class: str = "3SG"
    other_class: str = "3PL"
    report_path: str | None = None


def run_demo(experiment_dir: str | None = None, max_steps: int = 100, train_batch_size: int | None = None,
             eval_steps: int = 25, learning_rate: float = 1e-3, seed: int = 0, show_progress: bool = True,
             plots: bool = True, model: str = "mlm") -> DemoResult:
    """Train, evaluate on the test split plus neutral text, rewrite, plot and report; returns the measurements.

    `model`: "mlm" (embedded masked LM) or "clm" (embedded causal LM). With `plots`, the three
    plots and `report.html` are written into the experiment directory.
    """
    if model not in DEMOS:
        raise ValueError(f"Unknown demo model {model!r}; use one of {sorted(DEMOS)}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive number of training steps, got {max_steps!r}")
    setup = DEMOS[model]
    experiment_dir = experiment_dir or ("runs/demo" if model == "mlm" else f"runs/demo_{model}")
    t0 = time.perf_counter()
    model_path = embedded_model_path(model)
    t_model = time.perf_counter() - t0
    args = TrainingArguments(experiment_dir=experiment_dir, train_batch_size=train_batch_size or setup.train_batch_size,
                             max_steps=max_steps, eval_steps=eval_steps, learning_rate=learning_rate, seed=seed,
                             show_progress=show_progress, **setup.args)
    trainer = TextPredictionTrainer(model=model_path, data=setup.data(), args=args,
                                    target_classes=list(setup.classes), eval_neutral_data=load_demo_neutral())
    t1 = time.perf_counter()
    trainer.train()
    t_train = time.perf_counter() - t1
    t2 = time.perf_counter()
    encoder = trainer.evaluate_encoder(split="test", max_size=250, return_df=plots)
    t_eval = time.perf_counter() - t2
    t3 = time.perf_counter()
    decoder = trainer.evaluate_decoder(target_class=setup.target, lrs=setup.lrs)
    rewritten = trainer.rewrite_base_model(decoder_results=decoder, target_class=setup.target,
                                           output_dir=f"{trainer.experiment_dir}/rewritten_{setup.target}")
    t_dec = time.perf_counter() - t3
    paths, report = [], None
    if plots:
        paths.append(trainer.plot_probability_shifts(decoder, setup.target, show=False))
        paths.append(trainer.plot_training_convergence(show=False))
        paths.append(trainer.plot_encoder_distributions(encoder_df=encoder.pop("encoder_df"), show=False))
        from gradiend.report import write_report

        report = write_report(trainer.experiment_dir)
    other = setup.classes[1] if setup.target == setup.classes[0] else setup.classes[0]
    training = trainer.get_training_record() or TrainingRecord()
    return DemoResult(trainer.experiment_dir, trainer.model_path, encoder, training, decoder[setup.target], rewritten,
                      {"model_setup": t_model, "training": t_train, "encoder_evaluation": t_eval,
                       "decoder_evaluation": t_dec, "total": time.perf_counter() - t0}, paths,
                      setup.description, setup.target, other, report)


def format_report(result: DemoResult) -> str:
    """A short plain-text table of the demo's measurements."""
    enc, train = result.encoder, result.training
    target, other = result.target_class, result.other_class
    best = train.best_score_checkpoint or BestCheckpoint()
    lines = [
        f"GRADIEND demo: {result.description}",
        "-" * 72,
        f"{'test correlation (' + ' vs '.join(enc['mean_by_class']) + ')':<38}{enc['correlation']:>+10.3f}",
        *[f"{'mean encoding ' + cls:<38}{value:>+10.3f}" for cls, value in enc["mean_by_class"].items()],
        *_neutral_lines(enc),
        f"{'test accuracy (±0.5 boundaries)':<38}{enc['accuracy']:>10.3f}",
        f"{'best validation correlation':<38}{_or_nan(best.correlation):>+10.3f}"
        f"  (step {'-' if best.global_step is None else best.global_step})",
        f"{'converged':<38}{train.converged!s:>10}",
        f"{f'P({target}) on {other} rows: base':<38}{result.decoder['base_value']:>10.3f}",
        f"{f'P({target}) on {other} rows: rewritten':<38}{result.decoder['value']:>10.3f}"
        f"  (ff {result.decoder['feature_factor']:g}, lr {result.decoder['learning_rate']:g})",
        f"{'LMS: base / rewritten':<38}{result.decoder['base_lms']:>10.3f} / {result.decoder['lms']:.3f}",
        f"{'seconds: training':<38}{result.seconds['training']:>10.1f}",
        f"{'seconds: encoder evaluation':<38}{result.seconds['encoder_evaluation']:>10.1f}",
        f"{'seconds: decoder grid + rewrite':<38}{result.seconds['decoder_evaluation']:>10.1f}",
        f"{'seconds: total (incl. model setup)':<38}{result.seconds['total']:>10.1f}",
        "-" * 72,
        f"experiment directory: {result.experiment_dir}",
        f"GRADIEND checkpoint:  {result.model_path}",
        f"rewritten model:      {result.rewritten_path}",
        *[f"plot: {p}" for p in result.plots],
        *([f"report: {result.report_path}"] if result.report_path else []),
    ]
    return "\n".join(lines)


def _neutral_lines(enc: dict[str, Any]) -> list[str]:
    """Neutral mean |h| per variant and the all-data scores (absent in metrics of older versions)."""
    within = enc.get("neutral_within_bounds_by_type", {})
    lines = [f"{'neutral mean |h| ' + _NEUTRAL_NAMES.get(kind, kind):<38}{value:>10.3f}"
             + (f"  ({100 * within[kind]:.0f} % inside ±0.5)" if kind in within else "")
             for kind, value in enc.get("neutral_abs_mean_by_type", {}).items()]
    if "all_data_correlation" in enc:
        lines += [f"{'all-data correlation (neutral = 0)':<38}{enc['all_data_correlation']:>+10.3f}",
                  f"{'all-data accuracy (±0.5 boundaries)':<38}{enc['all_data_accuracy']:>10.3f}"]
    return lines


_NEUTRAL_NAMES = {"neutral_training_masked": "(other word masked)", "neutral_dataset": "(neutral corpus)"}


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value
