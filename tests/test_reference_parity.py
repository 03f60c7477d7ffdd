"""The reference's `TextPredictionTrainer` keyword arguments: each has its effect on the data, or a clear refusal."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
from conftest import make_rows

from gradiend import TextPredictionTrainer, TrainingArguments
from gradiend.data import DataError
from gradiend.trainer.text.prediction import inputs
from gradiend.trainer.text.prediction.inputs import TextPredictionConfig


def _trainer(model: str, data=None, **kwargs) -> TextPredictionTrainer:
    args = kwargs.pop("args", TrainingArguments(show_progress=False))
    return TextPredictionTrainer(model, data=data if data is not None or "hf_dataset" in kwargs or "config" in kwargs
                                 else make_rows(), args=args, **kwargs)


def _counts(rows: pd.DataFrame) -> dict[tuple[str, str], int]:
    return rows.groupby(["factual_class", "split"]).size().to_dict()


def test_column_name_arguments_read_the_users_columns(tiny_mlm_dir) -> None:
    baseline = _trainer(tiny_mlm_dir).combined_data
    renamed = make_rows().rename(columns={"masked": "text", "label": "word", "label_class": "kind", "split": "part"})
    trainer = _trainer(tiny_mlm_dir, renamed, masked_col="text", label_col="word", label_class_col="kind",
                       split_col="part")
    pd.testing.assert_frame_equal(trainer.combined_data, baseline)
    with pytest.raises(DataError, match=r"column 'text' \(given as the 'masked' column\) does not exist"):
        _trainer(tiny_mlm_dir, make_rows(), masked_col="text")
    with pytest.raises(DataError, match="split_col 'part' is not a column"):
        _trainer(tiny_mlm_dir, make_rows(), split_col="part")


def test_alternative_column_names(tiny_mlm_dir) -> None:
    rows = make_rows()
    rows["alt"] = rows["label_class"].map({"3SG": "they", "3PL": "she"})
    rows["alt_class"] = rows["label_class"].map({"3SG": "3PL", "3PL": "3SG"})
    data = _trainer(tiny_mlm_dir, rows, alternative_col="alt", alternative_class_col="alt_class").combined_data
    assert set(data.loc[data["factual_class"] == "3PL", "alternative"]) == {"she"}  # not sampled: read


def test_use_class_names_as_columns_false_reads_label_col(tiny_mlm_dir) -> None:
    rows = make_rows()
    per_class = {cls: part.rename(columns={"label": "token"}).assign(**{"3PL": "x"}).drop(columns="label_class")
                 for cls, part in rows.groupby("label_class")}
    trainer = _trainer(tiny_mlm_dir, per_class, use_class_names_as_columns=False, label_col="token")
    data = trainer.combined_data
    assert set(data.loc[data["factual_class"] == "3SG", "factual"]) == {"he", "she", "it"}
    assert "x" not in set(data["alternative"])  # the class-named column is not an alternative any more
    with pytest.raises(DataError, match="label_col 'word' is not a column"):
        _trainer(tiny_mlm_dir, per_class, use_class_names_as_columns=False, label_col="word")


def test_split_col_none_draws_row_splits_by_the_ratios(tiny_mlm_dir) -> None:
    rows = make_rows(repeat=10).drop(columns="split")  # 180 rows per class
    trainer = _trainer(tiny_mlm_dir, rows, split_col=None, split_ratios=(0.5, 0.25, 0.25), random_state=3)
    counts = _counts(trainer.combined_data)
    assert counts[("3SG", "train")] == 90 and counts[("3SG", "validation")] == 45 and counts[("3PL", "test")] == 45
    again = _trainer(tiny_mlm_dir, rows, split_col=None, split_ratios=(0.5, 0.25, 0.25), random_state=3)
    pd.testing.assert_frame_equal(again.combined_data, trainer.combined_data)
    other = _trainer(tiny_mlm_dir, rows, split_col=None, split_ratios=(0.5, 0.25, 0.25), random_state=4)
    assert not other.combined_data["split"].equals(trainer.combined_data["split"])
    mapped = _trainer(tiny_mlm_dir, rows, split_col=None, split_ratios={"train": 0.6, "val": 0.2, "test": 0.2})
    assert _counts(mapped.combined_data)[("3SG", "train")] == 108


def test_heldout_split_keeps_each_word_in_one_split(tiny_mlm_dir) -> None:
    rows = make_rows(repeat=6).drop(columns="split")
    plural = rows["label_class"] == "3PL"
    rows.loc[plural, "label"] = [("they", "them", "their")[i % 3] for i in range(int(plural.sum()))]
    rows.loc[rows.index % 2 == 0, "label"] = rows.loc[rows.index % 2 == 0, "label"].str.upper()  # He/he, ...
    trainer = _trainer(tiny_mlm_dir, rows, target_classes=["3SG", "3PL"], split_col="heldout",
                       split_ratios=(0.34, 0.33, 0.33), split_group_key=[str.strip, str.lower])
    data = trainer.combined_data
    for cls in ("3SG", "3PL"):
        part = data[data["factual_class"] == cls]
        words_per_split = part.groupby("split")["factual"].agg(lambda s: set(s.str.lower()))
        assert set(words_per_split.index) == {"train", "validation", "test"}
        assert sum(len(words) for words in words_per_split) == 3  # each word (any casing) whole in one split
    by_spelling = _trainer(tiny_mlm_dir, rows, split_col="heldout", split_ratios=(0.5, 0.25, 0.25)).combined_data
    assert by_spelling.groupby("factual")["split"].nunique().max() == 1  # without the key: He and he separately
    with pytest.raises(DataError, match="cannot fill 3 splits"):  # the make_rows 3PL class has one word only
        _trainer(tiny_mlm_dir, make_rows().drop(columns="split"), split_col="heldout", split_group_col="factual")
    with pytest.raises(ValueError, match="split_group_key groups a vocabulary-held-out split"):
        _trainer(tiny_mlm_dir, rows, split_col=None, split_group_key=str.lower)


def test_split_ratio_validation(tiny_mlm_dir) -> None:
    with pytest.raises(ValueError, match="with split_col='split' the data's column decides"):
        _trainer(tiny_mlm_dir, split_train_ratio=0.6, split_val_ratio=0.2, split_test_ratio=0.2)
    with pytest.raises(ValueError, match="must sum to 1"):
        TextPredictionConfig(split_col=None, split_ratios=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="keys must be train, validation"):
        TextPredictionConfig(split_col=None, split_ratios={"training": 1.0})


def test_max_counterfactuals_per_sentence_pairs_each_row_with_several_words(tiny_mlm_dir) -> None:
    one = _trainer(tiny_mlm_dir, make_rows(repeat=1)).combined_data
    two = _trainer(tiny_mlm_dir, make_rows(repeat=1), max_counterfactuals_per_sentence=2, random_state=0).combined_data
    assert len(one[one["factual_class"] == "3PL"]) * 2 == len(two[two["factual_class"] == "3PL"])
    per_sentence = two[two["factual_class"] == "3PL"].groupby(["masked", "split"])["alternative"].nunique()
    assert set(per_sentence) == {2}  # two different 3SG words per sentence
    assert len(two[two["factual_class"] == "3SG"]) == len(one[one["factual_class"] == "3SG"])  # 3PL has one word


def test_mask_placeholder_from_args_config_or_mask(tiny_mlm_dir) -> None:
    rows = make_rows()
    rows["masked"] = rows["masked"].str.replace("[MASK]", "[PRONOUN]", regex=False)
    baseline = _trainer(tiny_mlm_dir).combined_data
    by_args = _trainer(tiny_mlm_dir, rows, args=TrainingArguments(mask_placeholder="[PRONOUN]"))
    pd.testing.assert_frame_equal(by_args.combined_data, baseline)
    config = TextPredictionConfig(data=rows, mask_placeholder="[PRONOUN]")
    by_config = TextPredictionTrainer(tiny_mlm_dir, config=config)
    pd.testing.assert_frame_equal(by_config.combined_data, baseline)
    with pytest.raises(ValueError, match="Different mask placeholders"):
        _trainer(tiny_mlm_dir, rows, mask="[X]", args=TrainingArguments(mask_placeholder="[PRONOUN]"))


def test_hf_dataset_subsets_splits_and_trust_remote_code(tiny_mlm_dir, monkeypatch) -> None:
    import datasets

    rows = make_rows()
    calls = []

    def fake_load(name, config=None, split=None, trust_remote_code=None, checked=False):
        calls.append((name, config, trust_remote_code))
        part = rows[rows["label_class"] == config].drop(columns="split")
        return datasets.DatasetDict({split_name: datasets.Dataset.from_pandas(part, preserve_index=False)
                                     for split_name in ("train", "validation", "test")})

    monkeypatch.setattr(inputs, "load_hub_dataset", fake_load)
    trainer = _trainer(tiny_mlm_dir, hf_dataset="user/pronouns", hf_subset=["3SG", "3PL"],
                       hf_splits=["train", "test"], dataset_trust_remote_code=True)
    assert calls == [("user/pronouns", "3SG", True), ("user/pronouns", "3PL", True)]
    assert set(trainer.combined_data["split"]) == {"train", "test"}
    calls.clear()
    _trainer(tiny_mlm_dir, hf_dataset="user/pronouns", hf_subset=["3SG", "3PL"],
             args=TrainingArguments(dataset_trust_remote_code=False))
    assert [c[2] for c in calls] == [False, False]
    with pytest.raises(DataError, match="either data= or hf_dataset="):
        _trainer(tiny_mlm_dir, make_rows(), hf_dataset="user/pronouns")
    with pytest.raises(DataError, match="pass hf_dataset= too"):
        _trainer(tiny_mlm_dir, hf_subset="3SG")


def test_config_object_and_its_conflicts(tiny_mlm_dir) -> None:
    config = TextPredictionConfig(data=make_rows(), run_id="r1", target_classes=["3PL", "3SG"], img_format="pdf")
    trainer = TextPredictionTrainer(tiny_mlm_dir, config=config, args=TrainingArguments())
    assert trainer.pair == ("3PL", "3SG") and trainer.run_id == "r1" and trainer.config.img_format == "pdf"
    with pytest.raises(ValueError, match=r"either in config= or as arguments, not both \(given as arguments: "
                                         r"\['masked_col'\]\)"):
        TextPredictionTrainer(tiny_mlm_dir, config=config, masked_col="text")
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['masked_column'\] \(did you mean "
                                        r"masked_col\?\)"):
        _trainer(tiny_mlm_dir, masked_column="text")
    with pytest.raises(TypeError, match="pass data= by keyword"):
        TextPredictionTrainer(tiny_mlm_dir, make_rows())


def test_correlation_mapping_orders_the_pair(tiny_mlm_dir) -> None:
    trainer = _trainer(tiny_mlm_dir, correlation_mapping={"3SG": -1.0, "3PL": 1.0})
    assert trainer.pair == ("3PL", "3SG") and trainer.correlation_mapping == {"3SG": -1.0, "3PL": 1.0}
    data = trainer.combined_data
    assert set(data.loc[data["factual_class"] == "3PL", "label"]) == {1}
    with pytest.raises(ValueError, match=r"must map the two target classes to \+1 and -1"):
        _trainer(tiny_mlm_dir, correlation_mapping={"3SG": 0.5, "3PL": -1.0})
    with pytest.raises(ValueError, match="must name the same two classes"):
        _trainer(tiny_mlm_dir, correlation_mapping={"3SG": 1, "X": -1}, target_classes=["3SG", "3PL"])


def test_neutral_and_decoder_caps(tiny_mlm_dir) -> None:
    texts = [f"the day {i} was good ." for i in range(10)]
    trainer = _trainer(tiny_mlm_dir, eval_neutral_data=texts, eval_neutral_max_rows=4, decoder_eval_lms_max_samples=3)
    assert len(trainer.neutral_texts()) == 4 and set(trainer.neutral_texts()) <= set(texts)
    assert trainer.training_args.decoder_eval_max_size_neutral == 3
    with pytest.raises(ValueError, match="name the same cap"):
        _trainer(tiny_mlm_dir, decoder_eval_lms_max_samples=3, args=TrainingArguments(decoder_eval_max_size_neutral=5))


@pytest.mark.parametrize("kwargs, message", [
    ({"decoder_eval_targets": "labels"}, r"decoder_eval_targets='labels': pass 'label'"),
    ({"decoder_eval_targets": {"3SG": []}}, r"decoder_eval_targets\['3SG'\] must be a non-empty list"),
    ({"decoder_eval_targets": {"2SG": ["you"]}}, r"classes the data does not have: \['2SG'\]"),
    ({"class_merge_transition_groups": [["a", "b"]]}, "class_merge_map="),
    ({"evaluator_class": object}, "evaluator_class is not supported"),
    ({"img_format": "gif"}, "img_format must be one of"),
    ({"img_dpi": 0}, "img_dpi must be a positive integer"),
])
def test_options_gradiend_cannot_honour_are_refused(tiny_mlm_dir, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _trainer(tiny_mlm_dir, **kwargs)


def test_img_format_and_dpi_reach_the_plots(tiny_mlm_dir, monkeypatch) -> None:
    import gradiend.plots

    seen = {}

    def fake_plot(stats, output=None, **kwargs):
        seen.update(kwargs)
        return "plot"

    monkeypatch.setattr(gradiend.plots, "plot_training_convergence", fake_plot)
    trainer = _trainer(tiny_mlm_dir, img_format="pdf", img_dpi=300)
    monkeypatch.setattr(trainer, "get_training_stats", lambda: {"training_stats": {}})
    trainer.plot_training_convergence()
    assert seen["img_format"] == "pdf" and seen["dpi"] == 300
    trainer.plot_training_convergence(img_format="svg", dpi=50)
    assert seen["img_format"] == "svg" and seen["dpi"] == 50  # an explicit argument wins


def test_fail_on_non_convergence_helper() -> None:
    args = TrainingArguments(fail_on_non_convergence=True, min_convergent_seeds=2)
    with pytest.raises(RuntimeError, match="fail_on_non_convergence=True"):
        TextPredictionTrainer._maybe_fail_on_non_convergence(args, convergent_count=1, min_convergent=2)
    TextPredictionTrainer._maybe_fail_on_non_convergence(args, convergent_count=2, min_convergent=2)
    TextPredictionTrainer._maybe_fail_on_non_convergence(args.replace(fail_on_non_convergence=False),
                                                         convergent_count=0, min_convergent=2)


@pytest.mark.filterwarnings("ignore:GRADIEND training did not converge")
def test_reshaped_data_trains_and_evaluates(tiny_mlm_dir, tmp_path) -> None:
    rows = make_rows(repeat=2).drop(columns="split").rename(columns={"masked": "text"})
    rows["text"] = rows["text"].str.replace("[MASK]", "[PRONOUN]", regex=False)
    trainer = TextPredictionTrainer(
        tiny_mlm_dir, "r", data=rows, masked_col="text", mask_placeholder="[PRONOUN]", split_col=None,
        split_ratios=(0.5, 0.25, 0.25), random_state=1, max_counterfactuals_per_sentence=2,
        args=TrainingArguments(experiment_dir=str(tmp_path), max_steps=2, train_batch_size=4, eval_steps=1,
                               show_progress=False, eval_strategy="no", base_gradient_batch_size=4))
    trainer.train()
    assert trainer.get_training_stats()["training_stats"]["global_step"] == 2
    result = trainer.evaluate_encoder(split="test")
    assert set(result["mean_by_class"]) == {"3SG", "3PL"}


def test_dataset_trust_remote_code_reaches_a_hub_id_given_as_data(tiny_mlm_dir, monkeypatch) -> None:
    import datasets

    from gradiend import data_sources

    calls = []

    def fake_load(name, config=None, split=None, trust_remote_code=None, checked=False):
        calls.append((name, trust_remote_code))
        return datasets.Dataset.from_pandas(make_rows(), preserve_index=False)

    monkeypatch.setattr(data_sources, "check_hub", lambda name: None)
    monkeypatch.setattr(data_sources, "hub_config_names", lambda name: [])
    monkeypatch.setattr(data_sources, "load_hub_dataset", fake_load)
    trainer = _trainer(tiny_mlm_dir, "user/pronouns", dataset_trust_remote_code=True)
    assert calls == [("user/pronouns", True)]
    assert len(trainer.combined_data) == len(_trainer(tiny_mlm_dir).combined_data)


# -- reference TrainingArguments with an effect on runs -----------------------------------------------------------
def _seed_args(tmp_path, **kw) -> TrainingArguments:
    return TrainingArguments(**{**dict(experiment_dir=str(tmp_path / "exp"), train_batch_size=4, max_steps=6,
                                       eval_steps=3, learning_rate=1e-3, seed=0, show_progress=False,
                                       scale_estimation_batches=2, convergent_score_threshold=0.3,
                                       convergent_mean_by_class_threshold=None, use_cache=True), **kw})


def test_reference_aliases_do_not_enter_the_run_fingerprint(tiny_mlm_dir, tmp_path) -> None:
    from gradiend.runs import run_fingerprint

    trainer = _trainer(tiny_mlm_dir)
    rows, _ = trainer.unified_data()
    args = TrainingArguments(show_progress=False)
    key = run_fingerprint(args, tiny_mlm_dir, rows, None)
    for alias in ({"use_cached_gradients": True}, {"dataset_trust_remote_code": True}, {"mask_placeholder": "[P]"},
                  {"base_gradient_batch_size": args.train_batch_size}, {"analyze_seed_stability": True},
                  {"highlight_non_convergence": False}):
        assert run_fingerprint(args.replace(**alias), tiny_mlm_dir, rows, None) == key, alias
    # what an alias maps onto still counts, and so do the slot head's settings
    assert run_fingerprint(args.replace(base_gradient_batch_size=3), tiny_mlm_dir, rows, None) != key
    assert run_fingerprint(args.replace(decoder_mlm_head_epochs=2), tiny_mlm_dir, rows, None) != key


def test_changing_only_an_alias_reuses_the_cached_run(tiny_mlm_dir, tmp_path, monkeypatch) -> None:
    from conftest import count_gradient_passes

    _trainer(tiny_mlm_dir, args=_seed_args(tmp_path)).train()
    passes = count_gradient_passes(monkeypatch)
    again = _trainer(tiny_mlm_dir, args=_seed_args(tmp_path, use_cached_gradients=True, highlight_non_convergence=False,
                                                   dataset_trust_remote_code=False))
    again.train()
    assert passes == []  # the finished run is reused: no base-model gradient is computed
    _trainer(tiny_mlm_dir, args=_seed_args(tmp_path, learning_rate=2e-3)).train()
    assert passes  # a learning setting retrains


def test_analyze_seed_stability_fails_without_enough_convergent_seeds(tiny_mlm_dir, tmp_path, caplog) -> None:
    import json

    # a threshold no tiny run reaches: no seed converges
    strict = _seed_args(tmp_path, max_seeds=2, min_convergent_seeds=2, convergent_score_threshold=1.0,
                        analyze_seed_stability=True)
    with pytest.raises(RuntimeError, match=r"analyze_seed_stability=True needs 2 convergent seed\(s\), but 0 of 2"):
        _trainer(tiny_mlm_dir, args=strict).train()
    report = json.loads((tmp_path / "exp" / "seeds" / "seed_report.json").read_text())
    assert report["convergent_count"] == 0  # the report is written before the failure
    lenient = _seed_args(tmp_path / "b", max_seeds=2, min_convergent_seeds=2, convergent_score_threshold=1.0)
    _trainer(tiny_mlm_dir, args=lenient).train()  # without analyze_seed_stability: a warning only



# -- the decoder/encoder evaluation options of the reference's config -------------------------------------------
def _three_classes() -> pd.DataFrame:
    rows = make_rows()
    first = rows[rows["label_class"] == "3PL"].assign(label_class="1PL", label="people")  # a word the vocabulary knows
    return pd.concat([rows, first], ignore_index=True)


def _trained(model: str, tmp_path, data=None, **kwargs) -> TextPredictionTrainer:
    """A trainer of a 2-step run (shared by trainers of the same data: the run cache reuses it)."""
    args = TrainingArguments(experiment_dir=str(tmp_path / "exp"), train_batch_size=4, max_steps=2, do_eval=False,
                             show_progress=False, scale_estimation_batches=1, use_cache=True)
    trainer = _trainer(model, data, args=args, **kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "GRADIEND training did not converge", RuntimeWarning)  # 2 steps: expected
        trainer.train()
    return trainer


def _base_probs(trainer: TextPredictionTrainer) -> dict:
    return trainer.evaluate_base_model()["probs"]


def test_decoder_eval_targets_choose_the_scored_words(tiny_mlm_dir, tmp_path) -> None:
    default = _base_probs(_trained(tiny_mlm_dir, tmp_path))
    narrow = _base_probs(_trained(tiny_mlm_dir, tmp_path, decoder_eval_targets={"3SG": ["he"]}))
    assert set(default) == set(narrow) == {"3SG", "3PL"}
    # P(3SG) over he, she, it is larger than over he alone; 3PL keeps the data's words
    assert narrow["3PL"]["3SG"] < default["3PL"]["3SG"]
    assert narrow["3SG"]["3PL"] == pytest.approx(default["3SG"]["3PL"])


def test_restrict_to_target_classes_false_scores_the_other_classes(tiny_mlm_dir, tmp_path) -> None:
    data = _three_classes()
    kept = _base_probs(_trained(tiny_mlm_dir, tmp_path, data, target_classes=["3SG", "3PL"]))
    assert set(kept["3SG"]) == {"3SG", "3PL"}
    wide = _trained(tiny_mlm_dir, tmp_path, data, target_classes=["3SG", "3PL"],
                    decoder_eval_restrict_to_target_classes=False)
    probs = _base_probs(wide)
    assert set(probs) == {"3SG", "3PL"}  # the pair's rows are scored ...
    assert set(probs["3SG"]) == {"3SG", "3PL", "1PL"} and probs["3SG"]["1PL"] > 0  # ... for every class's words
    given = _trained(tiny_mlm_dir, tmp_path, data, target_classes=["3SG", "3PL"],
                     decoder_eval_targets={"1PL": ["people"]})
    assert set(_base_probs(given)["3SG"]) == {"3SG", "3PL"}  # restricted: the other class is not scored


def test_decoder_eval_ignore_tokens_replace_the_lms_ignored_words(tiny_mlm_dir, tmp_path, monkeypatch) -> None:
    import gradiend.decoder_eval

    seen = []
    original = gradiend.decoder_eval.prepare_lms
    monkeypatch.setattr(gradiend.decoder_eval, "prepare_lms",
                        lambda *a, **kw: seen.append(set(kw["ignore_tokens"])) or original(*a, **kw))
    _trained(tiny_mlm_dir, tmp_path).evaluate_base_model()
    _trained(tiny_mlm_dir, tmp_path, decoder_eval_ignore_tokens=["sea"]).evaluate_base_model()
    assert seen == [{"he", "she", "it", "they"}, {"sea"}]


def test_prob_on_other_class_false_scores_both_classes_rows(tiny_mlm_dir, tmp_path) -> None:
    from gradiend.decoder_eval import metric_value

    record = {"probs": {"A": {"A": 0.8, "B": 0.2}, "B": {"A": 0.4, "B": 0.6}}}
    assert metric_value(record, "A", "B", True) == 0.4
    assert metric_value(record, "A", "B", True, on_other_class=False) == pytest.approx(0.6)
    assert metric_value(record, "A", "B", False, on_other_class=False) == pytest.approx(0.2)  # weaken: own rows
    trainer = _trained(tiny_mlm_dir, tmp_path, decoder_eval_prob_on_other_class=False)
    result = trainer.evaluate_decoder(lrs=[1e-3], use_cache=False)
    base = result["grid"][0]["probs"]
    assert result["3SG"]["base_value"] == pytest.approx((base["3SG"]["3SG"] + base["3PL"]["3SG"]) / 2)


def test_eval_neutral_additional_excluded_words_are_never_masked(tiny_mlm_dir, tmp_path) -> None:
    plain = _trained(tiny_mlm_dir, tmp_path).evaluate_encoder(return_df=True)["encoder_df"]
    words = set(plain.loc[plain["type"] != "training", "factual"].str.lower())
    excluded = sorted(words)[:3]
    trainer = _trained(tiny_mlm_dir, tmp_path, eval_neutral_additional_excluded_words=excluded)
    frame = trainer.evaluate_encoder(return_df=True)["encoder_df"]
    neutral = frame[frame["type"] != "training"]
    assert len(neutral) and not set(neutral["factual"].str.lower()) & set(excluded)


def test_positive_class_encodes_plus_one(tiny_mlm_dir) -> None:
    args = TrainingArguments(show_progress=False, positive_class="3PL")
    for given in (["3SG", "3PL"], None):  # named pair, and the pair read from the data
        trainer = _trainer(tiny_mlm_dir, args=args, target_classes=given)
        rows, pair = trainer.unified_data()
        assert list(pair) == ["3PL", "3SG"]
        assert set(rows.loc[rows["factual_class"] == "3PL", "label"]) == {1}
    assert list(_trainer(tiny_mlm_dir, target_classes=["3SG", "3PL"]).unified_data()[1]) == ["3SG", "3PL"]
    with pytest.raises(ValueError, match="positive_class='1SG' is not one of the target classes"):
        _trainer(tiny_mlm_dir, args=TrainingArguments(positive_class="1SG"))
    with pytest.raises(ValueError, match="correlation_mapping puts '3SG' first"):
        _trainer(tiny_mlm_dir, args=args, correlation_mapping={"3SG": 1, "3PL": -1})
