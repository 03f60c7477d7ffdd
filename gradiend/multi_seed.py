"""`trainer.multi_seed()`: evaluate and plot every seed of a multi-seed run, aggregated over the seeds.

The view reads `seeds/seed_report.json` and runs each method once per selected seed checkpoint
(`best`, `all_convergent` or `all_tried`), through a copy of the trainer attached to that seed with
its own evaluation directory (`seeds/evaluations/seed_<s>/`), so the main run's caches and decoder
selections are never touched. One seed's model is loaded at a time and unloaded after its call.

Results: numbers at the top level (and inside dicts such as `mean_by_class` or a decoder
summary) are aggregated over the seeds (`aggregate`: mean, median, min, max); `result["seeds"]`
holds `values` (the seeds), `stats` (each aggregated number's dispersion: std, range or min/max,
when `dispersion` is not "none") and, with `return_per_seed`, every seed's full result. Plot
methods return `{seed: path}`.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradiend.records import SeedReport
    from gradiend.trainer.trainer import Trainer

logger = logging.getLogger(__name__)

SELECTIONS = ("best", "all_convergent", "all_tried")
AGGREGATES: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": statistics.fmean, "median": statistics.median, "min": min, "max": max}
DISPERSIONS = ("none", "std", "range", "minmax")
EVALUATIONS = ("evaluate_encoder", "evaluate_decoder", "evaluate", "evaluate_base_model", "get_training_stats")
PLOTS = ("plot_training_convergence", "plot_encoder_distributions", "plot_encoder_scatter", "plot_probability_shifts")
_SKIP = frozenset({"encoder_df", "grid", "plot_path", "plot_paths"})
EVALUATION_DIR = "evaluations"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _dispersion(values: Sequence[float], mode: str) -> Any:
    if mode == "std":
        return statistics.pstdev(values)
    if mode == "range":
        return max(values) - min(values)
    return {"min": min(values), "max": max(values)}


def aggregate_results(per_seed: Mapping[int, Mapping[str, Any]], aggregate: str = "mean", dispersion: str = "none"
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(aggregated result, dispersion stats) of per-seed result dicts: numbers at the top level and one dict deep.

    A number missing or not finite in some seed is aggregated over the seeds that have it.
    """
    results = list(per_seed.values())
    combine = AGGREGATES[aggregate]
    out: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    keys = list(dict.fromkeys(k for r in results for k in r if k not in _SKIP))
    for key in keys:
        values = [r.get(key) for r in results]
        numbers = [v for v in values if _number(v)]
        if numbers:
            out[key] = combine(numbers)
            if dispersion != "none":
                stats[key] = _dispersion(numbers, dispersion)
        elif all(isinstance(v, Mapping) for v in values if v is not None):
            inner, inner_stats = aggregate_results(
                {i: v for i, v in enumerate(values) if isinstance(v, Mapping)}, aggregate, dispersion)
            if inner:
                out[key] = inner
            if inner_stats:
                stats[key] = inner_stats
    return out, stats


