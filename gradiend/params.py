"""Which base-model parameters GRADIEND sees, and how they map onto one flat vector."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

EXCLUDED_BY_DEFAULT = (".pooler.",)


class NonFiniteUpdateError(FloatingPointError):
    """An update (or its learning rate) that would write NaN or inf into the base model's weights."""


INDEX_SUFFIX = ".index"
EDIT_CHUNK = 1 << 24  # entries of a low-precision weight upcast to float32 at a time (64 MiB)
MASK_SUFFIX = ".mask"


@dataclass(frozen=True, eq=False)
class ParamSpec:
    """One selected parameter: its name, shape and slice [offset, offset + numel) in the flat vector.

    `index` (sorted flat coordinates within the parameter) is set when pruning kept only some
    entries; None means every entry is selected.
    """

    name: str
    shape: tuple[int, ...]
    offset: int
    index: torch.Tensor | None = None

    @property
    def full_numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def numel(self) -> int:
        return self.full_numel if self.index is None else int(self.index.numel())

    @property
    def rows(self) -> slice:
        """This parameter's slice of the flat vector."""
        return slice(self.offset, self.offset + self.numel)


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

    @property
    def is_pruned(self) -> bool:
        return any(s.index is not None for s in self.specs)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views (shaped like the parameters) into a flat vector (unpruned maps only)."""
        if self.is_pruned:
            raise ValueError("A pruned parameter map has no parameter-shaped views; use expand()")
        return [flat[s.rows].view(s.shape) for s in self.specs]

    def gather(self, tensors: Sequence[torch.Tensor | None], out: torch.Tensor) -> torch.Tensor:
        """Copy the selected entries of per-parameter tensors (e.g. gradients) into flat `out`.

        None (a parameter the loss does not reach) gives zeros.
        """
        for spec, tensor in zip(self.specs, tensors, strict=True):
            view = out[spec.rows]
            if tensor is None:
                view.zero_()
            elif spec.index is None:
                view.copy_(tensor.reshape(-1))
            else:
                view.copy_(tensor.reshape(-1)[spec.index.to(tensor.device)])
        return out

    def expand(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Parameter-shaped tensors from a flat vector, zero at unselected (pruned) entries."""
        out = []
        for spec in self.specs:
            part = flat[spec.rows]
            if spec.index is None:
                out.append(part.view(spec.shape))
            else:
                full = part.new_zeros(spec.full_numel)
                full.index_copy_(0, spec.index.to(part.device), part)
                out.append(full.view(spec.shape))
        return out

    @torch.no_grad()
    def add_to(self, param: torch.Tensor, spec: ParamSpec, delta: torch.Tensor, alpha: float,
               chunk: int = EDIT_CHUNK) -> None:
        """param += alpha · delta at the spec's selected entries (delta: its flat slice).

        Low-precision weights (bf16/fp16) are edited in float32 and rounded once: θ' = round(θ + α·δ),
        upcasting `chunk` entries at a time so the extra memory stays bounded. Casting δ to the weight
        dtype first would round twice (and flush small fp16 entries to zero). A non-finite `alpha`,
        update entry or result is refused (`NonFiniteUpdateError`) before `param` changes.
        """
        if not math.isfinite(alpha):
            raise NonFiniteUpdateError(f"Refusing to add an update to {spec.name} with learning rate {alpha}: it must "
                                       f"be a finite number")
        compute = torch.promote_types(param.dtype, torch.float32)
        delta = delta.to(device=param.device)
        _check_finite_result(param, spec, delta, alpha, compute)
        if not param.is_contiguous():  # rare (a transposed view): edit a contiguous copy, then write it back
            work = param.contiguous()
            self.add_to(work, spec, delta, alpha, chunk)
            param.copy_(work)
            return
        flat = param.view(-1)
        if compute == param.dtype:  # already full precision: one rounding in place
            if spec.index is None:
                flat.add_(delta.to(compute), alpha=alpha)
            else:
                flat.index_add_(0, spec.index.to(param.device), delta.to(compute), alpha=alpha)
            return
        index = None if spec.index is None else spec.index.to(param.device)
        for start in range(0, spec.numel, chunk):
            rows = slice(start, min(start + chunk, spec.numel))
            part = delta[rows].to(compute)
            if index is None:
                target = flat[rows]
                target.copy_(target.to(compute).add_(part, alpha=alpha))
            else:
                where = index[rows]
                flat.index_copy_(0, where, flat.index_select(0, where).to(compute).add_(part, alpha=alpha)
                                 .to(param.dtype))

    def restrict(self, keep: torch.Tensor) -> ParamMap:
        """The map of the entries where the boolean vector `keep` (over this map) is True.

        Pruning composes: indices are always relative to the full parameter. Parameters with no
        kept entry drop out of the map.
        """
        keep = torch.as_tensor(keep, dtype=torch.bool).reshape(-1).cpu()
        if keep.numel() != self.size:
            raise ValueError(f"keep mask has {keep.numel()} entries, the parameter map {self.size}")
        specs, offset = [], 0
        for spec in self.specs:
            local = torch.nonzero(keep[spec.rows]).reshape(-1)
            if local.numel() == 0:
                continue
            if local.numel() == spec.numel and spec.index is None:
                index = None
            else:
                index = local if spec.index is None else spec.index[local]
            specs.append(ParamSpec(spec.name, spec.shape, offset, index))
            offset += specs[-1].numel
        if not specs:
            raise ValueError("Pruning would keep no entry at all; lower the threshold or raise topk")
        return ParamMap(specs)

    def to_json(self) -> list[dict[str, Any]]:
        out = []
        for s in self.specs:
            entry: dict[str, Any] = {"name": s.name, "shape": list(s.shape)}
            if s.index is not None:
                entry["kept"] = s.numel
            out.append(entry)
        return out

    def index_tensors(self) -> dict[str, torch.Tensor]:
        """Kept coordinates of pruned parameters, each stored the smaller way: int32/int64 indices
        or a bit-packed mask (uint8). Keys are `<name>.index` / `<name>.mask`."""
        out = {}
        for s in self.specs:
            if s.index is None:
                continue
            index_dtype = torch.int32 if s.full_numel < 2**31 else torch.int64
            index_bytes = s.numel * (4 if index_dtype == torch.int32 else 8)
            if index_bytes <= -(-s.full_numel // 8):
                out[s.name + INDEX_SUFFIX] = s.index.to(index_dtype).contiguous()
            else:
                mask = np.zeros(s.full_numel, dtype=bool)
                mask[s.index.numpy()] = True
                out[s.name + MASK_SUFFIX] = torch.from_numpy(np.packbits(mask))
        return out

    @classmethod
    def from_json(cls, data: list[dict[str, Any]], tensors: dict[str, torch.Tensor] | None = None) -> ParamMap:
        """Inverse of `to_json` (+ `index_tensors` for pruned maps)."""
        tensors = tensors or {}
        specs, offset = [], 0
        for d in data:
            shape = tuple(int(x) for x in d["shape"])
            index = None
            if "kept" in d:
                index = _decode_index(d["name"], shape, int(d["kept"]), tensors)
            specs.append(ParamSpec(d["name"], shape, offset, index))
            offset += specs[-1].numel
        return cls(specs)

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


def _check_finite_result(param: torch.Tensor, spec: ParamSpec, delta: torch.Tensor, alpha: float,
                         compute: torch.dtype) -> None:
    """Refuse an update whose entries are non-finite, or whose result would not fit the weight dtype.

    One reduction per tensor in the common case: max|δ| is NaN/inf when any entry is, and max|θ| + |α|·max|δ|
    bounds every result; only when that bound exceeds the dtype's range is the exact result checked.
    """
    peak = float(torch.linalg.vector_norm(delta, ord=math.inf)) if delta.numel() else 0.0
    limit = torch.finfo(param.dtype).max
    if math.isfinite(peak) and peak * abs(alpha) <= limit:
        if peak * abs(alpha) + float(torch.linalg.vector_norm(param.detach(), ord=math.inf)) <= limit:
            return
        flat = param.detach().reshape(-1)
        selected = flat if spec.index is None else flat[spec.index.to(param.device)]
        result = selected.to(compute) + alpha * delta.to(compute)
        if bool(torch.isfinite(result.to(param.dtype)).all()):
            return
    raise NonFiniteUpdateError(
        f"Refusing to add a non-finite update (NaN or inf) to {spec.name} (learning rate {alpha}): the decoded "
        f"update, its product with the learning rate, or the rewritten weight does not fit {param.dtype}. Use a "
        f"smaller learning rate or feature factor, or check the GRADIEND weights for NaN.")


def _decode_index(name: str, shape: tuple[int, ...], kept: int, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    full = 1
    for d in shape:
        full *= d
    if name + INDEX_SUFFIX in tensors:
        index = tensors[name + INDEX_SUFFIX].to(torch.int64)
    elif name + MASK_SUFFIX in tensors:
        bits = np.unpackbits(tensors[name + MASK_SUFFIX].numpy())[:full]
        index = torch.from_numpy(np.flatnonzero(bits)).to(torch.int64)
    else:
        raise ValueError(f"The parameter map says {name!r} is pruned but the checkpoint has no kept "
                         f"coordinates for it ({name}{INDEX_SUFFIX} / {name}{MASK_SUFFIX}); the checkpoint is "
                         f"incomplete — re-save or re-train it")
    if index.numel() != kept or (index.numel() and (int(index.min()) < 0 or int(index.max()) >= full)):
        raise ValueError(f"Kept coordinates of {name!r} are corrupt: {index.numel()} entries (expected {kept}) "
                         f"for a parameter of {full} entries")
    if index.numel() > 1 and not bool((index[1:] > index[:-1]).all()):
        raise ValueError(f"Kept coordinates of {name!r} are not strictly increasing; the checkpoint is corrupt")
    return index
