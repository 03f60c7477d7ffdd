"""Integration: the documented workflows of examples/ on the embedded MiniLM, with real outcomes (issue 19).

Each run learns from one dense layer for a few dozen steps, so the test stays short; the three-class
suite is in test_integration_multiclass.py. The examples are the same scripts tests/test_examples.py
runs on tiny random models.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LAYER = "bert.encoder.layer.4.output.dense.*"


def run_example(name: str, argv: list[str]) -> dict[str, Any]:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a GRADIEND below the convergence bar only warns
        return importlib.import_module(name).main([*argv, "--params", LAYER, "--quiet"])


def pair_correlation(result: dict[str, Any]) -> float:
    """Pearson of h with ±1 over the pair's rows only (`correlation` also counts the label-0 other classes)."""
    return result["target_classes_only"]["correlation"]


def test_pronouns_number_with_other_classes_and_merged(tmp_path) -> None:
    """3SG vs 3PL encodes 1SG/1PL too, and number carries over to the first person; singular vs plural
    merged from four classes separates them."""
    out = run_example("pronouns", ["--experiment-dir", str(tmp_path), "--steps", "40", "--max-size", "20",
                                   "--learning-rate", "1e-4"])
    assert set(out["classes"]) == {"1SG", "1PL", "3SG", "3PL"} and min(out["classes"].values()) >= 40
    number = out["3SG_3PL"]
    means, counts = number["encoder"]["mean_by_feature_class"], number["encoder"]["n_by_feature_class"]
    assert number["trainer"].get_training_record().converged
    assert pair_correlation(number["encoder"]) >= 0.8, number["encoder"]["target_classes_only"]
    assert means["3SG"] >= 0.5 and means["3PL"] <= -0.3, means
    # the other classes are encoded (each row probed toward both pair classes), never trained on
    assert counts["1SG"] == 2 * counts["3SG"] and counts["1PL"] == 2 * counts["3PL"], counts
    assert means["1SG"] > means["1PL"], means  # singular first person lies on the 3SG side of 1PL
    merged = out["singular_plural"]
    assert merged["trainer"].pair == ("singular", "plural")
    means = merged["encoder"]["mean_by_feature_class"]
    assert pair_correlation(merged["encoder"]) >= 0.8, merged["encoder"]["target_classes_only"]
    assert means["singular"] >= 0.3 and means["plural"] <= -0.3, means


def test_german_articles_case_and_gender(tmp_path) -> None:
    """Nine gender × case classes from a blank spaCy pipeline: the case GRADIEND (der vs den) leaves every
    other class near 0, `der` as feminine dative included; the gender GRADIEND orders masc above fem."""
    pytest.importorskip("spacy", reason="spaCy is an optional extra: pip install 'gradiend[spacy]'")
    out = run_example("german_articles", ["--experiment-dir", str(tmp_path), "--steps", "32", "--max-size", "20",
                                          "--learning-rate", "1e-4"])
    assert len(out["classes"]) == 9 and set(out["classes"].values()) == {32}
    case = out["masc_nom_acc"]
    means = case["encoder"]["mean_by_feature_class"]
    assert case["trainer"].get_training_record().converged
    assert pair_correlation(case["encoder"]) >= 0.9, case["encoder"]["target_classes_only"]
    assert means["masc_nom"] >= 0.5 and means["masc_acc"] <= -0.5, means
    others = {c: v for c, v in means.items() if c not in ("masc_nom", "masc_acc")}
    assert len(others) == 7 and all(abs(v) <= 0.3 for v in others.values()), others
    assert means["masc_nom"] - means["fem_dat"] >= 0.5, means  # the same word `der`, another class
    gender = out["masc_fem"]
    means = gender["encoder"]["mean_by_feature_class"]
    assert gender["trainer"].pair == ("masc", "fem")
    assert means["masc"] - means["fem"] >= 0.4, means
    assert pair_correlation(gender["encoder"]) >= 0.5, gender["encoder"]["target_classes_only"]


def test_topk_overlap_across_features_and_seeds(tmp_path) -> None:
    """Two seeds of 3SG/3PL share far more of their top-1000 decoder weights than chance and than 3SG/3PL
    shares with he/she; the sets are the 1000 largest Σ|decoder weight| rows of the saved GRADIENDs."""
    from gradiend.model import GradiendModel
    from gradiend.topk import get_topk_weights

    k = 1000
    out = run_example("topk_overlap", ["--experiment-dir", str(tmp_path), "--steps", "32", "--topk", str(k),
                                       "--rows-per-class", "40", "--learning-rate", "1e-3"])
    features, seeds = out["features"], out["seeds"]
    trainers = out["trainers"]
    assert all(t.get_training_record().converged for t in trainers.values())
    # consistent with the weights: the top-k set is the k inputs of largest Σ_j |W_d[i, j]| (no pruning, so an
    # input's index is its base-global index)
    for name, trainer in trainers.items():
        gradiend = GradiendModel.from_pretrained(Path(trainer.experiment_dir) / "model")
        importance = gradiend.decoder_weight.detach().abs().sum(dim=1)
        top = set(torch.topk(importance, k).indices.tolist())
        assert set(get_topk_weights(trainer, topk=k)) == top
        assert len(features["sets"][name]) == features["sizes"][name] == k
    chance = k * k / importance.numel()
    matrix = np.array(features["intersection"])
    assert np.array_equal(matrix, matrix.T) and (np.diag(matrix) == k).all()
    seed_common = np.array(seeds["intersection"])[0, 1]
    assert seeds["seeds"] == ["seed_0", "seed_1"] and seeds["common_to_all"] == seed_common
    assert seed_common >= 20 * chance, (seed_common, chance)
    assert seed_common > 5 * matrix[0, 1], (seed_common, matrix[0, 1])
    assert 0.0 <= seeds["min_pairwise_jaccard"] <= 1.0
    assert seeds["union_size"] == 2 * k - seed_common
    assert all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in out["plots"])
