"""A sharded GRADIEND (`shard_gradiend` under torchrun): each rank trains a slice of the coordinates.

Rank r of N owns the `distributed.shard_range(n, r, N)` slice of the n inputs: those encoder columns,
decoder rows and decoder-bias entries, their AdamW state and gradient buffers. The encoder bias and the
scales are replicated. The training loop (`gradiend.training`) trains `Shard.module` in place of the full
GRADIEND, whose weights are released meanwhile. What works on slices, without the full weights anywhere:

- encoding (`Shard.encoding`, `Shard.encode_rows`): every rank takes the forward-mode derivative of every row
  along its encoder slice (`slice_projections`), and the partial pre-activations are all-reduced;
- decoding (`Shard.lazy_update`): each owner decodes its rows of the requested range and broadcasts them;
- the end of training (`Shard.finish`): the full weights on every rank's device, or the best weights
  gathered into rank 0's host memory only (`distributed.gather_to_main`);
- resume checkpoints (`ShardedCheckpoint`): a file per rank in one directory, rank 0's `state.json` last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.func import jvp

from gradiend import distributed
from gradiend.allocator import reuse_large_blocks
from gradiend.data import length_batches
from gradiend.experiment import atomic_directory, atomic_write_bytes, atomic_write_with, recover_interrupted
from gradiend.gradients import _math_attention
from gradiend.resume import (
    FORMAT,
    FORMAT_VERSION,
    RESUME_KIND,
    STATE_FILE,
    CorruptCheckpointError,
    TrainingState,
    check_state_fits,
)

if TYPE_CHECKING:
    from gradiend.gradients import GradientEngine
    from gradiend.model import GradiendModel
    from gradiend.model_with_gradiend import ModelWithGradiend
    from gradiend.params import ParamMap
    from gradiend.resume import ResumeCheckpoint

logger = logging.getLogger(__name__)


class Shard:
    """This rank's slice [lo, hi) of the coordinates of the GRADIEND being trained (`shard_gradiend`).

    `module` is a GRADIEND of the slice's size (encoder columns, decoder rows and decoder-bias entries
    lo..hi; encoder bias and scales replicated), trained in place of the full one. The full model's
    weights are released meanwhile (`full` keeps its configuration; every rank would otherwise hold
    3n floats) and given back by `restore`. Slices are `distributed.shard_range` of the n inputs.
    """

    def __init__(self, full: GradiendModel, slice_state: dict[str, torch.Tensor] | None = None) -> None:
        """`slice_state` (optional): this rank's slice state dict, e.g. read from a checkpoint (`load_slice`); by
        default it is sliced out of `full`'s weights."""
        from gradiend.model import GradiendModel

        ctx = distributed.context()
        self.full, self.n, self.k = full, full.config.input_dim, full.config.latent_dim
        self.lo, self.hi = distributed.shard_range(self.n, ctx.rank, ctx.world_size)
        self.padded = distributed.padded_shard(self.n, ctx.world_size)
        if self.hi <= self.lo:
            raise ValueError(f"shard_gradiend: {ctx.world_size} ranks but only {self.n} GRADIEND inputs; use fewer "
                             f"processes or shard_gradiend=False")
        module = GradiendModel(dataclasses.replace(full.config, input_dim=self.hi - self.lo), shape_only=True)
        module.load_state_dict(self.slice_state(full.state_dict()) if slice_state is None else slice_state,
                               assign=True)
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

    def lazy_update(self, feature_factor: float | Sequence[float]) -> Callable[[slice], torch.Tensor]:
        """dec(feature_factor) of the full GRADIEND, decoded slice by slice from the ranks' decoder slices (like
        `ModelWithGradiend.lazy_update`, for `rewrite.applied` / `add_update`).

        A collective: every rank asks for the same rows in the same order (the same decoder candidate on every
        rank); each owner decodes its part of the rows and broadcasts it. No rank holds more than the rows
        asked for (one parameter tensor's worth), never the full decoder.
        """
        ctx = distributed.context()
        bounds = [distributed.shard_range(self.n, r, ctx.world_size) for r in range(ctx.world_size)]
        module = self.module
        factors = [float(f) for f in torch.as_tensor(feature_factor, dtype=torch.float64).reshape(-1)]

        @torch.no_grad()
        def part(rows: slice) -> torch.Tensor:
            start, stop, _ = rows.indices(self.n)
            if not distributed.same_on_every_rank([start, stop, *factors], "decoded rows"):
                raise distributed.DistributedError(
                    f"rank {ctx.rank}: the ranks asked for different decoded rows (here {start}..{stop} of "
                    f"dec({feature_factor})): decoding a sharded GRADIEND is a collective, so every rank must make "
                    f"the same calls in the same order (evaluate inside distributed.replicated(), on every rank)")
            out = torch.empty(stop - start, dtype=module.decoder_weight.dtype, device=module.decoder_weight.device)
            for owner, (lo, hi) in enumerate(bounds):
                a, b = max(start, lo), min(stop, hi)
                if a >= b:
                    continue
                if owner == ctx.rank:
                    out[a - start:b - start] = module.decode(feature_factor, slice(a - lo, b - lo))
                distributed.broadcast_(out[a - start:b - start], owner, "broadcast of a decoded slice")
            return out

        return part

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
                    alternative: Sequence[str], batch_size: int, kind: str | None = None) -> np.ndarray:
        """Encodings (rows × k) of all rows with gradients of `kind` (default: the GRADIEND's source): each rank
        projects every row onto its slice of the encoder, the partial pre-activations w_slice · x_slice are
        summed over the ranks, then activated (a collective).

        Every rank passes over every row (a rank cannot encode a row alone without the full encoder).
        """
        module = self.module
        out = self.project(model, texts, factual, alternative, kind or model.config.source,
                           module.encoder_directions().detach(), batch_size)
        with torch.no_grad():
            return module.activate(out.to(module.encoder_bias.dtype)).float().cpu().numpy()

    def project(self, model: ModelWithGradiend, texts: Sequence[str], factual: Sequence[str],
                alternative: Sequence[str], kind: str, directions: torch.Tensor, batch_size: int) -> torch.Tensor:
        """(rows, k) float32 `directions · ∇loss` of single rows, `directions` being this rank's slice of the
        encoder directions; the slices' partial projections are summed over the ranks (a collective, the same
        bits on every rank)."""
        out = torch.zeros(len(texts), directions.shape[0], dtype=torch.float32, device=directions.device)
        with reuse_large_blocks():
            for rows in length_batches(model.objective.token_lengths(list(texts)), batch_size):
                out[torch.as_tensor(rows, device=out.device)] = slice_projections(
                    model.engine, self.lo, directions, [texts[i] for i in rows], [factual[i] for i in rows],
                    [alternative[i] for i in rows], kind).to(out.device)
        return distributed.all_reduce_(out, "sum of the slices' encodings")

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


