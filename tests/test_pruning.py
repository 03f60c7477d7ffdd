"""Pre-/post-pruning: selection, compact parameter maps, checkpoints, rewrites and trainer integration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gradiend import PostPruneConfig, PrePruneConfig, TextPredictionTrainer, TrainingArguments
from gradiend.data import unify
from gradiend.model import PARAM_MAP_FILE
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.params import ParamMap
from gradiend.pruning import post_prune, pre_prune, select_top, weight_importance


def test_select_top_counts_fractions_ties_and_threshold() -> None:
    imp = torch.tensor([0.5, 2.0, 2.0, 0.1, 3.0])
    assert select_top(imp, 2).tolist() == [False, True, False, False, True]  # tie 2.0: lower index wins
    assert select_top(imp, 0.6).sum() == 3
    assert select_top(imp, 1.0).all()
    assert select_top(imp, 2, threshold=0.4).tolist() == [True, True, True, False, True]  # threshold wins
    with pytest.raises(ValueError, match="exceeds the number"):
        select_top(imp, 6)
    with pytest.raises(ValueError, match="keeps no coordinate"):
        select_top(imp, 1, threshold=10.0)
    with pytest.raises(FloatingPointError, match="non-finite"):
        select_top(torch.tensor([1.0, float("nan")]), 1)


def _argsort_selection(importance: torch.Tensor, count: int) -> torch.Tensor:
    """The former selection: a stable descending argsort on the host, first `count` entries."""
    keep = torch.zeros(importance.numel(), dtype=torch.bool)
    keep[torch.argsort(importance, descending=True, stable=True)[:count]] = True
    return keep


@pytest.mark.parametrize("seed", range(6))
def test_select_top_equals_the_stable_argsort_selection_including_ties(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = 5000
    # few distinct values (many ties at every cut), exact zeros (untouched embedding rows) and a few large ones
    importance = torch.randint(0, 7, (n,), generator=gen).float() / 4
    importance[torch.rand(n, generator=gen) < 0.3] = 0.0
    importance[:3] = 9.0
    for count in (1, 2, 3, 4, 17, 700, 1234, 2500, n - 1, n):
        got = select_top(importance, count)
        assert got.device.type == "cpu" and got.dtype == torch.bool
        assert torch.equal(got, _argsort_selection(importance, count)), count
    for fraction in (0.001, 0.05, 0.5, 1.0):
        assert torch.equal(select_top(importance, fraction),
                           _argsort_selection(importance, max(1, round(fraction * n))))
    continuous = torch.rand(n, generator=gen)
    assert torch.equal(select_top(continuous, 0.1), _argsort_selection(continuous, 500))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_select_top_on_the_gpu_equals_the_host_selection() -> None:
    importance = (torch.randint(0, 5, (100_000,), generator=torch.Generator().manual_seed(0)).float())
    for count in (1, 999, 50_000):
        assert torch.equal(select_top(importance.cuda(), count), _argsort_selection(importance, count))


def test_prune_config_errors() -> None:
    for bad in (0, -1, 0.0, 1.5, True):
        with pytest.raises(ValueError, match="topk"):
            PrePruneConfig(topk=bad)
        with pytest.raises(ValueError, match="topk"):
            PostPruneConfig(topk=bad)
    with pytest.raises(ValueError, match="part"):
        PostPruneConfig(part="encoder-bias")
    with pytest.raises(ValueError, match="source"):
        PrePruneConfig(source="gradient")


def test_param_map_restrict_composes_and_stores_compactly() -> None:
    pm = ParamMap.from_shapes([("a", (64, 64)), ("b", (10,)), ("c", (3,))])
    keep = torch.zeros(pm.size, dtype=torch.bool)
    keep[[0, 5, 4095]] = True        # 3 of a's 4096 entries → 12 bytes of indices beat a 512-byte mask
    keep[4096:4106] = True           # all of b → stays unpruned
    first = pm.restrict(keep)
    assert first.names == ["a", "b"] and first.size == 13 and first.specs[1].index is None
    assert first.specs[0].index.tolist() == [0, 5, 4095]
    second = first.restrict(torch.tensor([False, True, True] + [True] * 10))
    assert second.specs[0].index.tolist() == [5, 4095], "indices stay relative to the full parameter"
    tensors = second.index_tensors()
    assert set(tensors) == {"a.index"} and tensors["a.index"].dtype == torch.int32
    again = ParamMap.from_json(json.loads(json.dumps(second.to_json())), tensors)
    assert [s.index.tolist() if s.index is not None else None for s in again.specs] == [[5, 4095], None]
    dense = pm.restrict(torch.arange(pm.size) % 2 == 0)  # half of every parameter → a bit mask is smaller
    stored = dense.index_tensors()
    assert set(stored) == {"a.mask", "b.mask", "c.mask"} and stored["a.mask"].dtype == torch.uint8
    rebuilt = ParamMap.from_json(dense.to_json(), stored)
    assert all(torch.equal(x.index, y.index) for x, y in zip(rebuilt.specs, dense.specs, strict=True))
    with pytest.raises(ValueError, match="no kept coordinates"):
        ParamMap.from_json(dense.to_json(), {})
    with pytest.raises(ValueError, match="keep no entry"):
        pm.restrict(torch.zeros(pm.size, dtype=torch.bool))


@pytest.fixture()
def pruned_model(tiny_mlm_dir, tiny_rows) -> tuple[ModelWithGradiend, ModelWithGradiend, torch.Tensor]:
    rows, pair = unify(tiny_rows, target_classes=["3SG", "3PL"], seed=0)
    full = ModelWithGradiend.create(tiny_mlm_dir, feature_classes=pair, seed=0)
    model = ModelWithGradiend.create(tiny_mlm_dir, feature_classes=pair, seed=0)
    keep = pre_prune(model, rows[rows["split"] == "train"], pair, PrePruneConfig(n_samples=8, topk=0.05, source="diff"),
                     show_progress=False)
    return full, model, keep


def test_pruned_gradients_are_the_kept_entries_of_full_ones(pruned_model, tiny_rows) -> None:
    full, model, keep = pruned_model
    assert model.param_map.size == int(keep.sum()) == model.gradiend.config.input_dim
    assert model.gradiend.encoder_weight.shape == (1, model.param_map.size)
    texts, fac, alt = list(tiny_rows["masked"][:4]), ["he"] * 4, ["they"] * 4
    g_full = full.engine.gradients(texts, fac, alt, ["diff"])["diff"]
    g_pruned = model.engine.gradients(texts, fac, alt, ["diff"])["diff"]
    torch.testing.assert_close(g_pruned, g_full[keep], rtol=0, atol=0)
    directions = torch.randn(2, model.param_map.size, generator=torch.Generator().manual_seed(0))
    jvp = model.engine.directional(texts, fac, alt, "diff", directions)
    backward = model.engine.directional_backward(texts, fac, alt, "diff", directions)
    torch.testing.assert_close(jvp, backward, rtol=1e-4, atol=1e-6)


def test_pruned_checkpoint_round_trip_and_corruption(pruned_model, tmp_path) -> None:
    _, model, _ = pruned_model
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / PARAM_MAP_FILE).is_file()
    loaded = ModelWithGradiend.from_pretrained(tmp_path / "ckpt")
    assert loaded.param_map.size == model.param_map.size
    for a, b in zip(loaded.param_map.specs, model.param_map.specs, strict=True):
        assert a.name == b.name and (a.index is None) == (b.index is None)
        if a.index is not None:
            assert torch.equal(a.index, b.index)
    torch.testing.assert_close(loaded.gradiend.encoder_weight, model.gradiend.encoder_weight)
    (tmp_path / "ckpt" / PARAM_MAP_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="corrupt"):
        ModelWithGradiend.from_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / PARAM_MAP_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        ModelWithGradiend.from_pretrained(tmp_path / "ckpt")


def test_pruned_rewrite_changes_exactly_the_kept_coordinates(pruned_model) -> None:
    _, model, keep = pruned_model
    with torch.no_grad():
        model.gradiend.decoder_weight.fill_(1.0)  # every kept coordinate gets a non-zero update
    before = {n: p.detach().clone() for n, p in model.base_model.named_parameters()}
    with model.apply(feature_factor=1.0, learning_rate=0.5):
        changed = 0
        for name, param in model.base_model.named_parameters():
            diff = (param.detach() != before[name]).reshape(-1)
            spec = next((s for s in model.param_map.specs if s.name == name), None)
            expected = torch.zeros_like(diff)
            if spec is not None:
                expected[spec.index if spec.index is not None else slice(None)] = True
            assert torch.equal(diff, expected), name
            changed += int(diff.sum())
        assert changed == int(keep.sum())
    for name, param in model.base_model.named_parameters():
        assert torch.equal(param, before[name]), "restored bitwise"


def test_post_prune_by_weight_importance(pruned_model) -> None:
    _, model, _ = pruned_model
    importance = weight_importance(model.gradiend, "decoder-weight")
    top = int(torch.argmax(importance))
    weight_before = model.gradiend.decoder_weight[top].clone()
    keep = post_prune(model, PostPruneConfig(topk=3))
    assert model.param_map.size == 3 and bool(keep[top])
    assert torch.equal(model.gradiend.decoder_weight[int(keep[:top].sum())], weight_before)
    with pytest.raises(ValueError, match="bias_decoder=False"):
        weight_importance(ModelWithGradiend.create(model.base_model_path, bias_decoder=False).gradiend,
                          "decoder-bias")


def _args(tmp_path: Path, **kw) -> TrainingArguments:
    base = dict(experiment_dir=str(tmp_path / "exp"), train_batch_size=4, max_steps=4, eval_steps=2,
                seed=0, show_progress=False, scale_estimation_batches=2)
    base.update(kw)
    return TrainingArguments(**base)


@pytest.mark.filterwarnings("ignore:GRADIEND training did not converge")
def test_trainer_pre_and_post_prune(tiny_mlm_dir, tiny_rows, tmp_path, caplog) -> None:
    args = _args(tmp_path, pre_prune_config=PrePruneConfig(n_samples=1000, topk=0.1),
                 post_prune_config=PostPruneConfig(topk=0.5))
    trainer = TextPredictionTrainer(model=tiny_mlm_dir, data=tiny_rows, args=args, target_classes=["3SG", "3PL"])
    full = ModelWithGradiend.create(tiny_mlm_dir).param_map.size
    with caplog.at_level("WARNING"):
        trainer.train()
    assert "n_samples asks for" in caplog.text
    stats = json.loads((Path(trainer.model_path) / "training.json").read_text())
    assert stats["n_inputs"] == round(0.1 * full)
    assert stats["post_prune"]["inputs_after"] == round(0.5 * round(0.1 * full))
    assert stats["memory_estimate_bytes"]["total"] > 0
    # pruning shrinks the projections: the calibration is refitted on the pruned encoder, never for the worse
    refit = stats["post_prune"]["calibration"]
    assert refit["gain"] > 0 and refit["loss_after"] <= refit["loss_before"] + 1e-9
    assert "calibration_after_post_prune" in stats["time"] and "seconds" not in refit
    loaded = trainer.load_model(trainer.model_path)
    assert loaded.param_map.size == stats["post_prune"]["inputs_after"]
    assert loaded.param_map.is_pruned


@pytest.mark.filterwarnings("ignore:GRADIEND training did not converge")
def test_trainer_prune_methods_and_errors(tiny_mlm_dir, tiny_rows, tmp_path) -> None:
    trainer = TextPredictionTrainer(model=tiny_mlm_dir, data=tiny_rows, args=_args(tmp_path),
                                    target_classes=["3SG", "3PL"])
    with pytest.raises(ValueError, match="Pre-prune config required"):
        trainer.pre_prune()
    copy = trainer.pre_prune(PrePruneConfig(topk=50), inplace=False)
    assert copy.param_map.size == 50
    trainer.pre_prune(PrePruneConfig(topk=40))
    trainer.train()
    assert trainer.get_model().param_map.size == 40, "train() builds the GRADIEND on the pre-pruned map"
    with pytest.raises(ValueError, match="Post-prune config required"):
        trainer.post_prune()
    pruned_copy = trainer.post_prune(PostPruneConfig(topk=10, inplace=False))
    assert pruned_copy.param_map.size == 10 and trainer.get_model().param_map.size == 40
    assert trainer.post_prune(PostPruneConfig(topk=20)) is trainer
    assert trainer.get_model().param_map.size == 20
    with_cfg = TextPredictionTrainer(model=tiny_mlm_dir, data=tiny_rows, target_classes=["3SG", "3PL"],
                                     args=_args(tmp_path / "b", pre_prune_config=PrePruneConfig(topk=5)))
    with pytest.raises(ValueError, match="inplace=False"):
        with_cfg.pre_prune(inplace=False)
    bad_post = TextPredictionTrainer(model=tiny_mlm_dir, data=tiny_rows, target_classes=["3SG", "3PL"],
                                     args=_args(tmp_path / "c", post_prune_config=PostPruneConfig(inplace=False)))
    with pytest.raises(ValueError, match="inplace=False"):
        bad_post.train()
