"""Build the demo data shipped in ``gradiend/resources`` from public-domain English sentences.

Reads ``english-public-domain-sentences.tsv`` (columns ``source``, ``text``; Jane Austen's six
novels and Herman Melville's *Moby Dick*) and writes:

* ``demo_pronouns.tsv`` (``masked, label, label_class, split, source``): sentences with exactly one
  whole-word occurrence of he/she/it/they, that occurrence replaced by ``[MASK]``; ``3SG`` for
  he/she/it (stratified to about a third each), ``3PL`` for they, balanced between the classes and
  split 80/10/10 into train/validation/test per class (and per pronoun).
* ``demo_neutral.tsv`` (``text, source``): sentences without any personal pronoun listed in
  ``NEUTRAL_EXCLUDED``.
* ``DEMO_DATA.md``: provenance and counts.

The output is deterministic for a given source file and seed::

    python scripts/build_demo_data.py [--source PATH] [--out-dir gradiend/resources] [--seed 42]
"""

from __future__ import annotations

import argparse
import csv
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gradiend.data_creation import even_allocation

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = Path("/work/shared/data/english-public-domain-sentences.tsv")
DEFAULT_OUT_DIR = REPO_ROOT / "gradiend" / "resources"
DEFAULT_SEED = 42

MASK = "[MASK]"
PRONOUNS_FILE = "demo_pronouns.tsv"
NEUTRAL_FILE = "demo_neutral.tsv"
README_FILE = "DEMO_DATA.md"

CLASS_TOKENS: dict[str, tuple[str, ...]] = {"3SG": ("he", "she", "it"), "3PL": ("they",)}
TARGETS = frozenset(t for tokens in CLASS_TOKENS.values() for t in tokens)
NEUTRAL_EXCLUDED = frozenset(
    {
        "he", "she", "it", "they", "him", "her", "his", "hers", "its", "them", "their", "theirs",
        "himself", "herself", "itself", "themselves", "i", "we", "you", "me", "us", "my", "our", "your",
    }
)  # fmt: skip

MIN_WORDS = 6
MAX_WORDS = 40
MAX_CHARS = 250
MAX_PER_CLASS = 1500
N_NEUTRAL = 1000
SPLIT_FRACTIONS = (("train", 0.8), ("validation", 0.1), ("test", 0.1))

# A "word" is a maximal run of ASCII letters; "it's" therefore contains the word "it".
WORD_RE = re.compile(r"[A-Za-z]+")
# A letter directly joined to the word by an apostrophe or hyphen ("it's", "he-goat", "o'er-he").
_GLUED_AFTER = re.compile(r"['-][A-Za-z]")
_GLUED_BEFORE = re.compile(r"[A-Za-z]['-]$")


@dataclass(frozen=True)
class Sentence:
    source: str
    text: str


@dataclass(frozen=True)
class PronounRow:
    masked: str
    label: str
    label_class: str
    source: str
    split: str = ""


def words(text: str) -> list[str]:
    """Lower-cased letter-run words of ``text``."""
    return [w.lower() for w in WORD_RE.findall(text)]


def length_ok(text: str) -> bool:
    n_words = len(text.split())
    return MIN_WORDS <= n_words <= MAX_WORDS and len(text) <= MAX_CHARS


def read_sentences(path: Path) -> list[Sentence]:
    """Read the source TSV, dropping exact duplicate texts (first occurrence wins)."""
    seen: set[str] = set()
    out: list[Sentence] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header[:2] != ["source", "text"]:
            raise ValueError(f"unexpected header {header!r} in {path}")
        for row in reader:
            if len(row) != 2:
                raise ValueError(f"malformed row {row!r} in {path}")
            source, text = row[0].strip(), " ".join(row[1].split())
            if not text or text in seen:
                continue
            seen.add(text)
            out.append(Sentence(source, text))
    return out


def mask_sentence(sentence: Sentence) -> PronounRow | None:
    """Mask the single target pronoun of ``sentence``; ``None`` if it has not exactly one clean one."""
    text = sentence.text
    if MASK in text or not length_ok(text):
        return None
    hits = [m for m in WORD_RE.finditer(text) if m.group().lower() in TARGETS]
    if len(hits) != 1:
        return None
    hit = hits[0]
    if _GLUED_AFTER.match(text, hit.end()) or _GLUED_BEFORE.search(text[: hit.start()]):
        return None  # contraction or compound such as "it's" / "he-goat": not a clean single token
    label = hit.group()
    label_class = next(c for c, toks in CLASS_TOKENS.items() if label.lower() in toks)
    masked = text[: hit.start()] + MASK + text[hit.end() :]
    return PronounRow(masked, label, label_class, sentence.source)


