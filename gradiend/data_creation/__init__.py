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

Modules, one job each: `config` (the typed configs and their validation, paired targets), `preprocess`
(sentence splitting and filters), `tagging` (spaCy, imported lazily), `matching` (finding and
masking targets, neutral texts), `balancing` (class sizes and splits), `writing` (output tables
and atomic writers), `cache` (reusing written files) and `creator` (the `TextPredictionDataCreator` that wires them).
"""

from gradiend.data_creation.balancing import even_allocation
from gradiend.data_creation.config import (
    PairedTextFilterConfig,
    SpacyTagSpec,
    TextFilterConfig,
    TextPreprocessConfig,
)
from gradiend.data_creation.creator import TextPredictionDataCreator, TrainingFormat
from gradiend.data_creation.preprocess import preprocess_texts, split_sentences
from gradiend.data_creation.tagging import DEFAULT_SPACY_MODELS, SPACY_INSTALL_HINT

__all__ = ["DEFAULT_SPACY_MODELS", "SPACY_INSTALL_HINT", "PairedTextFilterConfig", "SpacyTagSpec", "TextFilterConfig",
           "TextPredictionDataCreator", "TextPreprocessConfig", "TrainingFormat", "even_allocation",
           "preprocess_texts", "split_sentences"]
