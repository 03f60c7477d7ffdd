"""A trained GRADIEND that stays split over the ranks (`shard_gradiend` with `sharded_final_weights="rank0_host"`).

After a sharded run every rank keeps its slice of the best weights (`Shard.module`, on its device); rank 0 also
holds the whole GRADIEND in host memory, to save it. `ShardedModelWithGradiend` is the `ModelWithGradiend` the
trainer hands out in that case. What it does differently, on every rank:

- `encode` sums the slices' partial encodings (`Shard.encode_rows`): a collective over every row;
- `lazy_update` / `apply` / `rewrite_base_model` decode from the slices (`Shard.lazy_update`): a collective over
  every row range asked for;
- `save_pretrained` writes rank 0's host copy (the other ranks write nothing);
- `gradiend` (the whole weights) exists on rank 0 only, in host memory; elsewhere it raises, naming the fix.

Since encoding and decoding are collectives, every rank must take part in the same calls in the same order:
evaluation runs inside `distributed.replicated()` (every rank encodes every row and scores every decoder
candidate itself; `evaluation_scope`). Where no rank but 0 may hold the whole GRADIEND anywhere, a saved one is
read the same way: each rank reads only its slice of the file, rank 0 the whole into host memory (`load_sharded`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from gradiend import distributed
from gradiend.model import (
    HEAD_FILE,
    PARAM_MAP_FILE,
    WEIGHTS_FILE,
    GradiendModel,
    _load_tensors,
    read_checkpoint_config,
)
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.sharding import Shard

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedModel

    from gradiend.arguments import TrainingArguments
    from gradiend.model import GradiendConfig

logger = logging.getLogger(__name__)


def holds_slices(args: TrainingArguments) -> bool:
    """Whether a run with `args` in this process keeps its GRADIEND split over the ranks: `shard_gradiend` with
    `sharded_final_weights="rank0_host"` under torchrun (several processes)."""
    return args.shard_gradiend and args.sharded_final_weights == "rank0_host" and distributed.context().enabled


class ShardedModelWithGradiend(ModelWithGradiend):
    """A `ModelWithGradiend` whose GRADIEND is split over the ranks (see the module doc): built from the trained
    model and its `Shard`, sharing the base model, tokenizer, objective and engine."""

    def __init__(self, model: ModelWithGradiend, shard: Shard) -> None:  # shares `model`s parts: no super().__init__
        vars(self).update({k: v for k, v in vars(model).items() if k != "gradiend"})
        self.shard = shard
        self._whole = shard.full if distributed.context().is_main else None  # rank 0: host weights

    @property
    def gradiend(self) -> GradiendModel:
        """The whole GRADIEND: rank 0's host copy. Other ranks hold only their slice (`shard.module`)."""
        if self._whole is None:
            ctx = distributed.context()
            raise RuntimeError(f"rank {ctx.rank} of {ctx.world_size} holds only its slice of this sharded GRADIEND "
                               f"(sharded_final_weights='rank0_host'; `model.shard.module`): read the whole weights "
                               f"on rank 0 (host memory), or train with sharded_final_weights='every_rank'")
        return self._whole

    @property
    def config(self) -> GradiendConfig:
        return self.shard.full.config

    def lazy_update(self, feature_factor: float | Sequence[float]) -> Callable[[slice], torch.Tensor]:
        """dec(feature_factor) decoded from the ranks' slices (a collective: every rank asks for the same rows)."""
        return self.shard.lazy_update(feature_factor)

    def update_vector(self, feature_factor: float | Sequence[float]) -> torch.Tensor:
        return self.lazy_update(feature_factor)(slice(None))

    @torch.no_grad()
    def encode(self, texts: Sequence[str], factual: Sequence[str], alternative: Sequence[str] | None = None,
               kind: str | None = None, batch_size: int = 32) -> np.ndarray:
        """Feature values (rows × latent_dim) from the slices' summed partial encodings (a collective)."""
        kind = kind or self.config.source
        if alternative is None:
            if kind != "factual":
                raise ValueError(f"Encoding with kind={kind!r} needs the alternative tokens")
            alternative = factual
        texts, factual, alternative = list(texts), list(factual), list(alternative)
        if not len(texts) == len(factual) == len(alternative):
            raise ValueError(f"encode needs one factual and one alternative token per text: got {len(texts)} texts, "
                             f"{len(factual)} factual and {len(alternative)} alternative tokens")
        return self.shard.encode_rows(self, texts, factual, alternative, batch_size, kind=kind)

    def save_pretrained(self, directory: str | os.PathLike, extra_json: dict[str, Any] | None = None) -> None:
        """Rank 0 saves its host copy; the other ranks write nothing."""
        if self._whole is not None:
            self._whole.save_pretrained(directory, extra_json)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload rank 0's whole GRADIEND (the other ranks hold none to upload: an error there)."""
        if self._whole is None:
            raise RuntimeError(f"push_to_hub: rank {distributed.context().rank} holds only its slice of this sharded "
                               f"GRADIEND; push from rank 0")
        return super().push_to_hub(repo_id, **kwargs)

    def to(self, device: torch.device | str) -> ShardedModelWithGradiend:
        """Move the base model and this rank's slice; rank 0's whole copy stays in host memory."""
        from gradiend.gradients import GradientEngine

        self.base_model.to(device)
        self.shard.module.to(device)
        self.engine = GradientEngine(self.base_model, self.objective, self.param_map)
        return self

    def prune(self, keep: torch.Tensor) -> ModelWithGradiend:
        raise ValueError("A sharded GRADIEND (sharded_final_weights='rank0_host') cannot be pruned in place: its "
                         "slices would no longer match. Post-prune with sharded_final_weights='every_rank', or load "
                         "the saved checkpoint in one process (ModelWithGradiend.from_pretrained) and prune that")

    def with_new_gradiend(self, seed: int | None) -> ModelWithGradiend:
        raise ValueError("with_new_gradiend needs the template the run started from, not a sharded trained model")

    def calibrate(self, train_rows: pd.DataFrame, eval_rows: pd.DataFrame | None, pair: Sequence[str],
                  args: TrainingArguments) -> dict[str, Any] | None:
        """The encoder calibration of a one-process run (`gradiend.calibration`), on the slices: the held-in rows'
        projections are summed over the ranks, every rank fits the same gain and offset and applies them to its
        slice (rank 0 to its host copy too). The record for `training.json`; None when nothing is calibrated."""
        from gradiend.calibration import run_calibrator

        calibrate = run_calibrator(_SliceProjector(self), train_rows, eval_rows, pair, args)
        if calibrate is None:
            return None
        with distributed.replicated():
            record = calibrate(self.shard.module.state_dict())  # the slice's tensors: refitted in place
        if self._whole is not None and "gain" in record:
            with torch.no_grad():
                self._whole.encoder_weight.mul_(record["gain"])
                self._whole.encoder_bias.mul_(record["gain"]).add_(record["offset"])
        return record


