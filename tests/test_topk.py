"""Top-k weight sets: importance, coordinates, overlaps between GRADIENDs and across seeds."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from conftest import make_rows
from test_reference_format import write_reference_checkpoint

from gradiend import TextPredictionTrainer, TrainingArguments
from gradiend.model import GradiendConfig, GradiendModel
from gradiend.params import ParamMap, ParamSpec
from gradiend.topk import (
    export_topk_features,
    get_topk_coordinates,
    get_topk_feature_metadata,
    get_topk_weights,
    get_weight_importance,
    seed_stability_topk,
    topk_overlap,
)


def _gradiend(decoder_rows: list[float], *, pruned: bool = False, target_scale: float = 1.0) -> GradiendModel:
    """A GRADIEND over a (2, 3) and a (4,) parameter; `pruned` keeps entries 1, 4, 5 of the first."""
    if pruned:
        param_map = ParamMap([ParamSpec("a.weight", (2, 3), 0, torch.tensor([1, 4, 5])), ParamSpec("b.bias", (4,), 3)])
    else:
        param_map = ParamMap.from_shapes([("a.weight", (2, 3)), ("b.bias", (4,))])
    assert param_map.size == len(decoder_rows)
    config = GradiendConfig(input_dim=param_map.size, param_map=param_map.to_json(), base_model="x")
    model = GradiendModel(config)
    with torch.no_grad():
        model.decoder_weight.copy_(torch.tensor(decoder_rows).reshape(-1, 1))
        model.decoder_bias.fill_(0.0)
        model.encoder_weight.copy_(torch.arange(param_map.size, dtype=torch.float32).reshape(1, -1))
        model.target_scale.fill_(target_scale)
    model.param_index = param_map.index_tensors()
    return model


def test_importance_parts_and_units():
    model = _gradiend([1.0, -5.0, 2.0, 0.0, 3.0, -4.0, 0.5, 0.0, 0.0, 0.0], target_scale=2.0)
    importance = get_weight_importance(model)
    torch.testing.assert_close(importance, 2.0 * torch.tensor([1.0, 5, 2, 0, 3, 4, 0.5, 0, 0, 0]))
    torch.testing.assert_close(get_weight_importance(model, "encoder-weight"), torch.arange(10, dtype=torch.float32))
    with torch.no_grad():
        model.decoder_bias.copy_(torch.full((10,), -1.0))
    torch.testing.assert_close(get_weight_importance(model, "decoder-sum"),
                               2.0 * (torch.tensor([1.0, -5, 2, 0, 3, -4, 0.5, 0, 0, 0]) - 1).abs())
    with pytest.raises(ValueError, match="part must be one of"):
        get_weight_importance(model, "decoder")


def test_topk_coordinates_and_base_global_indices():
    model = _gradiend([1.0, -5.0, 2.0, 0.0, 3.0, 0.0, 0.5, 4.0, 0.0, 0.0])
    assert get_topk_coordinates(model, topk=3) == [("a.weight", 1), ("b.bias", 1), ("a.weight", 4)]
    assert get_topk_weights(model, topk=3) == [1, 7, 4]  # b.bias starts after the 6 entries of a.weight
    assert len(get_topk_weights(model, topk=0.25)) == 3  # fractions round up (2.5 → 3)
    assert len(get_topk_weights(model, topk=1000)) == 10  # a count above the size means all
    # the zeros at inputs 3, 5, 8, 9 tie: the lower indices come first
    assert get_topk_weights(model, topk=9)[-3:] == [3, 5, 8]
    for bad, error in ((0, ValueError), (1.5, ValueError), (True, TypeError), ("10", TypeError)):
        with pytest.raises(error, match="topk"):
            get_topk_weights(model, topk=bad)


def test_pruned_gradiend_maps_back_to_parameter_coordinates():
    # inputs: a.weight entries 1, 4, 5 (coords (0,1), (1,1), (1,2)), then b.bias 0..3
    model = _gradiend([0.1, 9.0, 0.2, 0.3, 8.0, 0.0, 0.0], pruned=True)
    assert get_topk_coordinates(model, topk=2) == [("a.weight", 4), ("b.bias", 1)]
    rows = get_topk_feature_metadata(model, topk=2)
    assert rows[0] == {"rank": 1, "part": "decoder-weight", "importance": pytest.approx(9.0),
                       "local_input_index": 1, "base_global_index": 4, "param": "a.weight", "shape": [2, 3],
                       "flat_index": 4, "coords": [1, 1]}
    assert rows[1]["coords"] == [1] and rows[1]["base_global_index"] == 7


def test_export_topk_features(tmp_path):
    model = _gradiend([1.0, -5.0, 2.0, 0.0, 3.0, -4.0, 0.5, 0.0, 0.0, 0.0])
    rows = export_topk_features(model, tmp_path / "out" / "top.json", topk=2)
    assert json.loads((tmp_path / "out" / "top.json").read_text()) == rows
    export_topk_features(model, tmp_path / "top.csv", topk=2)
    lines = (tmp_path / "top.csv").read_text().splitlines()
    assert lines[0].startswith("rank,part,importance") and lines[1].endswith("a.weight,2x3,1,\"0,1\"")
    with pytest.raises(ValueError, match=r"\.json or \.csv"):
        export_topk_features(model, tmp_path / "top.txt")


def test_overlap_matrices():
    a = _gradiend([9.0, 8.0, 7.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    b = _gradiend([9.0, 0.0, 7.0, 8.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    c = _gradiend([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0, 8.0, 7.0])
    payload = topk_overlap({"a": a, "b": b, "c": c}, topk=3)
    assert payload["model_ids"] == ["a", "b", "c"]
    assert payload["matrix"] == payload["intersection"] == [[3, 2, 0], [2, 3, 0], [0, 0, 3]]
    assert payload["jaccard"][0][1] == pytest.approx(2 / 4)
    assert payload["intersection_frac"][0][1] == pytest.approx(2 / 3)
    given = topk_overlap({"x": {("p", 1), ("p", 2)}, "y": {("p", 2)}}, value="intersection_frac")
    assert given["matrix"] == [[1.0, 1.0], [1.0, 1.0]] and given["intersection"] == [[2, 1], [1, 1]]
    with pytest.raises(ValueError, match="at least two"):
        topk_overlap([a])
    with pytest.raises(ValueError, match="value must be"):
        topk_overlap([a, b], value="dice")


def test_checkpoint_paths_ours_and_reference(tmp_path, tiny_mlm_dir):
    model = _gradiend([1.0, -5.0, 2.0, 0.0, 3.0, -4.0, 0.5, 0.0, 0.0, 0.0])
    model.save_pretrained(tmp_path / "ours")
    assert get_topk_weights(str(tmp_path / "ours"), topk=3) == get_topk_weights(model, topk=3)
    weights = write_reference_checkpoint(tmp_path / "ref", tiny_mlm_dir,
                                         {"bert.pooler.dense.bias": ((32,), "all", None)})
    expected = torch.argsort(weights["decoder.0.linear.weight"].abs().sum(dim=1), descending=True, stable=True)[:5]
    assert get_topk_weights(tmp_path / "ref", topk=5) == expected.tolist()
    with pytest.raises(FileNotFoundError, match="holds no GRADIEND"):
        get_topk_weights(tmp_path)


def _multi_seed_run(model_dir: str, directory: Path, **overrides) -> TextPredictionTrainer:
    settings = {"max_seeds": 3, "min_convergent_seeds": 3, "saved_seed_runs": "all_tried", **overrides}
    args = TrainingArguments(experiment_dir=str(directory), train_batch_size=4, max_steps=3, eval_steps=3, seed=0,
                             show_progress=False, scale_estimation_batches=1, params=["encoder.layer.1.output.*"],
                             **settings)
    trainer = TextPredictionTrainer(model=model_dir, data=make_rows(1), args=args, target_classes=["3SG", "3PL"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        trainer.train()
    return trainer


def test_seed_stability_over_a_multi_seed_run(tmp_path, tiny_mlm_dir):
    from gradiend.plots import plot_seed_stability_topk

    trainer = _multi_seed_run(tiny_mlm_dir, tmp_path / "exp")
    stability = seed_stability_topk(trainer.experiment_dir, topk=50, selection="all")
    assert stability["seeds"] == ["seed_0", "seed_1", "seed_2"]
    sets = list(stability["sets"].values())
    assert all(len(s) == 50 for s in sets)
    expected = [len(a & b) / len(a | b) for i, a in enumerate(sets) for b in sets[i + 1:]]
    assert stability["mean_pairwise_jaccard"] == pytest.approx(sum(expected) / 3)
    assert stability["common_to_all"] == len(sets[0] & sets[1] & sets[2])
    assert get_topk_weights(trainer, topk=20) == get_topk_weights(trainer.experiment_dir, topk=20)
    path = plot_seed_stability_topk(trainer.experiment_dir, topk=50, selection="all")
    assert Path(path).parent == Path(trainer.experiment_dir) and Path(path).stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match=r"seed_report\.json"):
        seed_stability_topk(tmp_path)


def test_multi_seed_run_writes_its_stability_before_dropping_seed_checkpoints(tmp_path, tiny_mlm_dir):
    from gradiend.results import load_seed_stability

    # every seed converges (threshold 0), only the best seed's checkpoint is kept (the default)
    trainer = _multi_seed_run(tiny_mlm_dir, tmp_path / "exp", max_seeds=2, min_convergent_seeds=2,
                              saved_seed_runs="best_only", convergent_score_threshold=0.0,
                              convergent_mean_by_class_threshold=None, seed_stability_topk=20,
                              seed_stability_part="encoder-weight")
    saved = load_seed_stability(trainer.experiment_dir)
    assert saved is not None and saved["seeds"] == ["seed_0", "seed_1"]
    assert saved["topk"] == 20 and saved["part"] == "encoder-weight" and set(saved["sizes"].values()) == {20}
    assert 0.0 <= saved["mean_pairwise_jaccard"] <= 1.0 and saved["common_to_all"] <= 20
    from gradiend.report import build_report

    html = build_report(trainer.experiment_dir, plots=False)
    assert "Top-20 stability of the encoder-weight weights" in html
    jaccard = f"{saved['mean_pairwise_jaccard']:.4g}"
    assert re.search(rf"mean pairwise Jaccard</t[hd]><td[^>]*>{re.escape(jaccard)}<", html), html[-3000:]
    seed_dir = Path(trainer.experiment_dir) / "seeds" / "seed_1"
    assert not (seed_dir / "model.safetensors").exists(), "best_only dropped the seed checkpoints afterwards"
    with pytest.raises(FileNotFoundError, match="saved_seed_runs='all_tried'"):
        trainer.multi_seed()
    best = trainer.multi_seed(selection="best")
    assert len(best.seeds) == 1
    # switched off: no analysis, and none left over from the earlier run
    again = _multi_seed_run(tiny_mlm_dir, tmp_path / "exp", max_seeds=2, min_convergent_seeds=2,
                            saved_seed_runs="best_only", convergent_score_threshold=0.0,
                            convergent_mean_by_class_threshold=None, seed_stability_topk=None, use_cache=False,
                            overwrite_output_dir=True)
    assert load_seed_stability(again.experiment_dir) is None


def test_multi_seed_view_evaluates_each_seed_and_aggregates(tmp_path, tiny_mlm_dir):
    trainer = _multi_seed_run(tiny_mlm_dir, tmp_path / "exp", max_seeds=2, min_convergent_seeds=2,
                              saved_seed_runs="all_convergent", convergent_score_threshold=0.0,
                              convergent_mean_by_class_threshold=None, seed_stability_topk=30)
    main_encoder = trainer.evaluate_encoder(split="validation")
    view = trainer.multi_seed(return_per_seed=True)
    assert view.seeds == [0, 1]
    result = view.evaluate_encoder(split="validation")
    per_seed = result["seeds"]["per_seed"]
    correlations = [per_seed[s]["correlation"] for s in (0, 1)]
    assert result["correlation"] == pytest.approx(sum(correlations) / 2)
    assert result["seeds"]["stats"]["correlation"] == pytest.approx(abs(correlations[0] - correlations[1]) / 2)
    assert result["mean_by_class"]["3SG"] == pytest.approx(sum(per_seed[s]["mean_by_class"]["3SG"] for s in (0, 1)) / 2)
    # each seed is its own model: the seed checkpoints' encodings, not the main model's
    seed_model = trainer.load_model(str(Path(trainer.experiment_dir) / "seeds" / "seed_1"))
    direct = trainer.evaluate_encoder(split="validation", model_with_gradiend=seed_model, use_cache=False)
    assert per_seed[1]["correlation"] == pytest.approx(direct["correlation"], abs=1e-6)
    # the main run's evaluation cache is untouched
    assert trainer.evaluate_encoder(split="validation")["correlation"] == main_encoder["correlation"]
    lowest = trainer.multi_seed(aggregate="min", dispersion="range").evaluate_encoder(split="validation")
    assert lowest["correlation"] == pytest.approx(min(correlations))
    paths = view.plot_training_convergence(show=False)
    assert sorted(paths) == [0, 1] and all(Path(p).is_file() for p in paths.values())
    stability = view.seed_stability_topk()
    saved = json.loads((Path(trainer.experiment_dir) / "seeds" / "seed_stability_topk.json").read_text())
    assert stability["mean_pairwise_jaccard"] == pytest.approx(saved["mean_pairwise_jaccard"])
    with pytest.raises(ValueError, match="aggregate must be one of"):
        trainer.multi_seed(aggregate="sum")
    with pytest.raises(AttributeError, match="no method 'train'"):
        view.train()
