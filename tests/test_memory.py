"""Memory plan (components, fit check, levers) against measured memory; gradient cache sizing and pinning."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from gradiend import gradient_cache
from gradiend.arguments import PrePruneConfig, TrainingArguments
from gradiend.gradient_cache import GradientStore, kept_blocks, pack, packed_nbytes, wants_pinned
from gradiend.gradient_source import REDUCE_CHUNK
from gradiend.memory import (
    InsufficientMemoryError,
    RunShape,
    free_host_bytes,
    levers_for,
    memory_estimate,
    plan_for_model,
    plan_memory,
)
from gradiend.model import GradiendConfig, GradiendModel
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.training import TrainingLoop

ROOT = Path(__file__).resolve().parents[1]


def test_per_input_bytes_of_the_default_run_are_68() -> None:
    n = 1_000_000
    est = memory_estimate(n, 1, True, 2, 1)
    assert est == {"gradiend_weights": 12 * n + 4, "optimizer_state": 24 * n + 8, "grad_buffers": 12 * n + 4,
                   "residual": 0, "gradient_buffers": 8 * n, "best_checkpoint": 12 * n + 4, "total": 68 * n + 20}
    no_bias = memory_estimate(n, 1, False, 2, 1)  # the step's residual lives in ∂L/∂W_d's buffer
    assert no_bias["residual"] == 0 and no_bias["total"] == 5 * 8 * n + 8 * n + 20
    batched = memory_estimate(n, 2, True, 1, 3)  # k = 2 neurons, one kind, 3 gradients per step
    assert batched["gradiend_weights"] == (5 * n + 2) * 4 and batched["gradient_buffers"] == 3 * n * 4
    assert batched["residual"] == 3 * n * 4


class _Holder:
    def __init__(self, gradiend: GradiendModel) -> None:
        self.gradiend = gradiend


class _RandomGradients:
    """A stand-in gradient source (no base model): random source/target gradients."""

    base_passes = 0.0

    def __init__(self) -> None:
        self.gen = torch.Generator().manual_seed(0)

    def gradients(self, step, texts, factual, alternative, out, keep):
        for buffer in out.values():
            buffer.copy_(torch.randn(buffer.shape, generator=self.gen) * 1e-3)
        return out


class _HeldAtEnd(TrainingLoop):
    """Records the storages the loop holds at the end of training, before it releases the `.grad` buffers."""

    def _release_gradients(self) -> None:
        gradiend = self.gradiend
        grads = _storages(p.grad for p in gradiend.parameters())
        self.held = {
            "gradiend_weights": sum(_storages(gradiend.parameters()).values()),
            "optimizer_state": sum(_storages(t for s in self.optimizer.state.values() for t in s.values()
                                             if t.dim() > 0).values()),
            "grad_buffers": sum(grads.values()),
            "residual": sum(v for k, v in _storages([self._fused.residual]).items() if k not in grads),
            "gradient_buffers": sum(_storages(self._buffers.values()).values()),
            "best_checkpoint": sum(v for k, v in _storages(self.history.best_state.values()).items()),
            **({"class_target_sums": self._targets.sums.untyped_storage().nbytes()} if self._targets else {}),
        }
        super()._release_gradients()


def _storages(tensors) -> dict[int, int]:
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t is not None}


@pytest.mark.parametrize(("latent", "bias", "batch"), [(1, True, 1), (1, False, 1), (2, True, 3)])
def test_plan_equals_the_bytes_the_training_loop_holds(latent: int, bias: bool, batch: int) -> None:
    """After `fit`, the distinct tensor storages held by the loop's objects, component by component."""
    n = 50_000
    gradiend = GradiendModel(GradiendConfig(input_dim=n, latent_dim=latent, bias_decoder=bias,
                                            feature_classes=["A", "B"]), torch.Generator().manual_seed(0))
    calls = iter(range(10**6))

    def evaluate() -> dict:
        value = 0.1 * next(calls)  # improves at every evaluation: a best checkpoint is taken
        return {"correlation": value, "n": 2, "mean_by_class": {"A": 1.0, "B": -1.0}}

    rows = pd.DataFrame({"masked": [f"r{i}" for i in range(8)], "factual": ["A", "B"] * 4,
                         "alternative": ["B", "A"] * 4, "label": [1, -1] * 4})
    args = TrainingArguments(train_batch_size=2, max_steps=4, eval_steps=2, seed=0, show_progress=False,
                             gradiend_batch_size=batch, scale_estimation_batches=2)
    loop = _HeldAtEnd(_Holder(gradiend), args, _RandomGradients(), evaluate)
    outcome = loop.fit(rows)
    planned = outcome.stats["memory_estimate_bytes"]
    held = loop.held
    assert all(p.grad is None for p in gradiend.parameters())  # released once training ended
    assert planned["total"] == sum(planned[k] for k in held)
    for name, value in held.items():
        slack = 8 if name == "best_checkpoint" else 0  # the checkpoint also holds the two scalar scales
        assert planned[name] <= value <= planned[name] + slack, name


