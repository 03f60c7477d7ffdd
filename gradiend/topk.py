"""Top-k weight sets of trained GRADIENDs: which base-model coordinates a feature uses most, and how
much two GRADIENDs (other features, other seeds) agree on them.

Importance per GRADIEND input (the "part", as for post-pruning): `decoder-weight` Σ_j |W_d[i, j]|,
`encoder-weight` Σ_j |W_e[j, i]|, `decoder-bias` |b_d[i]|, `decoder-sum` |Σ_j W_d[i, j] + b_d[i]|.
Values are in base-parameter units (the decoder's target scale and the encoder's input scale
applied), so importances of different GRADIENDs are comparable; the ranking is that of the raw
weights. Ties go to the lower input index, so a top-k set is deterministic.

A coordinate is `(parameter name, flat index within the parameter)`; `get_topk_weights` returns
the reference's "base-global" integers (offset of the parameter among the mapped parameters plus the
flat index). Overlaps compare coordinates, so GRADIENDs pruned differently are still comparable.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from gradiend.experiment import atomic_write_bytes

if TYPE_CHECKING:
    from gradiend.model import GradiendModel

logger = logging.getLogger(__name__)

Part = Literal["decoder-weight", "encoder-weight", "decoder-bias", "decoder-sum"]
PARTS: tuple[str, ...] = ("decoder-weight", "encoder-weight", "decoder-bias", "decoder-sum")
OverlapValue = Literal["intersection", "intersection_frac", "jaccard"]
OVERLAP_VALUES: tuple[str, ...] = ("intersection", "intersection_frac", "jaccard")
#: the seed-stability analysis a multi-seed run writes into its seeds directory
SEED_STABILITY_FILE = "seed_stability_topk.json"
Coordinate = tuple[str, int]
#: anything a top-k set can be read from: a loaded model, a checkpoint or experiment directory, a trainer
ModelLike = Any


@dataclass(frozen=True)
class _Mapped:
    """A GRADIEND with its parameter map: names, full shapes, kept flat indices (None = all) per parameter."""

    gradiend: GradiendModel
    names: list[str]
    shapes: list[tuple[int, ...]]
    local_index: list[np.ndarray | None]


def _check_part(part: str) -> None:
    if part not in PARTS:
        raise ValueError(f"part must be one of {list(PARTS)}, got {part!r}")


def _from_path(path: Path) -> GradiendModel:
    from gradiend.model import GradiendModel, is_checkpoint
    from gradiend.reference_format import is_reference_checkpoint, read_reference_gradiend

    if not path.is_dir():
        raise FileNotFoundError(f"No GRADIEND checkpoint or experiment directory at {path}")
    if is_checkpoint(path):
        return GradiendModel.from_pretrained(path)
    if is_reference_checkpoint(path):
        return read_reference_gradiend(path)
    from gradiend.experiment import ExperimentDir

    model_dir = ExperimentDir.find(path).model
    if is_checkpoint(model_dir):
        return GradiendModel.from_pretrained(model_dir)
    raise FileNotFoundError(f"{path} holds no GRADIEND checkpoint (neither a checkpoint, a reference checkpoint, nor "
                            f"an experiment directory with {model_dir.name}/); train one first")


def as_gradiend(model: ModelLike) -> GradiendModel:
    """The `GradiendModel` of a ModelWithGradiend, trainer, checkpoint/experiment directory or GradiendModel."""
    from gradiend.model import GradiendModel
    from gradiend.model_with_gradiend import ModelWithGradiend

    if isinstance(model, GradiendModel):
        gradiend = model
    elif isinstance(model, ModelWithGradiend):
        gradiend = model.gradiend
    elif isinstance(model, (str, os.PathLike)):
        gradiend = _from_path(Path(model))
    else:
        from gradiend.trainer.trainer import Trainer

        if not isinstance(model, Trainer):
            raise TypeError(f"Expected a ModelWithGradiend, GradiendModel, Trainer or checkpoint path, got "
                            f"{type(model).__name__}")
        gradiend = model.get_model().gradiend
    if gradiend.shape_only:
        raise ValueError("This GRADIEND is a shape-only template without weights; train or load one first")
    return gradiend


def _mapped(model: ModelLike) -> _Mapped:
    from gradiend.params import ParamMap

    gradiend = as_gradiend(model)
    param_map = ParamMap.from_json(gradiend.config.param_map, gradiend.param_index)
    return _Mapped(gradiend, param_map.names, [s.shape for s in param_map.specs],
                   [None if s.index is None else s.index.numpy() for s in param_map.specs])


def get_weight_importance(model: ModelLike, part: Part = "decoder-weight") -> torch.Tensor:
    """Importance of every GRADIEND input (CPU float32 tensor of length input_dim), see the module doc."""
    from gradiend.pruning import weight_importance

    _check_part(part)
    gradiend = as_gradiend(model)
    with torch.no_grad():
        raw = weight_importance(gradiend, part).detach().float().cpu()
        scale = gradiend.input_scale if part == "encoder-weight" else gradiend.target_scale
        return raw / float(scale) if part == "encoder-weight" else raw * float(scale)


def topk_count(topk: int | float, n: int) -> int:
    """How many coordinates `topk` means out of `n`: an int count (at most n) or a fraction in (0, 1] (rounded up)."""
    if isinstance(topk, bool) or not isinstance(topk, (int, float)):
        raise TypeError(f"topk must be an int count or a float fraction in (0, 1], got {topk!r}")
    if isinstance(topk, float):
        if not (math.isfinite(topk) and 0.0 < topk <= 1.0):
            raise ValueError(f"topk as a fraction must be in (0, 1], got {topk}; use an int for a count")
        return max(1, math.ceil(topk * n))
    if topk < 1:
        raise ValueError(f"topk as a count must be at least 1, got {topk}")
    if topk > n:
        logger.info("topk=%d exceeds the GRADIEND's %d inputs; using all of them", topk, n)
    return min(topk, n)


def _topk_local(mapped: _Mapped, part: str, topk: int | float) -> tuple[np.ndarray, np.ndarray]:
    """(GRADIEND input indices by descending importance, their importance)."""
    importance = get_weight_importance(mapped.gradiend, part)  # type: ignore[arg-type]
    if not bool(torch.isfinite(importance).all()):
        raise FloatingPointError("The GRADIEND weights have NaN/inf entries; its top-k set is undefined")
    k = topk_count(topk, importance.numel())
    order = torch.argsort(importance, descending=True, stable=True)[:k]
    return order.numpy(), importance[order].numpy()


def _locate(mapped: _Mapped, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position of the parameter in the map, flat index within it) of GRADIEND input indices."""
    counts = np.array([int(np.prod(s)) if i is None else len(i) for s, i in zip(mapped.shapes, mapped.local_index,
                                                                               strict=True)])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    which = np.searchsorted(starts, local, side="right") - 1
    within = local - starts[which]
    flat = np.array([within[j] if mapped.local_index[w] is None else mapped.local_index[w][within[j]]
                     for j, w in enumerate(which)], dtype=np.int64)
    return which, flat


