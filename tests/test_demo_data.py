"""Properties of the demo data shipped in gradiend/resources."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pandas as pd
import pytest

from gradiend.demo_data import (
    GENDER_CLASSES,
    MASK_TOKEN,
    PRONOUN_CLASSES,
    demo_gender_data,
    load_demo_data,
    load_demo_neutral,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "build_demo_data.py"
SOURCE = Path("/work/shared/data/english-public-domain-sentences.tsv")
RESOURCE_FILES = ("demo_pronouns.tsv", "demo_neutral.tsv", "DEMO_DATA.md")
SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}
TARGETS = {t for toks in PRONOUN_CLASSES.values() for t in toks}
NEUTRAL_EXCLUDED = TARGETS | {
    "him", "her", "his", "hers", "its", "them", "their", "theirs", "himself", "herself", "itself",
    "themselves", "i", "we", "you", "me", "us", "my", "our", "your",
}  # fmt: skip
WORD_RE = re.compile(r"[A-Za-z]+")


def _words(text: str) -> list[str]:
    return [w.lower() for w in WORD_RE.findall(text)]


@pytest.fixture(scope="module")
def pronouns() -> pd.DataFrame:
    return load_demo_data()


@pytest.fixture(scope="module")
def neutral() -> pd.DataFrame:
    return load_demo_neutral()


def test_pronoun_table_schema(pronouns: pd.DataFrame) -> None:
    assert list(pronouns.columns) == ["masked", "label", "label_class", "split", "source"]
    assert len(pronouns) > 1000
    for col in pronouns.columns:
        assert pd.api.types.is_string_dtype(pronouns[col])
        assert not pronouns[col].isna().any()
        assert (pronouns[col].str.len() > 0).all()
    assert set(pronouns["split"]) == set(SPLITS)
    assert not pronouns["masked"].duplicated().any()


def test_exactly_one_mask_and_no_other_target(pronouns: pd.DataFrame) -> None:
    assert (pronouns["masked"].str.count(re.escape(MASK_TOKEN)) == 1).all()
    for text in pronouns["masked"]:
        assert not TARGETS.intersection(_words(text.replace(MASK_TOKEN, " "))), text


def test_labels_match_their_class(pronouns: pd.DataFrame) -> None:
    assert set(pronouns["label_class"]) == set(PRONOUN_CLASSES)
    for label, cls in zip(pronouns["label"], pronouns["label_class"], strict=True):
        assert label.lower() in PRONOUN_CLASSES[cls], (label, cls)


def test_classes_balanced_and_3sg_stratified(pronouns: pd.DataFrame) -> None:
    per_class = pronouns["label_class"].value_counts()
    assert per_class["3SG"] == per_class["3PL"]
    sg = pronouns.loc[pronouns["label_class"] == "3SG", "label"].str.lower().value_counts()
    assert set(sg.index) == {"he", "she", "it"}
    assert sg.max() - sg.min() <= 1


def test_splits_per_class(pronouns: pd.DataFrame) -> None:
    for cls, group in pronouns.groupby("label_class"):
        shares = group["split"].value_counts(normalize=True)
        for split, expected in SPLITS.items():
            assert shares.get(split, 0.0) == pytest.approx(expected, abs=0.02), (cls, split)
    for split, group in pronouns.groupby("split"):
        assert set(group["label_class"]) == set(PRONOUN_CLASSES), split


def test_neutral_has_no_pronoun(neutral: pd.DataFrame) -> None:
    assert list(neutral.columns) == ["text", "source"]
    assert len(neutral) == 1000
    assert not neutral["text"].duplicated().any()
    for text in neutral["text"]:
        assert NEUTRAL_EXCLUDED.isdisjoint(_words(text)), text
        assert 6 <= len(text.split()) <= 40


def test_sources_recorded(pronouns: pd.DataFrame, neutral: pd.DataFrame) -> None:
    pattern = r"(austen|melville)-[a-z]+"
    assert pronouns["source"].str.fullmatch(pattern).all()
    assert neutral["source"].str.fullmatch(pattern).all()


def test_gender_table(pronouns: pd.DataFrame) -> None:
    gender = demo_gender_data()
    assert list(gender.columns) == list(pronouns.columns)
    lowered = gender["label"].str.lower()
    assert set(lowered) == {"he", "she"}
    assert (gender.loc[lowered == "he", "label_class"] == "M").all()
    assert (gender.loc[lowered == "she", "label_class"] == "F").all()
    assert set(gender["label_class"]) == set(GENDER_CLASSES)
    assert len(gender) == pronouns["label"].str.lower().isin(["he", "she"]).sum()
    for _, group in gender.groupby("split"):
        assert set(group["label_class"]) == {"M", "F"}


def test_resources_small() -> None:
    resources = files("gradiend") / "resources"
    total = sum(len((resources / name).read_bytes()) for name in RESOURCE_FILES[:2])
    assert total < 1_500_000


@pytest.mark.skipif(not SOURCE.exists(), reason="source sentences (/work/shared) not available")
def test_rebuild_is_byte_identical(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(SCRIPT), "--source", str(SOURCE), "--out-dir", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    resources = files("gradiend") / "resources"
    for name in RESOURCE_FILES:
        assert (tmp_path / name).read_bytes() == (resources / name).read_bytes(), name
