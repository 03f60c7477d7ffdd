"""The trainer's analysis and sharing methods: top-k weight sets and Hub upload, one call each."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

    from gradiend.experiment import ExperimentDir
    from gradiend.model_with_gradiend import ModelWithGradiend
    from gradiend.multi_seed import MultiSeedView
    from gradiend.topk import Part


class AnalysisMethods:
    """`get_weight_importance`, `get_topk_weights`, `get_topk_feature_metadata`, `export_topk_features`,
    `seed_stability_topk` (see `gradiend.topk`), `multi_seed` (see `gradiend.multi_seed`) and `push_to_hub`
    (see `gradiend.hub`)."""

    experiment_dir: str

    # provided by Trainer
    get_model: Callable[..., ModelWithGradiend]
    experiment: ExperimentDir

    def get_weight_importance(self, part: Part = "decoder-weight") -> torch.Tensor:
        """|weight| per selected base-model coordinate of the trained GRADIEND (`part` picks which weights)."""
        from gradiend.topk import get_weight_importance

        return get_weight_importance(self.get_model(), part)

    def get_topk_weights(self, part: Part = "decoder-weight", topk: int | float = 1000) -> list[int]:
        """Base-model-global indices of the `topk` most important coordinates (a fraction when < 1)."""
        from gradiend.topk import get_topk_weights

        return get_topk_weights(self.get_model(), part, topk)

    def get_topk_feature_metadata(self, part: Part = "decoder-weight", topk: int | float = 1000) -> Any:
        """Parameter name, index and weight of each top-k coordinate."""
        from gradiend.topk import get_topk_feature_metadata

        return get_topk_feature_metadata(self.get_model(), part, topk)

    def export_topk_features(self, output_path: str | os.PathLike, *, part: Part = "decoder-weight",
                             topk: int | float = 1000) -> Any:
        """Write the top-k coordinates to `output_path` (.json or .csv)."""
        from gradiend.topk import export_topk_features

        return export_topk_features(self.get_model(), output_path, part=part, topk=topk)

    def seed_stability_topk(self, topk: int | float = 1000, *, part: Part = "decoder-weight",
                            selection: Literal["all_convergent", "all"] = "all_convergent") -> dict[str, Any]:
        """Top-k overlap across the saved seed checkpoints of this experiment's multi-seed run."""
        from gradiend.topk import seed_stability_topk

        return seed_stability_topk(self.experiment_dir, topk, part=part, selection=selection)

    def multi_seed(self, *, selection: Literal["best", "all_convergent", "all_tried"] = "all_convergent",
                   aggregate: Literal["mean", "median", "min", "max"] = "mean",
                   dispersion: Literal["none", "std", "range", "minmax"] | None = None,
                   return_per_seed: bool = False) -> MultiSeedView:
        """A view running evaluate_*/plot_* once per seed of the multi-seed run, aggregated (`gradiend.multi_seed`).

        `dispersion` defaults to "std" (each aggregated number's spread in `result["seeds"]["stats"]`).
        """
        from gradiend.multi_seed import MultiSeedView

        return MultiSeedView(self, selection=selection, aggregate=aggregate,  # type: ignore[arg-type]
                             dispersion="std" if dispersion is None else dispersion, return_per_seed=return_per_seed)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    revision: str | None = None, commit_message: str = "Upload GRADIEND checkpoint") -> str:
        """Upload the trained GRADIEND with its results and a model card to the Hub; returns the commit URL."""
        from gradiend.hub import push_to_hub

        return push_to_hub(self.experiment, repo_id, private=private, token=token, revision=revision,
                           commit_message=commit_message)
