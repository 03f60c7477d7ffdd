"""Gradient engine: per-batch source/target gradients and forward-mode encodings.

Speed comes from three things: factual and alternative losses share one forward pass; only
the selected parameters require grad and their gradients are copied into preallocated flat
buffers; and encodings `w · g(x)` of single examples are directional derivatives, computed
for a whole batch at once with `torch.func.jvp` instead of one backward pass per example.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from gradiend.arguments import GRADIENT_KINDS

if TYPE_CHECKING:
    from gradiend.objectives import LMObjective, ModelInputs
    from gradiend.params import ParamMap

logger = logging.getLogger(__name__)


class _RowLoss(nn.Module):
    """Wraps model + objective so `functional_call` can swap the selected parameters."""

    def __init__(self, model: nn.Module, objective: LMObjective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, inputs: ModelInputs, label_sets: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.objective.row_losses(self.model, inputs, label_sets)


class GradientEngine:
    """Computes GRADIEND inputs (gradients) and encodings for rows of (text, factual, alternative)."""

    def __init__(self, model: nn.Module, objective: LMObjective, param_map: ParamMap) -> None:
        param_map.check_against(model)
        self.model = model.eval()
        self.objective = objective
        self.param_map = param_map
        named = dict(model.named_parameters())
        selected = set(param_map.names)
        self._flags = [(param, name in selected) for name, param in named.items()]
        self._select()
        self.params = [named[n] for n in param_map.names]
        self.device = self.params[0].device
        self._wrapper = _RowLoss(model, objective)
        self._use_jvp = True
        objective.head(model)  # resolve and check the head eagerly, outside any transform

    def _select(self) -> None:
        """Only the selected parameters require grad. Set again at every call: engines with other parameter
        maps over the same loaded base model (several `ModelWithGradiend`s sharing it) switch the flags too."""
        for param, wanted in self._flags:
            if param.requires_grad != wanted:
                param.requires_grad_(wanted)

    # -- losses ---------------------------------------------------------------------------------
    def _row_losses(self, texts: Sequence[str], factual: Sequence[str], alternative: Sequence[str],
                    kinds: set[str], module: nn.Module | None = None,
                    params: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Per-row losses for the factual and/or alternative token, sharing the forward pass."""
        need_f = bool(kinds & {"factual", "diff"})
        need_a = bool(kinds & {"alternative", "diff"})

        def run(inputs: ModelInputs, labels: list[torch.Tensor]) -> list[torch.Tensor]:
            if params is None:
                return self.objective.row_losses(self.model, inputs, labels)
            return functional_call(module, params, (inputs, labels))

        inputs_f = self.objective.encode(texts, factual).to(self.device) if need_f else None
        inputs_a = self.objective.encode(texts, alternative).to(self.device) if need_a else None
        if inputs_f is not None and inputs_a is not None and inputs_f.same_inputs(inputs_a):
            lf, la = run(inputs_f, [inputs_f.labels, inputs_a.labels])
        else:
            lf = run(inputs_f, [inputs_f.labels])[0] if inputs_f is not None else None
            la = run(inputs_a, [inputs_a.labels])[0] if inputs_a is not None else None
        out = {}
        if lf is not None:
            out["factual"] = lf
        if la is not None:
            out["alternative"] = la
        if lf is not None and la is not None:
            out["diff"] = lf - la
        return out

    # -- batch gradients ------------------------------------------------------------------------
    def gradients(self, texts: Sequence[str], factual: Sequence[str], alternative: Sequence[str],
                  kinds: Sequence[str], out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Flat gradients of the batch-mean loss for each kind in `kinds`.

        `out` may hold preallocated flat float buffers (one per kind), filled in place.
        """
        result: dict[str, torch.Tensor] = {}

        def flatten(kind: str, grads: Sequence[torch.Tensor | None]) -> None:
            buf = out[kind] if out is not None and kind in out else torch.empty(
                self.param_map.size, dtype=torch.float32, device=self.device)
            result[kind] = self.param_map.gather(grads, buf)

        self.parameter_gradients(texts, factual, alternative, kinds, flatten)
        return result

    def parameter_gradients(self, texts: Sequence[str], factual: Sequence[str], alternative: Sequence[str],
                            kinds: Sequence[str], sink: Callable[[str, Sequence[torch.Tensor | None]], None]) -> None:
        """`sink(kind, grads)` for each kind in turn: the per-parameter gradients of the batch-mean loss
        (`self.params` order; None for a parameter the loss does not reach), before any flat copy.

        The sharded path reduces them chunk by chunk to the ranks owning the coordinates, so no full-length
        flat vector is ever built (`gradiend.gradient_source`). One kind's gradients are alive at a time.
        """
        kinds = list(dict.fromkeys(kinds))
        for kind in kinds:
            if kind not in GRADIENT_KINDS:
                raise ValueError(f"Unknown gradient kind {kind!r}; use one of {GRADIENT_KINDS}")
        self._select()
        with torch.enable_grad():
            losses = self._row_losses(texts, factual, alternative, set(kinds))
            for i, kind in enumerate(kinds):
                grads = torch.autograd.grad(losses[kind].mean(), self.params, retain_graph=i < len(kinds) - 1,
                                            allow_unused=True)
                sink(kind, grads)
                del grads

    # -- encodings ------------------------------------------------------------------------------
    def directional(self, texts: Sequence[str], factual: Sequence[str], alternative: Sequence[str],
                    kind: str, directions: torch.Tensor) -> torch.Tensor:
        """(rows, k) matrix of `directions[j] · grad loss_i` for each single row i.

        Uses forward-mode differentiation; falls back to per-row backward passes when the model
        has an operation without forward-mode support.
        """
        if directions.dim() == 1:
            directions = directions.unsqueeze(0)
        if self._use_jvp:
            try:
                return self._directional_jvp(texts, factual, alternative, kind, directions)
            except (NotImplementedError, RuntimeError) as err:
                if "forward" not in str(err).lower() and "jvp" not in str(err).lower():
                    raise
                logger.warning("Forward-mode encoding unsupported for this model (%s); using per-example "
                               "backward passes", err)
                self._use_jvp = False
        return self.directional_backward(texts, factual, alternative, kind, directions)

    def _directional_jvp(self, texts: Sequence[str], factual: Sequence[str], alternative: Sequence[str],
                         kind: str, directions: torch.Tensor) -> torch.Tensor:
        names = ["model." + n for n in self.param_map.names]
        primals = tuple(p.detach() for p in self.params)
        columns = []
        for j in range(directions.shape[0]):
            tangents = tuple(v.to(p.dtype) for v, p in zip(self.param_map.expand(directions[j]), primals,
                                                            strict=True))

            def loss_fn(*values: torch.Tensor) -> torch.Tensor:
                params = dict(zip(names, values, strict=True))
                return self._row_losses(texts, factual, alternative, {kind}, self._wrapper, params)[kind]

            with _math_attention(), torch.no_grad():
                _, derivative = jvp(loss_fn, primals, tangents)
            columns.append(derivative.float())
        return torch.stack(columns, dim=1)

    def directional_backward(self, texts: Sequence[str], factual: Sequence[str], alternative: Sequence[str],
                             kind: str, directions: torch.Tensor) -> torch.Tensor:
        """Reference path: one backward pass per row, then dot products with `directions`."""
        if directions.dim() == 1:
            directions = directions.unsqueeze(0)
        buf = {kind: torch.empty(self.param_map.size, dtype=torch.float32, device=self.device)}
        rows = []
        for i in range(len(texts)):
            grad = self.gradients([texts[i]], [factual[i]], [alternative[i]], [kind], out=buf)[kind]
            rows.append(directions.float() @ grad.to(directions.device))
        return torch.stack(rows)


@contextlib.contextmanager
def _math_attention():
    """Forward-mode AD needs the plain-math attention kernel."""
    with sdpa_kernel(SDPBackend.MATH):
        yield
