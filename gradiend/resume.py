"""Resume checkpoints: the full state of a training run, so a killed run continues where it stopped.

Every `save_steps` optimiser steps (not after the last one) the loop writes its state to a
directory under the experiment: `EXPERIMENT/cache/resume/model` for a single-seed run,
`.../seed_<n>` per seed of a multi-seed run. The directory is built in a temp dir and swapped in
(`atomic_directory`), so a kill mid-write leaves the previous checkpoint intact; it holds

- `state.safetensors`: the GRADIEND's weights and scale buffers (`gradiend.<name>`), the
  optimiser's state tensors (`optimizer.<param index>.<name>`: AdamW's exp_avg, exp_avg_sq,
  step) and the best checkpoint's weights (`best.<name>`; left out when the best is the current
  weights, i.e. the evaluation just before the save improved it);
- `state.json`: format and version, the run key (fingerprint of settings, data and base model) it
  belongs to, step, total steps and epoch, the history (scores, class means, encoder norms,
  losses, sign flips, best checkpoint record), the optimiser's param groups, timings, and the
  size of the tensor file;
- with `decoder_fit="class_means"`, the running class sums of the training targets
  (`class_targets.sums`, 8 B per input; their row counts in `state.json`), so the decoder refit at the
  end covers the interrupted run's steps too (`gradiend.step.ClassTargetMeans`).

No pickle: tensors load with safetensors, the rest is JSON. A rerun with `resume_from_checkpoint`
loads the checkpoint when its key matches (else it starts fresh, logged at INFO); a checkpoint
that is truncated, unreadable or does not fit the model is ignored with a warning, never partly
used. The run removes it once its final model is saved.

Restored: weights and buffers, optimiser state, history, best checkpoint, epoch, timings, and
the batch position (the batch schedule is a function of the data seed, so the loop rebuilds it
and skips the batches already trained on). Not saved: the gradient cache (recomputed; lossless
float32 caching makes the resumed run bitwise equal to an uninterrupted one on CPU, a bfloat16
cache does not, since the uninterrupted run reuses rounded gradients) and any random state
(training uses none). A run with `seed=None` and `data_seed=None` draws a new batch order every
time, so it cannot resume and writes no checkpoints.

Cost (`bench/bench_resume.py`, CPU): 12 floats per selected input with a decoder bias (weights 3,
AdamW moments 6, best 3; 9 when the best is current), 48 bytes per input in float32, plus 8 bytes for the
class target sums (`decoder_fit="class_means"`; the figures below are without them). 25k inputs:
1.2 MB, saved in 0.04 s; 1M: 48 MB, 0.13 s; 10M: 480 MB, 3.1 s (fsync included); all of BERT-base
(about 86M inputs) would take about 4 GB. Loading validates names, shapes and the file size.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gradiend import distributed
from gradiend.experiment import (
    atomic_directory,
    atomic_write_bytes,
    atomic_write_with,
    foreign_files,
    recover_interrupted,
    remove_orphan_temps,
)

logger = logging.getLogger(__name__)

FORMAT = "gradiend-resume"
FORMAT_VERSION = 2  # 2: the class target sums (a version-1 checkpoint is ignored, training starts fresh)
TENSORS_FILE = "state.safetensors"
STATE_FILE = "state.json"
RESUME_KIND = "resume-checkpoint"  # the manifest kind of a checkpoint directory
SEEDS_MARKER = "seeds.json"  # the seeds an interrupted multi-seed run finished


def resume_root(experiment_root: str | os.PathLike) -> Path:
    """Where an experiment keeps its resume checkpoints (inside the experiment, never a user directory)."""
    return Path(experiment_root) / "cache" / "resume"


def clean_resume_root(experiment_root: str | os.PathLike) -> None:
    """Undo interrupted swaps and remove temp entries killed runs left among the checkpoints (hold the lock)."""
    root = resume_root(experiment_root)
    if root.is_dir():
        recover_interrupted(root)
        remove_orphan_temps(root)


@dataclass
class TrainingState:
    """Everything a run needs to continue after `step`: tensors by name, the rest as JSON data."""

    key: str
    step: int
    total_steps: int
    epoch: int
    gradiend: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # torch.optim.Optimizer.state_dict()
    history: dict[str, Any]
    best_state: dict[str, torch.Tensor] | None  # None: no best yet, or the best is `gradiend`
    best_is_current: bool
    timings: dict[str, float]
    class_targets: tuple[torch.Tensor, list[int]] | None = None  # (sums (2, n), row counts) for the decoder refit

    def to_parts(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors for the safetensors file, JSON data)."""
        tensors = {f"gradiend.{k}": v for k, v in self.gradiend.items()}
        tensors.update({f"best.{k}": v for k, v in (self.best_state or {}).items()})
        if self.class_targets is not None:
            tensors["class_targets.sums"] = self.class_targets[0]
        scalars: dict[str, dict[str, Any]] = {}
        for index, entry in self.optimizer["state"].items():
            for name, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{index}.{name}"] = value
                else:
                    scalars.setdefault(str(index), {})[name] = value
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "key": self.key, "step": self.step,
                "total_steps": self.total_steps, "epoch": self.epoch, "history": self.history,
                "best_is_current": self.best_is_current,
                "optimizer": {"param_groups": self.optimizer["param_groups"], "scalars": scalars},
                "timings": self.timings,
                "class_target_counts": list(self.class_targets[1]) if self.class_targets is not None else None}
        return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, meta

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> TrainingState:
        """The inverse of `to_parts` (KeyError/ValueError/TypeError on malformed data)."""
        gradiend, best, optim_state = {}, {}, {}
        sums = None
        for name, value in tensors.items():
            group, _, rest = name.partition(".")
            if group == "gradiend":
                gradiend[rest] = value
            elif group == "best":
                best[rest] = value
            elif name == "class_targets.sums":
                sums = value
            elif group == "optimizer":
                index, _, field_name = rest.partition(".")
                optim_state.setdefault(int(index), {})[field_name] = value
            else:
                raise ValueError(f"unexpected tensor {name!r}")
        for index, entry in meta["optimizer"]["scalars"].items():
            optim_state.setdefault(int(index), {}).update(entry)
        counts = meta.get("class_target_counts")
        if (sums is None) != (counts is None):
            raise ValueError("class target sums and their counts must be saved together")
        groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["optimizer"]["param_groups"]]
        return cls(key=str(meta["key"]), step=int(meta["step"]), total_steps=int(meta["total_steps"]),
                   epoch=int(meta["epoch"]), gradiend=gradiend,
                   optimizer={"state": optim_state, "param_groups": groups}, history=dict(meta["history"]),
                   best_state=best or None, best_is_current=bool(meta["best_is_current"]),
                   timings={k: float(v) for k, v in meta["timings"].items()},
                   class_targets=(sums, [int(c) for c in counts]) if sums is not None else None)


