"""A sharded GRADIEND (`shard_gradiend` under torchrun): each rank trains a slice of the coordinates.

Rank r of N owns the `distributed.shard_range(n, r, N)` slice of the n inputs: those encoder columns,
decoder rows and decoder-bias entries, their AdamW state and gradient buffers. The encoder bias and the
scales are replicated. The training loop (`gradiend.training`) trains `Shard.module` in place of the full
GRADIEND, whose weights are released meanwhile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from gradiend import distributed

if TYPE_CHECKING:
    from gradiend.model import GradiendModel


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

    def _gather_columns(self, weight: torch.Tensor) -> torch.Tensor:
        rows = weight.detach().T.contiguous().view(-1)  # (slice, k): the slices are row blocks
        return distributed.all_gather_slices(rows, self.n, self.k, "gather of the encoder").view(
            self.n, self.k).T.contiguous()

    def _release(self) -> None:
        for param in self.full.parameters():
            param.data = torch.empty(0, dtype=param.dtype, device=param.device)

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Give the full model the full weights `state` (from `gather_state`)."""
        device = self.module.encoder_weight.device
        with torch.no_grad():
            for name, param in self.full.named_parameters():
                param.data = state[name].to(device)  # gathered tensors of their own: no second copy
            for name, buffer in self.full.named_buffers():
                buffer.copy_(state[name])

    @contextlib.contextmanager
    def full_encoder(self) -> Iterator[None]:
        """The full model's encoder (weights gathered, bias and scales copied) inside the block: evaluation."""
        full, module = self.full, self.module
        full.encoder_weight.data = self._gather_columns(module.encoder_weight)
        full.encoder_bias.data = module.encoder_bias.detach().clone()
        full.input_scale.copy_(module.input_scale)
        full.target_scale.copy_(module.target_scale)
        try:
            yield
        finally:
            for param in (full.encoder_weight, full.encoder_bias):
                param.data = torch.empty(0, dtype=param.dtype, device=param.device)

    def encoder_norm(self) -> float:
        squares = self.module.encoder_weight.detach().double().pow(2).sum().reshape(1)
        return math.sqrt(float(distributed.all_reduce_(squares, "encoder norm")))