def get_topk_coordinates(model: ModelLike, part: Part = "decoder-weight", topk: int | float = 1000
                         ) -> list[Coordinate]:
    """The top-k coordinates `(parameter name, flat index)`, most important first."""
    _check_part(part)
    mapped = _mapped(model)
    local, _ = _topk_local(mapped, part, topk)
    which, flat = _locate(mapped, local)
    return [(mapped.names[w], int(f)) for w, f in zip(which, flat, strict=True)]


def get_topk_weights(model: ModelLike, part: Part = "decoder-weight", topk: int | float = 1000) -> list[int]:
    """The top-k base-global indices, most important first (the reference's return value).

    Base-global index = the parameter's offset among the mapped parameters (full sizes, map order)
    plus the flat index within it. Prefer `get_topk_coordinates` to compare GRADIENDs whose
    parameter maps differ.
    """
    _check_part(part)
    mapped = _mapped(model)
    local, _ = _topk_local(mapped, part, topk)
    which, flat = _locate(mapped, local)
    offsets = np.concatenate([[0], np.cumsum([int(np.prod(s)) for s in mapped.shapes])[:-1]])
    return [int(offsets[w] + f) for w, f in zip(which, flat, strict=True)]


def get_topk_feature_metadata(model: ModelLike, part: Part = "decoder-weight", topk: int | float = 1000
                              ) -> list[dict[str, Any]]:
    """One row per top-k coordinate: rank, part, importance, local_input_index, base_global_index,
    param, shape, flat_index and coords (the index tuple within the parameter)."""
    _check_part(part)
    mapped = _mapped(model)
    local, importance = _topk_local(mapped, part, topk)
    which, flat = _locate(mapped, local)
    offsets = np.concatenate([[0], np.cumsum([int(np.prod(s)) for s in mapped.shapes])[:-1]])
    rows = []
    for rank, (i, w, f, value) in enumerate(zip(local, which, flat, importance, strict=True), start=1):
        shape = mapped.shapes[w]
        rows.append({"rank": rank, "part": part, "importance": float(value), "local_input_index": int(i),
                     "base_global_index": int(offsets[w] + f), "param": mapped.names[w], "shape": list(shape),
                     "flat_index": int(f), "coords": [int(c) for c in np.unravel_index(int(f), shape)]})
    return rows


