"""Speed paths stay correct: the fused optimiser follows the plain AdamW/Adam trajectory (sign flips
included), training records its base-model pass time, and clearing the gradient cache hands memory back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import gradiend.gradient_cache as gradient_cache
from gradiend import TextPredictionTrainer, TrainingArguments
from gradiend.model import GradiendConfig, GradiendModel
from gradiend.training import make_optimizer


class _Holder:
    """Just enough of a ModelWithGradiend for `_flip`."""

    def __init__(self, gradiend: GradiendModel) -> None:
        self.gradiend = gradiend


def _trajectory(optim: str, fused: bool, flip_at: int | None = None, steps: int = 25) -> dict[str, torch.Tensor]:
    from gradiend.training import _flip

    n = 5_000
    gen = torch.Generator().manual_seed(0)
    model = GradiendModel(GradiendConfig(input_dim=n), generator=torch.Generator().manual_seed(1))
    model.input_scale.fill_(50.0)
    args = TrainingArguments(learning_rate=1e-2, optim=optim, weight_decay=0.01)
    optimizer = make_optimizer(model.parameters(), args, fused=fused)
    assert bool(optimizer.defaults.get("fused")) is fused
    for step in range(steps):
        x = torch.randn(2, n, generator=gen) * 1e-2
        y = torch.randn(2, n, generator=gen) * 1e-2
        optimizer.zero_grad(set_to_none=True)
        model.loss(x, y)[0].backward()
        optimizer.step()
        if step == flip_at:
            _flip(_Holder(model), optimizer)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("optim", ["adamw", "adam"])
@pytest.mark.parametrize("flip_at", [None, 10])
def test_fused_optimizer_matches_plain(optim: str, flip_at: int | None) -> None:
    start = _trajectory(optim, fused=False, steps=0)
    plain = _trajectory(optim, fused=False, flip_at=flip_at)
    fused = _trajectory(optim, fused=True, flip_at=flip_at)
    for name, value in plain.items():
        assert torch.allclose(fused[name], value, rtol=0, atol=1e-6), name
        if not name.endswith("scale"):
            assert (value - start[name]).abs().max() > 1e-3, f"{name} did not move"


def test_make_optimizer_picks_fused_on_cpu_and_respects_opt_out() -> None:
    model = GradiendModel(GradiendConfig(input_dim=16))
    args = TrainingArguments(learning_rate=1e-3)
    assert make_optimizer(model.parameters(), args).defaults.get("fused") is True
    plain = make_optimizer(model.parameters(), args, fused=False)
    assert not plain.defaults.get("fused")
    assert isinstance(plain, torch.optim.AdamW)
    assert type(make_optimizer(model.parameters(), TrainingArguments(optim="adam"))) is torch.optim.Adam


@pytest.mark.filterwarnings("ignore:GRADIEND training did not converge")
def test_training_records_base_pass_time(tiny_mlm_dir, tiny_rows, tmp_path: Path) -> None:
    args = TrainingArguments(experiment_dir=str(tmp_path / "exp"), train_batch_size=4, max_steps=3, eval_steps=3,
                             learning_rate=1e-3, seed=0, show_progress=False, scale_estimation_batches=2)
    trainer = TextPredictionTrainer(model=tiny_mlm_dir, data=tiny_rows, args=args, target_classes=["3SG", "3PL"])
    trainer.train()
    times = json.loads((tmp_path / "exp" / "model" / "training.json").read_text())["time"]
    assert 0 < times["base_passes"] <= times["gradients"] + times["scale"] + 1e-9
    assert times["base_passes"] <= times["total"]


def test_clearing_a_memory_cache_releases_freed_memory(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(gradient_cache, "release_freed_memory", lambda: calls.append(1))
    store = gradient_cache.GradientStore("memory", 1 << 20)
    store.clear()
    assert calls == []  # nothing was held
    store.put("k", {"alternative": torch.ones(8), "diff": torch.zeros(8)})
    out = {"alternative": torch.empty(8), "diff": torch.empty(8)}
    assert store.get("k", out) and torch.equal(out["alternative"], torch.ones(8))
    store.clear()
    assert calls == [1] and not store.get("k", out)
    monkeypatch.undo()  # the real release is safe to call anywhere
    gradient_cache.release_freed_memory()


@pytest.mark.parametrize("activation", ["tanh", "hardtanh"])
@pytest.mark.parametrize(("batch", "latent", "bias"), [(1, 1, True), (1, 1, False), (3, 2, True), (2, 1, False)])
def test_fused_loss_gradients_equal_autograd(activation: str, batch: int, latent: int, bias: bool) -> None:
    from gradiend.step import FusedLoss

    n = 4_000
    gen = torch.Generator().manual_seed(3)
    config = GradiendConfig(input_dim=n, latent_dim=latent, activation_encoder=activation, bias_decoder=bias)
    # float64, so the comparison checks the derivation, not float32 summation order
    model = GradiendModel(config, generator=torch.Generator().manual_seed(1)).double()
    model.input_scale.fill_(0.02)  # pre-activations of order 1: hardtanh has clipped and unclipped rows
    model.target_scale.fill_(3e-3)
    x = torch.randn(batch, n, generator=gen, dtype=torch.float64) * 1e-2
    y = torch.randn(batch, n, generator=gen, dtype=torch.float64) * 1e-2
    loss_ref, h_ref = model.loss(x, y)
    loss_ref.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    fused = FusedLoss(model, batch)
    for _ in range(2):  # the second call reuses (overwrites) the gradient buffers
        loss, h = fused.loss_and_grad(x, y)
    assert torch.allclose(loss, loss_ref.detach(), rtol=1e-12)
    assert torch.allclose(h, h_ref.detach(), rtol=0, atol=1e-12)
    for name, p in model.named_parameters():
        scale = expected[name].abs().max()
        assert scale > 0, f"{name}: the reference gradient is zero, the test would prove nothing"
        assert torch.allclose(p.grad, expected[name], rtol=0, atol=1e-12 * float(scale)), name
    with pytest.raises(ValueError, match="batches of"):
        fused.loss_and_grad(x.new_zeros(batch + 1, n), x.new_zeros(batch + 1, n))
    model.zero_grad(set_to_none=True)  # e.g. a callback: the next call attaches the gradients again
    fused.loss_and_grad(x, y)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.allclose(p.grad, expected[name], rtol=0,
                                                     atol=1e-12 * float(expected[name].abs().max())), name


def test_training_with_the_fused_loss_follows_the_autograd_trajectory() -> None:
    from gradiend.step import FusedLoss

    n = 5_000
    args = TrainingArguments(learning_rate=1e-2, weight_decay=0.01)
    models = [GradiendModel(GradiendConfig(input_dim=n), generator=torch.Generator().manual_seed(1)) for _ in "ab"]
    optimizers = [make_optimizer(m.parameters(), args) for m in models]
    fused = FusedLoss(models[1], 2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn(2, n, generator=gen) * 1e-2
        y = torch.randn(2, n, generator=gen) * 1e-2
        optimizers[0].zero_grad(set_to_none=True)
        models[0].loss(x, y)[0].backward()
        fused.loss_and_grad(x, y)
        for opt in optimizers:
            opt.step()
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), name


def test_shape_only_template_allocates_no_weights_and_seeds_like_a_real_one(tiny_mlm_dir) -> None:
    from gradiend.model_with_gradiend import ModelWithGradiend

    pair = ("3SG", "3PL")
    template = ModelWithGradiend.create(tiny_mlm_dir, feature_classes=pair, seed=0, shape_only=True)
    assert template.gradiend.shape_only and template.gradiend.encoder_weight.is_meta
    real = ModelWithGradiend.create(tiny_mlm_dir, feature_classes=pair, seed=0)
    seeded = template.with_new_gradiend(0)
    assert not seeded.gradiend.shape_only
    for (name, a), b in zip(real.gradiend.state_dict().items(), seeded.gradiend.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # pruning a template keeps it weightless and shrinks the map
    keep = torch.zeros(template.param_map.size, dtype=torch.bool)
    keep[::7] = True
    template.prune(keep)
    assert template.gradiend.shape_only and template.param_map.size == int(keep.sum())
    assert template.with_new_gradiend(1).gradiend.encoder_weight.shape == (1, int(keep.sum()))


@pytest.mark.parametrize("bias", [True, False])
def test_decode_vector_path_equals_the_matrix_formula(bias: bool) -> None:
    config = GradiendConfig(input_dim=3_000, bias_decoder=bias)
    model = GradiendModel(config, generator=torch.Generator().manual_seed(2))
    model.target_scale.fill_(3.7)
    for h in (0.5, -1.0, [0.25]):
        for rows in (slice(None), slice(10, 1_700)):
            fast = model.decode(h, rows)
            matrix = model.decode_normalized(torch.as_tensor(h, dtype=torch.float32).reshape(1), rows) * 3.7
            assert fast.shape == matrix.shape
            assert torch.allclose(fast, matrix, rtol=1e-6, atol=1e-9), (h, rows)


def test_reuse_large_blocks_switches_only_at_the_outermost_level(monkeypatch) -> None:
    from gradiend import allocator

    calls: list[tuple[str, int, int]] = []

    class FakeLibc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append(("mallopt", param, value))
            return 1

        def malloc_trim(self, pad: int) -> int:
            calls.append(("trim", pad, 0))
            return 1

    monkeypatch.setattr(allocator, "_libc", lambda: FakeLibc())
    monkeypatch.setattr(allocator, "ENABLED", allocator.ENABLED)  # restored after the test
    allocator.enable()
    with allocator.reuse_large_blocks():
        with allocator.reuse_large_blocks():
            pass
        assert calls == [("mallopt", allocator.M_MMAP_THRESHOLD, allocator.TRAINING_MMAP_THRESHOLD),
                         ("mallopt", allocator.M_TRIM_THRESHOLD, allocator.TRAINING_TRIM_THRESHOLD)]
    assert calls[2:] == [("mallopt", allocator.M_MMAP_THRESHOLD, allocator.STEADY_MMAP_THRESHOLD),
                         ("mallopt", allocator.M_TRIM_THRESHOLD, allocator.STEADY_TRIM_THRESHOLD), ("trim", 0, 0)]
    calls.clear()
    with pytest.raises(RuntimeError), allocator.reuse_large_blocks():  # restored on errors too
        raise RuntimeError("boom")
    assert calls[-1] == ("trim", 0, 0) and allocator._depth == 0
    allocator.enable(False)
    calls.clear()
    with allocator.reuse_large_blocks():
        pass
    assert calls == []


def test_malloc_tuning_is_opt_in() -> None:
    """Off by default in a fresh process: no process-wide mallopt call unless the user enables it."""
    import subprocess
    import sys

    code = "import gradiend, gradiend.allocator as a; print(a.ENABLED)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
