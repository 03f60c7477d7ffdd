"""Integration: a three-class positive suite on the embedded MiniLM separates every class (issue 19)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_positive_suite_cross_encoding_diagonal_dominates(tmp_path) -> None:
    """he / she / they, each against the other two: each GRADIEND encodes its own class highest.

    Kept short (one dense layer, 24 steps, sentences of ≤ 12 words, 12 evaluation rows per class);
    the three GRADIENDs still reach correlations of 0.65-0.98 on the test split.
    """
    sys.path.insert(0, str(EXAMPLES))
    import three_class_suite

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a member below the convergence bar only warns
        out = three_class_suite.main([
            "--experiment-dir", str(tmp_path), "--steps", "24", "--max-size", "12", "--max-words", "12",
            "--learning-rate", "1e-4", "--params", "bert.encoder.layer.4.output.dense.*", "--quiet"])
    classes = out["cross_encoding"]["classes"]
    assert classes["model_ids"] == classes["column_ids"] == ["F", "M", "PL"]
    matrix = np.array(classes["matrix"], dtype=float)
    for i, member in enumerate(classes["model_ids"]):
        others = np.delete(matrix[i], i)
        assert matrix[i, i] > others.max() + 0.1, (member, matrix.round(2).tolist())
    summary = out["summary"].set_index("member")
    assert (summary["correlation"] >= 0.5).all(), summary["correlation"].to_dict()
    assert summary["converged"].sum() >= 2, summary["converged"].to_dict()
