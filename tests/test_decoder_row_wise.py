"""Row-wise decoder scoring: `decoder_eval_targets="label"` and shared words between the pair (issue 19).

Each row is scored on its own words (its factual word for its class, its counterfactual for the other) instead
of every word of each class; the grid records keep their shape (dataset class → class → mean probability).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_rows
from transformers import AutoModelForMaskedLM, AutoTokenizer

from gradiend import TextPredictionTrainer, TrainingArguments, cli
from gradiend.decoder_eval import DecoderRequest, GridInputs, base_record
from gradiend.scoring import class_piece_sets, class_probabilities, row_piece_sets, row_probabilities
from gradiend.trainer.trainer import Trainer

TEXTS = ["[MASK] walked to the house .", "then [MASK] said that the sea was good .", "so [MASK] looked at the letter ."]


def _args(directory: Path) -> TrainingArguments:
    return TrainingArguments(experiment_dir=str(directory), train_batch_size=4, max_steps=2, do_eval=False,
                             show_progress=False, scale_estimation_batches=1, use_cache=True, seed=0)


def _trained(model: str, directory: Path, data: pd.DataFrame | str | None = None, **kwargs) -> TextPredictionTrainer:
    trainer = TextPredictionTrainer(model=model, data=make_rows() if data is None else data, args=_args(directory),
                                    target_classes=["3SG", "3PL"], **kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "GRADIEND training did not converge", RuntimeWarning)  # 2 steps
        trainer.train()
    return trainer


def _shared_word_rows() -> pd.DataFrame:
    """3SG says he/it, 3PL says they/it: `it` belongs to both classes (like German `der`)."""
    rows = make_rows()
    plural = rows["label_class"] == "3PL"
    rows.loc[plural & (rows.index % 2 == 0), "label"] = "it"
    rows.loc[~plural, "label"] = np.where(rows.loc[~plural].index % 2 == 0, "he", "it")
    return rows


def _direct_probability(model_dir: str, text: str, word: str) -> float:
    """P(word) at the mask, from a fresh Hugging Face model call (case variants summed over distinct ids)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    encoded = tokenizer(text.replace("[MASK]", tokenizer.mask_token), return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits[0]
    position = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0])
    ids = {tokenizer.convert_tokens_to_ids(v) for v in (word.lower(), word.title(), word.upper())} - {
        tokenizer.unk_token_id}
    return float(torch.softmax(logits[position], -1)[sorted(ids)].sum())


# -- scoring ---------------------------------------------------------------------------------------------------
def test_row_probabilities_equal_class_probabilities_on_shared_sets(tiny_mlm_dir) -> None:
    """Given every row the class word sets, row-wise scoring is the class-wise scoring (one and two pieces);
    given each row its own words, it is the model's softmax at that row's slot."""
    from gradiend.objectives import MaskedLMObjective

    model = AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir).eval()
    objective = MaskedLMObjective(AutoTokenizer.from_pretrained(tiny_mlm_dir))
    assert len(objective.pieces("sea ship")) == 2
    words = {"3SG": {"he", "she", "sea ship"}, "3PL": {"they"}}
    classes = list(words)
    expected = class_probabilities(model, objective, TEXTS, class_piece_sets(objective, words))
    targets = row_piece_sets(objective, classes, [[words[c] for c in classes] for _ in TEXTS])
    got = row_probabilities(model, objective, TEXTS, targets, batch_size=2)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    pairs = [("he", "they"), ("she", "they"), ("it", "them")]
    own = row_piece_sets(objective, classes, [[{sg}, {pl}] for sg, pl in pairs])
    got = row_probabilities(model, objective, TEXTS, own)
    for r, (sg, pl) in enumerate(pairs):
        assert got[r, 0] == pytest.approx(_direct_probability(tiny_mlm_dir, TEXTS[r], sg), rel=1e-5)
        assert got[r, 1] == pytest.approx(_direct_probability(tiny_mlm_dir, TEXTS[r], pl), rel=1e-5)
    assert got[0, 0] != pytest.approx(got[1, 0])  # rows differ: not one value broadcast
    with pytest.raises(Exception, match="xyzzy"):
        row_piece_sets(objective, classes, [[{"xyzzy"}, {"they"}]])


# -- the decoder grid ------------------------------------------------------------------------------------------
def _grid_rows_probabilities(trainer: TextPredictionTrainer) -> tuple[pd.DataFrame, np.ndarray]:
    """The grid's scored rows and their row-wise probabilities (columns: the pair), recomputed independently."""
    model = trainer.get_model()
    request = DecoderRequest.from_arguments(trainer.training_args, list(trainer.pair),
                                            **trainer._decoder_eval_options())
    inputs = GridInputs.build(model, *trainer.unified_data(), request)
    return inputs.like, row_probabilities(model.base_model, model.objective, list(inputs.like["masked"]),
                                          inputs.grid_run(model, 4).pieces)


