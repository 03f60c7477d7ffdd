"""More than two classes (issue 19): all_classes, class_merge_map, other classes' rows, per-class means."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from conftest import make_rows

from gradiend.data import DataError, unify, unify_classes
from gradiend.encoder_eval import TRAINING, encoder_metrics


def _three_classes() -> pd.DataFrame:
    """3SG/3PL rows plus a third class OBJ ("him") on the same templates."""
    rows = make_rows(repeat=2)
    first = rows[rows["label_class"] == "3SG"].assign(label_class="OBJ", label="him")
    return pd.concat([rows, first], ignore_index=True)


def test_other_classes_are_kept_with_label_zero_and_logged(caplog) -> None:
    data = _three_classes()
    with caplog.at_level(logging.INFO, logger="gradiend.data"):
        unified = unify_classes(data, ["3SG", "3PL"])
    assert unified.pair == ("3SG", "3PL") and unified.all_classes == ("3PL", "3SG", "OBJ")
    assert set(unified.rows["factual_class"]) == {"3SG", "3PL"} and set(unified.rows["label"]) == {1, -1}
    other = unified.other_rows
    n_first = int((data["label_class"] == "OBJ").sum())
    # each OBJ row without an alternative is probed toward both pair classes, alternatives from their tokens
    assert len(other) == 2 * n_first and set(other["label"]) == {0} and set(other["factual_class"]) == {"OBJ"}
    assert other.groupby("alternative_class").size().to_dict() == {"3PL": n_first, "3SG": n_first}
    assert set(other.loc[other["alternative_class"] == "3PL", "alternative"]) == {"they"}
    assert set(other.loc[other["alternative_class"] == "3SG", "alternative"]) <= {"he", "she", "it"}
    assert f"Rows of other classes (label 0, evaluation only): {{'OBJ': {2 * n_first}}}" in caplog.text
    # the pair's rows are exactly what the two-class data gives (training and its fingerprint unchanged)
    two = data[data["label_class"] != "OBJ"]
    pd.testing.assert_frame_equal(unified.rows, unify(two, ["3SG", "3PL"])[0])


def test_all_classes_restricts_and_is_checked(caplog) -> None:
    data = _three_classes()
    with caplog.at_level(logging.INFO, logger="gradiend.data"):
        unified = unify_classes(data, ["3SG", "3PL"], all_classes=["3SG", "3PL"])
    assert unified.other_rows.empty and unified.all_classes == ("3SG", "3PL")
    assert "outside all_classes" in caplog.text and "'OBJ'" in caplog.text
    with pytest.raises(DataError, match=r"all_classes .*\['2SG'\]"):
        unify_classes(data, ["3SG", "3PL"], all_classes=["3SG", "3PL", "2SG"])
    with pytest.raises(DataError, match="not in all_classes"):
        unify_classes(data, ["3SG", "OBJ"], all_classes=["3SG", "3PL"])


def test_three_target_classes_point_to_suites() -> None:
    with pytest.raises(DataError, match=r"exactly two classes.*SymmetricSuite.*class_merge_map"):
        unify(_three_classes(), ["3SG", "3PL", "OBJ"])
    with pytest.raises(DataError, match=r"exactly two classes.*gradiend.suites"):
        unify(_three_classes())


def test_class_merge_map_merges_and_gives_the_pair() -> None:
    data = _three_classes()
    unified = unify_classes(data, class_merge_map={"singular": ["3SG", "OBJ"], "plural": ["3PL"]})
    assert unified.pair == ("singular", "plural") and unified.all_classes == ("plural", "singular")
    counts = unified.rows.groupby("factual_class").size().to_dict()
    assert counts == {"plural": int((data["label_class"] == "3PL").sum()),
                      "singular": int(data["label_class"].isin(["3SG", "OBJ"]).sum())}
    singular = unified.rows[unified.rows["factual_class"] == "singular"]
    assert set(singular["alternative"]) == {"they"} and set(singular["label"]) == {1}
    assert set(unified.rows.loc[unified.rows["factual_class"] == "plural", "alternative"]) <= {"he", "she", "it", "him"}
    assert unified.other_rows.empty
    # a class left unmapped stays itself; target_classes name merged classes
    kept = unify_classes(data, ["sg3", "3PL"], class_merge_map={"sg3": ["3SG"]})
    assert set(kept.other_rows["factual_class"]) == {"OBJ"}


@pytest.mark.parametrize(("merge", "message"), [
    ({"a": "3SG"}, "non-empty list"),
    ({"a": ["3SG"], "b": ["3SG", "3PL"]}, "both 'a' and 'b'"),
    ({"a": ["3SG", "XX"], "b": ["3PL"]}, r"\['XX'\] that are not in the data"),
    ({}, "non-empty dict"),
])
def test_bad_class_merge_map(merge, message) -> None:
    with pytest.raises(DataError, match=message):
        unify_classes(_three_classes(), class_merge_map=merge)


def test_per_class_columns_give_every_transition() -> None:
    """Race-style data: one column per class holds that class's word for the same sentence."""
    frame = pd.DataFrame({"masked": ["[MASK] went home .", "[MASK] saw it .", "[MASK] was here ."],
                          "split": ["train", "validation", "test"],
                          "white": ["Mary", "John", "Ann"], "black": ["Keisha", "Jamal", "Imani"],
                          "asian": ["Mei", "Jun", "Lin"]})
    data = {"white": frame, "black": frame.copy(), "asian": frame.copy()}
    unified = unify_classes(data, ["white", "asian"])
    other = unified.other_rows
    assert set(other["factual_class"]) == {"black"} and len(other) == 6
    assert sorted(other.loc[other["alternative_class"] == "white", "alternative"]) == ["Ann", "John", "Mary"]
    assert set(other["factual"]) == {"Keisha", "Jamal", "Imani"}


