"""The example workflows of examples/ run end to end on tiny random models (issue 19)."""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SPECIAL, WORDS
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name: str):
    """Import examples/<name>.py as a module."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def tiny_bert(directory: Path, words: Iterable[str]) -> str:
    """A saved random 2-layer BERT MLM whose vocabulary holds `words` (plus the shared test words)."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = list(dict.fromkeys([*SPECIAL, *WORDS, *(w.lower() for w in words)]))
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(str(directory), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertForMaskedLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def run(module, argv: list[str]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a few steps on a random model do not converge
        return module.main(argv)


TINY = ["--steps", "4", "--batch-size", "4", "--max-size", "6", "--params", "encoder.layer.1.*"]


def test_three_class_suite(tmp_path) -> None:
    script = example("three_class_suite")
    pronouns = script.pronoun_data()  # the embedded-model run (integration test) uses these classes
    assert set(pronouns["label_class"]) == {"F", "M", "PL"}
    assert set(pronouns.loc[pronouns["label_class"] == "PL", "label"].str.lower()) == {"they"}

    model = tiny_bert(tmp_path / "religion_bert", script.vocabulary())
    out = run(script, ["--model", model, "--experiment-dir", str(tmp_path / "r"), "--data", "religion",
                       "--mode", "symmetric", *TINY])
    assert list(out["summary"]["member"]) == ["christian__jewish", "christian__muslim", "jewish__muslim"]
    suite = out["suite"]
    # the per-class columns give every transition: the third class's rows carry their own counterfactuals
    other = suite["christian__jewish"].other_class_rows()
    assert set(other["factual_class"]) == {"muslim"} and set(other["alternative_class"]) == {"christian", "jewish"}
    assert set(other["alternative"]) <= {w for c in ("christian", "jewish") for w in script.RELIGION[c]}
    saved = json.loads((tmp_path / "r" / "religion_symmetric" / "cross_encoding_test.json").read_text())
    assert saved["pairs"]["model_ids"] == list(out["summary"]["member"])
    assert saved["classes"]["column_ids"] == ["christian", "jewish", "muslim"]
    assert np.isfinite(np.array(saved["classes"]["matrix"], float)).all()
    positive = run(script, ["--model", model, "--experiment-dir", str(tmp_path / "r"), "--data", "religion", *TINY])
    assert list(positive["summary"]["member"]) == ["christian", "jewish", "muslim"]
    assert positive["suite"]["muslim"].pair == ("muslim", "non_muslim")


TEMPLATES = ["then {} walked to the house .", "so {} looked at the letter again .",
             "at home {} thought of the friend .",
             "when {} saw the ship , the day was old .", "the man said that {} had left .",
             "in the room {} talked with the mother .", "that night {} knew the sea was good .",
             "the old woman saw that {} came home .", "there {} felt very happy .", "again {} went to the door .",
             "by the sea {} had a little house .", "the children said {} never came ."]


def test_pronouns_other_classes_and_merged_classes(tmp_path) -> None:
    script = example("pronouns")
    sentences = [t.format(p) for t in TEMPLATES for p in ("i", "we", "he", "she", "it", "they")]
    corpus = tmp_path / "sentences.txt"
    corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    model = tiny_bert(tmp_path / "pronoun_bert", ["i", "we"])
    out = run(script, ["--model", model, "--experiment-dir", str(tmp_path / "p"), "--sentences", str(corpus), *TINY])
    assert out["classes"] == {"1SG": 12, "1PL": 12, "3SG": 12, "3PL": 12}
    number = out["3SG_3PL"]["encoder"]
    assert set(number["mean_by_feature_class"]) == {"1SG", "1PL", "3SG", "3PL"}  # other classes encoded too
    assert number["n_by_feature_class"]["1SG"] == 2 * 1  # one test row, probed toward 3SG and 3PL
    assert out["3SG_3PL"]["trainer"].training_args.include_other_classes
    merged = out["singular_plural"]
    assert merged["trainer"].pair == ("singular", "plural")
    assert merged["encoder"]["n_by_feature_class"] == {"plural": 2, "singular": 2}


def test_topk_overlap_across_features_and_seeds(tiny_mlm_dir, tmp_path) -> None:
    script = example("topk_overlap")
    out = run(script, ["--model", tiny_mlm_dir, "--experiment-dir", str(tmp_path / "t"), "--topk", "50",
                       "--rows-per-class", "6", *TINY])
    features, seeds = out["features"], out["seeds"]
    assert features["model_ids"] == ["3SG_3PL", "M_F"] and features["sizes"] == {"3SG_3PL": 50, "M_F": 50}
    matrix = np.array(features["matrix"])
    assert np.allclose(np.diag(matrix), 1.0) and 0.0 <= matrix[0, 1] <= 1.0 and matrix[0, 1] == matrix[1, 0]
    assert seeds["seeds"] == ["seed_0", "seed_1"] and len(seeds["jaccard"]) == 2
    assert seeds["common_to_all"] <= 50 <= seeds["union_size"] <= 100
    assert all(Path(p).is_file() for p in out["plots"])


def test_german_articles_gender_and_case_from_tags(tmp_path) -> None:
    pytest.importorskip("spacy", reason="spaCy is an optional extra: pip install 'gradiend[spacy]'")
    script = example("german_articles")
    model = tiny_bert(tmp_path / "german_bert", script.vocabulary())
    out = run(script, ["--model", model, "--experiment-dir", str(tmp_path / "g"), *TINY])
    classes = ["fem_acc", "fem_dat", "fem_nom", "masc_acc", "masc_dat", "masc_nom", "neut_acc", "neut_dat", "neut_nom"]
    assert sorted(out["classes"]) == classes and set(out["classes"].values()) == {32}
    case = out["masc_nom_acc"]
    assert case["trainer"].pair == ("masc_nom", "masc_acc")
    rows = case["trainer"].unified_data()[0]
    assert set(rows.loc[rows["factual_class"] == "masc_nom", "factual"].str.lower()) == {"der"}
    assert set(rows.loc[rows["factual_class"] == "masc_nom", "alternative"].str.lower()) == {"den"}
    assert sorted(case["encoder"]["mean_by_feature_class"]) == classes  # every class encoded (label 0 but the pair)
    # the tags split `der`: feminine dative rows are another class, not masculine nominative
    other = case["trainer"].other_class_rows()
    assert set(other.loc[other["factual_class"] == "fem_dat", "factual"].str.lower()) == {"der"}
    gender = out["masc_fem"]
    assert gender["trainer"].pair == ("masc", "fem")
    pair_rows = gender["trainer"].unified_data()[0]
    assert not (pair_rows["factual"].str.lower() == pair_rows["alternative"].str.lower()).any()
    assert sorted(gender["encoder"]["mean_by_feature_class"]) == ["fem", "masc", "neut_acc", "neut_dat", "neut_nom"]
