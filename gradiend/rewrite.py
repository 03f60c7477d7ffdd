"""Rewriting base weights: θ' = θ + learning_rate · dec(feature_factor), in place and reversibly.

The decoder grid and the public `apply(...)` context manager never deep-copy the base model:
they add the update to the selected parameters in place and restore them bitwise from a saved
copy of only those parameters. A saved rewrite does not copy the model either: the edited tensors are
computed on the host, one at a time, and written in place of the originals (`edited_state_dict`); the
loaded model never changes and the accelerator holds nothing extra. Only a rewrite returned in memory
(`rewritten_copy`) is a copy, since the caller gets a second model.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gradiend import distributed
from gradiend.experiment import UnsafePathError, atomic_directory, check_replaceable, child_path
from gradiend.params import ParamMap

if TYPE_CHECKING:
    from gradiend.experiment import ExperimentDir
    from gradiend.model_with_gradiend import ModelWithGradiend

logger = logging.getLogger(__name__)


Update = torch.Tensor | Callable[[slice], torch.Tensor]
"""A flat update vector over the parameter map, or a function giving its entries for a slice
(decoding lazily, one tensor at a time, never holds the whole update in memory)."""


@torch.no_grad()
def add_update(model: nn.Module, param_map: ParamMap, update: Update, learning_rate: float) -> None:
    """θ ← θ + learning_rate · update at the mapped entries (pruned-away entries stay untouched)."""
    if isinstance(update, torch.Tensor) and update.numel() != param_map.size:
        raise ValueError(f"update has {update.numel()} entries, the parameter map {param_map.size}")
    if learning_rate == 0:
        return
    named = dict(model.named_parameters())
    for spec in param_map.specs:
        delta = update[spec.rows] if isinstance(update, torch.Tensor) else update(spec.rows)
        param_map.add_to(named[spec.name], spec, delta, learning_rate)


class ParameterSnapshot:
    """A saved copy of the selected parameters, restorable bitwise any number of times.

    The copy lives in host memory (pinned for a CUDA model, so restoring is a fast asynchronous copy), not on
    the device: a decoder grid over a large selection would otherwise hold the selected weights twice there.
    """

    def __init__(self, model: nn.Module, param_map: ParamMap) -> None:
        named = dict(model.named_parameters())
        self.model = model
        self.params = [named[n] for n in param_map.names]
        self.param_map = param_map
        self.saved = [_host_copy(p) for p in self.params]

    def add(self, update: Update, learning_rate: float) -> None:
        """θ ← θ + learning_rate · update on top of the current weights."""
        add_update(self.model, self.param_map, update, learning_rate)

    @torch.no_grad()
    def restore(self) -> None:
        for param, saved in zip(self.params, self.saved, strict=True):
            param.copy_(saved, non_blocking=saved.is_pinned())  # the saved copy never changes while in flight


def _host_copy(param: torch.Tensor) -> torch.Tensor:
    """`param`'s values in host memory, pinned when `param` is on a CUDA device."""
    out = torch.empty(param.shape, dtype=param.dtype, device="cpu", pin_memory=param.device.type == "cuda")
    return out.copy_(param.detach())


@contextlib.contextmanager
def applied(model: nn.Module, param_map: ParamMap, update: Update, learning_rate: float,
            snapshot: ParameterSnapshot | None = None) -> Iterator[nn.Module]:
    """Temporarily rewrite `model`; the weights are restored on exit, exceptions included."""
    snapshot = snapshot or ParameterSnapshot(model, param_map)
    try:
        snapshot.add(update, learning_rate)
        yield model
    finally:
        snapshot.restore()


def rewritten_copy(model: nn.Module, param_map: ParamMap, update: Update, learning_rate: float) -> nn.Module:
    """A deep copy of `model` with the update applied (the original stays untouched)."""
    clone = copy.deepcopy(model)
    add_update(clone, param_map, update, learning_rate)
    return clone


