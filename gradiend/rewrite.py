"""Rewriting base weights: θ' = θ + learning_rate · dec(feature_factor), in place and reversibly.

The decoder grid and the public `apply(...)` context manager never deep-copy the base model:
they add the update to the selected parameters in place and restore them bitwise from a saved
copy of only those parameters.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradiend.experiment import atomic_directory
from gradiend.params import ParamMap

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
    """A saved copy of the selected parameters, restorable bitwise any number of times."""

    def __init__(self, model: nn.Module, param_map: ParamMap) -> None:
        named = dict(model.named_parameters())
        self.model = model
        self.params = [named[n] for n in param_map.names]
        self.param_map = param_map
        self.saved = [p.detach().clone() for p in self.params]

    def add(self, update: Update, learning_rate: float) -> None:
        """θ ← θ + learning_rate · update on top of the current weights."""
        add_update(self.model, self.param_map, update, learning_rate)

    @torch.no_grad()
    def restore(self) -> None:
        for param, saved in zip(self.params, self.saved, strict=True):
            param.copy_(saved)


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


_LMS_TEXT = {
    "mlm": "LMS: masked-token accuracy on neutral text.",
    "clm": "LMS: 1 / (1 + mean next-token cross-entropy) on neutral text.",
}


def model_card(info: dict[str, Any]) -> str:
    """A README.md for a rewritten checkpoint: what was changed, how, and what it measured."""
    lines = [
        "---",
        f"base_model: {info['base_model']}",
        "library_name: transformers",
        "tags:",
        "- gradiend",
        f"- {info['key']}",
        "---",
        "",
        f"# {info['base_model']} rewritten by GRADIEND ({info['key']})",
        "",
        f"This checkpoint is `{info['base_model']}` with the weights θ' = θ + learning_rate · dec(feature_factor) "
        f"of a GRADIEND feature neuron trained on the classes {info['feature_classes']} "
        f"({'strengthening' if info['strengthen'] else 'weakening'} `{info['target_class']}`).",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| feature_factor | {info['feature_factor']:g} |",
        f"| learning_rate | {info['learning_rate']:g} |",
        f"| metric (selected) | {info['value']:.6g} |",
        f"| metric (base model) | {info.get('base_value', float('nan')):.6g} |",
        f"| LMS (selected) | {info['lms']:.4f} |",
        f"| LMS (base model) | {info['base_lms']:.4f} |",
        f"| changed parameters | {info['n_parameters']:,} entries in {info['n_tensors']} tensors |",
        f"| gradiend version | {info['library_version']} |",
        "",
        "Strengthen metric: mean probability of the class's tokens on the other class's rows; weaken "
        "metric: 1 − mean probability of the class's tokens on its own rows. "
        + _LMS_TEXT[info.get("objective", "mlm")],
        "",
    ]
    return "\n".join(lines)


def save_rewritten(model: nn.Module, tokenizer: Any, output_dir: str | os.PathLike, card: dict[str, Any]) -> str:
    """Save a complete HF checkpoint (safetensors weights, config, tokenizer, model card) atomically."""
    with atomic_directory(output_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / "README.md").write_text(model_card(card), encoding="utf-8")
    return str(output_dir)
