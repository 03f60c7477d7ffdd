"""Raw texts → candidate units: line and sentence splitting, whitespace collapsing, length and
character filters (see `TextPreprocessConfig`)."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable

from gradiend.data_creation.config import TextPreprocessConfig

logger = logging.getLogger(__name__)

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


def _units(texts: Iterable[str], split_to_sentences: bool | int) -> list[str]:
    """Non-blank lines with collapsed whitespace, optionally cut into windows of sentences."""
    units: list[str] = []
    window = 1 if isinstance(split_to_sentences, bool) else int(split_to_sentences)
    for text in texts:
        for line in text.splitlines():
            line = " ".join(line.split())
            if not line:
                continue
            if not split_to_sentences:
                units.append(line)
                continue
            sentences = split_sentences(line)
            units.extend(" ".join(sentences[i:i + window]) for i in range(0, len(sentences), window))
    return units


def _drop_reason(unit: str, config: TextPreprocessConfig, excluded: set[str]) -> str | None:
    """Why the filters of `config` drop `unit` (a stats key), or None to keep it."""
    n_words = len(unit.split())
    if config.min_chars is not None and len(unit) < config.min_chars:
        return "too_short_chars"
    if config.max_chars is not None and len(unit) > config.max_chars:
        return "too_long_chars"
    if config.min_words is not None and n_words < config.min_words:
        return "too_few_words"
    if config.max_words is not None and n_words > config.max_words:
        return "too_many_words"
    if excluded and not excluded.isdisjoint(unit):
        return "excluded_chars"
    if config.custom_filter is not None and not config.custom_filter(unit):
        return "custom_filter"
    return None


def preprocess_texts(texts: Iterable[str], config: TextPreprocessConfig | None = None,
                     stats: dict[str, int] | None = None) -> list[str]:
    """Apply `config` to `texts` (see `TextPreprocessConfig`); `None` keeps the texts as they are.

    Counts of what was dropped go into `stats` when a dict is given.
    """
    texts = list(texts)
    if config is None:
        return texts
    units = _units(texts, config.split_to_sentences)
    counts: Counter[str] = Counter()
    kept = []
    excluded = set(config.exclude_chars or "")
    for unit in units:
        reason = _drop_reason(unit, config, excluded)
        if reason is None:
            kept.append(unit)
        else:
            counts[reason] += 1
    logger.info("Preprocessing: %d texts → %d units → %d kept (dropped: %s)", len(texts), len(units), len(kept),
                dict(counts) or "none")
    if stats is not None:
        stats.update({"preprocess_units": len(units), **{f"dropped_{k}": v for k, v in counts.items()}})
    return kept
