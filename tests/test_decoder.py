"""Decoder grid, reversible edits and saved rewrites on a tiny random BERT."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from gradiend import TextPredictionTrainer, TrainingArguments
from gradiend.scoring import class_piece_sets, class_probabilities

pytestmark = pytest.mark.filterwarnings("ignore:GRADIEND training did not converge")
NEUTRAL = ["the man walked home and was happy .", "the sea was very old and the ship was little .",
           "the woman saw the house at night .", "then the children talked of the letter again ."]


@pytest.fixture(scope="module")
def trained(tiny_mlm_dir, tmp_path_factory) -> TextPredictionTrainer:
    from conftest import make_rows

    exp = tmp_path_factory.mktemp("decoder_exp")
    args = TrainingArguments(experiment_dir=str(exp), train_batch_size=4, max_steps=6, eval_steps=3, seed=0,
                             show_progress=False, scale_estimation_batches=2, params=["encoder.layer.1.*"],
                             decoder_eval_lrs=[1.0, 0.1, 0.01])
    trainer = TextPredictionTrainer(model=tiny_mlm_dir, data=make_rows(), args=args, target_classes=["3SG", "3PL"],
                                    eval_neutral_data=NEUTRAL)
    return trainer.train()


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_apply_restores_bitwise_even_on_error(trained) -> None:
    mwg = trained.get_model()
    before = _weights(mwg.base_model)
    with mwg.apply(feature_factor=1.0, learning_rate=50.0):
        changed = _weights(mwg.base_model)
        assert any(not torch.equal(before[k], changed[k]) for k in before)
    _assert_same(before, _weights(mwg.base_model))
    with pytest.raises(RuntimeError, match="boom"), mwg.apply(feature_factor=-1.0, learning_rate=5.0):
        raise RuntimeError("boom")
    _assert_same(before, _weights(mwg.base_model))


def test_zero_updates_change_nothing(trained) -> None:
    mwg = trained.get_model()
    before = _weights(mwg.base_model)
    _assert_same(before, _weights(mwg.rewrite_base_model(learning_rate=0.0, feature_factor=1.0)))
    bias = mwg.gradiend.decoder_bias.detach().clone()
    with torch.no_grad():
        mwg.gradiend.decoder_bias.zero_()
    try:
        _assert_same(before, _weights(mwg.rewrite_base_model(learning_rate=10.0, feature_factor=0.0)))
    finally:
        with torch.no_grad():
            mwg.gradiend.decoder_bias.copy_(bias)


def test_only_selected_parameters_change(trained) -> None:
    mwg = trained.get_model()
    before = _weights(mwg.base_model)
    after = _weights(mwg.rewrite_base_model(learning_rate=10.0, feature_factor=1.0))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("bert.encoder.layer.1.") for k in changed)


def test_evaluate_decoder_summaries_and_grid(trained) -> None:
    dec = trained.evaluate_decoder(target_class="3SG")
    assert set(dec) == {"3SG", "grid"}
    summary = dec["3SG"]
    assert set(summary) >= {"value", "feature_factor", "learning_rate", "id", "strengthen", "lms", "base_lms"}
    assert summary["strengthen"] is True and summary["learning_rate"] in (1.0, 0.1, 0.01)
    assert summary["feature_factor"] == -1.0  # target diff: -direction[3SG]
    grid = dec["grid"]
    assert grid[0]["id"] == "base" and 1 < len(grid) <= 1 + 3
    base = grid[0]
    assert summary["base_lms"] == base["lms"]
    chosen = next(r for r in grid if r["id"] == summary["id"])
    assert summary["value"] == chosen["probs"]["3PL"]["3SG"]
    assert chosen["lms"] == summary["lms"] >= 0.99 * base["lms"]  # the selection's LMS is always measured
    # adaptive search: a candidate without a measured LMS is known to keep the bound
    ok = [r for r in grid[1:] if (r["lms"] if r["lms"] is not None else r["lms_at_least"]) >= 0.99 * base["lms"]]
    assert ok and summary["value"] == max(r["probs"]["3PL"]["3SG"] for r in ok)
    weaken = trained.evaluate_decoder(target_class="3SG", increase_target_probabilities=False)
    assert "3SG_weaken" in weaken and weaken["3SG_weaken"]["feature_factor"] == 1.0
    assert weaken["3SG_weaken"]["value"] == pytest.approx(
        1 - next(r for r in weaken["grid"] if r["id"] == weaken["3SG_weaken"]["id"])["probs"]["3SG"]["3SG"])


def test_custom_selector_and_extractor(trained) -> None:
    smallest = trained.evaluate_decoder(target_class="3SG",
                                        selector=lambda cands, base: min(cands, key=lambda c: c["learning_rate"]))
    assert smallest["3SG"]["learning_rate"] == 0.01
    custom = trained.evaluate_decoder(target_class="3PL",
                                      summary_extractor=lambda grid, cls, strengthen: {"n": len(grid), "cls": cls})
    assert custom["3PL"] == {"n": 4, "cls": "3PL"}


def test_class_probabilities_sum_over_case_variants(trained) -> None:
    mwg = trained.get_model()
    pieces = class_piece_sets(mwg.objective, {"3SG": {"He", "he", "she"}, "3PL": {"they"}})
    assert len(pieces["3SG"]) == 2  # uncased: He and he are one token
    probs = class_probabilities(mwg.base_model, mwg.objective, ["[MASK] went home ."], pieces)
    assert 0 < probs[0, 0] < 1 and 0 < probs[0, 1] < 1


def test_length_batches_cover_every_row_once_sorted_and_capped() -> None:
    from gradiend.data import TOKENS_PER_ROW, length_batches

    lengths = [5, 40, 12, 3, 90, 7, 7, 33, 60, 2, 1000]
    batches = length_batches(lengths, batch_size=3)
    assert sorted(i for b in batches for i in b.tolist()) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b.tolist()]
    assert flat == sorted(lengths), "rows are grouped in length order"
    for b in batches:
        assert 1 <= len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 3 * TOKENS_PER_ROW
    assert [len(b) for b in batches][-1] == 1, "a row longer than the budget still gets a batch"
    with pytest.raises(ValueError, match="batch_size"):
        length_batches(lengths, 0)


def test_scores_and_encodings_do_not_depend_on_batching(trained) -> None:
    """Length-sorted batches reorder rows internally; every result must land on its own row."""
    mwg = trained.get_model()
    texts = ["[MASK] went home .", "the children said that [MASK] were tired after the long walk home .",
             "yesterday [MASK] was here .", "[MASK] are", "in the morning [MASK] saw the old ship in the harbour ."]
    pieces = class_piece_sets(mwg.objective, {"3SG": {"he", "she"}, "3PL": {"they"}})
    one = class_probabilities(mwg.base_model, mwg.objective, texts, pieces, batch_size=1)
    many = class_probabilities(mwg.base_model, mwg.objective, texts, pieces, batch_size=64)
    assert torch.allclose(torch.tensor(one), torch.tensor(many), rtol=1e-4, atol=1e-7)
    assert len({round(float(v), 6) for v in one[:, 0]}) == len(texts), "rows differ, so a mix-up would show"
    factual = ["he", "they", "she", "they", "he"]
    alternative = ["they", "he", "they", "she", "they"]
    enc_one = mwg.encode(texts, factual, alternative, batch_size=1)
    enc_many = mwg.encode(texts, factual, alternative, batch_size=64)
    assert torch.allclose(torch.tensor(enc_one), torch.tensor(enc_many), rtol=1e-4, atol=1e-6)
    # pandas Series with a shuffled index are read by position, like lists
    index = [40, 3, 17, 9, 0]
    series = [pd.Series(v, index=index) for v in (texts, factual, alternative)]
    assert torch.allclose(torch.tensor(mwg.encode(*series, batch_size=2)), torch.tensor(enc_many), rtol=1e-4,
                          atol=1e-6)
    probs_series = class_probabilities(mwg.base_model, mwg.objective, series[0], pieces, batch_size=2)
    assert torch.allclose(torch.tensor(probs_series), torch.tensor(many), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="one factual and one alternative token per text"):
        mwg.encode(texts, factual[:-1], alternative)


def test_saved_rewrite_is_a_complete_checkpoint(trained, tmp_path) -> None:
    dec = trained.evaluate_decoder(target_class="3SG")
    path = trained.rewrite_base_model(decoder_results=dec, target_class="3SG", output_dir=str(tmp_path / "3sg"))
    files = {p.name for p in Path(path).iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= files
    card = (Path(path) / "README.md").read_text()
    assert "feature_factor" in card and "LMS" in card
    loaded = AutoModelForMaskedLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    in_memory = trained.rewrite_base_model(decoder_results=dec, target_class="3SG").eval()
    enc = tokenizer(["[MASK] walked home ."], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**enc).logits.softmax(-1), in_memory(**enc).logits.softmax(-1),
                                   atol=1e-6, rtol=0)
    # without decoder_results the stored summaries are used
    again = trained.rewrite_base_model(target_class="3SG", output_dir=str(tmp_path / "again"))
    assert Path(again, "model.safetensors").is_file()


def test_decoder_bad_input(trained, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"available: \['3SG', '3PL'\]"):
        trained.evaluate_decoder(target_class="X")
    dec = trained.evaluate_decoder(target_class="3SG")
    with pytest.raises(KeyError, match="3SG_weaken"):
        trained.rewrite_base_model(decoder_results=dec, target_class="3SG", increase_target_probabilities=False)
    with pytest.raises(ValueError, match="empty"):
        trained.evaluate_decoder(target_class="3SG", lrs=[])
    with pytest.raises(ValueError, match="eval_batch_size"):
        trained.evaluate_decoder(target_class="3SG", eval_batch_size=0)
    with pytest.raises(ValueError, match="empty string"):
        trained.rewrite_base_model(decoder_results=dec, target_class="3SG", output_dir="")


def test_grid_cache_reused_and_corrupt_cache_recomputed(trained) -> None:
    first = trained.evaluate_decoder(target_class="3SG", use_cache=True)
    cache = Path(trained.experiment_dir) / "decoder_grid.json"
    data = json.loads(cache.read_text())
    data["records"][0]["lms"] = 12345.0  # a tampered value proves the cache is read
    cache.write_text(json.dumps(data))
    assert trained.evaluate_decoder(target_class="3SG", use_cache=True)["grid"][0]["lms"] == 12345.0
    assert trained.evaluate_decoder(target_class="3SG", lrs=[0.5], use_cache=True)["grid"][0]["lms"] != 12345.0
    cache.write_text("{broken")
    with pytest.warns(UserWarning, match="unreadable decoder grid cache"):
        again = trained.evaluate_decoder(target_class="3SG", use_cache=True)
    assert again["grid"][0]["lms"] == first["grid"][0]["lms"]
