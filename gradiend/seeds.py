"""Multi-seed training: run seeds until enough converge, pick the best, write `seeds/seed_report.json`.

The orchestration is independent of how one seed is trained or evaluated: the trainer passes
`train_seed(seed, directory) -> SeedTraining` and `eval_correlation(directory) -> float | None`.
Paths come from `ExperimentDir`; the report is a `SeedReport` record.

After a crash (say in seed 2) a rerun goes through the seeds in the same order: the trainer's
`train_seed` reuses seeds 0 and 1 as the interrupted run saved them (`SeedRun.used_cache`), seed 2
continues from its last resume checkpoint, and selection and report follow as usual (see
`gradiend.runs._Seeds` and `gradiend.resume`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradiend import distributed
from gradiend.arguments import TrainingArguments
from gradiend.experiment import SEED_REPORT, TRAINING_STATS, ExperimentDir, link_or_copy
from gradiend.records import ConvergenceInfo, SeedReport, SeedRun, TrainingRecord

logger = logging.getLogger(__name__)

__all__ = ["SEED_REPORT", "SeedReport", "SeedRun", "SeedTraining", "run_seeds_in", "seed_values"]


@dataclass
class SeedTraining:
    """What training one seed produced (its checkpoint is in the seed's directory)."""

    stats: TrainingRecord
    converged: bool
    reason: str | None
    used_cache: bool
    model: Any = None  # the trained ModelWithGradiend when still in memory


def seed_values(args: TrainingArguments) -> list[int]:
    """seed, seed+1, … (0, 1, … when seed is None)."""
    base = args.seed if args.seed is not None else 0
    return [base + i for i in range(args.max_seeds)]


def run_seeds_in(experiment: ExperimentDir, args: TrainingArguments,
                 train_seed: Callable[[int, Path], SeedTraining],
                 eval_correlation: Callable[[Path, SeedTraining], tuple[float | None, str | None]]) -> SeedReport:
    """Train seeds until `min_convergent_seeds` converged (or all tried); link the best into `experiment.model`.

    Returns the report (also written to `experiment.seed_report`). Seeds whose training passed
    the convergence check get an `eval_correlation` on the validation split; the selection score
    is that, else the training score (best in-training correlation). The best seed is the highest
    selection score among converged seeds, or among all seeds when none converged.
    """
    experiment.seeds.mkdir(parents=True, exist_ok=True)
    runs, early_stop = _train_seeds(experiment, args, train_seed, eval_correlation)
    best = _best_run(runs)
    report = _seed_report(args, runs, best, early_stop)
    _link_best(experiment, args, report, best)
    experiment.write_json(experiment.seed_report, report)
    from gradiend.topk import SEED_STABILITY_FILE, write_seed_stability

    if distributed.may_write():  # rank 0's file; it reads every seed's whole checkpoint, which other ranks never hold
        write_seed_stability(experiment.seeds / SEED_STABILITY_FILE, runs, args.seed_stability_topk,
                             args.seed_stability_part, args.min_convergent_seeds)  # before _retain deletes checkpoints
    _retain(runs, best, args)
    logger.info("Best seed %d (selection score %s) linked into %s; report in %s", best.seed, best.selection_score,
                experiment.model, experiment.seed_report)
    _check_seed_stability(report, args)
    return report


def _check_seed_stability(report: SeedReport, args: TrainingArguments) -> None:
    """`analyze_seed_stability`: a run meant for comparing seeds fails without `min_convergent_seeds` of them."""
    if not args.analyze_seed_stability:
        return
    if report.convergent_count < args.min_convergent_seeds:
        raise RuntimeError(f"analyze_seed_stability=True needs {args.min_convergent_seeds} convergent seed(s), but "
                           f"{report.convergent_count} of {len(report.runs)} converged (seeds/seed_report.json); "
                           f"raise max_seeds, lower convergent_score_threshold or set analyze_seed_stability=False")
    if args.min_convergent_seeds == 1:
        logger.warning("analyze_seed_stability=True with min_convergent_seeds=1: one convergent seed has no spread "
                       "to analyse; set min_convergent_seeds >= 2 to compare seeds")


def _train_seeds(experiment: ExperimentDir, args: TrainingArguments,
                 train_seed: Callable[[int, Path], SeedTraining],
                 eval_correlation: Callable[[Path, SeedTraining], tuple[float | None, str | None]],
                 ) -> tuple[list[SeedRun], str | None]:
    """Train the seeds in order until enough converged: (the runs, the early-stop reason or None)."""
    metric, threshold = args.convergent_metric, args.convergent_score_threshold
    runs: list[SeedRun] = []
    for seed in seed_values(args):
        run = _train_one_seed(experiment, args, seed, train_seed, eval_correlation)
        runs.append(run)
        convergent = sum(r.converged for r in runs)
        logger.info("Seed %d: %s (%s=%s); %d of %d required seeds converged", seed,
                    "converged" if run.converged else f"not converged ({run.reason})", metric,
                    run.convergence_metric_value, convergent, args.min_convergent_seeds)
        if convergent >= args.min_convergent_seeds:
            return runs, (f"min_convergent_seeds reached: {convergent} >= {args.min_convergent_seeds} "
                          f"(metric={metric}, threshold={threshold})")
    return runs, None


def _train_one_seed(experiment: ExperimentDir, args: TrainingArguments, seed: int,
                    train_seed: Callable[[int, Path], SeedTraining],
                    eval_correlation: Callable[[Path, SeedTraining], tuple[float | None, str | None]]) -> SeedRun:
    """Train one seed in its directory and score it (validation correlation only when it converged)."""
    t0 = time.perf_counter()
    directory = experiment.seed_run(seed)
    result = train_seed(seed, directory)
    stats = result.stats
    score = stats.best_correlation
    best_step = stats.best_score_checkpoint.global_step if stats.best_score_checkpoint is not None else None
    eval_corr, eval_source = eval_correlation(directory, result) if result.converged else (None, None)
    return SeedRun(
        seed=seed, output_dir=str(directory), trained=not result.used_cache, used_cache=result.used_cache,
        training_score=score, eval_correlation=eval_corr, eval_correlation_source=eval_source,
        selection_score=eval_corr if eval_corr is not None else score, convergence_metric=args.convergent_metric,
        convergence_metric_value=stats.convergence_metric_value(args.convergent_metric),
        best_checkpoint_global_step=best_step,
        threshold=args.convergent_score_threshold, converged=result.converged, reason=result.reason,
        seconds=time.perf_counter() - t0)


def _best_run(runs: Sequence[SeedRun]) -> SeedRun:
    """Highest selection score among the converged runs (all runs when none converged); the first if unscored."""
    pool = [r for r in runs if r.converged] or list(runs)
    scored = [r for r in pool if r.selection_score is not None]
    return max(scored, key=lambda r: r.selection_score) if scored else pool[0]


def _seed_report(args: TrainingArguments, runs: list[SeedRun], best: SeedRun, early_stop: str | None) -> SeedReport:
    """The `SeedReport` of the tried runs with `best` selected."""
    convergent_runs = [r for r in runs if r.converged]
    return SeedReport(
        convergence_metric=args.convergent_metric, threshold=args.convergent_score_threshold,
        convergent_mean_by_class_threshold=args.convergent_mean_by_class_threshold,
        min_convergent_seeds=args.min_convergent_seeds, max_seeds=args.max_seeds,
        seeds_tried=[r.seed for r in runs], convergent_count=len(convergent_runs),
        convergent_seeds=[r.seed for r in convergent_runs], best_seed=best.seed,
        best_selection_score=best.selection_score,
        best_seed_selection_strategy=("max selection_score among convergent seeds" if convergent_runs
                                      else "max selection_score among all seeds (none converged)"),
        early_stop_reason=early_stop, runs=runs)


def _link_best(experiment: ExperimentDir, args: TrainingArguments, report: SeedReport, best: SeedRun) -> None:
    """Replace `experiment.model` with the best seed's checkpoint; its training record gets the seed summary."""
    with experiment.replace_dir(experiment.model, overwrite=args.overwrite_output_dir) as tmp:
        # hard links: the checkpoint is written once, however many seeds' directories are kept
        shutil.copytree(best.output_dir, tmp, dirs_exist_ok=True, copy_function=link_or_copy)
        best_stats = ExperimentDir(experiment.root, model_dir=tmp).load_training()
        best_stats.convergence_info = dataclasses.replace(
            best_stats.convergence_info or ConvergenceInfo(), converged=bool(report.convergent_count),
            convergent_count=report.convergent_count, min_convergent_seeds=args.min_convergent_seeds,
            convergence_metric=args.convergent_metric, threshold=args.convergent_score_threshold,
            best_seed=best.seed, seeds_tried=report.seeds_tried)
        experiment.write_json(tmp / TRAINING_STATS, best_stats)


def _retain(runs: Sequence[SeedRun], best: SeedRun, args: TrainingArguments) -> None:
    """Delete seed checkpoints (weights and config; training.json stays) as `saved_seed_runs` says,
    unless `keep_seed_runs`. The best seed always lives on in the model directory."""
    if args.keep_seed_runs or args.saved_seed_runs == "all_tried" or not distributed.may_write():
        return  # under torchrun only rank 0 deletes (the files are its own)
    for run in runs:
        if args.saved_seed_runs == "all_convergent" and run.converged:
            continue
        for path in Path(run.output_dir).iterdir():
            if path.name != TRAINING_STATS and path.is_file():
                path.unlink()
