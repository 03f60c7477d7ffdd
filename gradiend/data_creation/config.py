"""Typed, validated configuration of data creation: the feature classes (`TextFilterConfig`) and
how raw texts become candidate sentences (`TextPreprocessConfig`)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gradiend.data import MASK
from gradiend.data_sources import DataError

SpacyTagSpec = Mapping[str, str]

#: Class ids that would clash with columns of the generated tables.
RESERVED_IDS = frozenset({"text", "masked", "label", "label_class", "split", "token_count", "alternative",
                          "alternative_class", "transition", "feature_class_id"})


@dataclass(frozen=True)
class TargetRule:
    """One flattened matching rule of a class: a lower-cased word, the spaCy tags it must carry
    (sorted key/value pairs, empty for plain surface matching) and whether the lemma is compared."""

    word: str
    tags: tuple[tuple[str, str], ...]
    use_lemma: bool


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
        self.spacy_tags = check_tags(self.spacy_tags, f"TextFilterConfig {self.id!r}")
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

    def matchers(self, inherited: SpacyTagSpec | None = None, lemma: bool = False) -> list[TargetRule]:
        """Flatten nested configs into (word, tags, use_lemma) rules of this class."""
        tags = {**(inherited or {}), **(self.spacy_tags or {})}
        use_lemma = lemma or self.use_lemma
        out: list[TargetRule] = []
        for entry in self.targets:
            if isinstance(entry, TextFilterConfig):
                out.extend(entry.matchers(tags, use_lemma))
            else:
                out.append(TargetRule(entry.lower(), tuple(sorted(tags.items())), use_lemma))
        return out


def check_tags(tags: Any, where: str) -> dict[str, str] | None:
    """Validate a spaCy tag spec (non-empty mapping of non-empty strings); `where` prefixes errors."""
    if tags is None:
        return None
    if not isinstance(tags, Mapping) or not tags:
        raise DataError(f"{where}: spacy_tags must be a non-empty dict such as {{'pos': 'PRON', 'Number': 'Sing'}}, "
                        f"got {tags!r}")
    for key, value in tags.items():
        if not isinstance(key, str) or not key or not isinstance(value, str) or not value:
            raise DataError(f"{where}: spacy_tags keys and values must be non-empty strings, got {key!r}: {value!r}")
    return dict(tags)


def check_feature_targets(feature_targets: Any) -> list[TextFilterConfig]:
    """Validate the creator's classes: a non-empty list of configs with unique, non-reserved ids,
    and no word shared between classes unless spaCy tags tell its uses apart everywhere."""
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
    reserved = sorted(set(ids) & RESERVED_IDS)
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
        bounds = {"min_chars": self.min_chars, "max_chars": self.max_chars, "min_words": self.min_words,
                  "max_words": self.max_words}
        for name, value in bounds.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise DataError(f"TextPreprocessConfig.{name} must be an int >= 0 or None, got {value!r}")
        for low, high in (("min_chars", "max_chars"), ("min_words", "max_words")):
            lo, hi = bounds[low], bounds[high]
            if lo is not None and hi is not None and lo > hi:
                raise DataError(f"TextPreprocessConfig: {low}={lo} is larger than {high}={hi}")
        if self.exclude_chars is not None and not isinstance(self.exclude_chars, str):
            raise DataError(f"exclude_chars must be a string of characters, got {type(self.exclude_chars).__name__}")
        if self.custom_filter is not None and not callable(self.custom_filter):
            raise DataError("custom_filter must be a callable taking a text and returning True to keep it")


@dataclass
class PairedTextFilterConfig:
    """Paired target words, one per class (e.g. British/American spelling): every matched word's
    partners become explicit alternatives, in a column named after each other class.

    `pairs`: tuples with one word per class (`ids` names the classes, in tuple order), or a dict
    `{class_id: [words]}` of aligned lists. The other fields apply to every class as in
    `TextFilterConfig`. Several groups with the same ids extend the same classes (e.g. one group per
    part of speech, each with its own `spacy_tags`). A text in which a class matches two different
    words is skipped, because a row has one alternative per class.

        PairedTextFilterConfig(pairs=[("colour", "color"), ("centre", "center")], ids=("BE", "AE"))
    """

    pairs: Sequence[Sequence[str]] | Mapping[str, Sequence[str]]
    ids: Sequence[str] | None = None
    mask: str = MASK
    weight: float = 1.0
    use_lemma: bool = False
    min_left_context_words: int | None = None
    spacy_tags: SpacyTagSpec | None = None

    def __post_init__(self) -> None:
        pairs = self.pairs
        if isinstance(pairs, Mapping):
            if self.ids is not None:
                raise DataError("PairedTextFilterConfig: with a dict of word lists the ids are its keys; do not also "
                                "pass ids=")
            lengths = {str(k): len(v) for k, v in pairs.items()}
            if len(set(lengths.values())) > 1:
                raise DataError(f"PairedTextFilterConfig: the word lists must be aligned (same length), got {lengths}")
            self.ids = tuple(str(k) for k in pairs)
            pairs = list(zip(*pairs.values(), strict=True))
        elif self.ids is None:
            raise DataError("PairedTextFilterConfig needs ids=(class per tuple position), or pairs as a dict "
                            "{class_id: [words]}")
        self.ids = tuple(self.ids) if not isinstance(self.ids, str) else (self.ids,)
        if len(self.ids) < 2 or len(set(self.ids)) != len(self.ids) or not all(
                isinstance(i, str) and i.strip() for i in self.ids):
            raise DataError(f"PairedTextFilterConfig: ids must be two or more distinct non-empty strings, got "
                            f"{self.ids!r}")
        if isinstance(pairs, str) or not isinstance(pairs, Sequence) or not pairs:
            raise DataError("PairedTextFilterConfig: pairs must be a non-empty list of word tuples, e.g. "
                            "[('colour', 'color')]")
        checked = []
        for pair in pairs:
            if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != len(self.ids) or not all(
                    isinstance(w, str) and w.strip() for w in pair):
                raise DataError(f"PairedTextFilterConfig: each pair needs one non-empty word per id {self.ids}, got "
                                f"{pair!r}")
            words = tuple(w.strip() for w in pair)
            if len({w.lower() for w in words}) != len(words):
                raise DataError(f"PairedTextFilterConfig: pair {words} names the same word twice")
            checked.append(words)
        self.pairs = list(dict.fromkeys(checked))
        for position, cls in enumerate(self.ids):
            seen = Counter(p[position].lower() for p in self.pairs)
            repeated = sorted(w for w, n in seen.items() if n > 1)
            if repeated:
                raise DataError(f"PairedTextFilterConfig: {cls!r} word(s) {repeated} appear in several pairs; each "
                                f"word needs one partner per class")
        self.to_configs()  # validates the shared options

    def to_configs(self) -> list[TextFilterConfig]:
        """One `TextFilterConfig` per class, with this group's options."""
        return [TextFilterConfig(targets=[p[i] for p in self.pairs], id=cls, mask=self.mask, weight=self.weight,
                                 use_lemma=self.use_lemma, min_left_context_words=self.min_left_context_words,
                                 spacy_tags=self.spacy_tags) for i, cls in enumerate(self.ids)]