def split_sizes(n: int) -> dict[str, int]:
    """Sizes for ``SPLIT_FRACTIONS`` that sum to ``n`` (train takes the rounding remainder)."""
    sizes = {name: round(n * frac) for name, frac in SPLIT_FRACTIONS[1:]}
    sizes[SPLIT_FRACTIONS[0][0]] = n - sum(sizes.values())
    return sizes


def assign_splits(rows: Sequence[PronounRow], rng: random.Random) -> list[PronounRow]:
    """Assign splits within each (class, lower-cased label) group, so every split keeps the mix."""
    groups: dict[tuple[str, str], list[PronounRow]] = {}
    for row in rows:
        groups.setdefault((row.label_class, row.label.lower()), []).append(row)
    out: list[PronounRow] = []
    for key in sorted(groups):
        group = list(groups[key])
        rng.shuffle(group)
        start = 0
        for name, size in split_sizes(len(group)).items():
            for r in group[start : start + size]:
                out.append(PronounRow(r.masked, r.label, r.label_class, r.source, name))
            start += size
    return out


def build_pronoun_rows(sentences: Iterable[Sentence], rng: random.Random) -> list[PronounRow]:
    """Balanced, split pronoun table (3PL up to ``MAX_PER_CLASS``, 3SG the same size)."""
    candidates: dict[str, list[PronounRow]] = {}
    seen_masked: set[str] = set()
    for sentence in sentences:
        row = mask_sentence(sentence)
        if row is None or row.masked in seen_masked:
            continue
        seen_masked.add(row.masked)
        candidates.setdefault(row.label.lower(), []).append(row)

    plural = candidates.get("they", [])
    singular_caps = {tok: len(candidates.get(tok, [])) for tok in CLASS_TOKENS["3SG"]}
    n_per_class = min(MAX_PER_CLASS, len(plural), sum(singular_caps.values()))
    chosen = rng.sample(plural, n_per_class)
    for tok, n in even_allocation(singular_caps, n_per_class).items():
        chosen.extend(rng.sample(candidates.get(tok, []), n))

    rows = assign_splits(chosen, rng)
    rng.shuffle(rows)
    return rows


def build_neutral_rows(
    sentences: Iterable[Sentence], rng: random.Random, n: int = N_NEUTRAL
) -> list[Sentence]:
    """``n`` sentences of acceptable length that contain no word from ``NEUTRAL_EXCLUDED``."""
    pool = [s for s in sentences if length_ok(s.text) and NEUTRAL_EXCLUDED.isdisjoint(words(s.text))]
    if len(pool) < n:
        raise ValueError(f"only {len(pool)} neutral sentences available, {n} requested")
    return rng.sample(pool, n)


def _check_field(value: str) -> str:
    if any(c in value for c in "\t\r\n"):
        raise ValueError(f"field contains a tab or newline: {value!r}")
    return value