class _SliceEngine:
    """`GradientEngine.directional` for slice directions: the partial projections summed over the ranks."""

    def __init__(self, model: ShardedModelWithGradiend) -> None:
        self.model, self.device = model, model.engine.device

    def directional(self, texts: Sequence[str], factual: Sequence[str], alternative: Sequence[str], kind: str,
                    directions: torch.Tensor) -> torch.Tensor:
        return self.model.shard.project(self.model, texts, factual, alternative, kind, directions, len(texts))


class _SliceProjector:
    """What `gradiend.calibration` reads of a model (config, objective, engine), projecting onto slices."""

    def __init__(self, model: ShardedModelWithGradiend) -> None:
        self.config, self.objective, self.engine = model.config, model.objective, _SliceEngine(model)


@contextlib.contextmanager
def evaluation_scope(model: ModelWithGradiend) -> Iterator[None]:
    """Evaluate `model` inside the block: for a sharded one every rank does all of the work
    (`distributed.replicated()`, since its encoding and decoding are collectives); nothing changes otherwise."""
    with distributed.replicated() if isinstance(model, ShardedModelWithGradiend) else contextlib.nullcontext():
        yield


# ---------------------------------------------------------------- reading a saved GRADIEND slice-wise

def load_shard(directory: str | os.PathLike, device: torch.device | str) -> Shard:
    """The `Shard` of the GRADIEND saved in `directory`: this rank's slice read from the file straight onto
    `device` (only those bytes are read), and on rank 0 the whole GRADIEND in host memory (a collective only in
    the sense that every rank must call it)."""
    directory = Path(directory)
    config = read_checkpoint_config(directory)
    if distributed.context().is_main:
        full = GradiendModel.from_pretrained(directory, device="cpu")
    else:
        full = GradiendModel(config, shape_only=True)
        if any("kept" in entry for entry in config.param_map):
            full.param_index = _load_tensors(directory / PARAM_MAP_FILE, "kept coordinates of the pruned GRADIEND")
        if "head" in config.objective_options:
            full.objective_tensors = _load_tensors(directory / HEAD_FILE, "the clm_mlm_head objective's head")
    whole = dict(full.state_dict()) if not full.shape_only else None
    shard = Shard(full, slice_state=_read_slice(directory / WEIGHTS_FILE, config, torch.device(device)))
    if whole is not None:
        shard.restore(whole, device=torch.device("cpu"))  # Shard released them; the same tensors, no copy
    return shard


