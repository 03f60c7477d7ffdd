"""A sharded GRADIEND (`shard_gradiend` under torchrun): each rank trains a slice of the coordinates.

Rank r of N owns the `distributed.shard_range(n, r, N)` slice of the n inputs: those encoder columns,
decoder rows and decoder-bias entries, their AdamW state and gradient buffers. The encoder bias and the
scales are replicated. The training loop (`gradiend.training`) trains `Shard.module` in place of the full
GRADIEND, whose weights are released meanwhile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.func import jvp

from gradiend import distributed
from gradiend.allocator import reuse_large_blocks
from gradiend.data import length_batches
from gradiend.gradients import _math_attention

if TYPE_CHECKING:
    from gradiend.gradients import GradientEngine
    from gradiend.model import GradiendModel
    from gradiend.model_with_gradiend import ModelWithGradiend
    from gradiend.params import ParamMap

logger = logging.getLogger(__name__)


class Shard:
    """This rank's slice [lo, hi) of the coordinates of the GRADIEND being trained (`shard_gradiend`).

    `module` is a GRADIEND of the slice's size (encoder columns, decoder rows and decoder-bias entries
    lo..hi; encoder bias and scales replicated), trained in place of the full one. The full model's
    weights are released meanwhile (`full` keeps its configuration; every rank would otherwise hold
    3n floats) and given back by `restore`. Slices are `distributed.shard_range` of the n inputs.
    """

    def __init__(self, full: GradiendModel) -> None:
        from gradiend.model import GradiendModel

        ctx = distributed.context()
        self.full, self.n, self.k = full, full.config.input_dim, full.config.latent_dim
        self.lo, self.hi = distributed.shard_range(self.n, ctx.rank, ctx.world_size)
        self.padded = distributed.padded_shard(self.n, ctx.world_size)
        if self.hi <= self.lo:
            raise ValueError(f"shard_gradiend: {ctx.world_size} ranks but only {self.n} GRADIEND inputs; use fewer "
                             f"processes or shard_gradiend=False")
        module = GradiendModel(dataclasses.replace(full.config, input_dim=self.hi - self.lo), shape_only=True)
        module.load_state_dict(self.slice_state(full.state_dict()), assign=True)
        self.module = module
        self._release()

    def slice_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's slice of a full state dict (copies)."""
        lo, hi = self.lo, self.hi
        out = {k: v.detach().clone() for k, v in state.items()}
        out["encoder_weight"] = state["encoder_weight"][:, lo:hi].detach().clone()
        out["decoder_weight"] = state["decoder_weight"][lo:hi].detach().clone()
        if "decoder_bias" in state:
            out["decoder_bias"] = state["decoder_bias"][lo:hi].detach().clone()
        return out

    def gather_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The full state dict from every rank's slice state dict (a collective: all ranks call it)."""
        out = {k: v.detach().clone() for k, v in state.items()}
        out["encoder_weight"] = self._gather_columns(state["encoder_weight"])
        out["decoder_weight"] = distributed.all_gather_slices(
            state["decoder_weight"].detach().contiguous().view(-1), self.n, self.k, "gather of the decoder").view(
            self.n, self.k)
        if "decoder_bias" in state:
            out["decoder_bias"] = distributed.all_gather_slices(state["decoder_bias"].detach(), self.n, 1,
                                                                "gather of the decoder bias")
        return out

    def gather_state_to_main(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """The full state dict in rank 0's host memory from every rank's slice state dict; None on the other
        ranks (a collective). Slices travel in host chunks (`distributed.gather_to_main`): no other rank, and no
        device, ever holds the full weights."""
        k = self.k
        encoder = distributed.gather_to_main(state["encoder_weight"].detach().T.contiguous(), self.n, k,
                                             what="gather of the encoder to rank 0")
        decoder = distributed.gather_to_main(state["decoder_weight"].detach().contiguous(), self.n, k,
                                             what="gather of the decoder to rank 0")
        bias = (distributed.gather_to_main(state["decoder_bias"].detach(), self.n, 1,
                                           what="gather of the decoder bias to rank 0")
                if "decoder_bias" in state else None)
        if encoder is None:
            return None
        out = {name: value.detach().to("cpu", copy=True) for name, value in state.items()}
        out["encoder_weight"] = encoder.view(self.n, k).T.contiguous()
        out["decoder_weight"] = decoder.view(self.n, k)
        if bias is not None:
            out["decoder_bias"] = bias
        return out

    def finish(self, final: dict[str, torch.Tensor], best: dict[str, torch.Tensor],
               main_host_only: bool) -> dict[str, torch.Tensor]:
        """End of training (a collective): the full best weights, and the full model given its weights.

        `main_host_only=False`: every rank gets the full final weights (full model, on the device) and the full
        best weights. `True`: only the best weights are gathered, into rank 0's host memory; rank 0's full model
        is given them there (the returned dict shares their storage), the other ranks' full model stays empty and
        they get {}; on every rank `module` then holds the best slice (`encoding()` evaluates it slice-wise).
        """
        if not main_host_only:
            self.restore(self.gather_state(final))
            return self.gather_state(best)
        full = self.gather_state_to_main(best)
        self.module.load_state_dict({name: value.to(self.module.encoder_weight.device)
                                     for name, value in best.items()})
        if full is None:
            return {}
        self.restore(full, device=torch.device("cpu"))
        return dict(self.full.state_dict())

    def _gather_columns(self, weight: torch.Tensor) -> torch.Tensor:
        rows = weight.detach().T.contiguous().view(-1)  # (slice, k): the slices are row blocks
        return distributed.all_gather_slices(rows, self.n, self.k, "gather of the encoder").view(
            self.n, self.k).T.contiguous()

    def _release(self) -> None:
        for param in self.full.parameters():
            param.data = torch.empty(0, dtype=param.dtype, device=param.device)

    def restore(self, state: dict[str, torch.Tensor], device: torch.device | None = None) -> None:
        """Give the full model the full weights `state` (from `gather_state`), on `device` (default: the
        slice's); buffers move there too."""
        device = self.module.encoder_weight.device if device is None else device
        with torch.no_grad():
            for name, param in self.full.named_parameters():
                param.data = state[name].to(device)  # gathered tensors of their own: no second copy
            for name, buffer in self.full.named_buffers():
                buffer.data = state[name].to(device, copy=True)

    @contextlib.contextmanager
    def encoding(self) -> Iterator[None]:
        """Inside the block `training.encode_rows` encodes with this rank's slice (`encode_rows`): no rank
        gathers the encoder."""
        global _active
        previous, _active = _active, self
        try:
            yield
        finally:
            _active = previous

    def encode_rows(self, model: ModelWithGradiend, texts: Sequence[str], factual: Sequence[str],
                    alternative: Sequence[str], batch_size: int) -> np.ndarray:
        """Encodings (rows × k) of all rows: each rank projects every row onto its slice of the encoder, the
        partial pre-activations w_slice · x_slice are summed over the ranks, then activated (a collective).

        Every rank passes over every row (a rank cannot encode a row alone without the full encoder).
        """
        module = self.module
        directions = module.encoder_directions().detach()
        out = torch.zeros(len(texts), self.k, dtype=torch.float32, device=directions.device)
        with reuse_large_blocks():
            for rows in length_batches(model.objective.token_lengths(list(texts)), batch_size):
                out[torch.as_tensor(rows, device=out.device)] = slice_projections(
                    model.engine, self.lo, directions, [texts[i] for i in rows], [factual[i] for i in rows],
                    [alternative[i] for i in rows], model.config.source).to(out.device)
        distributed.all_reduce_(out, "sum of the slices' encodings")
        with torch.no_grad():
            return module.activate(out.to(module.encoder_bias.dtype)).float().cpu().numpy()

    def encoder_norm(self) -> float:
        squares = self.module.encoder_weight.detach().double().pow(2).sum().reshape(1)
        return math.sqrt(float(distributed.all_reduce_(squares, "encoder norm")))


_active: Shard | None = None


def active_shard() -> Shard | None:
    """The shard whose `encoding()` block is running (None outside one): `training.encode_rows` asks."""
    return _active


def _slice_tangents(param_map: ParamMap, params: Sequence[torch.Tensor], lo: int,
                    direction: torch.Tensor) -> dict[int, torch.Tensor]:
    """Parameter-shaped tangents of the flat coordinates [lo, lo + len(direction)) set to `direction`, for the
    parameters that slice touches (by position in the map); the others are left out (their tangent is zero)."""
    hi = lo + direction.numel()
    out = {}
    for i, (spec, param) in enumerate(zip(param_map.specs, params, strict=True)):
        a, b = max(lo, spec.rows.start), min(hi, spec.rows.stop)
        if a >= b:
            continue
        tangent = torch.zeros(spec.full_numel, dtype=param.dtype, device=param.device)
        part = direction[a - lo:b - lo].to(param.device, param.dtype)
        start = spec.rows.start
        if spec.index is None:
            tangent[a - start:b - start] = part
        else:
            tangent[spec.index[a - start:b - start].to(param.device)] = part
        out[i] = tangent.view(spec.shape)
    return out


def slice_projections(engine: GradientEngine, lo: int, directions: torch.Tensor, texts: Sequence[str],
                      factual: Sequence[str], alternative: Sequence[str], kind: str) -> torch.Tensor:
    """(rows, k) partial projections `directions[j] · grad loss_i[lo:lo + width]` of single rows.

    Forward mode over only the parameters the slice touches (the others are constants), so the tangents
    are about the slice's size; per-row backward passes where the model lacks forward-mode support.
    """
    if engine._use_jvp:  # the engine's own choice (it falls back on the same errors)
        try:
            return _slice_jvp(engine, lo, directions, texts, factual, alternative, kind)
        except (NotImplementedError, RuntimeError) as err:
            if "forward" not in str(err).lower() and "jvp" not in str(err).lower():
                raise
            logger.warning("Forward-mode encoding unsupported for this model (%s); using per-example backward "
                           "passes", err)
    return _slice_backward(engine, lo, directions, texts, factual, alternative, kind)


def _slice_jvp(engine: GradientEngine, lo: int, directions: torch.Tensor, texts: Sequence[str],
               factual: Sequence[str], alternative: Sequence[str], kind: str) -> torch.Tensor:
    columns = []
    for j in range(directions.shape[0]):
        tangents = _slice_tangents(engine.param_map, engine.params, lo, directions[j])
        names = ["model." + engine.param_map.specs[i].name for i in tangents]
        primals = tuple(engine.params[i].detach() for i in tangents)

        def loss_fn(*values: torch.Tensor, names: list[str] = names) -> torch.Tensor:
            params = dict(zip(names, values, strict=True))  # only the touched parameters are swapped
            return engine._row_losses(texts, factual, alternative, {kind}, engine._wrapper, params)[kind]

        with _math_attention(), torch.no_grad():
            _, derivative = jvp(loss_fn, primals, tuple(tangents.values()))
        columns.append(derivative.float())
    return torch.stack(columns, dim=1)


def _slice_backward(engine: GradientEngine, lo: int, directions: torch.Tensor, texts: Sequence[str],
                    factual: Sequence[str], alternative: Sequence[str], kind: str) -> torch.Tensor:
    out = torch.zeros(len(texts), directions.shape[0], dtype=torch.float32)
    for i in range(len(texts)):
        def sink(_: str, grads: Sequence[torch.Tensor | None], row: int = i) -> None:
            for j in range(directions.shape[0]):
                for p, tangent in _slice_tangents(engine.param_map, engine.params, lo, directions[j]).items():
                    if grads[p] is not None:
                        out[row, j] += float((grads[p].float() * tangent.float()).sum())

        engine.parameter_gradients([texts[i]], [factual[i]], [alternative[i]], [kind], sink)
    return out
