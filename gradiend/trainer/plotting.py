"""The trainer's plot methods: thin calls into `gradiend.plots`, which draws from saved results only."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from gradiend.arguments import TrainingArguments
    from gradiend.experiment import ExperimentDir

logger = logging.getLogger(__name__)


class PlotMethods:
    """`plot_training_convergence`, `plot_encoder_distributions`, `plot_encoder_scatter`, `plot_probability_shifts`."""

    experiment_dir: str
    pair: tuple[str, str]

    _args: TrainingArguments

    # provided by Trainer
    _experiment_of: Callable[[TrainingArguments], ExperimentDir]
    get_training_stats: Callable[[], dict[str, Any] | None]
    get_encodings: Callable[..., pd.DataFrame]

    # -- plots (functions of saved results; see gradiend.plots) -------------------------------------
    def plot_probability_shifts(self, decoder_results: dict[str, Any] | None = None, target_class: str | None = None,
                                increase_target_probabilities: bool = True, output: str | None = None,
                                show: bool = False, img_format: str = "png", **kwargs: Any) -> str:
        """Target-class probability and LMS against the learning rate (default: the saved results)."""
        from gradiend.plots import plot_probability_shifts

        if target_class is None:
            suffix = "" if increase_target_probabilities else "_weaken"
            found = [c for c in self.pair if f"{c}{suffix}" in (decoder_results or {})]
            target_class = found[0] if found else self.pair[0]
        source: Any = decoder_results if decoder_results is not None else self.experiment_dir
        return plot_probability_shifts(source, target_class, increase_target_probabilities, output,
                                       directory=self.experiment_dir, show=show, img_format=img_format, **kwargs)

    def plot_training_convergence(self, output: str | None = None, show: bool = False, *,
                                  experiment_dir: str | None = None, img_format: str = "png", **kwargs: Any) -> str:
        """Correlation, class means and loss per step, the best step marked."""
        from gradiend.plots import plot_training_convergence

        stats = self.get_training_stats()
        if stats is None:
            raise RuntimeError("No training statistics yet; call train() first (or `gradiend train`)")
        return plot_training_convergence(stats, output, directory=experiment_dir or self.experiment_dir, show=show,
                                         img_format=img_format, **kwargs)

    def plot_encoder_distributions(self, encoder_df: pd.DataFrame | None = None, output: str | None = None,
                                   show: bool = False, split: str = "test", img_format: str = "png",
                                   **kwargs: Any) -> str:
        """Distribution of encodings per class and neutral variant (default: the cached evaluation of `split`)."""
        from gradiend.plots import plot_encoder_distributions

        frame = encoder_df if encoder_df is not None else self.get_encodings(split=split)
        return plot_encoder_distributions(frame, self.pair, output, directory=self.experiment_dir, split=split,
                                          show=show, img_format=img_format, **kwargs)

    def plot_encoder_scatter(self, encoder_df: pd.DataFrame | None = None, output: str | None = None,
                             show: bool = False, split: str = "test", **kwargs: Any) -> str:
        """Interactive HTML scatter of the encodings (needs the `[interactive]` extra)."""
        from gradiend.plots import plot_encoder_scatter

        frame = encoder_df if encoder_df is not None else self.get_encodings(split=split)
        return plot_encoder_scatter(frame, self.pair, output, directory=self.experiment_dir, split=split, show=show,
                                    **kwargs)

    def _autosave_training_convergence(self, args: TrainingArguments | None = None) -> str | None:
        """Save the convergence plot after training when `experiment_dir` is set; never fails the run."""
        args = args or self._args
        if args.experiment_dir is None:
            return None
        try:
            path = self.plot_training_convergence(show=False, experiment_dir=str(self._experiment_of(args).root))
        except ImportError as err:
            logger.info("Training convergence plot skipped: %s", err)
            return None
        except Exception as err:  # a plot must never fail a finished training run
            logger.warning("Could not save the training convergence plot: %s", err)
            return None
        logger.info("Saved training convergence plot %s", path)
        return path