def _read_slice(weights: Path, config: GradiendConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """This rank's slice state dict of a saved GRADIEND (encoder columns, decoder rows and decoder-bias entries
    lo..hi; the rest whole), read from the safetensors file without reading the other ranks' parts."""
    ctx = distributed.context()
    lo, hi = distributed.shard_range(config.input_dim, ctx.rank, ctx.world_size)
    dtype = getattr(torch, config.gradiend_dtype)
    out = {}
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as handle:
            for name in handle.keys():
                if name == "encoder_weight":
                    value = handle.get_slice(name)[:, lo:hi]
                elif name in ("decoder_weight", "decoder_bias"):
                    value = handle.get_slice(name)[lo:hi]
                else:
                    value = handle.get_tensor(name)
                out[name] = value.to(device, torch.float32 if name.endswith("_scale") else dtype)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"GRADIEND weights {weights} are corrupt ({err}); re-train or restore the file") from err
    return out


def load_sharded(directory: str | os.PathLike, base_model: PreTrainedModel, tokenizer: Any,
                 max_length: int = 256) -> ShardedModelWithGradiend:
    """The GRADIEND saved in `directory`, split over the ranks, on `base_model` (already loaded: every rank
    holds the base model whole) and its device."""
    device = next(base_model.parameters()).device
    shard = load_shard(directory, device)
    stand_in = GradiendModel(shard.full.config, shape_only=True)  # builds the parameter map and objective, no weights
    stand_in.param_index, stand_in.objective_tensors = shard.full.param_index, shard.full.objective_tensors
    return ShardedModelWithGradiend(ModelWithGradiend(base_model, tokenizer, stand_in, max_length=max_length), shard)


def from_pretrained_sharded(directory: str | os.PathLike, *, base_model: Any = None, device: torch.device | None = None,
                            trust_remote_code: bool = False, max_length: int = 256) -> ShardedModelWithGradiend:
    """`ModelWithGradiend.from_pretrained` of a local checkpoint, with the GRADIEND split over the ranks (each reads
    its slice, rank 0 the whole into host memory). `base_model`: an id/path, a loaded model (`LoadedBase`, used as
    it is) or None (the one the checkpoint names)."""
    from gradiend.model_with_gradiend import open_base, recorded_base_model, warn_if_other_weights

    config = read_checkpoint_config(directory)
    name = base_model if base_model is not None else recorded_base_model(config)
    if name is None:
        raise ValueError(f"Checkpoint {directory} does not name its base model; pass base_model=")
    base, _ = open_base(name, None, config.torch_dtype, trust_remote_code, device, config.objective)
    warn_if_other_weights(config, base, directory, from_path=isinstance(name, (str, os.PathLike)))
    return load_sharded(directory, base.model, base.tokenizer, max_length)
