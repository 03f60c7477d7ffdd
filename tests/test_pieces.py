"""The plain functions behind the Trainer facade, called directly (no Trainer state involved)."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import make_rows
from tiny_experiment import NEUTRAL

from gradiend import TrainingArguments
from gradiend.data import DataError, prepare_rows, unify
from gradiend.decoder_eval import DEFAULT_LRS, DecoderCache, DecoderRequest, evaluate_decoder, selection_key
from gradiend.encoder_eval import EncoderCache, split_encodings
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.rewrite import rewrite_selected
from gradiend.training import train_gradiend


@pytest.fixture(scope="module")
def trained_model(tiny_mlm_dir) -> tuple[ModelWithGradiend, object, tuple[str, str]]:
    rows, pair = unify(make_rows(), ["3SG", "3PL"], seed=0)
    model = ModelWithGradiend.create(tiny_mlm_dir, params=["encoder.layer.1.*"], feature_classes=pair, seed=0)
    args = TrainingArguments(train_batch_size=4, max_steps=6, eval_steps=3, show_progress=False,
                             scale_estimation_batches=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        outcome = train_gradiend(model, rows[rows["split"] == "train"], rows[rows["split"] == "validation"], pair,
                                 args)
    model.gradiend.load_state_dict(outcome.state)
    return model, rows, pair


def test_decoder_request_takes_unset_values_from_the_arguments() -> None:
    args = TrainingArguments(decoder_eval_lrs=[0.5], decoder_eval_max_size_neutral=7, eval_batch_size=5, seed=3,
                             show_progress=False)
    request = DecoderRequest.from_arguments(args, ["3SG"], strengthen=False)
    assert (request.learning_rates, request.max_size_neutral, request.batch_size, request.seed) == ([0.5], 7, 5, 3)
    assert request.feature_factors is None and request.strengthen is False and request.show_progress is False
    explicit = DecoderRequest.from_arguments(args, ["3SG"], lrs=[2.0], batch_size=2, max_size_neutral=1)
    assert (explicit.learning_rates, explicit.batch_size, explicit.max_size_neutral) == ([2.0], 2, 1)
    assert DecoderRequest.from_arguments(TrainingArguments(), ["3SG"]).learning_rates == list(DEFAULT_LRS)
    with pytest.raises(ValueError, match="eval_batch_size"):
        DecoderRequest(["3SG"], batch_size=0)


def test_evaluate_decoder_without_cache_writes_nothing(trained_model, tmp_path, monkeypatch) -> None:
    model, rows, pair = trained_model
    monkeypatch.chdir(tmp_path)
    request = DecoderRequest(["3SG"], learning_rates=[1.0, 0.1], neutral_texts=NEUTRAL, show_progress=False)
    result = evaluate_decoder(model, rows, pair, request)
    assert list(tmp_path.iterdir()) == []
    assert len(result["grid"]) == 3 and result["3SG"]["learning_rate"] in (1.0, 0.1)
    cache = DecoderCache(tmp_path / "grid.json", tmp_path / "summaries.json", {"model": "m", "weights": "w1"})
    cached = evaluate_decoder(model, rows, pair, request, cache)
    assert cached["grid"] == result["grid"] and cache.grid.is_file() and cache.summaries.is_file()
    with pytest.raises(ValueError, match="Unknown target_class 'X'"):
        evaluate_decoder(model, rows, pair, DecoderRequest(["X"]))


def test_split_encodings_reuse_their_cache_only_for_the_same_model(trained_model, tmp_path) -> None:
    model, rows, pair = trained_model
    cache = EncoderCache(tmp_path / "enc.csv", tmp_path / "enc.json", {"model": "m", "weights": "w1"})
    first = split_encodings(model, rows, pair, "test", neutral_texts=NEUTRAL, cache=cache, show_progress=False)
    assert set(first["type"]) == {"training", "neutral_training_masked", "neutral_dataset"}
    frame = first.copy()
    frame.loc[0, "encoded"] = 123.0  # a tampered value proves which path was taken
    frame.to_csv(cache.csv, index=False)
    reused = split_encodings(model, rows, pair, "test", neutral_texts=NEUTRAL, cache=cache, show_progress=False)
    assert reused.loc[0, "encoded"] == 123.0
    other = EncoderCache(cache.csv, cache.meta, {"model": "m", "weights": "w2"})
    fresh = split_encodings(model, rows, pair, "test", neutral_texts=NEUTRAL, cache=other, show_progress=False)
    assert fresh.loc[0, "encoded"] == pytest.approx(first.loc[0, "encoded"])


def test_prepare_rows_names_the_class_without_rows(trained_model) -> None:
    model, rows, pair = trained_model
    assert set(prepare_rows(rows, "test", pair, model.objective, "x", max_size=2, seed=0)["factual_class"]) == set(pair)
    assert len(prepare_rows(rows, "test", pair, model.objective, "x", max_size=2, seed=0)) == 4
    with pytest.raises(DataError, match="'3PL' has no rows in split 'test'"):
        prepare_rows(rows[rows["factual_class"] == "3SG"], "test", pair, model.objective, "decoder evaluation")


def test_rewrite_selected_in_memory_saved_and_errors(trained_model, tmp_path) -> None:
    model, _, pair = trained_model
    selection = {"learning_rate": 1.0, "feature_factor": 1.0, "value": 0.5, "lms": 0.1, "base_lms": 0.1,
                 "base_value": 0.4, "strengthen": True, "id": "ff=1,lr=1"}
    selections = {selection_key("3SG", True): selection, selection_key("3PL", True): selection}
    in_memory = rewrite_selected(model, selections, ["3SG"], ["3SG"], feature_classes=list(pair), base_model="b",
                                 output_dir=None, default_dir=None)
    base = dict(model.base_model.named_parameters())
    changed = [n for n, p in in_memory.named_parameters() if not torch.equal(p, base[n])]
    assert changed and all(n.startswith("bert.encoder.layer.1.") for n in changed)
    paths = rewrite_selected(model, selections, ["3SG", "3PL"], ["3SG", "3PL"], feature_classes=list(pair),
                             base_model="b", output_dir=tmp_path / "out", default_dir=None)
    assert paths == [str(tmp_path / "out" / "3SG"), str(tmp_path / "out" / "3PL")]
    assert all((tmp_path / "out" / k / "config.json").is_file() for k in ("3SG", "3PL"))
    with pytest.raises(KeyError, match="3SG_weaken"):
        rewrite_selected(model, selections, ["3SG"], ["3SG_weaken"], feature_classes=list(pair), base_model="b",
                         output_dir=None, default_dir=None)
    with pytest.raises(ValueError, match="experiment_dir"):
        rewrite_selected(model, selections, ["3SG", "3PL"], ["3SG", "3PL"], feature_classes=list(pair),
                         base_model="b", output_dir=None, default_dir=None)