def test_plan_check_stops_a_run_that_cannot_fit_and_names_the_levers() -> None:
    shape = RunShape(1_000_000_000, base_parameters=8_000_000_000, base_bytes=4, activation_bytes=10**9,
                     best_on_host=False)
    plan = plan_memory(shape)
    assert plan.per_input == pytest.approx(68.0, abs=1e-6)
    with pytest.raises(InsufficientMemoryError) as err:
        plan.check("cuda", free_device=40 * 10**9, free_host=10**12)
    text = str(err.value)
    assert "cuda: 73.00 GB needed, 40.00 GB free" in text  # 68 GB GRADIEND + 4 engine (one kind) + 1 activations
    for lever in ("`params`", "pre_prune_config", "`bias_decoder=False`", "torch_dtype='bfloat16'",
                  "best checkpoint on the host", "more GPUs"):
        assert lever in text, lever
    assert "bias_decoder=False` saves 20.00 GB" in text  # 5·4 B per input (the residual lives in a .grad)
    # sharded over N: 68/N GB of GRADIEND state + one 0.067 GB reduction chunk + 12 GB gathered weights per GPU,
    # beside the 5 GB the base model's gradients and activations take on every GPU: 17.07 + 68/3 = 39.73 ≤ 40
    assert "N = 3 needs 39.73 GB per GPU" in text
    plan.check("cuda", free_device=80 * 10**9, free_host=10**12)  # fits: no error
    plan.check("mps", free_host=10**12)  # a device of unknown free memory: checked against the host only
    with pytest.raises(InsufficientMemoryError, match=r"host: 12\.00 GB needed"):
        plan_memory(RunShape(1_000_000_000)).check("cuda", free_device=10**12, free_host=10**9)  # best ckpt on host
    with pytest.raises(InsufficientMemoryError, match=r"host: 73\.00 GB needed"):
        plan.check("cpu", free_host=10 * 10**9)  # a CPU run: one pool, base model already loaded
    with pytest.raises(ValueError, match="n_inputs"):
        RunShape(0)


