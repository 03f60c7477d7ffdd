"""class_merge_transition_groups: merged classes pair only within a group (issue 19)."""

from __future__ import annotations

import pandas as pd
import pytest

from gradiend.data import DataError, unify_classes

MERGE = {"singular": ["1SG", "3SG"], "plural": ["1PL", "3PL"]}
GROUPS = [["1SG", "1PL"], ["3SG", "3PL"]]
WORDS = {"1SG": "i", "1PL": "we", "3SG": "he", "3PL": "they"}


def pronoun_rows(alternatives: dict[str, tuple[str, str]] | None = None) -> pd.DataFrame:
    """Every class on the same texts; `alternatives` gives a class's explicit (alternative class, word)."""
    rows = []
    for split in ("train", "validation", "test"):
        for i in range(4):
            for cls, word in WORDS.items():
                row = {"masked": f"then [MASK] went home {i} .", "split": split, "label_class": cls, "label": word}
                if alternatives is not None:
                    alt_cls, alt = alternatives[cls]
                    row.update(alternative_class=alt_cls, alternative=alt)
                rows.append(row)
    return pd.DataFrame(rows)


def pairs(rows: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(rows["factual"], rows["alternative"], strict=True))


def test_sampled_counterfactuals_stay_within_the_group() -> None:
    free = unify_classes(pronoun_rows(), class_merge_map=MERGE, seed=0).rows
    assert ("i", "they") in pairs(free) or ("he", "we") in pairs(free)  # without groups: across persons
    grouped = unify_classes(pronoun_rows(), class_merge_map=MERGE, seed=0, transition_groups=GROUPS)
    assert pairs(grouped.rows) == {("i", "we"), ("we", "i"), ("he", "they"), ("they", "he")}
    assert grouped.pair == ("singular", "plural") and len(grouped.rows) == len(free)


def test_explicit_counterfactuals_across_groups_are_dropped(caplog) -> None:
    crossing = {"1SG": ("3PL", "they"), "3SG": ("3PL", "they"), "1PL": ("1SG", "i"), "3PL": ("1SG", "i")}
    with caplog.at_level("INFO", logger="gradiend.data"):
        unified = unify_classes(pronoun_rows(crossing), class_merge_map=MERGE, transition_groups=GROUPS)
    assert pairs(unified.rows) == {("he", "they"), ("we", "i")}
    assert "dropped 24 row(s) outside their group" in caplog.text and "1SG→3PL" in caplog.text


@pytest.mark.parametrize("groups, merge, message", [
    (GROUPS, None, "needs class_merge_map= too"),
    ([["1SG", "1PL"], ["1SG", "3PL"]], MERGE, r"puts \['1SG'\] into two groups"),
    ([["1SG", "2SG"]], MERGE, r"names \['2SG'\], which class_merge_map does not merge"),
    ([["1SG"]], MERGE, "at least two classes"),
    ("1SG,1PL", MERGE, "list of lists"),
])
def test_bad_transition_groups(groups, merge, message) -> None:
    with pytest.raises(DataError, match=message):
        unify_classes(pronoun_rows(), class_merge_map=merge, transition_groups=groups)


def test_trainer_takes_the_reference_option(tiny_mlm_dir) -> None:
    from gradiend import TextPredictionTrainer

    trainer = TextPredictionTrainer(model=tiny_mlm_dir, data=pronoun_rows(), class_merge_map=MERGE,
                                    class_merge_transition_groups=GROUPS)
    assert trainer.pair == ("singular", "plural")
    assert pairs(trainer.unified_data()[0]) == {("i", "we"), ("we", "i"), ("he", "they"), ("they", "he")}
    with pytest.raises(ValueError, match="needs class_merge_map= too"):
        TextPredictionTrainer(model=tiny_mlm_dir, data=pronoun_rows(), class_merge_transition_groups=GROUPS)
