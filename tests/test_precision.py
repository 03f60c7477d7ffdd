"""Edits to bf16/fp16 weights: computed in float32 and rounded once; restores are bitwise; chunked reductions."""

from __future__ import annotations

import pytest
import torch

from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.params import NonFiniteUpdateError, ParamMap
from gradiend.reductions import dot
from gradiend.rewrite import ParameterSnapshot

PARAMS = ["encoder.layer.1.*"]
LOW = (torch.bfloat16, torch.float16)


def _fp32_reference(theta: torch.Tensor, delta: torch.Tensor, lr: float) -> torch.Tensor:
    """θ + lr·δ computed in float32 (one fused multiply-add per entry), rounded once to θ's dtype."""
    return torch.add(theta.float(), delta.float(), alpha=lr).to(theta.dtype)


def _assert_within_one_ulp_of_exact(result: torch.Tensor, theta: torch.Tensor, delta: torch.Tensor,
                                    lr: float) -> float:
    """Compare with θ + lr·δ computed in float64 and rounded once; return the fraction of 1-ulp differences.

    The float32 result is itself rounded, so rounding it again to bf16/fp16 can land on the neighbour of the
    correctly rounded value (double rounding), never further: the float32 value lies within half a float32 ulp
    of the exact one, which can only cross a half-way point of the coarser grid, not skip a grid value."""
    exact = (theta.double() + torch.tensor(lr, dtype=torch.float32).double() * delta.double()).to(theta.dtype)
    spacing = torch.nextafter(exact.abs(), torch.full_like(exact, float("inf"))) - exact.abs()
    gap = (result.float() - exact.float()).abs()
    assert bool((gap <= spacing.float()).all()), "more than one ulp from the exactly rounded result"
    return float((result != exact).float().mean())


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("lr", [1e-3, 0.1, 7.0])
def test_add_to_low_precision_is_fp32_rounded_once(dtype: torch.dtype, lr: float) -> None:
    gen = torch.Generator().manual_seed(0)
    theta = (torch.randn(300_001, generator=gen) * 0.02).to(dtype)
    delta = torch.randn(300_001, generator=gen) * 0.01
    param_map = ParamMap.from_shapes([("w", tuple(theta.shape))])
    weights = theta.clone()
    param_map.add_to(weights, param_map.specs[0], delta, lr, chunk=65_536)  # several chunks and a ragged tail
    assert weights.dtype == dtype
    assert torch.equal(weights, _fp32_reference(theta, delta, lr))
    assert _assert_within_one_ulp_of_exact(weights, theta, delta, lr) < 1e-4
    # the changed entries are the ones the float32 computation changes after rounding
    expected_changed = _fp32_reference(theta, delta, lr) != theta
    assert torch.equal(weights != theta, expected_changed) and bool(expected_changed.any())


