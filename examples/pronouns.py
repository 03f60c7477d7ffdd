"""Pronouns: 3SG (he/she/it) vs 3PL (they), with 1SG/1PL as other classes, and singular vs plural.

From raw sentences the data creator finds four classes (1SG "i", 1PL "we", 3SG "he/she/it",
3PL "they"). The first GRADIEND learns 3SG vs 3PL; its evaluation also encodes the 1SG and 1PL
rows (`include_other_classes`, label 0) and reports the mean encoding of every class. The second
merges the classes (`class_merge_map`) and learns singular vs plural from all four.

    python examples/pronouns.py                                # the demo sentences, embedded MiniLM
    python examples/pronouns.py --sentences my_corpus.txt --model bert-base-uncased
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import model_path, parser, report, setup_logging, training_args

from gradiend import TextFilterConfig, TextPredictionDataCreator, TextPredictionTrainer
from gradiend.data_sources import load_texts
from gradiend.demo_data import load_demo_data, load_demo_neutral

CLASSES = {"1SG": ["i"], "1PL": ["we"], "3SG": ["he", "she", "it"], "3PL": ["they"]}
MERGE = {"singular": ["1SG", "3SG"], "plural": ["1PL", "3PL"]}


def demo_sentences(max_words: int | None = None) -> list[str]:
    """The demo data's sentences with their pronoun filled back in (those of at most `max_words` words)."""
    demo = load_demo_data()
    filled = [m.replace("[MASK]", label) for m, label in zip(demo["masked"], demo["label"], strict=True)]
    return [s for s in filled if max_words is None or len(s.split()) <= max_words]


def build_data(sentences: list[str], max_per_class: int, seed: int, show_progress: bool) -> dict[str, Any]:
    """Per-class training tables of the four pronoun classes."""
    targets = [TextFilterConfig(targets=words, id=cls) for cls, words in CLASSES.items()]
    creator = TextPredictionDataCreator(sentences, targets, min_left_context_words=0, seed=seed,
                                        show_progress=show_progress)
    return creator.generate_training_data(max_size_per_class=max_per_class, min_rows_per_class=6)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0], steps=100, experiment_dir="runs/pronouns")
    p.add_argument("--sentences", default=None, help="a text file (one sentence per line; default: demo sentences)")
    p.add_argument("--max-per-class", type=int, default=400, help="training rows per class (default: %(default)s)")
    p.add_argument("--max-words", type=int, default=None, help="demo sentences: only those of at most this many words")
    ns = p.parse_args(argv)
    setup_logging(ns)
    if ns.sentences:
        sentences = load_texts(ns.sentences, "text", what="--sentences")[0]
    else:
        sentences = demo_sentences(ns.max_words)
    data = build_data(sentences, ns.max_per_class, ns.seed, not ns.quiet)
    neutral = list(load_demo_neutral()["text"][:200])
    results: dict[str, Any] = {"classes": {c: len(df) for c, df in data.items()}}
    runs = {"3SG_3PL": {"target_classes": ["3SG", "3PL"]}, "singular_plural": {"class_merge_map": MERGE}}
    for name, setting in runs.items():
        args = training_args(ns, str(Path(ns.experiment_dir) / name), include_other_classes=True)
        trainer = TextPredictionTrainer(model=model_path(ns.model), data=data, args=args, eval_neutral_data=neutral,
                                        **setting)
        trainer.train()
        result = trainer.evaluate_encoder(max_size=ns.max_size)
        results[name] = {"trainer": trainer, "encoder": result}
        means = ", ".join(f"{c} {v:+.2f}" for c, v in result["mean_by_feature_class"].items())
        report(ns, f"{name}: pair {trainer.pair}, correlation {result['correlation']:.3f}, "
                   f"all-data correlation {result['all_data_correlation']:.3f}; mean encoding by class: {means}")
    return results


if __name__ == "__main__":
    main()