@dataclass
class Pairing:
    """The partners of paired words: class → lower-cased word → (pair id, {other class: partner})."""

    ids: tuple[str, ...]
    partners: dict[str, dict[str, tuple[int, dict[str, str]]]]

    def alternatives(self, cls: str, words: Sequence[str]) -> tuple[int, dict[str, str]] | None:
        """(pair id, partner per other class) of a row whose class-`cls` matches are `words`; None when
        they are different words (no single alternative) or not paired."""
        found = {w.lower() for w in words}
        if len(found) != 1:
            return None
        return self.partners.get(cls, {}).get(found.pop())


def expand_feature_targets(feature_targets: Any) -> tuple[list[TextFilterConfig], Pairing | None]:
    """Plain configs for the creator: paired groups become one config per class (groups with the
    same ids merged, each group's options kept as a nested config). Returns the pairing too."""
    if isinstance(feature_targets, (TextFilterConfig, PairedTextFilterConfig)):
        feature_targets = [feature_targets]
    if feature_targets is None or isinstance(feature_targets, (str, Mapping)) or not isinstance(
            feature_targets, Sequence):
        return check_feature_targets(feature_targets), None
    groups = [t for t in feature_targets if isinstance(t, PairedTextFilterConfig)]
    if not groups:
        return check_feature_targets(feature_targets), None
    if len(groups) != len(feature_targets):
        raise DataError("feature_targets mixes TextFilterConfig and PairedTextFilterConfig; use paired groups for "
                        "every class (a class without partners has no explicit alternative)")
    ids = groups[0].ids
    if any(g.ids != ids for g in groups):
        raise DataError(f"All PairedTextFilterConfig groups must have the same ids; got {[g.ids for g in groups]}")
    configs = []
    for i, cls in enumerate(ids):
        parts = [g.to_configs()[i] for g in groups]
        options = {(p.mask, p.weight) for p in parts}
        if len(options) > 1:
            raise DataError(f"PairedTextFilterConfig groups disagree on mask/weight of class {cls!r}: {options}")
        if len(parts) == 1:
            configs.append(parts[0])
        else:
            configs.append(TextFilterConfig(targets=parts, id=cls, mask=parts[0].mask, weight=parts[0].weight,
                                            min_left_context_words=parts[0].min_left_context_words))
    partners: dict[str, dict[str, tuple[int, dict[str, str]]]] = {cls: {} for cls in ids}
    pair_id = 0
    for group in groups:
        for pair in group.pairs:
            for i, cls in enumerate(ids):
                word = pair[i].lower()
                if word in partners[cls]:
                    raise DataError(f"PairedTextFilterConfig: {cls!r} word {pair[i]!r} is paired twice across "
                                    f"groups; each word needs one partner per class")
                partners[cls][word] = (pair_id, {o: pair[j] for j, o in enumerate(ids) if o != cls})
            pair_id += 1
    return check_feature_targets(configs), Pairing(ids, partners)