def test_a_sharded_plan_splits_the_gradiend_state_not_the_base_model() -> None:
    n = 8 * 10**6
    one = plan_memory(RunShape(n, base_parameters=10**6, activation_bytes=10**6))
    eight = plan_memory(RunShape(n, base_parameters=10**6, activation_bytes=10**6, shards=8))
    for name in ("gradiend_weights", "optimizer_state", "grad_buffers", "best_checkpoint"):
        assert eight.bytes(name) == pytest.approx(one.bytes(name) / 8, abs=8), name
    # the slice + one chunk of the chunked reduction (no full-length vector)
    assert eight.bytes("gradient_buffers") == 2 * (n // 8) * 4 + min(REDUCE_CHUNK, n // 8) * 4
    assert eight.bytes("gathered_weights") == one.bytes("gradiend_weights") and one.bytes("gathered_weights") == 0
    # gathered into rank 0's host memory instead: the same bytes leave every device
    host = plan_memory(RunShape(n, base_parameters=10**6, activation_bytes=10**6, shards=8, gather_to_main_host=True))
    assert eight.needed("device") - host.needed("device") == host.needed("host") - eight.needed("host") == \
        one.bytes("gradiend_weights")
    for name in ("base_activations", "engine_gradients", "base_parameters"):
        assert eight.bytes(name) == one.bytes(name), name
    assert eight.per_input == pytest.approx((12 + 24 + 12 + 8 + 12) + 4, rel=1e-5)  # a slice-long chunk
    with pytest.raises(ValueError, match="shards"):
        RunShape(n, shards=0)


def test_the_gpu_lever_is_the_smallest_sharded_run_that_fits() -> None:
    plan = plan_memory(RunShape(10**9, base_parameters=8 * 10**9, base_bytes=2, activation_bytes=10**9))
    levers = " ".join(levers_for(plan, "cuda", free_device=40 * 10**9))
    need = {g: plan_memory(RunShape(10**9, base_parameters=8 * 10**9, base_bytes=2, activation_bytes=10**9,
                                    shards=g)).needed("device") for g in range(2, 9)}
    fits = min(g for g, b in need.items() if b <= 40 * 10**9)
    assert f"N = {fits} needs {need[fits] / 1e9:.2f} GB per GPU" in levers and need[fits - 1] > 40 * 10**9
    hopeless = " ".join(levers_for(plan, "cuda", free_device=10**9))
    assert "more GPUs do not suffice alone" in hopeless


def test_levers_save_what_replanning_says() -> None:
    plan = plan_memory(RunShape(10**6, base_bytes=4, base_parameters=10**6, cache_bytes=5 * 10**9))
    levers = levers_for(plan, "cpu")
    assert any("gradient_cache_max_gb" in lever and "5.00 GB" in lever for lever in levers)
    assert not any("GPUs" in lever for lever in levers), "more GPUs do not help a CPU run"
    pruned = plan_memory(RunShape(10**5, base_bytes=4, base_parameters=10**6, cache_bytes=5 * 10**9))
    saved = plan.needed("host", device_is_host=True) - pruned.needed("host", device_is_host=True)
    assert any(f"saves {saved / 1e9:.2f} GB" in lever for lever in levers if "pre_prune" in lever)


def test_a_run_that_cannot_fit_stops_before_its_base_model_is_loaded(tiny_mlm_dir: str, monkeypatch) -> None:
    from conftest import make_rows
    from transformers import PreTrainedModel

    from gradiend import memory, runs
    from gradiend.data import unify
    from gradiend.model_with_gradiend import meta_base_model
    from gradiend.params import ParamMap

    args = TrainingArguments(train_batch_size=4, gradient_cache="off")  # the GRADIEND dominates the plan
    rows, pair = unify(make_rows(), target_classes=["3SG", "3PL"], seed=0)
    template = runs.new_template(tiny_mlm_dir, args, rows, pair, torch.device("cpu"))
    meta = meta_base_model(tiny_mlm_dir)
    assert all(p.is_meta for p in meta.parameters())
    before = memory.run_shape(meta, ParamMap.select(meta, args.params), args)
    assert before == plan_for_model(template, args).shape, "the plan from the config is the plan of the loaded model"
    loads = []
    original = PreTrainedModel.from_pretrained.__func__
    monkeypatch.setattr(PreTrainedModel, "from_pretrained",
                        classmethod(lambda cls, *a, **kw: loads.append(a) or original(cls, *a, **kw)))
    need = plan_memory(dataclasses.replace(before, base_loaded=False)).needed("host", device_is_host=True)
    monkeypatch.setattr(memory, "free_host_bytes", lambda: need - 1)
    with pytest.raises(InsufficientMemoryError, match=rf"host: {need / 1e9:.2f} GB needed") as err:
        runs.new_template(tiny_mlm_dir, args, rows, pair, torch.device("cpu"))
    assert loads == [] and "pre_prune_config" in str(err.value)
    pruned = args.replace(pre_prune_config=PrePruneConfig(topk=0.01, n_samples=4))
    runs.new_template(tiny_mlm_dir, pruned, rows, pair, torch.device("cpu"))  # fits at the pruned size
    assert len(loads) == 1


def test_free_host_memory_is_measured() -> None:
    assert 0 < free_host_bytes() < 2**50


def test_plan_for_a_model_counts_tied_embeddings_and_pruned_selections(tiny_mlm_dir: str) -> None:
    args = TrainingArguments(train_batch_size=4)
    full = ModelWithGradiend.create(tiny_mlm_dir, seed=0, shape_only=True)
    plan = plan_for_model(full, args, seq_len=16)
    embedding = full.base_model.get_input_embeddings().weight.numel()
    assert full.base_model.get_output_embeddings().weight is full.base_model.get_input_embeddings().weight
    assert plan.shape.n_tied == embedding and plan.shape.n_inputs == full.param_map.size
    assert plan.bytes("engine_gradients") == (full.param_map.size + 2 * embedding) * 4  # one kind's at a time
    assert plan.gradiend_bytes == memory_estimate(full.param_map.size, 1, True, 2, 1, gradient_buffer_sets=2,
                                                  class_target_sums=True)["total"]
    assert plan.bytes("class_target_sums") == 8 * full.param_map.size  # the decoder refit's class sums
    kept = plan_for_model(full, dataclasses.replace(args, decoder_fit="trained"), seq_len=16)
    assert plan.gradiend_bytes - kept.gradiend_bytes == 8 * full.param_map.size
    keep = torch.zeros(full.param_map.size, dtype=torch.bool)
    keep[::10] = True
    full.prune(keep)
    pruned = plan_for_model(full, args, seq_len=16)
    assert pruned.shape.n_inputs == int(keep.sum()) and pruned.shape.selected_full == plan.shape.n_inputs


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset peak RSS")
def test_plan_is_within_15_percent_of_the_measured_peak() -> None:
    """A real training run in a fresh process (bench/bench_memory.py): peak resident memory over the run minus
    the resident memory once the base model is loaded, against the plan's GRADIEND part + engine gradients +
    activation estimate. A 30k-token vocabulary makes the GRADIEND (4.2M inputs, 290 MB) dominate."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_memory.py"), "--sizes", "30000:128",
                          "--steps", "2", "--json"], capture_output=True, text=True, check=True, timeout=600)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for name, held in result["held"].items():  # + AdamW's step counters and the checkpoint's two scales
        assert 0 <= held - result["plan"][name] <= 64, name
    ratio = result["measured_peak"] / result["planned_peak"]
    assert 0.85 <= ratio <= 1.15, result


# -- gradient cache --------------------------------------------------------------------------------------------
def test_packed_size_is_known_before_packing() -> None:
    gen = torch.Generator().manual_seed(0)
    for n in (0, 5, 64, 64 * 50 + 13):
        vector = torch.zeros(n)
        if n:
            vector[torch.randint(0, n, (max(1, n // 20),), generator=gen)] = 1.0
        vector[: n // 64 * 64][7:8] = float("nan") if n >= 64 else 0.0  # NaN counts as non-zero
        for dtype in (torch.float32, torch.bfloat16):
            entry = pack(vector, dtype, "k")
            assert packed_nbytes(n, kept_blocks(vector).numel(), dtype) == sum(
                t.numel() * t.element_size() for t in entry.values())


def test_an_entry_over_the_limit_is_refused_without_packing(monkeypatch) -> None:
    packed: list[str] = []
    original = gradient_cache.pack

    def counting(vector, dtype, prefix, *args):
        packed.append(prefix)
        return original(vector, dtype, prefix, *args)

    monkeypatch.setattr(gradient_cache, "pack", counting)
    size = packed_nbytes(640, 10, torch.float32)
    store = GradientStore("memory", max_bytes=size, dtype="float32")
    store.put("a", {"diff": torch.ones(640)})  # exactly the limit: kept
    assert packed == ["diff"] and store.bytes == size and not store.full
    store.put("b", {"diff": torch.ones(640)})
    assert packed == ["diff"], "a refused entry is never packed" and store.full
    out = {"diff": torch.empty(640)}
    assert store.get("a", out) and torch.equal(out["diff"], torch.ones(640)) and not store.get("b", out)


@pytest.mark.parametrize(("device", "mode", "requested", "available", "expected"), [
    ("cuda", "memory", None, True, True),
    ("cuda", "memory", False, True, False),
    ("cuda", "disk", None, True, False),
    ("cuda", "memory", None, False, False),
    ("cpu", "memory", None, True, False),
    ("cpu", "memory", True, True, False),
    ("cpu", "memory", None, False, False),
])
def test_pinned_memory_only_for_in_memory_cuda_gradients(device, mode, requested, available, expected) -> None:
    assert wants_pinned(torch.device(device), mode, requested, cuda_available=available) is expected


def test_cpu_gradients_are_cached_unpinned_and_pinning_needs_cuda() -> None:
    store = GradientStore("memory")
    store.put("k", {"diff": torch.ones(100)})
    assert not any(t.is_pinned() for t in store._memory["k"].values())
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="pin_memory=True needs CUDA"):
            GradientStore("memory", pin_memory=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_gradients_are_cached_pinned_and_restored(dtype: str) -> None:
    gen = torch.Generator().manual_seed(0)
    grads = {"diff": torch.randn(64 * 30 + 5, generator=gen).cuda(), "alternative": torch.zeros(64 * 30 + 5).cuda()}
    grads["alternative"][70] = 2.0
    store = GradientStore("memory", dtype=dtype)
    store.put("k", grads)
    assert all(t.is_pinned() for t in store._memory["k"].values())
    out = {kind: torch.full_like(g, 7.0) for kind, g in grads.items()}
    assert store.get("k", out)
    torch.cuda.synchronize()
    expected = {k: g.to(getattr(torch, dtype)).float() for k, g in grads.items()}
    assert all(torch.equal(out[k], expected[k]) for k in grads)
    unpinned = GradientStore("memory", pin_memory=False)
    unpinned.put("k", grads)
    assert not any(t.is_pinned() for t in unpinned._memory["k"].values())


def test_plan_for_model_places_a_sharded_runs_final_weights(tiny_mlm_dir: str) -> None:
    from gradiend.model_with_gradiend import ModelWithGradiend

    model = ModelWithGradiend.create(tiny_mlm_dir, feature_classes=["3SG", "3PL"], seed=0,
                                     params=["encoder.layer.1.*"])
    args = TrainingArguments(shard_gradiend=True)
    devices = plan_for_model(model, args, shards=2)
    host = plan_for_model(model, args, shards=2, final_weights="rank0_host")
    full = 3 * model.param_map.size * 4 + 4  # encoder, decoder, decoder bias + the encoder bias
    assert devices.bytes("gathered_weights") == host.bytes("gathered_weights") == full
    assert devices.needed("device") - host.needed("device") == full == host.needed("host") - devices.needed("host")
    with pytest.raises(ValueError, match="final_weights='everywhere'"):
        plan_for_model(model, args, shards=2, final_weights="everywhere")
