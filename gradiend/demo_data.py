"""Demo data shipped with the package: masked English sentences for a pronoun-number feature.

The files in ``gradiend/resources`` are built by ``scripts/build_demo_data.py`` from public-domain
sentences (Jane Austen's novels and Melville's *Moby Dick*); see ``resources/DEMO_DATA.md``.
"""

from __future__ import annotations

import csv
from importlib.resources import files

import pandas as pd

__all__ = [
    "GENDER_CLASSES",
    "MASK_TOKEN",
    "PRONOUN_CLASSES",
    "demo_gender_data",
    "load_demo_data",
    "load_demo_neutral",
]

MASK_TOKEN = "[MASK]"
#: Lower-cased target tokens per class of :func:`load_demo_data`.
PRONOUN_CLASSES: dict[str, tuple[str, ...]] = {"3SG": ("he", "she", "it"), "3PL": ("they",)}
#: Lower-cased target tokens per class of :func:`demo_gender_data`.
GENDER_CLASSES: dict[str, tuple[str, ...]] = {"M": ("he",), "F": ("she",)}

_PRONOUN_COLUMNS = ["masked", "label", "label_class", "split", "source"]
_NEUTRAL_COLUMNS = ["text", "source"]


def _read_resource(name: str, columns: list[str]) -> pd.DataFrame:
    """Read a plain (unquoted) UTF-8 TSV from ``gradiend/resources`` as all-string columns."""
    resource = files("gradiend") / "resources" / name
    with resource.open("r", encoding="utf-8", newline="") as fh:
        df = pd.read_csv(
            fh,
            sep="\t",
            quoting=csv.QUOTE_NONE,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
        )
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"resource {name} lacks columns {missing}")
    return df[columns].astype("string").reset_index(drop=True)


def load_demo_data() -> pd.DataFrame:
    """Pronoun table: ``masked`` text with one ``[MASK]``, its ``label`` (surface form, e.g. "He"),
    ``label_class`` ("3SG" for he/she/it, "3PL" for they), ``split`` (train/validation/test) and
    ``source`` (the work it comes from)."""
    return _read_resource("demo_pronouns.tsv", _PRONOUN_COLUMNS)


def load_demo_neutral() -> pd.DataFrame:
    """Neutral sentences (columns ``text``, ``source``) free of personal pronouns."""
    return _read_resource("demo_neutral.tsv", _NEUTRAL_COLUMNS)


def demo_gender_data() -> pd.DataFrame:
    """The he/she rows of :func:`load_demo_data` with ``label_class`` "M" (he) or "F" (she)."""
    df = load_demo_data()
    token_to_class = {tok: cls for cls, toks in GENDER_CLASSES.items() for tok in toks}
    lowered = df["label"].str.lower()
    out = df[lowered.isin(list(token_to_class))].copy()
    out["label_class"] = lowered[out.index].map(token_to_class).astype("string")
    return out.reset_index(drop=True)