def test_label_mode_scores_each_rows_own_words(tiny_mlm_dir, tmp_path, caplog) -> None:
    label = _trained(tiny_mlm_dir, tmp_path / "a", decoder_eval_targets="label")
    assert label._decoder_eval_options()["row_wise"] is True
    base = label.evaluate_decoder(lrs=[1e-3], use_cache=False)["grid"][0]
    request = DecoderRequest.from_arguments(label.training_args, list(label.pair), **label._decoder_eval_options())
    assert base_record(label.get_model(), *label.unified_data(), request) == base  # the same inputs, one builder
    assert label.evaluate_base_model() == base  # the trainer's base metrics use the same builder
    like, probs = _grid_rows_probabilities(label)
    # hand check: the first 3PL row's P(3SG) is P(its own counterfactual), from a direct model call
    plural = like.reset_index(drop=True).query("factual_class == '3PL'")
    first = plural.index[0]
    row = plural.loc[first]
    direct = _direct_probability(tiny_mlm_dir, row["masked"], row["alternative"])
    assert probs[first, 0] == pytest.approx(direct, rel=1e-5)
    assert probs[first, 1] == pytest.approx(_direct_probability(tiny_mlm_dir, row["masked"], row["factual"]), rel=1e-5)
    # the record keeps its shape; a class's probability is the mean over its rows of P(row's own word)
    for ci, cls in enumerate(["3SG", "3PL"]):
        for dataset in ("3SG", "3PL"):
            rows = (like["factual_class"] == dataset).to_numpy()
            assert base["probs"][dataset][cls] == pytest.approx(float(probs[rows, ci].mean()), rel=1e-6)
    # class-wise, P(3SG) on a 3PL row sums he, she and it: larger than the row's one counterfactual
    plain = _trained(tiny_mlm_dir, tmp_path / "a").evaluate_decoder(lrs=[1e-3], use_cache=False)["grid"][0]
    assert plain["probs"]["3PL"]["3SG"] > base["probs"]["3PL"]["3SG"]
    assert plain["probs"]["3SG"]["3PL"] == pytest.approx(base["probs"]["3SG"]["3PL"])  # 3PL has one word: they


def test_shared_words_switch_to_row_wise_scoring(tiny_mlm_dir, tmp_path, caplog) -> None:
    data = _shared_word_rows()
    with caplog.at_level(logging.INFO, logger="gradiend.decoder_eval"):
        shared = _trained(tiny_mlm_dir, tmp_path / "s", data)
        result = shared.evaluate_decoder(lrs=[1e-3])
    assert "share the words ['it']; scoring each row on its own words" in caplog.text
    grid = json.loads(Path(shared.experiment.decoder_grid).read_text())
    assert grid["search"]["row_wise"] is True
    like, probs = _grid_rows_probabilities(shared)
    rows = (like["factual_class"] == "3PL").to_numpy()
    assert result["grid"][0]["probs"]["3PL"]["3SG"] == pytest.approx(float(probs[rows, 0].mean()), rel=1e-6)
    # an explicit class -> words mapping with the shared word is scored as given, with a warning
    caplog.clear()
    given = _trained(tiny_mlm_dir, tmp_path / "s", data, decoder_eval_targets={"3SG": ["he", "it"],
                                                                                "3PL": ["they", "it"]})
    with caplog.at_level(logging.WARNING, logger="gradiend.decoder_eval"):
        by_class = given.evaluate_decoder(lrs=[1e-3])
    assert "decoder_eval_targets gives both 3SG and 3PL the words ['it']" in caplog.text
    assert json.loads(Path(given.experiment.decoder_grid).read_text())["search"]["row_wise"] is False
    assert by_class["grid"][0]["probs"]["3PL"]["3SG"] > result["grid"][0]["probs"]["3PL"]["3SG"]
    # row-wise with words for the pair is a contradiction
    request = DecoderRequest(["3SG"], row_wise=True, targets={"3SG": ["he"]}, show_progress=False)
    with pytest.raises(ValueError, match="pass either 'label' or class -> words"):
        base_record(shared.get_model(), *shared.unified_data(), request)
    with pytest.raises(TypeError, match="row_wise must be True, False or None"):
        DecoderRequest(["3SG"], row_wise="label")


