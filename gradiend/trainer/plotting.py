"""The trainer's plot methods: thin calls into `gradiend.plots`, which draws from saved results only.

As in gradiend 0.2.x, `show` defaults to True (a no-op without a display: the file is saved either way)
and every method takes `title` (True default, False none, or a string), `figsize` and
`return_fig_ax=True` (returns `(fig, axes)` for further drawing; saved too); see each `gradiend.plots`
function for the plot's own options (`plot_mean_by_class`, `include_neutral`, `split_plot_mode`,
`color_by`, `label_name_mapping`, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
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
    get_training_record: Callable[[], Any]
    get_encodings: Callable[..., pd.DataFrame]

    # -- plots (functions of saved results; see gradiend.plots) -------------------------------------
    def plot_probability_shifts(self, decoder_results: dict[str, Any] | None = None, target_class: str | None = None,
                                increase_target_probabilities: bool = True, output: str | None = None,
                                show: bool = True, img_format: str = "png", **kwargs: Any) -> Any:
        """Target-class probability and LMS against the learning rate (default: the saved results)."""
        from gradiend.plots import plot_probability_shifts

        if target_class is None:
            suffix = "" if increase_target_probabilities else "_weaken"
            found = [c for c in self.pair if f"{c}{suffix}" in (decoder_results or {})]
            target_class = found[0] if found else self.pair[0]
        source: Any = decoder_results if decoder_results is not None else self.experiment_dir
        return plot_probability_shifts(source, target_class, increase_target_probabilities, output,
                                       directory=self.experiment_dir, show=show, img_format=img_format,
                                       **self._convergence_option(kwargs))

    def plot_training_convergence(self, output: str | None = None, show: bool = True, *,
                                  experiment_dir: str | None = None, img_format: str = "png", **kwargs: Any) -> Any:
        """Correlation, class means and loss per step, the best step marked; a run that did not converge says so
        in the title unless `highlight_non_convergence` (default: `TrainingArguments.highlight_non_convergence`)
        is False."""
        from gradiend.plots import plot_training_convergence

        kwargs.setdefault("highlight_non_convergence", self._args.highlight_non_convergence)

        stats = self.get_training_stats()
        if stats is None:
            raise RuntimeError("No training statistics yet; call train() first (or `gradiend train`)")
        return plot_training_convergence(stats, output, directory=experiment_dir or self.experiment_dir, show=show,
                                         img_format=img_format, **kwargs)

    def plot_encoder_distributions(self, encoder_df: pd.DataFrame | None = None, output: str | None = None,
                                   show: bool = True, split: str | Sequence[str] = "test", img_format: str = "png",
                                   **kwargs: Any) -> Any:
        """Distribution of encodings per class and neutral variant (default: the cached evaluation of `split`)."""
        from gradiend.plots import plot_encoder_distributions

        frame = encoder_df if encoder_df is not None else self.get_encodings(split=split)
        return plot_encoder_distributions(frame, self.pair, output, directory=self.experiment_dir,
                                          split=split_label(split), show=show, img_format=img_format,
                                          **self._convergence_option(kwargs))

    def plot_encoder_scatter(self, encoder_df: pd.DataFrame | None = None, output: str | None = None,
                             show: bool = True, split: str | Sequence[str] = "test", **kwargs: Any) -> str:
        """Interactive HTML scatter of the encodings (needs the `[interactive]` extra); a run that did not converge
        is marked in the title unless `highlight_non_convergence=False` (as for every plot here)."""
        from gradiend.plots import plot_encoder_scatter

        frame = encoder_df if encoder_df is not None else self.get_encodings(split=split)
        return plot_encoder_scatter(frame, self.pair, output, directory=self.experiment_dir, split=split_label(split),
                                    show=show, **self._convergence_option(kwargs))

    def _convergence_option(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """`highlight_non_convergence` (default: `TrainingArguments.highlight_non_convergence`) → the plot's
        `converged`: the run's verdict, so a run that did not converge is marked in the title (as in 0.2.x)."""
        highlight = kwargs.pop("highlight_non_convergence", None)
        highlight = self._args.highlight_non_convergence if highlight is None else bool(highlight)
        if highlight and "converged" not in kwargs:
            record = self.get_training_record()
            kwargs["converged"] = None if record is None else record.converged
        return kwargs

    def _autosave_training_convergence(self, args: TrainingArguments | None = None) -> None:
        """Training draws no plot: matplotlib stays off the training path (importing and drawing it took longer
        than a short run's evaluation). The convergence plot is drawn from `training.json` when asked:
        `plot_training_convergence()`, `gradiend train` (after the run), `gradiend report` and `write_report`."""
        args = args or self._args
        if args.experiment_dir is not None:
            logger.info("Training statistics saved; draw them with trainer.plot_training_convergence() "
                        "(or gradiend report %s)", self._experiment_of(args).root)


def split_label(split: str | Sequence[str]) -> str:
    """The split part of a plot's file name: the split, "all", or the listed splits joined by "_"."""
    if isinstance(split, str):
        return split
    names = list(split)
    return "all" if set(names) == {"train", "validation", "test"} else "_".join(map(str, names))