def export_topk_features(model: ModelLike, output_path: str | os.PathLike, *, part: Part = "decoder-weight",
                         topk: int | float = 1000) -> list[dict[str, Any]]:
    """Write `get_topk_feature_metadata` to a .json or .csv file (atomically); returns the rows."""
    path = Path(output_path)
    if path.suffix.lower() not in (".json", ".csv"):
        raise ValueError(f"export_topk_features writes .json or .csv files, got {path.name!r}")
    rows = get_topk_feature_metadata(model, part, topk)
    if path.suffix.lower() == ".json":
        data = json.dumps(rows, indent=1).encode()
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "shape": "x".join(map(str, r["shape"])), "coords": ",".join(map(str, r["coords"]))}
                         for r in rows)
        data = buffer.getvalue().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return rows


def _named_sets(models: Mapping[str, Any] | Sequence[Any], part: str, topk: int | float) -> dict[str, frozenset]:
    """Top-k coordinate sets by name; a given set (or list) of coordinates is used as it is."""
    if isinstance(models, Mapping):
        items = list(models.items())
    elif isinstance(models, (str, os.PathLike)) or not isinstance(models, Sequence):
        raise TypeError("Pass several models: a list or a dict name → model (or → set of coordinates)")
    else:
        items = [(_default_name(m, i), m) for i, m in enumerate(models)]
    names = [str(n) for n, _ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"Model names must be unique, got {names}; pass a dict name → model")
    out = {}
    for name, model in items:
        if isinstance(model, (set, frozenset)):
            out[str(name)] = frozenset(model)
        else:
            out[str(name)] = frozenset(get_topk_coordinates(model, part, topk))  # type: ignore[arg-type]
    return out


def _default_name(model: Any, i: int) -> str:
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        return path.name if path.name != "model" else path.parent.name
    return f"model_{i}"


def topk_overlap(models: Mapping[str, Any] | Sequence[Any], topk: int | float = 1000, *,
                 part: Part = "decoder-weight", value: OverlapValue = "intersection") -> dict[str, Any]:
    """Pairwise overlap of the models' top-k sets.

    `models`: a list or a dict name → model/checkpoint path/trainer, or → a ready set of
    coordinates. Returns `model_ids`, `matrix` (the chosen `value`: "intersection" = common
    coordinates, "intersection_frac" = that over the smaller set, "jaccard" = over the union),
    all three matrices under their names, `sizes`, `topk`, `part` and `sets` (name → coordinates).
    """
    _check_part(part)
    if value not in OVERLAP_VALUES:
        raise ValueError(f"value must be one of {list(OVERLAP_VALUES)}, got {value!r}")
    sets = _named_sets(models, part, topk)
    if len(sets) < 2:
        raise ValueError(f"topk_overlap compares at least two models, got {len(sets)}")
    ids = list(sets)
    n = len(ids)
    inter, frac, jac = (np.zeros((n, n)) for _ in range(3))
    for (i, a), (j, b) in itertools.product(enumerate(ids), repeat=2):
        common = len(sets[a] & sets[b])
        union = len(sets[a] | sets[b])
        smaller = min(len(sets[a]), len(sets[b]))
        inter[i, j] = common
        frac[i, j] = common / smaller if smaller else 0.0
        jac[i, j] = common / union if union else 0.0
    matrices = {"intersection": inter.astype(int).tolist(), "intersection_frac": frac.tolist(),
                "jaccard": jac.tolist()}
    return {"model_ids": ids, "matrix": matrices[value], "value": value, **matrices,
            "sizes": {k: len(v) for k, v in sets.items()}, "topk": topk, "part": part, "sets": sets}


