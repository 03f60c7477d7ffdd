"""Every data input the trainer accepts: files, directories, datasets, Hub ids, neutral texts."""

from __future__ import annotations

import time

import pandas as pd
import pytest
from conftest import make_rows

from gradiend import DataError, TextPredictionTrainer
from gradiend.data import unify
from gradiend.data_sources import looks_like_path, resolve_table_input

datasets = pytest.importorskip("datasets")


def _split_frames() -> dict[str, pd.DataFrame]:
    rows = make_rows(1)
    return {split: rows[rows["split"] == split].drop(columns=["split"]) for split in ("train", "validation", "test")}


def test_dataset_and_dataset_dict_inputs() -> None:
    rows = make_rows(1)
    expected, _ = unify(rows, ["3SG", "3PL"])
    merged, _ = unify(datasets.Dataset.from_pandas(rows), ["3SG", "3PL"])
    pd.testing.assert_frame_equal(merged, expected)
    by_split = datasets.DatasetDict({("val" if s == "validation" else s): datasets.Dataset.from_pandas(df,
                                     preserve_index=False) for s, df in _split_frames().items()})
    from_dict, _ = unify(by_split, ["3SG", "3PL"])
    assert from_dict["split"].value_counts().to_dict() == expected["split"].value_counts().to_dict()


def test_dataset_dict_keyed_by_class_is_per_class_data() -> None:
    rows = make_rows(1)
    per_class = datasets.DatasetDict({
        cls: datasets.Dataset.from_pandas(rows[rows["label_class"] == cls].drop(columns=["label_class"]),
                                          preserve_index=False) for cls in ("3SG", "3PL")})
    unified, pair = unify(per_class)
    assert pair == ("3SG", "3PL") and len(unified) == len(rows)
    as_dict, _ = unify({cls: per_class[cls] for cls in per_class})
    pd.testing.assert_frame_equal(as_dict, unified)


def test_directories_split_files_and_saved_datasets(tmp_path) -> None:
    for split, df in _split_frames().items():
        df.to_csv(tmp_path / f"{'dev' if split == 'validation' else split}.csv", index=False)
    rows, _ = unify(tmp_path, ["3SG", "3PL"])
    assert set(rows["split"]) == {"train", "validation", "test"} and len(rows) == len(make_rows(1))
    saved = tmp_path / "saved"
    datasets.Dataset.from_pandas(make_rows(1)).save_to_disk(str(saved))
    rows_saved, _ = unify(saved, ["3SG", "3PL"])
    assert len(rows_saved) == len(make_rows(1))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.md").write_text("nothing")
    with pytest.raises(DataError, match="holds no data"):
        unify(empty)


def test_per_class_rows_carry_their_own_alternatives() -> None:
    frame = pd.DataFrame({"masked": ["[MASK] went home .", "[MASK] saw it ."], "split": ["train", "test"],
                          "white": ["Mary", "John"], "black": ["Keisha", "Jamal"], "asian": ["Mei", "Jun"]})
    data = {"white": frame, "black": frame.copy(), "asian": frame.copy()}
    rows, pair = unify(data, ["white", "asian"])
    assert pair == ("white", "asian")
    white = rows[rows["factual_class"] == "white"]
    assert white["alternative"].tolist() == ["Mei", "Jun"] and set(white["alternative_class"]) == {"asian"}
    with pytest.raises(DataError, match="exactly two classes"):
        unify(data)


def test_hub_id_offline_is_a_clear_error_not_a_retry_loop() -> None:
    started = time.perf_counter()
    with pytest.raises(DataError, match="neither an existing local path nor a dataset") as err:
        unify("no-such-owner/no-such-dataset")
    assert time.perf_counter() - started < 15
    assert "save_to_disk" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)


def test_hub_errors_are_wrapped_and_configs_become_classes(monkeypatch) -> None:
    import gradiend.data_sources as sources
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=5.0: True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def unavailable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'x/y' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "get_dataset_config_names", unavailable)
    monkeypatch.setattr(datasets, "load_dataset", unavailable)
    with pytest.raises(DataError, match=r"ConnectionError.*HF_HUB_OFFLINE is set"):
        unify("x/y")
    rows = make_rows(1)
    monkeypatch.setattr(datasets, "get_dataset_config_names", lambda name: ["3SG", "3PL"])
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, **kw: datasets.DatasetDict({
        "train": datasets.Dataset.from_pandas(rows[rows["label_class"] == config].drop(columns=["label_class"]),
                                              preserve_index=False)}))
    resolved = resolve_table_input("x/y")
    assert list(resolved) == ["3SG", "3PL"]
    unified, pair = unify("x/y")
    assert pair == ("3SG", "3PL") and len(unified) == len(rows)


def test_paths_are_not_mistaken_for_hub_ids(tmp_path) -> None:
    assert looks_like_path("./data") and looks_like_path("data/x/training.csv") and looks_like_path("t.parquet")
    assert not looks_like_path("aieng-lab/gradiend_race_data") and not looks_like_path("imdb")
    with pytest.raises(DataError, match="Data file not found"):
        unify(str(tmp_path / "trian.csv"))


def test_trainer_accepts_datasets_and_neutral_inputs(tiny_mlm_dir, tmp_path) -> None:
    rows = make_rows(1)
    neutral_texts = ["the sea was good .", "the ship came home .", None]
    inputs = {
        "list": neutral_texts,
        "frame": pd.DataFrame({"text": neutral_texts}),
        "dataset": datasets.Dataset.from_dict({"text": neutral_texts}),
        "dataset_dict": datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": neutral_texts})}),
    }
    (tmp_path / "neutral.txt").write_text("the sea was good .\n\nthe ship came home .\n", encoding="utf-8")
    inputs["txt"] = tmp_path / "neutral.txt"
    pd.DataFrame({"text": neutral_texts[:2]}).to_csv(tmp_path / "neutral.csv", index=False)
    inputs["csv"] = str(tmp_path / "neutral.csv")
    saved = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": neutral_texts}),
                                  "test": datasets.Dataset.from_dict({"text": ["other"]})})
    saved.save_to_disk(str(tmp_path / "saved"))
    inputs["saved_dataset_dict"] = tmp_path / "saved"
    for name, neutral in inputs.items():
        trainer = TextPredictionTrainer(model=tiny_mlm_dir, data=datasets.Dataset.from_pandas(rows),
                                        target_classes=["3SG", "3PL"], eval_neutral_data=neutral)
        assert trainer.neutral_texts() == ["the sea was good .", "the ship came home ."], name
    with pytest.raises(DataError, match="column 'text' does not exist"):
        TextPredictionTrainer(model=tiny_mlm_dir, data=rows, eval_neutral_data=pd.DataFrame({"sentence": ["x"]}))
    with pytest.raises(DataError, match="no non-empty texts"):
        TextPredictionTrainer(model=tiny_mlm_dir, data=rows, eval_neutral_data=[None, " "])