@pytest.mark.parametrize("dtype", LOW)
def test_add_to_pruned_low_precision_touches_only_kept_entries(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    theta = (torch.randn(40, 50, generator=gen) * 0.02).to(dtype)
    keep = torch.rand(2000, generator=gen) < 0.3
    param_map = ParamMap.from_shapes([("w", (40, 50))]).restrict(keep)
    spec = param_map.specs[0]
    delta = torch.randn(spec.numel, generator=gen) * 0.01
    weights = theta.clone()
    param_map.add_to(weights, spec, delta, 0.05, chunk=97)
    expected = theta.clone().view(-1)
    expected[spec.index] = _fp32_reference(theta.view(-1)[spec.index], delta, 0.05)
    assert torch.equal(weights.view(-1), expected)
    assert torch.equal(weights.view(-1)[~keep], theta.view(-1)[~keep])


def test_tiny_fp16_updates_are_not_flushed_to_zero() -> None:
    """δ below fp16's smallest subnormal (6e-8) times a large lr: a cast of δ to fp16 first would drop it."""
    theta = torch.full((1000,), 0.5, dtype=torch.float16)
    delta = torch.full((1000,), 2e-8)
    param_map = ParamMap.from_shapes([("w", (1000,))])
    weights = theta.clone()
    param_map.add_to(weights, param_map.specs[0], delta, 1e5)  # +0.002: several fp16 ulps at 0.5
    assert torch.equal(weights, torch.full((1000,), 0.5 + 0.002, dtype=torch.float16))
    assert bool((delta.half() == 0).all()), "the premise: δ underflows in fp16"


def test_low_precision_overflow_of_the_result_is_refused_before_writing() -> None:
    theta = torch.tensor([60000.0, 1.0], dtype=torch.float16)
    param_map = ParamMap.from_shapes([("w", (2,))])
    weights = theta.clone()
    with pytest.raises(NonFiniteUpdateError, match="does not fit"):
        param_map.add_to(weights, param_map.specs[0], torch.tensor([10000.0, 0.0]), 1.0)
    assert torch.equal(weights, theta)
    param_map.add_to(weights, param_map.specs[0], torch.tensor([-10000.0, 0.0]), 1.0)  # large θ, fitting result
    assert torch.equal(weights, torch.tensor([50000.0, 1.0], dtype=torch.float16))


def test_non_contiguous_parameter_is_edited_like_a_contiguous_one() -> None:
    base = (torch.randn(6, 4) * 0.02).to(torch.bfloat16)
    theta = base.T  # (4, 6), not contiguous
    param_map = ParamMap.from_shapes([("w", (4, 6))])
    delta = torch.randn(24) * 0.01
    expected = _fp32_reference(theta.contiguous().view(-1), delta, 0.3).view(4, 6)
    param_map.add_to(theta, param_map.specs[0], delta, 0.3)
    assert torch.equal(theta, expected)


@pytest.mark.parametrize("torch_dtype", ["bfloat16", "float16"])
def test_model_rewrites_and_grid_candidates_match_the_fp32_reference(tiny_mlm_dir: str, torch_dtype: str) -> None:
    mwg = ModelWithGradiend.create(tiny_mlm_dir, params=PARAMS, torch_dtype=torch_dtype, seed=0)
    dtype = getattr(torch, torch_dtype)
    named = dict(mwg.base_model.named_parameters())
    before = {n: p.detach().clone() for n, p in mwg.base_model.state_dict().items()}
    assert all(named[name].dtype == dtype for name in mwg.param_map.names)
    update = mwg.update_vector(1.0).float()
    views = mwg.param_map.views(update)
    for lr in (1e-3, 0.5):
        rewritten = dict(mwg.rewrite_base_model(learning_rate=lr, feature_factor=1.0).named_parameters())
        with mwg.apply(feature_factor=1.0, learning_rate=lr):  # the decoder grid's in-place path
            in_place = {n: p.detach().clone() for n, p in mwg.base_model.named_parameters()}
        changed = total = 0
        for spec, delta in zip(mwg.param_map.specs, views, strict=True):
            expected = _fp32_reference(before[spec.name], delta, lr)
            assert torch.equal(rewritten[spec.name], expected), spec.name
            assert torch.equal(in_place[spec.name], expected), spec.name
            changed += int((expected != before[spec.name]).sum())
            total += expected.numel()
        assert 0 < changed <= total
        for name, value in before.items():  # restored bitwise after the candidate
            assert torch.equal(mwg.base_model.state_dict()[name], value), name


@pytest.mark.parametrize("torch_dtype", ["bfloat16", "float16", "float32"])
def test_snapshot_restores_bitwise_after_many_candidates(tiny_mlm_dir: str, torch_dtype: str) -> None:
    mwg = ModelWithGradiend.create(tiny_mlm_dir, params=PARAMS, torch_dtype=torch_dtype, seed=0)
    original = {n: p.detach().clone() for n, p in mwg.base_model.named_parameters()}
    snapshot = ParameterSnapshot(mwg.base_model, mwg.param_map)
    for ff in (1.0, -1.0):
        update = mwg.lazy_update(ff)
        for lr in (10.0, 0.01, 1e-4):
            snapshot.add(update, lr)
            snapshot.restore()
    current = dict(mwg.base_model.named_parameters())
    assert all(torch.equal(current[n].detach(), original[n]) for n in original)
    # the restore writes the saved bits back: a NaN-payload-free equality check plus the raw bytes
    for name in mwg.param_map.names:
        a, b = current[name].detach(), original[name]
        assert torch.equal(a.view(torch.int16 if a.element_size() == 2 else torch.int32),
                           b.view(torch.int16 if b.element_size() == 2 else torch.int32)), name


@pytest.mark.parametrize("numel,chunk", [(10, 4), (4, 4), (3, 4), (1001, 128), (0, 4)])
def test_chunked_dot_equals_dot(numel: int, chunk: int) -> None:
    gen = torch.Generator().manual_seed(numel)
    a, b = torch.randn(numel, generator=gen), torch.randn(numel, generator=gen)
    got = dot(a, b, max_numel=chunk)
    assert got.dim() == 0 and got.dtype == torch.float32
    assert torch.allclose(got, torch.dot(a.double(), b.double()).float(), rtol=1e-5, atol=1e-6)
    if numel < chunk:  # below the threshold it is torch.dot itself
        assert torch.equal(got, torch.dot(a, b))


def test_chunked_dot_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="1-D"):
        dot(torch.ones(2, 2), torch.ones(4))
    with pytest.raises(ValueError, match="same number"):
        dot(torch.ones(3), torch.ones(4))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", LOW)
def test_add_to_on_the_gpu_equals_the_fp32_reference(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    theta = (torch.randn(100_003, generator=gen) * 0.02).to(dtype)
    delta = torch.randn(100_003, generator=gen) * 0.01
    param_map = ParamMap.from_shapes([("w", (100_003,))])
    weights = theta.cuda()
    param_map.add_to(weights, param_map.specs[0], delta.cuda(), 0.1, chunk=30_000)
    expected = _fp32_reference(theta, delta, 0.1)
    assert _assert_within_one_ulp_of_exact(weights.cpu(), theta, delta, 0.1) < 1e-4
    assert float((weights.cpu() != expected).float().mean()) < 1e-4  # an FMA on one side only: rare 1-ulp ties
    big = torch.randn(5000, device="cuda")
    assert torch.allclose(dot(big, big, max_numel=1024), torch.dot(big, big), rtol=1e-5)