def test_the_cache_key_holds_the_scoring_mode(tiny_mlm_dir, tmp_path, caplog) -> None:
    plain = _trained(tiny_mlm_dir, tmp_path / "c")
    label = _trained(tiny_mlm_dir, tmp_path / "c", decoder_eval_targets="label")
    assert plain.experiment.decoder_grid == label.experiment.decoder_grid  # one run, one grid file

    def fingerprint() -> str:
        return json.loads(Path(plain.experiment.decoder_grid).read_text())["fingerprint"]

    first = plain.evaluate_decoder(lrs=[1e-3])
    key = fingerprint()
    with caplog.at_level(logging.INFO, logger="gradiend.decoder_eval"):
        rows = label.evaluate_decoder(lrs=[1e-3])
        assert "belongs to another model, data or grid; recomputing" in caplog.text
        assert fingerprint() != key
        assert rows["grid"][0]["probs"] != first["grid"][0]["probs"]
        caplog.clear()
        again = label.evaluate_decoder(lrs=[1e-3])
        assert "Reusing decoder grid" in caplog.text and again["grid"] == rows["grid"]


def test_label_mode_round_trips_through_run_config_and_the_cli(tiny_mlm_dir, tmp_path) -> None:
    make_rows().to_csv(tmp_path / "data.csv", index=False)
    trainer = _trained(tiny_mlm_dir, tmp_path / "exp", str(tmp_path / "data.csv"), decoder_eval_targets="label")
    saved = json.loads((Path(trainer.experiment_dir) / "run_config.json").read_text())
    assert saved["data_options"]["decoder_eval_targets"] == "label"
    again = Trainer.from_experiment(trainer.experiment_dir)
    assert again.config.decoder_eval_targets == "label" and again._decoder_eval_options()["row_wise"] is True
    assert cli.main(["evaluate", trainer.experiment_dir, "--decoder", "--target-class", "3SG", "--no-plots",
                     "--quiet"]) == cli.EXIT_OK
    grid = json.loads(Path(again.experiment.decoder_grid).read_text())
    assert grid["search"]["row_wise"] is True
    like, probs = _grid_rows_probabilities(again)
    rows = (like["factual_class"] == "3PL").to_numpy()
    assert grid["records"][0]["probs"]["3PL"]["3SG"] == pytest.approx(float(probs[rows, 0].mean()), rel=1e-6)


def test_label_mode_scores_other_classes_by_their_words(tiny_mlm_dir, tmp_path) -> None:
    """With decoder_eval_restrict_to_target_classes=False, a class outside the pair has no word of its own in the
    pair's rows: it is scored on its word set (as class-wise), the pair on each row's own words."""
    rows = make_rows()
    data = pd.concat([rows, rows[rows["label_class"] == "3PL"].assign(label_class="1PL", label="people")],
                     ignore_index=True)
    options = {"data": data, "decoder_eval_restrict_to_target_classes": False}
    label = _trained(tiny_mlm_dir, tmp_path / "o", decoder_eval_targets="label", **options)
    plain = _trained(tiny_mlm_dir, tmp_path / "o", **options)
    by_row = label.evaluate_decoder(lrs=[1e-3], use_cache=False)["grid"][0]["probs"]
    by_class = plain.evaluate_decoder(lrs=[1e-3], use_cache=False)["grid"][0]["probs"]
    assert set(by_row["3SG"]) == set(by_class["3SG"]) == {"3SG", "3PL", "1PL"}
    for dataset in ("3SG", "3PL"):
        assert by_row[dataset]["1PL"] == pytest.approx(by_class[dataset]["1PL"], rel=1e-6)
    assert by_row["3PL"]["3SG"] < by_class["3PL"]["3SG"]


def test_export_row_wise_csv_writes_each_rows_scores(tiny_mlm_dir, tmp_path) -> None:
    """decoder_eval_export_row_wise_csv=True: per row, P(factual) and P(alternative) under the base model and each
    selected rewrite, as the grid scored them (their class means are the grid's probabilities)."""
    trainer = _trained(tiny_mlm_dir, tmp_path / "x", decoder_eval_targets="label",
                       decoder_eval_export_row_wise_csv=True)
    result = trainer.evaluate_decoder(lrs=[1.0, 1e-3])
    table = pd.read_csv(Path(trainer.experiment_dir) / "decoder_row_wise_scores.csv")
    chosen = {result[c]["id"] for c in ("3SG", "3PL")}
    assert set(table["candidate"]) == {"base"} | chosen and set(table["scoring"]) == {"row_wise"}
    records = {r["id"]: r for r in result["grid"]}
    for cid, part in table.groupby("candidate"):
        probs = records[cid]["probs"]
        for (dataset, other), rows in part.groupby(["factual_class", "alternative_class"]):
            assert probs[dataset][dataset] == pytest.approx(rows["P_factual"].mean(), rel=1e-6)
            assert probs[dataset][other] == pytest.approx(rows["P_alternative"].mean(), rel=1e-6)
    base = table[table["candidate"] == "base"].iloc[0]
    assert base["P_alternative"] == pytest.approx(_direct_probability(tiny_mlm_dir, base["masked"],
                                                                      base["alternative"]), rel=1e-5)
    saved = json.loads((Path(trainer.experiment_dir) / "run_config.json").read_text())
    assert saved["data_options"]["decoder_eval_export_row_wise_csv"] is True
