"""Finding the classes' target words in texts and masking them.

Surface matching is a case-insensitive, whole-word regex: a target glued to a word by an
apostrophe or a hyphen ("it's", "he-goat") does not count. Rules with spaCy tags or lemmas are
checked on the annotated tokens of the candidate texts only. Every match of a class in a text is
masked; the row's label keeps the first matched surface form.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from gradiend.data_creation.config import TargetRule, TextFilterConfig
from gradiend.data_creation.tagging import token_matches

#: spaCy docs of some texts: (texts, tags the pipeline must produce, progress label) → docs in order.
Annotator = Callable[[Sequence[str], Iterable[tuple[str, str]], str], Iterable[Any]]
Spans = dict[int, dict[str, list[tuple[int, int]]]]  # text index → class → (start, end) of its matches

# Whole-word boundaries: no word character next to the match, nor one glued on by ' ’ or -.
_BEFORE = r"(?<!\w)(?<!\w['’\-])"
_AFTER = r"(?!\w)(?!['’\-]\w)"
_WORD = re.compile(r"\w+(?:['’\-]\w+)*")
_GLUED_BEFORE = re.compile(r"\w['’\-]?$")
_GLUED_AFTER = re.compile(r"['’\-]?\w")


@dataclass
class Row:
    """One masked text of a class: its index in the corpus, the label (first matched surface form),
    how many matches were masked, how many classes matched the text, and every matched surface form."""

    index: int
    text: str
    masked: str
    label: str
    token_count: int
    n_classes: int
    words: tuple[str, ...] = ()


@dataclass
class Matching:
    """The rows of every class, plus what was dropped on the way."""

    rows: dict[str, list[Row]]
    dropped_left_context: dict[str, int] = field(default_factory=dict)
    skipped_with_mask: int = 0
    spacy_texts: int = 0


def word_pattern(words: Iterable[str], glued: bool = False) -> re.Pattern[str] | None:
    """Case-insensitive whole-word alternation; `glued=True` also finds "it" in "it's"."""
    words = sorted({w.lower() for w in words}, key=lambda w: (-len(w), w))
    if not words:
        return None
    alternatives = "|".join(r"\s+".join(re.escape(part) for part in w.split()) for w in words)
    before, after = (r"(?<!\w)", r"(?!\w)") if glued else (_BEFORE, _AFTER)
    return re.compile(f"{before}(?:{alternatives}){after}", re.IGNORECASE)


def _glued(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] touches a word character directly or through ' ’ -."""
    return bool(_GLUED_BEFORE.search(text[max(0, start - 2):start]) or _GLUED_AFTER.match(text, end))


def _tagged_spans(texts: Sequence[str], candidates: list[int], tagged: list[tuple[str, TargetRule]],
                  annotate: Annotator, spans: Spans) -> None:
    """Add to `spans` the tokens of the candidate texts that satisfy a tag/lemma rule."""
    all_tags = [kv for _, m in tagged for kv in m.tags]
    for i, doc in zip(candidates, annotate([texts[i] for i in candidates], all_tags, "Tagging (spaCy)"),
                      strict=True):
        text = texts[i]
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
                if token_matches(token, rule.tags) and not _glued(text, start, end):
                    found = spans.setdefault(i, {}).setdefault(cls, [])
                    if (start, end) not in found:
                        found.append((start, end))


def _masked_rows(texts: Sequence[str], spans: Spans, configs: Mapping[str, TextFilterConfig],
                 min_left_context_words: int) -> tuple[dict[str, list[Row]], dict[str, int]]:
    """Rows per class from the matched spans, and per class the texts dropped for too little left context."""
    rows: dict[str, list[Row]] = {cls: [] for cls in configs}
    dropped = dict.fromkeys(configs, 0)
    for i in sorted(spans):
        text = texts[i]
        for cls, found in spans[i].items():
            cfg = configs[cls]
            found = sorted(found)
            need = cfg.min_left_context_words if cfg.min_left_context_words is not None else min_left_context_words
            if need and len(_WORD.findall(text, 0, found[0][0])) < need:
                dropped[cls] += 1
                continue
            pieces, last = [], 0
            for start, end in found:
                pieces += [text[last:start], cfg.mask]
                last = end
            pieces.append(text[last:])
            rows[cls].append(Row(i, text, "".join(pieces), text[found[0][0]:found[0][1]], len(found),
                                 len(spans[i]), tuple(text[a:b] for a, b in found)))
    return rows, dropped