def _frame(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    label = {"A": 1, "B": -1}
    for cls, encoded in values.items():
        for h in encoded:
            kind = TRAINING if cls != "neutral" else "neutral_dataset"
            rows.append({"factual_class": cls, "encoded": h, "label": label.get(cls, 0), "type": kind})
    return pd.DataFrame(rows)


def test_mean_by_feature_class_covers_every_class_and_keeps_neutral_apart() -> None:
    frame = _frame({"A": [1.0, 0.8], "B": [-1.0, -0.6], "C": [0.1, 0.3, 0.2], "neutral": [0.5, -0.1]})
    metrics = encoder_metrics(frame, ("A", "B"))
    assert metrics["mean_by_feature_class"] == pytest.approx({"A": 0.9, "B": -0.8, "C": 0.2})
    assert metrics["n_by_feature_class"] == {"A": 2, "B": 2, "C": 3}
    assert metrics["mean_by_class"] == pytest.approx({"A": 0.9, "B": -0.8})
    assert metrics["neutral_mean_by_type"] == pytest.approx({"neutral_dataset": 0.2})
    # the all-data metrics still read every row, other classes and neutral rows labelled 0
    enc, lab = frame["encoded"].to_numpy(), frame["label"].to_numpy()
    assert metrics["all_data_correlation"] == pytest.approx(np.corrcoef(enc, lab)[0, 1])
    assert metrics["target_classes_only"]["n"] == 4


def test_trainer_takes_all_classes_and_class_merge_map(tiny_mlm_dir) -> None:
    from gradiend import TextPredictionTrainer

    data = _three_classes()
    trainer = TextPredictionTrainer(model=tiny_mlm_dir, data=data, target_classes=["3SG", "3PL"])
    assert trainer.all_classes == ["3PL", "3SG", "OBJ"] and trainer.pair == ("3SG", "3PL")
    assert set(trainer.other_class_rows()["factual_class"]) == {"OBJ"}
    merged = TextPredictionTrainer(model=tiny_mlm_dir, data=data,
                                   class_merge_map={"sg": ["3SG", "OBJ"], "pl": ["3PL"]})
    assert merged.pair == ("sg", "pl") and merged.other_class_rows().empty
    assert TextPredictionTrainer(model=tiny_mlm_dir, data=data, target_classes=["3SG", "3PL"],
                                 all_classes=["3SG", "3PL"]).all_classes == ["3SG", "3PL"]


def _tiny_args(directory, **kw):
    from gradiend import TrainingArguments

    return TrainingArguments(experiment_dir=None if directory is None else str(directory), train_batch_size=4,
                             max_steps=4, eval_steps=2, seed=0, show_progress=False, scale_estimation_batches=2,
                             params=["encoder.layer.1.*"], **kw)


def test_evaluate_encoder_includes_other_classes(tiny_mlm_dir, tmp_path) -> None:
    import warnings

    from gradiend import TextPredictionTrainer

    trainer = TextPredictionTrainer(model=tiny_mlm_dir, data=_three_classes(), target_classes=["3SG", "3PL"],
                                    args=_tiny_args(tmp_path / "exp"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 4 steps on a random model do not converge
        trainer.train()
    pair_only = trainer.evaluate_encoder(return_df=True)
    assert set(pair_only["mean_by_feature_class"]) == {"3SG", "3PL"}
    everything = trainer.evaluate_encoder(include_other_classes=True, return_df=True)
    frame = everything["encoder_df"]
    first = frame[frame["factual_class"] == "OBJ"]
    assert len(first) == 2 * int(((_three_classes()["label_class"] == "OBJ") & (
        _three_classes()["split"] == "test")).sum()) and set(first["label"]) == {0}
    assert everything["mean_by_feature_class"]["OBJ"] == pytest.approx(float(first["encoded"].mean()))
    assert everything["mean_by_feature_class"]["3SG"] == pytest.approx(pair_only["mean_by_feature_class"]["3SG"])
    assert everything["n_by_feature_class"]["OBJ"] == len(first)
    # the TrainingArguments default turns it on; the JSON beside the cached encodings has the means
    trainer.training_args.include_other_classes = True
    assert "OBJ" in trainer.evaluate_encoder()["mean_by_feature_class"]
    meta = next((tmp_path / "exp").glob("encoded_values_split_test*.json"))
    assert "OBJ" in json.loads(meta.read_text())["metrics"]["mean_by_feature_class"]


def test_raw_classes_survive_the_merge_and_data_classes_lists_them() -> None:
    from gradiend.data import data_classes

    data = _three_classes()
    unified = unify_classes(data, ["sg", "3PL"], class_merge_map={"sg": ["3SG", "OBJ"]})
    both = unified.class_rows()
    assert len(both) == len(unified.rows) + len(unified.other_rows)
    assert both.groupby(["factual_class", "raw_class"]).size().to_dict() == {
        ("3PL", "3PL"): 36, ("sg", "OBJ"): 36, ("sg", "3SG"): 36}
    assert data_classes(data) == ("3PL", "3SG", "OBJ")
    assert data_classes(data, class_merge_map={"sg": ["3SG", "OBJ"]}) == ("3PL", "sg")
    assert data_classes(data, all_classes=["3SG", "OBJ"]) == ("3SG", "OBJ")


# -- suites ------------------------------------------------------------------------------------------
def _quiet_train(suite):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a few steps on a random model do not converge
        return suite.train()


def test_symmetric_suite_trains_every_pair_reuses_finished_members_and_cross_encodes(tiny_mlm_dir, tmp_path,
                                                                                      monkeypatch) -> None:
    from conftest import count_gradient_passes

    from gradiend.suites import SymmetricSuite

    suite = SymmetricSuite(tiny_mlm_dir, _three_classes(), _tiny_args(tmp_path / "exp"), run_id="pronouns")
    assert list(suite) == ["3PL__3SG", "3PL__OBJ", "3SG__OBJ"]
    assert suite["3SG__OBJ"].pair == ("3SG", "OBJ") and suite["3SG__OBJ"].all_classes == ["3PL", "3SG", "OBJ"]
    _quiet_train(suite)
    for member in suite:
        assert (tmp_path / "exp" / "pronouns" / member / "model" / "model.safetensors").is_file()
    # a rerun (e.g. after a crash) reuses the finished members: no base-model gradient is computed
    passes = count_gradient_passes(monkeypatch)
    again = SymmetricSuite(tiny_mlm_dir, _three_classes(), _tiny_args(tmp_path / "exp"), run_id="pronouns")
    _quiet_train(again)
    assert passes == []
    table = again.summary()
    assert list(table["member"]) == list(suite) and {"mean_OBJ", "mean_3PL", "mean_3SG"} <= set(table.columns)
    assert table["mean_a"].tolist() == [table.loc[i, f"mean_{table.loc[i, 'class_a']}"] for i in table.index]
    assert (tmp_path / "exp" / "pronouns" / "suite_summary_test.csv").is_file()
    row = table.set_index("member").loc["3SG__OBJ"]
    assert row["correlation"] == pytest.approx(again["3SG__OBJ"].evaluate_encoder(
        include_other_classes=True)["correlation"])
    cross = again.cross_encoding(max_size=6)
    classes, pairs = cross["classes"], cross["pairs"]
    assert classes["column_ids"] == ["3PL", "3SG", "OBJ"] and pairs["column_ids"] == list(suite)
    assert np.isfinite(np.array(classes["matrix"], dtype=float)).all()
    assert classes["n"] == [[6, 6, 6]] * 3  # max_size rows per member and class
    # the pair cell is (mean on the first class − mean on the second) / 2 of the class cells' rows
    enc = json.loads((tmp_path / "exp" / "pronouns" / "cross_encoding_test.json").read_text())
    assert enc["pairs"]["matrix"] == pairs["matrix"]
    assert cross["member_pairs"]["3PL__3SG"] == ["3PL", "3SG"]


def test_positive_suite_merges_the_rest_and_its_diagonal_is_the_members_class(tiny_mlm_dir, tmp_path) -> None:
    from gradiend.suites import PositiveSuite

    suite = PositiveSuite(tiny_mlm_dir, _three_classes(), _tiny_args(tmp_path / "exp"))
    assert list(suite) == ["3PL", "3SG", "OBJ"]
    assert suite["3PL"].pair == ("3PL", "non_3PL") and suite["3PL"].other_class_rows().empty
    _quiet_train(suite)
    cross = suite.cross_encoding(max_size=4, write=False)
    # members × raw classes: the merged negative class shows its two parts
    assert cross["classes"]["column_ids"] == ["3PL", "3SG", "OBJ"]
    assert cross["classes"]["n"] == [[4, 4, 4]] * 3
    with pytest.raises(ValueError, match="also a class"):
        PositiveSuite(tiny_mlm_dir, _three_classes(), _tiny_args(tmp_path / "x"), negative_name="{}",
                      classes=["3SG", "3PL"])


def test_collection_of_built_trainers_and_bad_suites(tiny_mlm_dir, tmp_path) -> None:
    from gradiend import TextPredictionTrainer
    from gradiend.suites import GradiendCollection, GradiendSuite, PairDefinition

    a = TextPredictionTrainer(model=tiny_mlm_dir, data=_three_classes(), target_classes=["3SG", "3PL"],
                              args=_tiny_args(tmp_path / "c"), run_id="number")
    b = TextPredictionTrainer(model=tiny_mlm_dir, data=_three_classes(), target_classes=["OBJ", "3SG"],
                              args=_tiny_args(tmp_path / "c"), run_id="person")
    collection = GradiendCollection([a, b])
    assert list(collection) == ["number", "person"] and collection.output_dir == tmp_path / "c"
    _quiet_train(collection)
    cross = collection.cross_encoding(max_size=3)
    assert cross["pairs"]["model_ids"] == ["number", "person"] and len(cross["pairs"]["matrix"]) == 2
    assert (tmp_path / "c" / "cross_encoding_test.json").is_file()
    with pytest.raises(ValueError, match="run_id 'number'"):
        GradiendCollection([a, a])
    with pytest.raises(ValueError, match="two different class names"):
        PairDefinition(("3SG", "3SG"))
    with pytest.raises(ValueError, match="experiment_dir"):
        GradiendSuite(tiny_mlm_dir, _three_classes(), _tiny_args(None), [("3SG", "3PL")])
    with pytest.raises(TypeError, match="target_classes= is set by the suite"):
        GradiendSuite(tiny_mlm_dir, _three_classes(), _tiny_args(tmp_path / "s"), [("3SG", "3PL")],
                      target_classes=["3SG", "3PL"])


def test_merged_classes_sharing_a_word_never_draw_it_as_alternative() -> None:
    """`der` is masculine nominative and feminine dative: a merged masculine row must not get `der` back."""
    text = "am tag sah [MASK] mann das haus ."
    rows = []
    for split in ("train", "validation", "test"):
        for cls, word in (("masc_nom", "der"), ("masc_acc", "den"), ("fem_nom", "die"), ("fem_dat", "der")):
            rows += [{"masked": text, "split": split, "label_class": cls, "label": word}] * 10
    unified = unify_classes(pd.DataFrame(rows), class_merge_map={"masc": ["masc_nom", "masc_acc"],
                                                                  "fem": ["fem_nom", "fem_dat"]})
    same = unified.rows["factual"].str.lower() == unified.rows["alternative"].str.lower()
    assert not same.any()
    masc_der = unified.rows[(unified.rows["factual_class"] == "masc") & (unified.rows["factual"] == "der")]
    assert set(masc_der["alternative"]) == {"die"}
    assert set(unified.rows.loc[unified.rows["factual"] == "den", "alternative"]) == {"der", "die"}


def test_reference_spellings_build_the_same_suites(tiny_mlm_dir, tmp_path) -> None:
    from gradiend import TextPredictionTrainer
    from gradiend.suites import SymmetricTrainerSuite, TrainerCollection

    suite = SymmetricTrainerSuite(TextPredictionTrainer, model=tiny_mlm_dir, data=_three_classes(),
                                  args=_tiny_args(tmp_path / "s"), target_classes=["3SG", "3PL", "OBJ"], run_id="r")
    assert list(suite) == ["3PL__3SG", "3PL__OBJ", "3SG__OBJ"]
    assert suite["3PL__OBJ"].experiment_dir == str(tmp_path / "s" / "r" / "3PL__OBJ")
    with pytest.raises(TypeError, match="TextPredictionTrainer"):
        SymmetricTrainerSuite(dict, model=tiny_mlm_dir, data=_three_classes(), args=_tiny_args(tmp_path / "s"))
    with pytest.raises(TypeError, match="data="):
        SymmetricTrainerSuite(TextPredictionTrainer, tiny_mlm_dir, args=_tiny_args(tmp_path / "s"))
    collection = TrainerCollection(suite["3PL__3SG"], suite["3SG__OBJ"])
    assert list(collection) == ["r/3PL__3SG", "r/3SG__OBJ"]


def test_collection_train_keeps_a_members_cache_mode() -> None:
    from gradiend.suites import GradiendCollection

    calls = []

    class Member:
        def __init__(self, run_id, use_cache):
            self.run_id, self.pair = run_id, ("A", "B")
            self.training_args = type("Args", (), {"use_cache": use_cache})()

        def train(self, **kw):
            calls.append((self.run_id, kw["use_cache"]))

    members = [Member("a", False), Member("b", "only_convergent")]
    GradiendCollection(members).train()
    GradiendCollection(members).train(use_cache=False)
    assert calls == [("a", True), ("b", "only_convergent"), ("a", False), ("b", False)]
