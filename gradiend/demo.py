"""The offline demo: learn the 3SG (he/she/it) vs 3PL (they) feature of the embedded masked LM,
evaluate encoder and decoder, and write a model rewritten to favour 3SG."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from gradiend.arguments import TrainingArguments
from gradiend.demo_data import load_demo_data, load_demo_neutral
from gradiend.embedded import embedded_model_path
from gradiend.trainer.text.prediction.trainer import TextPredictionTrainer

logger = logging.getLogger(__name__)

# The embedded model's useful edits are small: the LMS stays within 1 % of base only below ~1e-3.
DEMO_LRS = (0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002)


@dataclass
class DemoResult:
    """What the demo measured, and where it left its files."""

    experiment_dir: str
    model_path: str
    encoder: dict[str, Any]
    training: dict[str, Any]
    decoder: dict[str, Any]
    rewritten_path: str
    seconds: dict[str, float]
    plots: list[str]


def run_demo(experiment_dir: str = "runs/demo", max_steps: int = 100, train_batch_size: int = 8,
             eval_steps: int = 25, learning_rate: float = 1e-3, seed: int = 0, show_progress: bool = True,
             plots: bool = True) -> DemoResult:
    """Train, evaluate on the test split plus neutral text, and plot; returns the measurements."""
    t0 = time.perf_counter()
    model_path = embedded_model_path("mlm")
    t_model = time.perf_counter() - t0
    args = TrainingArguments(experiment_dir=experiment_dir, train_batch_size=train_batch_size, max_steps=max_steps,
                             eval_steps=eval_steps, learning_rate=learning_rate, seed=seed,
                             show_progress=show_progress)
    trainer = TextPredictionTrainer(model=model_path, data=load_demo_data(), args=args,
                                    target_classes=["3SG", "3PL"], eval_neutral_data=load_demo_neutral())
    t1 = time.perf_counter()
    trainer.train()
    t_train = time.perf_counter() - t1
    t2 = time.perf_counter()
    encoder = trainer.evaluate_encoder(split="test", max_size=250, return_df=plots)
    t_eval = time.perf_counter() - t2
    t3 = time.perf_counter()
    decoder = trainer.evaluate_decoder(target_class="3SG", lrs=DEMO_LRS)
    rewritten = trainer.rewrite_base_model(decoder_results=decoder, target_class="3SG",
                                           output_dir=f"{trainer.experiment_dir}/rewritten_3SG")
    t_dec = time.perf_counter() - t3
    paths = []
    if plots:
        paths.append(trainer.plot_probability_shifts(decoder, "3SG"))
        paths.append(trainer.plot_training_convergence())
        paths.append(trainer.plot_encoder_distributions(encoder_df=encoder.pop("encoder_df")))
    return DemoResult(trainer.experiment_dir, trainer.model_path, encoder, trainer.get_training_stats() or {},
                      decoder["3SG"], rewritten,
                      {"model_setup": t_model, "training": t_train, "encoder_evaluation": t_eval,
                       "decoder_evaluation": t_dec, "total": time.perf_counter() - t0}, paths)


def format_report(result: DemoResult) -> str:
    """A short plain-text table of the demo's measurements."""
    enc, train = result.encoder, result.training
    best = train.get("best_score_checkpoint") or {}
    lines = [
        "GRADIEND demo: 3SG (he/she/it) vs 3PL (they) on the embedded MiniLM masked LM",
        "-" * 72,
        f"{'test correlation':<38}{enc['correlation']:>+10.3f}",
        *[f"{'mean encoding ' + cls:<38}{value:>+10.3f}" for cls, value in enc["mean_by_class"].items()],
        *[f"{'mean encoding ' + kind.replace('_', ' '):<38}{value:>+10.3f}"
          for kind, value in enc["neutral_mean_by_type"].items()],
        f"{'test accuracy (±0.5 boundaries)':<38}{enc['accuracy']:>10.3f}",
        f"{'best validation correlation':<38}{best.get('correlation', float('nan')):>+10.3f}"
        f"  (step {best.get('global_step', '-')})",
        f"{'converged':<38}{train.get('convergence_info', {}).get('converged')!s:>10}",
        f"{'P(3SG) on 3PL rows: base':<38}{result.decoder['base_value']:>10.3f}",
        f"{'P(3SG) on 3PL rows: rewritten':<38}{result.decoder['value']:>10.3f}"
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
    ]
    return "\n".join(lines)