def _scalar(value: Any) -> float | int | bool:
    """NumPy and 0-d torch scalars (an injected evaluator's metrics) as Python numbers for JSON."""
    if isinstance(value, (np.generic, torch.Tensor)) and np.ndim(value) == 0:
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class CorruptCheckpointError(ValueError):
    """A resume checkpoint that cannot be used as a whole (truncated, unreadable, inconsistent)."""


class ResumeCheckpoint:
    """One run's resume checkpoint: where it lives (`directory`), which run it belongs to (`key`),
    how often it is written (`save_steps`, 0: never) and whether an existing one is used (`resume`)."""

    def __init__(self, directory: str | os.PathLike, key: str, save_steps: int, resume: bool = True) -> None:
        self.directory = Path(directory)
        self.key = key
        self.save_steps = save_steps
        self.resume = resume
        self._size_logged = False

    def __repr__(self) -> str:
        return f"ResumeCheckpoint({str(self.directory)!r}, key={self.key!r}, save_steps={self.save_steps})"

    def due(self, step: int, total_steps: int) -> bool:
        """Whether to write after `step` (never after the last one: the final model follows)."""
        return self.save_steps > 0 and step % self.save_steps == 0 and step < total_steps

    def save(self, state: TrainingState) -> bool:
        """Replace the checkpoint with `state` atomically (a kill mid-write keeps the previous one).

        A failed write (disk full, no permission) is a warning, not the end of the run: training goes on,
        the previous checkpoint stays. Returns whether the checkpoint was written.
        """
        if not distributed.may_write():
            return True  # rank 0 of a distributed run writes it
        t0 = time.perf_counter()
        tensors, meta = state.to_parts()
        try:
            with atomic_directory(self.directory, kind=RESUME_KIND) as tmp:
                atomic_write_with(tmp / TENSORS_FILE, lambda path: save_file(tensors, path, {"format": FORMAT}))
                meta["tensors_bytes"] = (tmp / TENSORS_FILE).stat().st_size
                # NaN scores stay NaN (Python's JSON reads them back), so a resumed run's stats are exact
                atomic_write_bytes(tmp / STATE_FILE, json.dumps(meta, indent=1, default=_scalar).encode("utf-8"))
        except OSError as err:
            logger.warning("Could not save the training state of step %d to %s (%s); training goes on, a rerun "
                           "after a crash continues from the previous checkpoint", state.step, self.directory, err)
            return False
        if not self._size_logged:
            self._size_logged = True
            logger.info("Resume checkpoint at step %d: %.1f MB, written in %.2f s to %s (every %d steps)", state.step,
                        meta["tensors_bytes"] / 1e6, time.perf_counter() - t0, self.directory, self.save_steps)
        return True

    def load(self, total_steps: int, gradiend_state: dict[str, torch.Tensor],
             optimizer: torch.optim.Optimizer) -> TrainingState | None:
        """The checkpoint's state when it belongs to this run (key, step count, tensor shapes), else None."""
        if not self.resume:
            return None
        recover_interrupted(self.directory.parent, self.directory.name)  # a swap killed between its renames
        if not self.directory.is_dir():
            return None
        try:
            meta = self._read_meta()
            if meta.get("key") != self.key:
                logger.info("Resume checkpoint %s belongs to other settings, data or base model; starting fresh",
                            self.directory)
                return None
            state = self._read_state(meta)
            check_state_fits(state, gradiend_state, optimizer)
        except CorruptCheckpointError as err:
            logger.warning("Ignoring the resume checkpoint in %s: %s. Training starts from step 0 (the checkpoint "
                           "is replaced by the next one).", self.directory, err)
            return None
        if state.total_steps != total_steps or not 0 < state.step < total_steps:
            logger.warning("Ignoring the resume checkpoint in %s: step %d of %d does not fit this run's %d steps; "
                           "starting fresh", self.directory, state.step, state.total_steps, total_steps)
            return None
        logger.info("Resuming from step %d of %d in %s", state.step, total_steps, self.directory)
        return state

    def _read_meta(self) -> dict[str, Any]:
        path = self.directory / STATE_FILE
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise CorruptCheckpointError(f"{STATE_FILE} is unreadable ({err})") from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CorruptCheckpointError(f"{STATE_FILE} is not a {FORMAT} file")
        if meta.get("format_version") != FORMAT_VERSION:
            raise CorruptCheckpointError(f"format version {meta.get('format_version')}, this version reads "
                                         f"{FORMAT_VERSION}")
        return meta

    def _read_state(self, meta: dict[str, Any]) -> TrainingState:
        path = self.directory / TENSORS_FILE
        try:
            size = path.stat().st_size
            if size != meta.get("tensors_bytes"):
                raise CorruptCheckpointError(f"{TENSORS_FILE} has {size} bytes, {meta.get('tensors_bytes')} "
                                             f"were written (truncated or replaced)")
            tensors = load_file(path)
        except (OSError, SafetensorError) as err:
            raise CorruptCheckpointError(f"{TENSORS_FILE} is unreadable ({err})") from err
        try:
            return TrainingState.from_parts(tensors, meta)
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise CorruptCheckpointError(f"{STATE_FILE} is malformed ({type(err).__name__}: {err})") from err

    def remove(self) -> None:
        """Delete the checkpoint (after the final model is saved): renamed to a temp name first, so a kill
        mid-delete leaves a temp entry the next start removes, never a partial checkpoint. Rank 0's job."""
        if not self.directory.is_dir() or not distributed.may_write():
            return
        foreign = foreign_files(self.directory)
        if foreign:
            logger.warning("Not removing %s: it holds files gradiend did not write (%s)", self.directory,
                           ", ".join(foreign[:5]))
            return
        doomed = self.directory.with_name(f".{self.directory.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.replace(self.directory, doomed)
            shutil.rmtree(doomed)
        except OSError as err:  # the model is saved; a leftover checkpoint only costs disk space
            logger.warning("Could not remove the resume checkpoint %s (%s); delete it by hand", self.directory, err)


def check_state_fits(state: TrainingState, gradiend_state: dict[str, torch.Tensor],
                     optimizer: torch.optim.Optimizer) -> None:
    """Raise CorruptCheckpointError unless `state`'s tensors have exactly the names, shapes and dtypes
    of the model's and the optimiser's (a key match with a mismatch here means a damaged file)."""
    for name, kind in (("gradiend", state.gradiend), ("best", state.best_state)):
        if kind is None:
            continue
        if kind.keys() != gradiend_state.keys():
            raise CorruptCheckpointError(f"its {name} tensors {sorted(kind)} are not the model's "
                                         f"{sorted(gradiend_state)}")
        for key, value in kind.items():
            ref = gradiend_state[key]
            if value.shape != ref.shape or value.dtype != ref.dtype:
                raise CorruptCheckpointError(f"{name}.{key} is {value.dtype} {tuple(value.shape)}, the model's "
                                             f"{ref.dtype} {tuple(ref.shape)}")
    if state.class_targets is not None:
        n = gradiend_state["encoder_weight"].shape[1]
        if tuple(state.class_targets[0].shape) != (2, n) or len(state.class_targets[1]) != 2:
            raise CorruptCheckpointError(f"its class target sums have shape {tuple(state.class_targets[0].shape)}, "
                                         f"the model needs (2, {n})")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved = sum(len(g["params"]) for g in state.optimizer["param_groups"])
    if saved != len(params) or not set(state.optimizer["state"]) <= set(range(len(params))):
        raise CorruptCheckpointError(f"its optimiser state covers {saved} parameters, the model has {len(params)}")
    for index, entry in state.optimizer["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            if name in entry and entry[name].shape != params[index].shape:
                raise CorruptCheckpointError(f"optimizer.{index}.{name} has shape {tuple(entry[name].shape)}, "
                                             f"the parameter {tuple(params[index].shape)}")