@torch.no_grad()
def edited_state_dict(model: nn.Module, param_map: ParamMap, update: Update, learning_rate: float
                      ) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with every mapped tensor replaced by an edited host copy (θ + learning_rate · update).

    The other entries are the model's own tensors (no copy), and the model itself stays unchanged. Keys that
    share a tensor (tied input and output embeddings) all get the edited copy, so it is saved once, tied.
    """
    if isinstance(update, torch.Tensor) and update.numel() != param_map.size:
        raise ValueError(f"update has {update.numel()} entries, the parameter map {param_map.size}")
    state = model.state_dict()
    named = dict(model.named_parameters())
    for spec in param_map.specs:
        param = named[spec.name].detach()
        edited = param.to("cpu", copy=True)
        delta = update[spec.rows] if isinstance(update, torch.Tensor) else update(spec.rows)
        param_map.add_to(edited, spec, delta, learning_rate)
        for key, tensor in state.items():
            if tensor.data_ptr() == param.data_ptr() and tensor.shape == param.shape:
                state[key] = edited
    return state


def model_card(info: dict[str, Any]) -> str:
    """A README.md for a rewritten checkpoint: Hub metadata, what was changed, how, and what it measured
    (see `gradiend.cards.rewrite_card`)."""
    from gradiend.cards import rewrite_card

    return str(rewrite_card(info))


def save_rewritten(model: nn.Module, tokenizer: Any, output_dir: str | os.PathLike, card: dict[str, Any], *,
                   overwrite: bool = False, state_dict: dict[str, torch.Tensor] | None = None) -> str:
    """Save a complete HF checkpoint (safetensors weights, config, tokenizer, model card) atomically.

    `state_dict`: the weights to write instead of the model's own (`edited_state_dict`). An existing
    `output_dir` is replaced only when it is ours (or `overwrite`), see `atomic_directory`.
    """
    if not distributed.may_write():  # under torchrun rank 0 saves; another rank would write a scratch copy
        return str(output_dir)
    with atomic_directory(output_dir, overwrite=overwrite, kind="rewrite") as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / "README.md").write_text(model_card(card), encoding="utf-8")
    return str(output_dir)


def save_selected_rewrite(model: ModelWithGradiend, selection: dict[str, Any], *, key: str, target_class: str,
                          feature_classes: list[str], base_model: str, output_dir: str | os.PathLike,
                          overwrite: bool = False) -> str:
    """Save the base model rewritten by a decoder selection, with a card describing the edit.

    No copy of the model: the edited tensors go straight into the saved weights (`edited_state_dict`).
    """
    from gradiend._version import __version__

    # the recorded resolved path tells a local base model from a Hub id, when it is the one trained on
    resolved = model.config.base_model_resolved if base_model == model.config.base_model else None
    card = {**selection, "key": key, "target_class": target_class, "base_model": base_model,
            "base_model_resolved": resolved, "objective": model.objective.name, "feature_classes": feature_classes,
            "n_parameters": model.param_map.size, "n_tensors": len(model.param_map.specs),
            "library_version": __version__}
    state = edited_state_dict(model.base_model, model.param_map, model.lazy_update(selection["feature_factor"]),
                              selection["learning_rate"])
    return save_rewritten(model.base_model, model.tokenizer, output_dir, card, overwrite=overwrite, state_dict=state)


def rewrite_selected(model: ModelWithGradiend, selections: Mapping[str, Any], classes: Sequence[str],
                     keys: Sequence[str], *, feature_classes: list[str], base_model: str,
                     output_dir: str | os.PathLike | None, default_dir: Callable[[str], Path] | None,
                     overwrite: bool = False, experiment: ExperimentDir | None = None) -> Any:
    """Apply decoder selections to copies of the base model.

    One class without `output_dir`: the rewritten model in memory. Otherwise each is saved (several
    classes under `output_dir/<key>` with the key made a safe file name, else `default_dir(key)`);
    returns the path or list of paths. Every target is checked before anything is written: it must
    stay out of `experiment`'s own files, and be ours to replace unless `overwrite`.
    """
    missing = [k for k in keys if k not in selections]
    if missing:
        available = sorted(k for k in selections if k not in ("grid", "plot_paths"))
        weaken = missing[0].endswith("_weaken")
        raise KeyError(f"No decoder result for {missing}; available: {available}. Run evaluate_decoder("
                       f"target_class=..., increase_target_probabilities={not weaken}) first")
    if len(keys) == 1 and output_dir is None:
        return model.rewrite_base_model(selections[keys[0]]["learning_rate"], selections[keys[0]]["feature_factor"])
    if output_dir is None and default_dir is None:
        raise ValueError("Rewriting several classes saves each under experiment_dir/<class>; set "
                         "TrainingArguments.experiment_dir")

    def target(key: str) -> Path:
        if output_dir is None:
            return default_dir(key)
        return child_path(output_dir, key, "class key") if len(keys) > 1 else Path(output_dir)

    targets = [target(key) for key in keys]
    if len({t.resolve() for t in targets}) < len(targets):
        raise UnsafePathError(f"The classes {list(classes)} map to the same directories {[str(t) for t in targets]}; "
                              f"rewrite them one at a time with separate output_dir values")
    if experiment is not None:
        for path in targets:
            experiment.check_output_dir(path)
    for path in targets:
        check_replaceable(path, overwrite=overwrite)
    paths = [save_selected_rewrite(model, selections[key], key=key, target_class=cls, feature_classes=feature_classes,
                                   base_model=base_model, output_dir=path, overwrite=overwrite)
             for cls, key, path in zip(classes, keys, targets, strict=True)]
    return paths[0] if len(paths) == 1 else paths