def _seed_checkpoints(experiment_dir: str | os.PathLike, selection: str) -> dict[str, Path]:
    from gradiend.experiment import ExperimentDir
    from gradiend.model import is_checkpoint

    experiment = ExperimentDir.find(experiment_dir)
    report = experiment.load_seed_report()
    if report is None:
        raise FileNotFoundError(f"{experiment.root} has no seeds/seed_report.json; seed stability needs a multi-seed "
                                f"run (max_seeds > 1)")
    runs = [r for r in report.runs if selection == "all" or r.converged]
    found = {f"seed_{r.seed}": Path(r.output_dir) for r in runs if r.output_dir and is_checkpoint(r.output_dir)}
    if len(found) < 2:
        kept = sorted(found) or "none"
        raise ValueError(f"Seed stability compares at least two saved seed checkpoints; {experiment.root} has {kept} "
                         f"among the {'converged' if selection != 'all' else 'tried'} seeds "
                         f"{[r.seed for r in runs]}. Train with saved_seed_runs='all_tried' (or keep_seed_runs=True) "
                         f"or pass selection='all'.")
    return found


def _stability(checkpoints: Mapping[str, Path], topk: int | float, part: str) -> dict[str, Any]:
    """`topk_overlap` (Jaccard) of seed checkpoints plus the stability summary numbers."""
    payload = topk_overlap({name: str(path) for name, path in checkpoints.items()}, topk, part=part, value="jaccard")
    jac = np.array(payload["jaccard"])
    pairs = jac[np.triu_indices(len(jac), k=1)]
    sets = list(payload["sets"].values())
    payload.update({"seeds": list(checkpoints), "mean_pairwise_jaccard": float(pairs.mean()),
                    "min_pairwise_jaccard": float(pairs.min()),
                    "common_to_all": len(frozenset.intersection(*sets)), "union_size": len(frozenset.union(*sets))})
    return payload


def seed_stability_topk(experiment_dir: str | os.PathLike, topk: int | float = 1000, *,
                        part: Part = "decoder-weight", selection: Literal["all_convergent", "all"] = "all_convergent",
                        ) -> dict[str, Any]:
    """How stable the top-k set is across the seeds of a multi-seed run (`seeds/seed_report.json`).

    Uses the saved seed checkpoints (converged seeds, or every tried seed with `selection="all"`).
    Returns the `topk_overlap` payload plus `seeds`, `mean_pairwise_jaccard`,
    `min_pairwise_jaccard`, `common_to_all` (coordinates in every seed's set) and `union_size`.
    """
    if selection not in ("all_convergent", "all"):
        raise ValueError(f"selection must be 'all_convergent' or 'all', got {selection!r}")
    return _stability(_seed_checkpoints(experiment_dir, selection), topk, part)


def write_seed_stability(path: Path, runs: Sequence[Any], topk: int | float | None, part: str,
                         min_convergent_seeds: int) -> dict[str, Any] | None:
    """The seed-stability analysis of a finished multi-seed run, written to `path` (JSON) while every seed's
    checkpoint still exists; None (nothing written) when off (`topk` None), when the run did not ask for several
    convergent seeds, or when fewer than two seeds converged."""
    from gradiend.experiment import atomic_write_json
    from gradiend.model import is_checkpoint

    path.unlink(missing_ok=True)  # never leave the analysis of an earlier run beside this run's report
    if topk is None or min_convergent_seeds < 2:
        return None
    checkpoints = {f"seed_{r.seed}": Path(r.output_dir) for r in runs
                   if r.converged and r.output_dir and is_checkpoint(r.output_dir)}
    if len(checkpoints) < 2:
        logger.info("Seed stability: %d convergent seed checkpoint(s), at least 2 needed; skipped", len(checkpoints))
        return None
    payload = {k: v for k, v in _stability(checkpoints, topk, part).items() if k not in ("sets", "matrix")}
    atomic_write_json(path, payload)
    logger.info("Seed stability of the top-%s %s weights: mean pairwise Jaccard %.3f, %d common to all seeds (%s)",
                topk, part, payload["mean_pairwise_jaccard"], payload["common_to_all"], path)
    return payload
