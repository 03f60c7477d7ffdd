"""PositiveTrainerSuite (the reference's spelling): features with their own negative class, modes
"single" and "all_but_one" (issue 19)."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from gradiend import TextPredictionTrainer, TrainingArguments
from gradiend.suites import PositiveFeatureDefinition, PositiveTrainerSuite, positive_feature_pairs

#: feature → (its word, its negative class's word, template)
FEATURES = {"happy": ("happy", "tired", "the man was [MASK] when the day came ."),
            "old": ("old", "young", "the [MASK] woman walked to the house ."),
            "good": ("good", "little", "then the friend said that the ship was [MASK] .")}


def property_data(repeat: int = 3) -> pd.DataFrame:
    """Classes F and non_F per feature, each row with its counterfactual in the feature's other class."""
    rows = []
    for r in range(repeat):
        for split in ("train", "validation", "test"):
            for cls, (word, negative, text) in FEATURES.items():
                text = text if r == 0 else f"{text[:-1]}{' again' * r} ."
                rows.append({"masked": text, "split": split, "label_class": cls, "label": word,
                             "alternative_class": f"non_{cls}", "alternative": negative})
                rows.append({"masked": text, "split": split, "label_class": f"non_{cls}", "label": negative,
                             "alternative_class": cls, "alternative": word})
    return pd.DataFrame(rows)


def args(directory) -> TrainingArguments:
    return TrainingArguments(experiment_dir=str(directory), train_batch_size=4, max_steps=4, eval_steps=2, seed=0,
                             show_progress=False, scale_estimation_batches=2, params=["encoder.layer.1.*"])


def suite(tiny_mlm_dir, directory, **kw) -> PositiveTrainerSuite:
    return PositiveTrainerSuite(TextPredictionTrainer, model=tiny_mlm_dir, data=property_data(), args=args(directory),
                                **kw)


def test_single_mode_pairs_each_feature_with_its_negative_class(tiny_mlm_dir, tmp_path) -> None:
    single = suite(tiny_mlm_dir, tmp_path / "s", target_classes=["happy", "old", "good"])
    assert list(single) == ["happy", "old", "good"]
    assert single["old"].pair == ("old", "non_old")
    # the other features' classes are other classes (label 0), and members evaluate them by default
    assert set(single["old"].other_class_rows()["factual_class"]) == {"happy", "non_happy", "good", "non_good"}
    assert single["old"].training_args.include_other_classes
    # names starting with non_ are negatives, not features; the default is every class of the data
    assert list(suite(tiny_mlm_dir, tmp_path / "d")) == ["good", "happy", "old"]


def test_all_but_one_trains_the_merged_rest_and_encodes_the_held_out_feature(tiny_mlm_dir, tmp_path) -> None:
    held = suite(tiny_mlm_dir, tmp_path / "h", mode="all_but_one", target_classes=["happy", "old", "good"],
                 run_id="props")
    assert list(held) == ["holdout__happy__non_happy", "holdout__old__non_old", "holdout__good__non_good"]
    member = held["holdout__old__non_old"]
    assert member.pair == ("positive", "negative")
    rows = member.unified_data()[0]
    assert set(rows.loc[rows["factual_class"] == "positive", "factual"]) == {"happy", "good"}
    assert set(rows.loc[rows["factual_class"] == "negative", "factual"]) == {"tired", "little"}
    assert set(member.other_class_rows()["factual_class"]) == {"old", "non_old"}  # held out: evaluation only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a few steps on a random model do not converge
        held.train()
    assert (tmp_path / "h" / "props" / "holdout__old__non_old" / "model" / "model.safetensors").is_file()
    result = member.evaluate_encoder()
    assert {"old", "non_old", "positive", "negative"} <= set(result["mean_by_feature_class"])
    cross = held.cross_encoding(max_size=2, write=False)
    assert cross["classes"]["column_ids"] == ["good", "happy", "non_good", "non_happy", "non_old", "old"]


def test_all_but_one_holds_out_groups() -> None:
    features = [PositiveFeatureDefinition("happy", "non_happy", "mood"), ("tired", "non_tired", "mood"),
                {"positive_feature_class": "old", "negative_feature_class": "non_old", "feature_class_group": "age"}]
    pairs = positive_feature_pairs(features, "all_but_one")
    assert [p.member_id for p in pairs] == ["holdout_group__mood", "holdout_group__age"]
    assert pairs[0].class_merge_map == {"positive": ["old"], "negative": ["non_old"]}
    assert pairs[1].class_merge_map == {"positive": ["happy", "tired"], "negative": ["non_happy", "non_tired"]}
    with pytest.raises(ValueError, match="every feature names a feature_class_group"):
        positive_feature_pairs([features[0], ("old", "non_old")], "all_but_one")
    with pytest.raises(ValueError, match="at least two features"):
        positive_feature_pairs([("old", "non_old")], "all_but_one")
    with pytest.raises(ValueError, match="mode must be one of"):
        positive_feature_pairs(features, "leave_one_out")


def test_bad_positive_suites(tiny_mlm_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"\['non_sad', 'sad'\] are not in the data"):
        suite(tiny_mlm_dir, tmp_path / "x", positive_feature_definitions=[("sad", "non_sad"), ("old", "non_old")])
    with pytest.raises(ValueError, match="mode must be one of"):
        suite(tiny_mlm_dir, tmp_path / "x", mode="pairs")
    with pytest.raises(ValueError, match="two different class names"):
        PositiveFeatureDefinition("old", "old")


def test_without_negative_classes_single_is_each_class_against_the_rest(tiny_mlm_dir, tmp_path) -> None:
    data = property_data()
    data = data[~data["label_class"].str.startswith("non_")].drop(columns=["alternative", "alternative_class"])
    rest = PositiveTrainerSuite(TextPredictionTrainer, model=tiny_mlm_dir, data=data, args=args(tmp_path / "r"))
    assert list(rest) == ["good", "happy", "old"] and rest["old"].pair == ("old", "non_old")
    assert set(rest["old"].unified_data()[0].query("factual_class == 'non_old'")["factual"]) == {"happy", "good"}
    with pytest.raises(ValueError, match="needs each feature's negative class in the data"):
        PositiveTrainerSuite(TextPredictionTrainer, model=tiny_mlm_dir, data=data, args=args(tmp_path / "r"),
                             mode="all_but_one")


def test_reference_import_path() -> None:
    import gradiend.suites
    from gradiend.trainer import suite

    for name in suite.__all__:
        assert getattr(suite, name) is getattr(gradiend.suites, name)