def write_tsv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Plain TSV (no quoting; fields never contain tabs or newlines), UTF-8, ``\\n`` line ends."""
    lines = ["\t".join(header)]
    lines.extend("\t".join(_check_field(v) for v in row) for row in rows)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


def count_table(rows: Sequence[PronounRow]) -> dict[str, Counter]:
    return {
        "class": Counter(r.label_class for r in rows),
        "label": Counter(r.label.lower() for r in rows),
        "surface": Counter(r.label for r in rows),
        "split": Counter(r.split for r in rows),
        "class_split": Counter((r.label_class, r.split) for r in rows),
        "label_split": Counter((r.label.lower(), r.split) for r in rows),
        "source": Counter(r.source for r in rows),
    }


def render_readme(
    source_name: str, n_source: int, seed: int, pronouns: Sequence[PronounRow], neutral: Sequence[Sentence]
) -> str:
    counts = count_table(pronouns)
    splits = [name for name, _ in SPLIT_FRACTIONS]
    labels = [t for toks in CLASS_TOKENS.values() for t in toks]

    def table(keys: Sequence[str], key_of: str) -> list[str]:
        out = [f"| {key_of} | " + " | ".join(splits) + " | total |", "|---" * (len(splits) + 2) + "|"]
        pair_counts = counts["class_split"] if key_of == "class" else counts["label_split"]
        totals = counts["class"] if key_of == "class" else counts["label"]
        for key in keys:
            cells = [str(pair_counts[(key, s)]) for s in splits]
            out.append(f"| {key} | " + " | ".join(cells) + f" | {totals[key]} |")
        return out

    neutral_sources = Counter(s.source for s in neutral)
    excluded = ", ".join(sorted(NEUTRAL_EXCLUDED))
    lines = [
        "# Demo data",
        "",
        "Generated by `scripts/build_demo_data.py` (seed "
        f"{seed}) from `{source_name}` ({n_source} unique sentences). Do not edit by hand.",
        "",
        "## Source",
        "",
        "English sentences from Jane Austen's six novels (*Emma*, *Mansfield Park*, *Northanger Abbey*,",
        "*Persuasion*, *Pride and Prejudice*, *Sense and Sensibility*; text as packaged in Debian's",
        "`r-cran-janeaustenr`) and Herman Melville's *Moby Dick* (Project Gutenberg text, license header",
        "and footer removed). All works are in the public domain. Each row records its work in `source`.",
        "",
        f"## `{PRONOUNS_FILE}`",
        "",
        "Columns `masked, label, label_class, split, source`. Sentences of "
        f"{MIN_WORDS}–{MAX_WORDS} words and at most {MAX_CHARS}",
        "characters containing exactly one whole-word (case-insensitive) occurrence of he/she/it/they;",
        "contractions and compounds (`it's`, `he-goat`) count as occurrences but are never masked, so such",
        f"sentences are dropped. The occurrence is replaced by `{MASK}`; `label` is the surface form as",
        "written and `label_class` is `3SG` (he/she/it) or `3PL` (they). Both classes have the same size",
        f"(3PL capped at {MAX_PER_CLASS}); 3SG is stratified to about a third per pronoun. Splits are",
        "80/10/10 (train/validation/test), assigned per class and pronoun.",
        "",
        *table(list(CLASS_TOKENS), "class"),
        "",
        *table(labels, "label"),
        "",
        "Surface forms: " + ", ".join(f"{k} {v}" for k, v in sorted(counts["surface"].items())) + ".",
        "",
        "Rows per source: " + ", ".join(f"{k} {v}" for k, v in sorted(counts["source"].items())) + ".",
        "",
        f"## `{NEUTRAL_FILE}`",
        "",
        f"Columns `text, source`. {len(neutral)} sentences of {MIN_WORDS}–{MAX_WORDS} words and at most "
        f"{MAX_CHARS} characters",
        f"containing none of these whole words (case-insensitive): {excluded}.",
        "",
        "Rows per source: " + ", ".join(f"{k} {v}" for k, v in sorted(neutral_sources.items())) + ".",
        "",
    ]
    return "\n".join(lines)


def build(source: Path, out_dir: Path, seed: int = DEFAULT_SEED) -> tuple[list[PronounRow], list[Sentence]]:
    """Build and write all demo files to ``out_dir``; returns (pronoun rows, neutral sentences)."""
    sentences = read_sentences(source)
    pronouns = build_pronoun_rows(sentences, random.Random(seed))
    neutral = build_neutral_rows(sentences, random.Random(seed + 1))

    out_dir.mkdir(parents=True, exist_ok=True)
    write_tsv(
        out_dir / PRONOUNS_FILE,
        ("masked", "label", "label_class", "split", "source"),
        ((r.masked, r.label, r.label_class, r.split, r.source) for r in pronouns),
    )
    write_tsv(out_dir / NEUTRAL_FILE, ("text", "source"), ((s.text, s.source) for s in neutral))
    readme = render_readme(source.name, len(sentences), seed, pronouns, neutral)
    (out_dir / README_FILE).write_text(readme, encoding="utf-8", newline="\n")
    return pronouns, neutral


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="source sentences TSV")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where to write the files")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)

    pronouns, neutral = build(args.source, args.out_dir, args.seed)
    counts = count_table(pronouns)
    print(f"{PRONOUNS_FILE}: {len(pronouns)} rows")
    print("  per class:", dict(sorted(counts["class"].items())))
    print("  per label:", dict(sorted(counts["label"].items())))
    print("  per surface form:", dict(sorted(counts["surface"].items())))
    print("  per split:", dict(sorted(counts["split"].items())))
    print("  per class and split:", {f"{c}/{s}": n for (c, s), n in sorted(counts["class_split"].items())})
    print("  per label and split:", {f"{c}/{s}": n for (c, s), n in sorted(counts["label_split"].items())})
    print(f"{NEUTRAL_FILE}: {len(neutral)} rows")
    for name in (PRONOUNS_FILE, NEUTRAL_FILE, README_FILE):
        print(f"  {name}: {(args.out_dir / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