class MultiSeedView:
    """Evaluation and plot methods of a trainer, run on each selected seed checkpoint (see the module doc)."""

    def __init__(self, trainer: Trainer, *, selection: str = "all_convergent", aggregate: str = "mean",
                 dispersion: str = "none", return_per_seed: bool = False) -> None:
        for name, value, allowed in (("selection", selection, SELECTIONS), ("aggregate", aggregate, tuple(AGGREGATES)),
                                     ("dispersion", dispersion, DISPERSIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
        if not isinstance(return_per_seed, bool):
            raise TypeError(f"return_per_seed must be a bool, got {type(return_per_seed).__name__}")
        self._trainer, self.selection, self.aggregate = trainer, selection, aggregate
        self.dispersion, self.return_per_seed = dispersion, return_per_seed
        self.report = _report(trainer)
        self.seed_paths = _seed_paths(self.report, selection, trainer)

    @property
    def seeds(self) -> list[int]:
        return list(self.seed_paths)

    def __repr__(self) -> str:
        return f"MultiSeedView(seeds={self.seeds}, selection={self.selection!r}, aggregate={self.aggregate!r})"

    def seed_trainer(self, seed: int) -> Trainer:
        """A copy of the trainer attached to `seed`'s checkpoint, evaluating into its own directory."""
        if seed not in self.seed_paths:
            raise KeyError(f"Seed {seed} is not in this view; it has {self.seeds}")
        path = self.seed_paths[seed]
        seed_trainer = copy.copy(self._trainer)
        evaluation_dir = path.parent / EVALUATION_DIR / path.name
        seed_trainer._args = self._trainer.training_args.replace(experiment_dir=str(evaluation_dir),
                                                                 output_dir=str(path))
        seed_trainer.run_id, seed_trainer._temp_dir, seed_trainer._layout = None, None, None
        seed_trainer._pre_pruned = seed_trainer._explicit_pre_prune = None
        seed_trainer._attach(path, None)
        return seed_trainer

    def _per_seed(self, method: str, kwargs: Mapping[str, Any]) -> dict[int, Any]:
        out: dict[int, Any] = {}
        for seed in self.seeds:
            seed_trainer = self.seed_trainer(seed)
            try:
                out[seed] = getattr(seed_trainer, method)(**kwargs)
            finally:
                seed_trainer._model_instance = None  # one seed's model in memory at a time
            logger.info("multi_seed: %s done for seed %d", method, seed)
        return out

    def _evaluation(self, method: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        per_seed = self._per_seed(method, kwargs)
        result, stats = aggregate_results(per_seed, self.aggregate, self.dispersion)
        result["seeds"] = {"values": self.seeds, "aggregate": self.aggregate, "dispersion": self.dispersion,
                           "stats": stats}
        if self.return_per_seed:
            result["seeds"]["per_seed"] = per_seed
        return result

    def seed_stability_topk(self, topk: int | float | None = None, *, part: str | None = None) -> dict[str, Any]:
        """Top-k overlap of this view's seeds (default top-k and part: `seed_stability_topk/_part` of the run)."""
        from gradiend.topk import _stability

        args = self._trainer.training_args
        topk = topk if topk is not None else args.seed_stability_topk or 1000
        if len(self.seed_paths) < 2:
            raise ValueError(f"Seed stability compares at least two seeds; this view has {self.seeds} "
                             f"(selection={self.selection!r})")
        checkpoints = {f"seed_{s}": p for s, p in self.seed_paths.items()}
        return _stability(checkpoints, topk, part or args.seed_stability_part)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name in EVALUATIONS:
            return lambda **kwargs: self._evaluation(name, kwargs)
        if name in PLOTS:
            return lambda **kwargs: self._per_seed(name, kwargs)
        raise AttributeError(f"MultiSeedView has no method {name!r}; it runs {list(EVALUATIONS + PLOTS)} per seed")


def _report(trainer: Trainer) -> SeedReport:
    report = trainer.experiment.load_seed_report()
    if report is None:
        raise FileNotFoundError(f"{trainer.experiment.seed_report} does not exist; multi_seed() needs a multi-seed "
                                f"run (TrainingArguments(max_seeds > 1)) trained first")
    return report


def _seed_paths(report: SeedReport, selection: str, trainer: Trainer) -> dict[int, Path]:
    """Checkpoint directory of every selected seed; a selected seed whose checkpoint was not kept is an error."""
    from gradiend.model import is_checkpoint

    if selection == "best":
        runs = [r for r in report.runs if r.seed == report.best_seed]
    else:
        runs = [r for r in report.runs if selection == "all_tried" or r.converged]
    if not runs:
        raise ValueError(f"No seed matches selection={selection!r} (seeds tried {report.seeds_tried}, converged "
                         f"{report.convergent_seeds}); use selection='all_tried'")
    missing = [r.seed for r in runs if not (r.output_dir and is_checkpoint(r.output_dir))]
    if missing and selection == "best":
        return {runs[0].seed: Path(trainer.experiment.model)}  # the best seed lives on in model/
    if missing:
        raise FileNotFoundError(f"The checkpoints of seeds {missing} were not kept (saved_seed_runs="
                                f"{trainer.training_args.saved_seed_runs!r}); train with saved_seed_runs='all_tried' "
                                f"(or 'all_convergent') to evaluate them, or use selection='best'")
    return {r.seed: Path(r.output_dir) for r in runs}
