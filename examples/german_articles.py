"""German articles: gender × case classes from spaCy tags, a case GRADIEND and a gender GRADIEND.

The same word stands for several classes (`der` is masculine nominative and feminine dative), so
the classes come from morphological tags: `TextFilterConfig(target="der", id="masc_nom",
spacy_tags={"pos": "DET", "Case": "Nom", "Gender": "Masc"})`. A trained German pipeline
(`python -m spacy download de_core_news_sm`, then `--spacy-model de_core_news_sm`) tags real text;
offline, a blank German pipeline with a small rule component tags the generated sentences (gender
from the noun, case from the verb before the article), the annotations a trained tagger would give.

Two GRADIENDs: masculine nominative vs accusative (der vs den; every other class encoded too,
`include_other_classes`), and masculine vs feminine over all cases (`class_merge_map`).

    python examples/german_articles.py --model bert-base-german-cased
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import model_path, parser, report, setup_logging, training_args

from gradiend import TextFilterConfig, TextPredictionDataCreator, TextPredictionTrainer

NOUNS = {"Masc": ["Mann", "Hund", "Vater", "Lehrer"], "Fem": ["Frau", "Katze", "Mutter", "Lehrerin"],
         "Neut": ["Kind", "Pferd", "Haus", "Buch"]}
ARTICLES = {("Nom", "Masc"): "der", ("Acc", "Masc"): "den", ("Dat", "Masc"): "dem",
            ("Nom", "Fem"): "die", ("Acc", "Fem"): "die", ("Dat", "Fem"): "der",
            ("Nom", "Neut"): "das", ("Acc", "Neut"): "das", ("Dat", "Neut"): "dem"}
FRAMES = {"Nom": ["am Tag {n} schläft {art} {noun} lange .", "am Abend {n} kommt {art} {noun} nach Hause ."],
          "Acc": ["am Tag {n} sehe ich {art} {noun} im Garten .", "am Abend {n} suchen wir {art} {noun} ."],
          "Dat": ["am Tag {n} helfe ich {art} {noun} gern .", "am Abend {n} danken wir {art} {noun} sehr ."]}
VERB_CASE = {"sehe": "Acc", "suchen": "Acc", "helfe": "Dat", "danken": "Dat"}
MERGE = {"masc": ["masc_nom", "masc_acc", "masc_dat"], "fem": ["fem_nom", "fem_acc", "fem_dat"]}


def class_id(case: str, gender: str) -> str:
    return f"{gender.lower()}_{case.lower()}"


def sentences(repeat: int = 4) -> list[str]:
    """Generated sentences: every frame × noun, numbered so that none repeats."""
    out = []
    for n in range(repeat):
        for (case, gender), article in ARTICLES.items():
            for frame in FRAMES[case]:
                out += [frame.format(n=n, art=article, noun=noun) for noun in NOUNS[gender]]
    return out


def vocabulary() -> list[str]:
    """Every word of the generated sentences (for building a small test model)."""
    return sorted({w.lower() for s in sentences(1) for w in s.split()})


def rule_pipeline() -> Any:
    """A blank German spaCy pipeline whose one component tags articles with case and gender."""
    import spacy
    from spacy.language import Language

    gender_of = {noun: gender for gender, nouns in NOUNS.items() for noun in nouns}
    name = "gradiend_example_german_articles"
    if name not in Language.factories:
        @Language.component(name)
        def tag_articles(doc: Any) -> Any:
            case = "Nom"
            for token in doc[:-1]:
                case = VERB_CASE.get(token.lower_, case)
                gender = gender_of.get(token.nbor().text)
                if gender and token.lower_ in set(ARTICLES.values()):
                    token.pos_ = "DET"
                    token.set_morph(f"Case={case}|Gender={gender}|Number=Sing")
            return doc
    nlp = spacy.blank("de")
    nlp.add_pipe(name)
    return nlp


def build_data(seed: int, spacy_model: str | None, show_progress: bool, repeat: int = 4) -> dict[str, Any]:
    targets = [TextFilterConfig(target=article, id=class_id(case, gender),
                                spacy_tags={"pos": "DET", "Case": case, "Gender": gender})
               for (case, gender), article in ARTICLES.items()]
    creator = TextPredictionDataCreator(sentences(repeat), targets, spacy_model=spacy_model or rule_pipeline(),
                                        min_left_context_words=0, seed=seed, show_progress=show_progress)
    return creator.generate_training_data(min_rows_per_class=6)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0], steps=100, experiment_dir="runs/german_articles")
    p.add_argument("--spacy-model", default=None, help="a trained German spaCy pipeline (default: the rule tagger)")
    p.add_argument("--repeat", type=int, default=4,
                   help="generated sentences: each frame × noun this many times (default: %(default)s)")
    ns = p.parse_args(argv)
    setup_logging(ns)
    data = build_data(ns.seed, ns.spacy_model, not ns.quiet, ns.repeat)
    results: dict[str, Any] = {"classes": {c: len(df) for c, df in data.items()}}
    runs = {"masc_nom_acc": {"target_classes": ["masc_nom", "masc_acc"]}, "masc_fem": {"class_merge_map": MERGE}}
    for name, setting in runs.items():
        args = training_args(ns, str(Path(ns.experiment_dir) / name), include_other_classes=True)
        trainer = TextPredictionTrainer(model=model_path(ns.model), data=data, args=args, **setting)
        trainer.train()
        result = trainer.evaluate_encoder(max_size=ns.max_size)
        results[name] = {"trainer": trainer, "encoder": result}
        means = ", ".join(f"{c} {v:+.2f}" for c, v in result["mean_by_feature_class"].items())
        report(ns, f"{name}: pair {trainer.pair}, correlation {result['correlation']:.3f}; mean encoding: {means}")
    return results


if __name__ == "__main__":
    main()