def match_targets(texts: Sequence[str], feature_targets: Sequence[TextFilterConfig], min_left_context_words: int,
                  annotate: Annotator, show_progress: bool) -> Matching:
    """Find and mask every class's targets in `texts`; texts containing a mask string are skipped.

    `annotate` is called only when tag or lemma rules have candidate texts."""
    configs = {cfg.id: cfg for cfg in feature_targets}
    plain: dict[str, list[str]] = {}  # word → classes matched by surface form alone
    tagged: list[tuple[str, TargetRule]] = []
    for cfg in feature_targets:
        for m in cfg.matchers():
            if m.tags or m.use_lemma:
                tagged.append((cfg.id, m))
            else:
                plain.setdefault(m.word, []).append(cfg.id)
    any_lemma = any(m.use_lemma for _, m in tagged)
    pattern = word_pattern(list(plain) + [m.word for _, m in tagged if not m.use_lemma])
    tagged_words = {m.word for _, m in tagged if not m.use_lemma}
    masks = {cfg.mask for cfg in feature_targets}
    spans: Spans = {}
    spacy_candidates: list[int] = []
    skipped_with_mask = 0
    for i, text in enumerate(tqdm(texts, desc="Matching targets", unit="text", disable=not show_progress,
                                  mininterval=1.0)):
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
        _tagged_spans(texts, spacy_candidates, tagged, annotate, spans)
    rows, dropped = _masked_rows(texts, spans, configs, min_left_context_words)
    return Matching(rows, dropped, skipped_with_mask, len(spacy_candidates) if tagged else 0)


def nothing_matched_message(empty: Sequence[str], matching: Matching, feature_targets: Sequence[TextFilterConfig],
                            n_texts: int) -> str:
    """The error for classes without a single match: their targets, tags and left-context drops."""
    configs = {cfg.id: cfg for cfg in feature_targets}
    parts = []
    for cls in empty:
        cfg = configs[cls]
        hint = f"; {matching.dropped_left_context[cls]} matches had too little left context" \
            if matching.dropped_left_context.get(cls) else ""
        tags = f" with spacy_tags {cfg.spacy_tags}" if cfg.needs_spacy else ""
        parts.append(f"{cls!r} (targets {list(cfg.words)}{tags}{hint})")
    counts = {c: len(r) for c, r in matching.rows.items()}
    return (f"Class {', '.join(parts)} matched no text among {n_texts} texts (matches per class: "
            f"{counts}). Check the spelling and language of the targets, min_left_context_words and the "
            f"tag filters, or add text.")


def neutral_indices(texts: Sequence[str], feature_targets: Sequence[TextFilterConfig], extra_words: Iterable[str],
                    excluded_tags: Sequence[Mapping[str, str]], annotate: Annotator, show_progress: bool) -> list[int]:
    """Indices of the texts with no target word of any class (glued forms count, tags are not
    consulted), none of `extra_words`, no mask string, no lemma of a lemma rule and no token
    matching any of `excluded_tags`. `annotate` is called only for lemmas or tags."""
    words = {w for cfg in feature_targets for w in cfg.words} | {w.lower() for w in extra_words}
    lemmas = {m.word for cfg in feature_targets for m in cfg.matchers() if m.use_lemma}
    pattern = word_pattern(words, glued=True)
    masks = {cfg.mask for cfg in feature_targets}
    keep = [i for i, text in enumerate(tqdm(texts, desc="Neutral texts", unit="text", disable=not show_progress,
                                            mininterval=1.0))
            if not any(mask in text for mask in masks) and (pattern is None or not pattern.search(text))]
    if (excluded_tags or lemmas) and keep:
        tag_items = [kv for spec in excluded_tags for kv in spec.items()]
        docs = annotate([texts[i] for i in keep], tag_items, "Neutral texts (spaCy)")
        keep = [i for i, doc in zip(keep, docs, strict=True) if not any(
            (lemmas and token.lemma_.lower() in lemmas) or any(token_matches(token, s.items()) for s in excluded_tags)
            for token in doc)]
    return keep
