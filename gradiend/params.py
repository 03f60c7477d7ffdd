"""Which base-model parameters GRADIEND sees, and how they map onto one flat vector."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

EXCLUDED_BY_DEFAULT = (".pooler.",)


@dataclass(frozen=True)
class ParamSpec:
    """One selected parameter: its name, shape and slice [offset, offset + numel) in the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class ParamMap:
    """Ordered selection of base parameters laid out back to back in one flat vector."""

    def __init__(self, specs: Sequence[ParamSpec]) -> None:
        if not specs:
            raise ValueError("A parameter map needs at least one parameter")
        self.specs = list(specs)
        self.size = self.specs[-1].offset + self.specs[-1].numel

    @classmethod
    def from_shapes(cls, named_shapes: Sequence[tuple[str, Sequence[int]]]) -> ParamMap:
        specs, offset = [], 0
        for name, shape in named_shapes:
            spec = ParamSpec(name, tuple(int(d) for d in shape), offset)
            specs.append(spec)
            offset += spec.numel
        return cls(specs)

    @classmethod
    def select(cls, model: nn.Module, patterns: Sequence[str] | None = None) -> ParamMap:
        """Parameters matching `patterns` (exact names or `*` wildcards), in model order.

        Default: every backbone parameter (`model.base_model_prefix`), heads and pooler
        excluded. A pattern may omit the backbone prefix ("encoder.layer.5.*").
        """
        named = list(model.named_parameters())
        prefix = getattr(model, "base_model_prefix", "")
        if patterns is None:
            chosen = [(n, p) for n, p in named
                      if (not prefix or n.startswith(prefix + ".")) and not any(x in n for x in EXCLUDED_BY_DEFAULT)]
        else:
            chosen_names: set[str] = set()
            for pattern in patterns:
                hits = {n for n, _ in named if fnmatch.fnmatchcase(n, pattern)}
                if not hits and prefix:
                    hits = {n for n, _ in named if fnmatch.fnmatchcase(n, f"{prefix}.{pattern}")}
                if not hits:
                    examples = [n for n, _ in named[:3]] + [named[-1][0]]
                    raise ValueError(f"Parameter pattern {pattern!r} matches no parameter of "
                                     f"{type(model).__name__}; names look like {examples}")
                chosen_names |= hits
            chosen = [(n, p) for n, p in named if n in chosen_names]
        if not chosen:
            raise ValueError(f"No parameters selected from {type(model).__name__}")
        return cls.from_shapes([(n, tuple(p.shape)) for n, p in chosen])

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views (shaped like the parameters) into a flat vector."""
        return [flat[s.offset:s.offset + s.numel].view(s.shape) for s in self.specs]

    def to_json(self) -> list[dict[str, Any]]:
        return [{"name": s.name, "shape": list(s.shape)} for s in self.specs]

    @classmethod
    def from_json(cls, data: list[dict[str, Any]]) -> ParamMap:
        return cls.from_shapes([(d["name"], d["shape"]) for d in data])

    def check_against(self, model: nn.Module) -> None:
        """Error unless every mapped parameter exists in `model` with the same shape."""
        params = dict(model.named_parameters())
        for spec in self.specs:
            if spec.name not in params:
                raise ValueError(f"Base model has no parameter {spec.name!r} recorded in the GRADIEND "
                                 f"checkpoint; was it trained on another architecture?")
            if tuple(params[spec.name].shape) != spec.shape:
                raise ValueError(f"Parameter {spec.name!r} has shape {tuple(params[spec.name].shape)} in "
                                 f"the base model but {spec.shape} in the GRADIEND checkpoint")