class ShardedCheckpoint:
    """The resume checkpoint of a sharded run: one directory, each rank's slice in a file of its own.

    `save`: rank 0 opens the checkpoint's temp directory (`atomic_directory`) and hands its path to the other
    ranks; each rank writes its state (slice weights, AdamW state, best slice) as `rank<r>.safetensors` there
    (atomically, inside `distributed.rank_local_writes`); once every rank reports its file size, rank 0 writes
    `state.json` (history, optimiser groups, and `shards`: world size and each file's size) last, and the
    directory is swapped in. A kill at any point leaves the previous checkpoint whole. The directory is that of
    the wrapped `ResumeCheckpoint`, so its `remove()` removes every rank's file. The ranks must share the file
    system (as they do for the experiment directory).

    `load`: every rank reads `state.json` and its own file; the checkpoint is used only when it fits on every
    rank (same key, world size, sizes and shapes), else every rank starts fresh.
    """

    def __init__(self, inner: ResumeCheckpoint) -> None:
        self.inner = inner
        self.key = inner.key
        self.directory = inner.directory

    def due(self, step: int, total_steps: int) -> bool:
        return self.inner.due(step, total_steps)

    def remove(self) -> None:
        self.inner.remove()

    def save(self, state: TrainingState) -> bool:
        """Write every rank's part of `state` (a collective); whether the checkpoint was replaced."""
        ctx = distributed.context()
        tensors, meta = state.to_parts()
        name, joined = _rank_file(ctx.rank), False
        try:
            if not ctx.is_main:
                joined = True
                self._write_parts(None, name, tensors)
            else:
                with atomic_directory(self.directory, kind=RESUME_KIND) as tmp:
                    joined = True
                    sizes = self._write_parts(tmp, name, tensors)
                    if None in sizes:
                        raise OSError(f"rank {sizes.index(None)} could not write its slice")
                    meta["shards"] = {"world_size": ctx.world_size, "tensors_bytes": sizes}
                    text = json.dumps(meta, indent=1, default=lambda value: value.item())  # NumPy/0-d scalars
                    atomic_write_bytes(tmp / STATE_FILE, text.encode("utf-8"))
        except OSError as err:
            if not joined:  # the other ranks wait for the directory: tell them there is none
                self._write_parts(None, name, tensors)
            logger.warning("Could not save the sharded training state of step %d to %s (%s); training goes on",
                           state.step, self.directory, err)
        return distributed.all_agree(self._current(state.step), "resume checkpoint written")

    @staticmethod
    def _write_parts(tmp: Path | None, name: str, tensors: dict[str, torch.Tensor]) -> list[int | None]:
        """Rank 0 passes its temp directory (None: none), every rank writes its file there; the sizes by rank."""
        where = distributed.all_gather_objects(str(tmp) if tmp is not None else None, "resume checkpoint dir")[0]
        size = None
        if where is not None:
            with distributed.rank_local_writes(), contextlib.suppress(OSError):
                path = Path(where) / name
                atomic_write_with(path, lambda p: save_file(tensors, p, {"format": FORMAT}))
                size = path.stat().st_size
        return distributed.all_gather_objects(size, "resume checkpoint sizes")

    def _current(self, step: int) -> bool:
        """Whether the checkpoint on disk is of `step` (after the swap: every rank may read it)."""
        distributed.barrier("resume checkpoint swap")
        with contextlib.suppress(OSError, ValueError):
            return json.loads((self.directory / STATE_FILE).read_text(encoding="utf-8")).get("step") == step
        return False

    def load(self, total_steps: int, gradiend_state: dict[str, torch.Tensor],
             optimizer: torch.optim.Optimizer) -> TrainingState | None:
        """This rank's state when the checkpoint fits this run on every rank (a collective), else None."""
        if not self.inner.resume:
            return None
        recover_interrupted(self.directory.parent, self.directory.name)  # rank 0's job; the others wait
        distributed.barrier("resume checkpoint recovery")
        state = None
        if self.directory.is_dir():
            try:
                state = self._read(total_steps, gradiend_state, optimizer)
            except CorruptCheckpointError as err:
                logger.warning("Ignoring the sharded resume checkpoint in %s: %s; starting from step 0",
                               self.directory, err)
        if not distributed.all_agree(state is not None, "resume checkpoint fits"):
            return None
        logger.info("Resuming from step %d of %d in %s (this rank's slice)", state.step, total_steps, self.directory)
        return state

    def _read(self, total_steps: int, gradiend_state: dict[str, torch.Tensor],
              optimizer: torch.optim.Optimizer) -> TrainingState | None:
        ctx = distributed.context()
        meta = _read_meta(self.directory / STATE_FILE)
        if meta.get("key") != self.key:
            logger.info("Resume checkpoint %s belongs to another run; starting fresh", self.directory)
            return None
        shards = meta.get("shards") or {}
        if shards.get("world_size") != ctx.world_size:
            raise CorruptCheckpointError(f"it was written by {shards.get('world_size')} sharded ranks, this run has "
                                         f"{ctx.world_size}")
        path = self.directory / _rank_file(ctx.rank)
        try:
            if path.stat().st_size != shards["tensors_bytes"][ctx.rank]:
                raise CorruptCheckpointError(f"{path.name} is not the size rank 0 recorded (truncated or replaced)")
            tensors = load_file(path)
            state = TrainingState.from_parts(tensors, meta)
        except (OSError, SafetensorError, KeyError, TypeError, ValueError, IndexError) as err:
            raise CorruptCheckpointError(f"{path.name} or {STATE_FILE} is unreadable ({err})") from err
        check_state_fits(state, gradiend_state, optimizer)
        if state.total_steps != total_steps or not 0 < state.step < total_steps:
            raise CorruptCheckpointError(f"step {state.step} of {state.total_steps} does not fit this run's "
                                         f"{total_steps} steps")
        return state


def _rank_file(rank: int) -> str:
    return f"rank{rank}.safetensors"


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CorruptCheckpointError(f"{path.name} is unreadable ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CorruptCheckpointError(f"{path.name} is not a {FORMAT} v{FORMAT_VERSION} file")
    return meta
