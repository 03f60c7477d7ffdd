"""Benchmark: `TextPredictionDataCreator` throughput on real sentences (3SG he/she/it vs 3PL they).

Runs the creator on the public-domain corpus (Austen + Moby Dick), then on a corpus grown to
`--sentences` unique sentences by pairing real sentences, and prints sentences/s for loading,
matching, training data (500 per class) and neutral data. With `--spacy N`, it also times
tag-filtered matching on N sentences (needs `gradiend[spacy]`).

    python bench/bench_data_creation.py [--source PATH] [--sentences 100000] [--spacy 2000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from gradiend.data_creation import TextFilterConfig, TextPredictionDataCreator

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "english-public-domain-sentences.tsv"


def targets(tagged: bool = False) -> list[TextFilterConfig]:
    tags = {"pos": "PRON", "Number": "Sing"} if tagged else None
    return [TextFilterConfig(targets=["he", "she", "it"], id="3SG", spacy_tags=tags),
            TextFilterConfig(target="they", id="3PL", spacy_tags={"pos": "PRON", "Number": "Plur"} if tagged else None)]


def run(texts: list[str] | Path, label: str, tagged: bool = False) -> dict:
    started = time.perf_counter()
    creator = TextPredictionDataCreator(texts, targets(tagged), show_progress=False, seed=0)
    loaded = time.perf_counter()
    training = creator.generate_training_data(max_size_per_class=500)
    trained = time.perf_counter()
    neutral = creator.generate_neutral_data(additional_excluded_words=["i", "we", "you"], max_size=500)
    done = time.perf_counter()
    n = creator.stats["texts"]
    return {
        "corpus": label, "sentences": n, "spacy": tagged,
        "matches_per_class": creator.stats["matches_per_class"],
        "training_rows": {c: len(df) for c, df in training.items()}, "neutral_rows": len(neutral),
        "load_s": round(loaded - started, 2), "training_s": round(trained - loaded, 2),
        "neutral_s": round(done - trained, 2), "total_s": round(done - started, 2),
        "sentences_per_s": round(n / (done - loaded)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--sentences", type=int, default=100_000)
    parser.add_argument("--spacy", type=int, default=0, help="also time spaCy tag filters on this many sentences")
    ns = parser.parse_args()
    results = [run(ns.source, ns.source.name)]
    real = pd.read_csv(ns.source, sep="\t", quoting=3, dtype=str, keep_default_na=False)["text"].tolist()
    grown, i = dict.fromkeys(real), 0
    while len(grown) < ns.sentences:  # unique texts: each real sentence followed by a different one
        grown[f"{real[i % len(real)]} {real[(i + 1 + i // len(real)) % len(real)]}"] = None
        i += 1
    results.append(run(list(grown), f"{ns.sentences} texts"))
    if ns.spacy:
        results.append(run(real[:ns.spacy], f"{ns.spacy} sentences", tagged=True))
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
