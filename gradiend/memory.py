"""The memory a GRADIEND training run needs, planned before anything is allocated.

Per selected input (one coordinate of the flat gradient vector, n of them) a run holds, in the
GRADIEND's dtype (v bytes; k feature neurons, B = gradiend_batch_size, K gradient kinds):

    GRADIEND weights     (2k + bias) · v         encoder row(s), decoder column(s), decoder bias
    AdamW state          2 · (2k + bias) · v     exp_avg and exp_avg_sq
    .grad buffers        (2k + bias) · v         the fused step's gradients (`step.FusedLoss`)
    residual             B · v                   its work buffer (none for k = 1, B = 1: r lives in a .grad)
    gradient buffers     S · K · B · v           source/target gradients per batch slot, in S sets (2 with
                                                 `overlap_step`: batch t+1's while step t runs; else 1)
    best checkpoint      (2k + bias) · v         a copy of the best weights (host or device)
    class target sums    2 · max(v, 4)           the decoder refit's running class sums of the targets
                                                 (`decoder_fit="class_means"`, k = 1; `step.ClassTargetMeans`)

k = 1, B = 1, a decoder bias, two kinds, float32, S = 1: 12 + 24 + 12 + 8 + 12 = 68 B per input
(76 B with S = 2; 8 B more with the class target sums: 84 B for the default run). Besides that: the
base model (parameters × dtype size), its activations (an estimate), the autograd gradients of the
selected tensors while a batch is gathered, and the gradient cache's byte limit (host memory).
`plan_memory` adds these up per place (device, host); `MemoryPlan.check` compares them with free memory
and stops a run that cannot fit, naming the settings that would make it fit.

A sharded GRADIEND over N processes (`shard_gradiend` under torchrun, `gradiend.training`) holds per rank
1/N of every GRADIEND component (the best checkpoint: 1/N per rank, N ranks on one host), the rank's slice of
the gradient buffers plus one chunk of `REDUCE_CHUNK` entries of scratch for the chunked reduction of the
base gradients (`gradient_source`; no full-length vector), and, when training ends, the gathered full
weights (`gathered_weights`): on every rank's device, or with `gather_to_main_host`
(`train_gradiend(final_weights="rank0_host")`) in rank 0's host memory only, so the plan is then rank 0's (the
other ranks' host need is smaller by that much). In-training evaluation encodes slice-wise and needs no full
encoder. The base model, its activations and the engine's gradients are whole on every rank. Host figures
are per rank.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from gradiend.gradient_source import REDUCE_CHUNK
from gradiend.step import decoder_refit_skipped

if TYPE_CHECKING:
    from torch import nn

    from gradiend.arguments import TrainingArguments
    from gradiend.model_with_gradiend import ModelWithGradiend
    from gradiend.params import ParamMap

logger = logging.getLogger(__name__)

GRADIEND_COMPONENTS = ("gradiend_weights", "optimizer_state", "grad_buffers", "residual", "gradient_buffers",
                       "best_checkpoint", "class_target_sums")
BASE_COMPONENTS = ("base_parameters", "base_activations", "engine_gradients")
PRUNE_FRACTION = 0.1  # the pre-pruning lever is priced at keeping this share of the inputs


class InsufficientMemoryError(MemoryError):
    """A training run whose memory plan does not fit the free device or host memory."""


@dataclass(frozen=True)
class RunShape:
    """What a run's memory depends on. Byte sizes are per value (the dtype's itemsize)."""

    n_inputs: int
    latent_dim: int = 1
    bias_decoder: bool = True
    n_kinds: int = 2
    gradiend_batch_size: int = 1
    gradiend_bytes: int = 4
    n_selected_full: int | None = None  # entries of the selected base tensors (before pruning); None: n_inputs
    n_tied: int = 0  # entries of selected tensors shared with the LM head (tied input embeddings)
    base_parameters: int = 0
    base_bytes: int = 4
    activation_bytes: int = 0
    cache_bytes: int = 0  # in-memory gradient cache limit (host); 0 for no cache or a disk cache
    best_on_host: bool = True
    base_loaded: bool = True  # the base model is already in memory (free memory excludes it)
    shards: int = 1  # processes a sharded GRADIEND is split over (1: not sharded)
    gradient_buffer_sets: int = 1  # 2 when the GRADIEND step overlaps the next base pass (`overlap_step`)
    gather_to_main_host: bool = False  # a sharded run's weights end in rank 0's host memory (`final_weights`)
    class_target_sums: bool = False  # the decoder refit's class sums of the targets (`decoder_fit`)

    def __post_init__(self) -> None:
        for name in ("n_inputs", "latent_dim", "n_kinds", "gradiend_batch_size", "gradiend_bytes", "base_bytes",
                     "shards", "gradient_buffer_sets"):
            if getattr(self, name) < 1:
                raise ValueError(f"RunShape.{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("base_parameters", "activation_bytes", "cache_bytes", "n_tied"):
            if getattr(self, name) < 0:
                raise ValueError(f"RunShape.{name} must be ≥ 0, got {getattr(self, name)}")

    @property
    def selected_full(self) -> int:
        return self.n_inputs if self.n_selected_full is None else self.n_selected_full


@dataclass(frozen=True)
class Component:
    """One block of memory: its bytes, where it lives, and whether it is already allocated."""

    name: str
    bytes: int
    where: str  # "device" or "host"
    allocated: bool = False
    estimate: bool = False  # a rough figure (activations), not an exact count


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per component of one training run (see the module docstring)."""

    shape: RunShape
    components: tuple[Component, ...] = field(default_factory=tuple)

    def bytes(self, name: str) -> int:
        return sum(c.bytes for c in self.components if c.name == name)

    @property
    def gradiend_bytes(self) -> int:
        """The GRADIEND part: everything that scales with the selected inputs."""
        return sum(c.bytes for c in self.components if c.name in GRADIEND_COMPONENTS)

    @property
    def per_input(self) -> float:
        """GRADIEND bytes per selected input (of this rank's share when sharded)."""
        return self.gradiend_bytes / -(-self.shape.n_inputs // self.shape.shards)

    def needed(self, where: str, device_is_host: bool = False) -> int:
        """Bytes still to allocate in `where` ("device"/"host"); on a CPU run the two are one place."""
        return sum(c.bytes for c in self.components
                   if not c.allocated and (c.where == where or device_is_host))

    def as_dict(self) -> dict[str, int]:
        """Bytes by component name, plus the GRADIEND part's `total` (what `memory_estimate` returns)."""
        out = {c.name: c.bytes for c in self.components if c.name in GRADIEND_COMPONENTS}
        return {**out, "total": self.gradiend_bytes}

    def table(self) -> str:
        """A plain-text breakdown (one line per component)."""
        lines = [f"{c.name:<18} {c.bytes / 1e6:>12.1f} MB  {c.where:<6}"
                 f"{' (estimate)' if c.estimate else ''}{' (allocated)' if c.allocated else ''}"
                 for c in self.components]
        lines.append(f"{'GRADIEND part':<18} {self.gradiend_bytes / 1e6:>12.1f} MB  "
                     f"({self.per_input:.1f} B per selected input)")
        return "\n".join(lines)

    def check(self, device: torch.device | str, free_device: int | None = None,
              free_host: int | None = None) -> None:
        """Raise `InsufficientMemoryError` when the plan exceeds free memory (measured unless given)."""
        device = torch.device(device)
        on_host = device.type == "cpu"
        free_host = free_host_bytes() if free_host is None else free_host
        free_device = None if on_host else (free_device_bytes(device) if free_device is None else free_device)
        short = []
        if on_host:
            if self.needed("host", device_is_host=True) > free_host:
                short.append(("host", self.needed("host", device_is_host=True), free_host))
        else:
            if free_device is not None and self.needed("device") > free_device:
                short.append((str(device), self.needed("device"), free_device))
            if self.needed("host") > free_host:
                short.append(("host", self.needed("host"), free_host))
        if short:
            raise InsufficientMemoryError(self._message(short, device, free_device))
        logger.info("Memory plan fits: %.2f GB to allocate on %s, %.2f GB on the host (%.1f B per selected input)",
                    0.0 if on_host else self.needed("device") / 1e9, device,
                    self.needed("host", device_is_host=on_host) / 1e9, self.per_input)

    def _message(self, short: list[tuple[str, int, int]], device: torch.device, free_device: int | None) -> str:
        missing = "; ".join(f"{where}: {need / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free"
                            for where, need, free in short)
        side = "device" if short[0][0] != "host" else "host"
        levers = "\n".join(f"  - {text}" for text in levers_for(self, device, free_device, side))
        return (f"This training run does not fit in memory ({missing}). Memory plan:\n{self.table()}\n"
                f"Ways to make it fit (bytes saved on the short side, {short[0][0]}):\n{levers}")


def plan_memory(shape: RunShape) -> MemoryPlan:
    """The memory plan of a run of `shape` (no allocation); with `shards` > 1, of one rank."""
    n, k, v = -(-shape.n_inputs // shape.shards), shape.latent_dim, shape.gradiend_bytes  # this rank's inputs
    weights = (2 * n * k + k + (n if shape.bias_decoder else 0)) * v
    vector_path = k == 1 and shape.gradiend_batch_size == 1  # r in a .grad buffer (`step.FusedLoss`)
    # in the GRADIEND's dtype (`TrainingLoop.fit`); a second set while step t overlaps batch t+1's gradients
    buffers = shape.gradient_buffer_sets * shape.n_kinds * shape.gradiend_batch_size * n * v
    sharded = shape.shards > 1
    scratch = min(REDUCE_CHUNK, n) * v if sharded else 0  # one chunk of the chunked reduction
    full = (2 * shape.n_inputs * k + k + (shape.n_inputs if shape.bias_decoder else 0)) * v
    components = (
        Component("gradiend_weights", weights, "device"),
        Component("optimizer_state", 2 * weights, "device"),
        Component("grad_buffers", weights, "device"),
        Component("residual", 0 if vector_path else shape.gradiend_batch_size * n * v, "device"),
        Component("gradient_buffers", buffers + scratch, "device"),
        Component("best_checkpoint", weights, "host" if shape.best_on_host else "device"),
        *([Component("class_target_sums", 2 * n * max(v, 4), "device")] if shape.class_target_sums else []),
        Component("gathered_weights", full if sharded else 0, "host" if shape.gather_to_main_host else "device"),
        Component("base_parameters", shape.base_parameters * shape.base_bytes, "device", allocated=shape.base_loaded),
        Component("base_activations", shape.activation_bytes, "device", estimate=True),
        Component("engine_gradients", engine_gradient_bytes(shape), "device"),
        Component("gradient_cache", shape.cache_bytes, "host"),
    )
    return MemoryPlan(shape, components)


def engine_gradient_bytes(shape: RunShape) -> int:
    """Autograd's per-tensor gradients while a batch is gathered into the flat buffers.

    One set at a time (`GradientEngine.parameter_gradients` drops a kind's before it computes the next); a
    tied tensor (input embeddings shared with the LM head) gets two partial gradients before autograd sums them.
    """
    return (shape.selected_full + 2 * shape.n_tied) * shape.base_bytes


def plan_for_model(model: ModelWithGradiend, args: TrainingArguments, seq_len: int = 128,
                   cache_bytes: int = 0, best_on_host: bool = True, shards: int | None = None,
                   final_weights: str = "every_rank") -> MemoryPlan:
    """The plan of training `model`'s GRADIEND with `args` (shape-only templates work: nothing is allocated).

    `seq_len`: the token length the activation estimate assumes; `cache_bytes`: an in-memory gradient
    cache's byte limit (0 for none or a disk cache); `shards`: processes the GRADIEND is split over
    (default: the torchrun world size with `args.shard_gradiend`, else 1); `final_weights`: where a sharded
    run's trained weights are gathered (`training.FINAL_WEIGHTS`: "every_rank" devices or "rank0_host").
    """
    if final_weights not in ("every_rank", "rank0_host"):
        raise ValueError(f"final_weights={final_weights!r}; use 'every_rank' or 'rank0_host'")
    if shards is None:
        from gradiend.distributed import env_world_size

        shards = env_world_size() if args.shard_gradiend else 1
    config = model.gradiend.config
    shape = run_shape(model.base_model, model.param_map, args, latent_dim=config.latent_dim,
                      bias_decoder=config.bias_decoder, gradiend_bytes=model.gradiend.encoder_weight.element_size(),
                      seq_len=seq_len, cache_bytes=cache_bytes, best_on_host=best_on_host, shards=shards)
    return plan_memory(replace(shape, gather_to_main_host=final_weights == "rank0_host"))


def run_shape(base: nn.Module, param_map: ParamMap, args: TrainingArguments, *, latent_dim: int = 1,
              bias_decoder: bool = True, gradiend_bytes: int = 4, seq_len: int = 128, cache_bytes: int = 0,
              best_on_host: bool = True, shards: int = 1, base_loaded: bool = True) -> RunShape:
    """The `RunShape` of a GRADIEND over `param_map` of the Hugging Face model `base` (a meta-device model works:
    only shapes, dtypes and the config are read), trained with `args`."""
    named = dict(base.named_parameters())
    head = base.get_output_embeddings()
    tied = {id(head.weight)} if head is not None else set()
    base_bytes = next(iter(base.parameters())).element_size()
    return RunShape(
        n_inputs=param_map.size, latent_dim=latent_dim, bias_decoder=bias_decoder,
        n_kinds=len({args.source, args.target}), gradiend_batch_size=args.gradiend_batch_size,
        gradiend_bytes=gradiend_bytes, n_selected_full=sum(spec.full_numel for spec in param_map.specs),
        n_tied=sum(spec.full_numel for spec in param_map.specs if id(named[spec.name]) in tied),
        base_parameters=sum(p.numel() for p in base.parameters()), base_bytes=base_bytes,
        activation_bytes=activation_estimate(base.config, args.train_batch_size, seq_len, base_bytes),
        cache_bytes=cache_bytes, best_on_host=best_on_host, base_loaded=base_loaded, shards=shards,
        gradient_buffer_sets=2 if args.overlap_step and shards == 1 else 1,
        class_target_sums=decoder_refit_skipped(args, latent_dim) is None)


def memory_estimate(n_inputs: int, latent_dim: int, bias_decoder: bool, n_gradient_kinds: int,
                    gradiend_batch_size: int, bytes_per_value: int = 4,
                    gradient_buffer_sets: int = 1, class_target_sums: bool = False) -> dict[str, int]:
    """Bytes of the GRADIEND part of a training run by component, plus their `total` (see `plan_memory`;
    the `class_target_sums` component only when they are held)."""
    shape = RunShape(n_inputs, latent_dim, bias_decoder, n_gradient_kinds, gradiend_batch_size, bytes_per_value,
                     gradient_buffer_sets=gradient_buffer_sets, class_target_sums=class_target_sums)
    return plan_memory(shape).as_dict()


def levers_for(plan: MemoryPlan, device: torch.device | str, free_device: int | None = None,
               side: str = "device") -> list[str]:
    """The settings that shrink `plan`, each with the bytes it saves on `side` ("device" or "host";
    on a CPU run both are host memory)."""
    s, device = plan.shape, torch.device(device)
    together = device.type == "cpu"
    total = plan.needed(side, device_is_host=together)

    def saving(**changes: object) -> int:
        return total - plan_memory(replace(s, **changes)).needed(side, device_is_host=together)

    half = max(1, s.n_inputs // 2)
    pruned = max(1, round(PRUNE_FRACTION * s.n_inputs))
    out = [f"`params`: select fewer base parameters; half the inputs ({half:,}) saves "
           f"{_gb(saving(n_inputs=half, n_selected_full=max(1, s.selected_full // 2)))}",
           f"pre-pruning (`pre_prune_config=PrePruneConfig(topk={PRUNE_FRACTION})`): keeping {pruned:,} inputs "
           f"saves {_gb(saving(n_inputs=pruned))}"]
    if s.bias_decoder:
        out.append(f"`bias_decoder=False` saves {_gb(saving(bias_decoder=False))}")
    if s.base_bytes > 2:
        out.append(f"a bf16 base model (`torch_dtype='bfloat16'`) saves "
                   f"{_gb(saving(base_bytes=2, activation_bytes=s.activation_bytes * 2 // s.base_bytes))}")
    if s.cache_bytes:
        out.append(f"a smaller in-memory gradient cache (`gradient_cache_max_gb`, or `gradient_cache='disk'`) "
                   f"saves up to {_gb(saving(cache_bytes=0))}")
    if not s.best_on_host and side == "device" and not together:
        out.append(f"keeping the best checkpoint on the host saves {_gb(saving(best_on_host=True))}")
    if side == "device" and not together:
        out.append(_gpu_lever(plan, device, free_device))
    return out


MAX_GPUS = 64  # the largest process count the GPU lever considers


def _gpu_lever(plan: MemoryPlan, device: torch.device, free_device: int | None) -> str:
    """More GPUs with a sharded GRADIEND (`torchrun --nproc-per-node N`, `shard_gradiend=True`): each rank holds
    1/N of the GRADIEND state; the base model, its activations and gradients stay whole on every rank."""
    s, now = plan.shape, plan.needed("device")
    launch = "torchrun --nproc-per-node N with shard_gradiend=True"

    def need(gpus: int) -> int:
        return plan_memory(replace(s, shards=s.shards * gpus)).needed("device")

    if device.type == "cuda" and free_device is not None:
        gpus = next((g for g in range(2, MAX_GPUS + 1) if need(g) <= free_device), None)
        if gpus is not None:
            return f"more GPUs (sharded GRADIEND, {launch}): N = {gpus} needs {_gb(need(gpus))} per GPU, saving " \
                   f"{_gb(now - need(gpus))} per GPU"
        floor = now - plan.gradiend_bytes
        return f"more GPUs do not suffice alone: even {MAX_GPUS} GPUs need {_gb(need(MAX_GPUS))} each (the base " \
               f"model, its activations and gradients, {_gb(floor)}, are whole on every GPU)"
    return f"more GPUs (sharded GRADIEND, {launch}): N = 2 needs {_gb(need(2))} per GPU, saving {_gb(now - need(2))}"


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def activation_estimate(config: object, batch_size: int, seq_len: int, dtype_bytes: int = 4) -> int:
    """Rough bytes of a transformer's activations kept for one backward pass (an estimate).

    Per layer s·b·h·(34 + 5·a·s/h) bytes at 2-byte activations (Korthikanti et al., 2022, no
    recomputation), scaled to `dtype_bytes`, plus the LM head's logits and their gradient (2·b·s·V).
    `config`: a Hugging Face config (`hidden_size`, `num_hidden_layers`, `num_attention_heads`, `vocab_size`).
    """
    h, layers = int(config.hidden_size), int(config.num_hidden_layers)
    heads, vocab = int(config.num_attention_heads), int(config.vocab_size)
    s, b = int(seq_len), int(batch_size)
    per_layer = s * b * h * (34 + 5 * heads * s / h) * dtype_bytes / 2
    return int(layers * per_layer + 2 * b * s * vocab * dtype_bytes)


def free_host_bytes() -> int:
    """Memory the host can still give (MemAvailable on Linux, else free physical pages)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device (None where it cannot be measured: the check is then skipped)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    logger.info("Free memory of %s is unknown; the memory plan is checked against host memory only", device)
    return None
