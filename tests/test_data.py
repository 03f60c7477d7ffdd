"""Data validation, unification and single-class batching."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gradiend.data import BatchSchedule, DataError, match_case, require_split, unify


def _merged(n: int = 6) -> pd.DataFrame:
    rows = []
    for i in range(n):
        for split in ("train", "validation", "test"):
            rows.append({"masked": f"[MASK] walked {i} .", "split": split, "label_class": "3SG",
                         "label": ["He", "she", "it"][i % 3]})
            rows.append({"masked": f"[MASK] walked {i} .", "split": split, "label_class": "3PL", "label": "They"})
    return pd.DataFrame(rows)


def test_merged_format_samples_alternatives_with_casing() -> None:
    rows, pair = unify(_merged(), target_classes=["3SG", "3PL"], seed=0)
    assert pair == ("3SG", "3PL")
    sg = rows[rows["factual_class"] == "3SG"]
    assert set(sg["alternative"]) == {"They", "they"}
    assert (sg.loc[sg["factual"] == "He", "alternative"] == "They").all()
    pl = rows[rows["factual_class"] == "3PL"]
    assert set(pl["alternative"]) <= {"He", "She", "It"}
    assert set(rows["label"]) == {1, -1}
    assert (rows.loc[rows["factual_class"] == "3SG", "label"] == 1).all()


def test_alternative_sampling_follows_token_frequencies() -> None:
    df = _merged(30)
    rows, _ = unify(df, ["3SG", "3PL"], seed=1)
    counts = rows.loc[rows["factual_class"] == "3PL", "alternative"].str.lower().value_counts(normalize=True)
    assert set(counts.index) == {"he", "she", "it"}
    assert all(0.2 < v < 0.5 for v in counts)


def test_explicit_alternative_columns_are_kept() -> None:
    df = _merged()
    df["alternative_class"] = np.where(df["label_class"] == "3SG", "3PL", "3SG")
    df["alternative"] = np.where(df["label_class"] == "3SG", "they", "he")
    rows, _ = unify(df, ["3SG", "3PL"])
    assert set(rows.loc[rows["factual_class"] == "3PL", "alternative"]) == {"he"}


def test_per_class_dict() -> None:
    data = {"3SG": pd.DataFrame({"masked": ["[MASK] ran .", "[MASK] sat ."], "3SG": ["he", "she"],
                                 "split": ["train", "val"]}),
            "3PL": pd.DataFrame({"masked": ["[MASK] ran .", "[MASK] sat ."], "label": ["they", "they"],
                                 "split": ["train", "valid"]})}
    rows, pair = unify(data)
    assert pair == ("3SG", "3PL")
    assert set(rows["split"]) == {"train", "validation"}
    assert len(rows) == 4


def test_path_input(tmp_path) -> None:
    path = tmp_path / "training.csv"
    _merged().to_csv(path, index=False)
    rows, _ = unify(str(tmp_path), ["3SG", "3PL"])
    assert len(rows) == len(_merged())


@pytest.mark.parametrize("mutate, message", [
    (lambda df: df.drop(columns=["label_class"]), "label_class"),
    (lambda df: df.rename(columns={"masked": "masekd"}), "masked"),
    (lambda df: df.iloc[0:0], "empty"),
    (lambda df: df.assign(split="holdout"), "holdout"),
    (lambda df: df.assign(masked="no placeholder here"), r"\[MASK\]"),
    (lambda df: df.assign(label=""), "empty target token"),
])
def test_bad_data_gets_clear_errors(mutate, message: str) -> None:
    with pytest.raises(DataError, match=message):
        unify(mutate(_merged()), ["3SG", "3PL"])


def test_target_classes_must_exist() -> None:
    with pytest.raises(DataError, match="not found in the data"):
        unify(_merged(), ["3SG", "PLURAL"])
    with pytest.raises(DataError, match="exactly two"):
        unify(_merged(), ["3SG"])


def test_more_than_two_classes_need_target_classes() -> None:
    df = pd.concat([_merged(), _merged().assign(label_class="1SG", label="I")])
    with pytest.raises(DataError, match="target_classes"):
        unify(df)


def test_missing_file_and_wrong_type() -> None:
    with pytest.raises(DataError, match="not found"):
        unify("/nonexistent/data.csv")
    with pytest.raises(DataError, match="DataFrame"):
        unify(42)  # type: ignore[arg-type]


def test_class_without_rows_in_split() -> None:
    rows, pair = unify(_merged(), ["3SG", "3PL"])
    rows = rows[~((rows["split"] == "test") & (rows["factual_class"] == "3PL"))]
    with pytest.raises(DataError, match="'3PL' has no rows in split 'test'"):
        require_split(rows, "test", pair, "evaluation")


def test_match_case() -> None:
    assert match_case("they", "He") == "They"
    assert match_case("they", "HE") == "THEY"
    assert match_case("They", "he") == "they"


def test_batches_are_single_class_round_robin_and_wrap() -> None:
    labels = [1] * 10 + [-1] * 4
    schedule = BatchSchedule(labels, batch_size=3, seed=0)
    epoch = schedule.epoch(0)
    assert len(epoch) == schedule.batches_per_epoch() == 8
    assert [b.label for b in epoch] == [1, -1] * 4
    for batch in epoch:
        assert all(labels[i] == batch.label for i in batch.indices)
    seen = sorted(i for b in epoch if b.label == 1 for i in b.indices)
    assert seen == list(range(10))
    assert schedule.epoch(1) != epoch  # order reshuffled per epoch
    assert set(schedule.epoch(1)) == set(epoch)  # same batches: their gradients are cacheable
    assert BatchSchedule(labels, 3, seed=0).epoch(0) == epoch  # reproducible
    assert set(BatchSchedule(labels, 3, seed=5).epoch(0)) != set(epoch)  # another data seed, other batches
    assert len(list(schedule.iterate(13))) == 13


def test_schedule_needs_both_classes() -> None:
    with pytest.raises(DataError, match="Both target classes"):
        BatchSchedule([1, 1, 1], batch_size=2)
