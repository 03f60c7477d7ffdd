"""Three classes, one GRADIEND per pair: a race/religion-style suite and its cross-encoding.

The data has one column per class holding that class's word for the same sentence (per-class
tables, the layout of the reference's race and religion data sets), so every row gives its
counterfactual in every other class. `--mode symmetric` trains every pair, `--mode positive`
each class against the other two. The script prints each GRADIEND's scores and mean encoding per
class, and the cross-encoding matrices (each GRADIEND on each class, and on each other's pair).

    python examples/three_class_suite.py --data pronouns --mode positive --params "encoder.layer.5.*"
    python examples/three_class_suite.py --data religion --model bert-base-uncased
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_matrix, model_path, parser, report, setup_logging, training_args

from gradiend.demo_data import load_demo_data, load_demo_neutral
from gradiend.suites import PositiveSuite, SymmetricSuite

#: per class, one word per kind of slot (place, book, leader)
RELIGION = {"christian": ("church", "bible", "priest"), "muslim": ("mosque", "quran", "imam"),
            "jewish": ("synagogue", "torah", "rabbi")}
TEMPLATES = [  # (kind, text): kind indexes the words above
    (0, "every week the family walked to the [MASK] together ."), (0, "the old [MASK] stood near the market ."),
    (0, "they met in front of the [MASK] after work ."), (0, "the children visited the [MASK] with their class ."),
    (1, "she read a page of the [MASK] every night ."), (1, "an old copy of the [MASK] lay on the table ."),
    (1, "he quoted the [MASK] in his letter ."), (1, "the teacher opened the [MASK] and began to read ."),
    (2, "the [MASK] spoke to the people at the door ."), (2, "after the meeting the [MASK] went home ."),
    (2, "the young [MASK] thanked the family ."), (2, "everyone listened when the [MASK] talked ."),
]
#: the demo sentences' pronouns as three classes
PRONOUNS = {"he": "M", "she": "F", "they": "PL"}


def vocabulary() -> list[str]:
    """Every word the religion data uses (for building a small test model)."""
    words = {w for words in RELIGION.values() for w in words}
    words |= {w for _, text in TEMPLATES for w in text.split() if w != "[MASK]"}
    return sorted(words)


def religion_data(repeat: int = 3) -> dict[str, pd.DataFrame]:
    """Per-class tables: `masked`, `split` and one column per class with that class's word for the row."""
    rows = []
    for r in range(repeat):
        for i, (kind, text) in enumerate(TEMPLATES):
            split = ("train", "train", "validation", "test")[(i + r) % 4]
            rows.append({"masked": text, "split": split, **{c: words[kind] for c, words in RELIGION.items()}})
    frame = pd.DataFrame(rows)
    return {cls: frame.copy() for cls in RELIGION}


def pronoun_data(max_words: int | None = None) -> pd.DataFrame:
    """The demo sentences with he/she/they as classes M/F/PL (merged format; alternatives are sampled),
    only those of at most `max_words` words when given (shorter runs)."""
    demo = load_demo_data()
    if max_words is not None:
        demo = demo[demo["masked"].str.split().str.len() <= max_words]
    lowered = demo["label"].str.lower()
    out = demo[lowered.isin(list(PRONOUNS))].copy()
    out["label_class"] = lowered[out.index].map(PRONOUNS).astype(str)
    return out.reset_index(drop=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0], steps=60, experiment_dir="runs/three_class_suite")
    p.add_argument("--data", choices=["pronouns", "religion"], default="pronouns")
    p.add_argument("--mode", choices=["symmetric", "positive"], default="positive")
    p.add_argument("--max-words", type=int, default=None, help="pronouns: only sentences of at most this many words")
    ns = p.parse_args(argv)
    setup_logging(ns)
    data = pronoun_data(ns.max_words) if ns.data == "pronouns" else religion_data()
    neutral = list(load_demo_neutral()["text"][:200])
    suite_cls = PositiveSuite if ns.mode == "positive" else SymmetricSuite
    suite = suite_cls(model_path(ns.model), data, training_args(ns, ns.experiment_dir),
                      run_id=f"{ns.data}_{ns.mode}", eval_neutral_data=neutral)
    suite.train()
    summary = suite.summary(max_size=ns.max_size)
    cross = suite.cross_encoding(max_size=ns.max_size)
    report(ns, summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    report(ns, format_matrix("Mean encoding of each class (rows: GRADIENDs)", cross["classes"]))
    report(ns, format_matrix("Separation of each GRADIEND's pair (rows: encoding GRADIEND)", cross["pairs"]))
    return {"suite": suite, "summary": summary, "cross_encoding": cross}


if __name__ == "__main__":
    main()
