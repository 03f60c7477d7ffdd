"""`TextPredictionConfig`: the reference's data options of `TextPredictionTrainer`, and what they do to the data.

Each option reshapes the user's table before `gradiend.data.unify` validates it (column names, the mask
placeholder, Hub loading, extra counterfactuals) or assigns the splits of the unified rows afterwards
(random or vocabulary-held-out splits). Options whose behaviour lives elsewhere (decoder targets, plot
format) are carried on the config and read by the trainer. An option gradiend cannot honour is refused
with what to use instead; none is accepted and ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from gradiend.data import MASK, DataError, check_merge_map, check_transition_groups
from gradiend.data_sources import SPLIT_NAMES, dataset_to_frames, load_hub_dataset, resolve_table_input

logger = logging.getLogger(__name__)

SPLIT_FROM_DATA = "split"
HELDOUT = "heldout"
# decoder_eval_targets="label": the decoder grid scores each row on its own words (the reference's row-wise mode)
ROW_WISE = "label"
IMG_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")
# unified columns a held-out split may group by (the user's other columns do not survive `unify`)
GROUP_COLUMNS = ("factual", "alternative", "masked")
# the decoder-evaluation switches (bools; read by the trainer)
_DECODER_FLAGS = ("decoder_eval_restrict_to_target_classes", "decoder_eval_prob_on_other_class",
                  "decoder_eval_export_row_wise_csv")


@dataclass
class TextPredictionConfig:
    """Data and evaluation options of a `TextPredictionTrainer` (the reference's `config=` object).

    Column names (`masked_col`, `label_col`, ...) name the user's columns; `split_col` is `"split"` (the data's
    split column, or another column name), None (random row-level train/validation/test by the split ratios) or
    `"heldout"` (vocabulary held out: each class's target words, grouped by `split_group_col` after
    `split_group_key`, go whole into one split). `random_state` seeds the sampled alternatives and drawn splits
    (default: `TrainingArguments.seed`).
    """

    run_id: str | None = None
    data: Any = None
    hf_dataset: str | None = None
    hf_subset: str | list[str] | None = None
    hf_splits: list[str] | None = None
    dataset_trust_remote_code: bool | None = None
    target_classes: list[str] | None = None
    all_classes: list[str] | None = None
    masked_col: str = "masked"
    label_col: str = "label"
    label_class_col: str = "label_class"
    mask_placeholder: str = MASK
    split_col: str | None = SPLIT_FROM_DATA
    split_group_col: str | None = None
    split_group_key: Callable[[Any], Any] | Sequence[Callable[[Any], Any]] | None = None
    split_ratios: Sequence[float] | Mapping[str, float] | None = None
    split_train_ratio: float = 0.8
    split_val_ratio: float = 0.1
    split_test_ratio: float = 0.1
    alternative_col: str = "alternative"
    alternative_class_col: str = "alternative_class"
    use_class_names_as_columns: bool = True
    max_counterfactuals_per_sentence: int = 1
    random_state: int | None = None
    n_features: int = 1
    decoder_eval_targets: Any = None
    decoder_eval_restrict_to_target_classes: bool = True
    decoder_eval_prob_on_other_class: bool = True
    decoder_eval_export_row_wise_csv: bool = False
    decoder_eval_ignore_tokens: list[str] | None = None
    decoder_eval_lms_max_samples: int | None = None
    class_merge_map: dict[str, list[str]] | None = None
    class_merge_transition_groups: list[list[str]] | None = None
    eval_neutral_data: Any = None
    eval_neutral_additional_excluded_words: list[str] | None = None
    eval_neutral_max_rows: int | None = None
    img_format: str = "png"
    img_dpi: int | None = None
    correlation_mapping: dict[str, float] | None = field(default=None)

    def __post_init__(self) -> None:
        self._check_types()
        self.split_train_ratio, self.split_val_ratio, self.split_test_ratio = split_ratios(
            self.split_ratios, self.split_train_ratio, self.split_val_ratio, self.split_test_ratio)
        self._check_options()

    def _check_types(self) -> None:
        for name in ("masked_col", "label_col", "label_class_col", "alternative_col", "alternative_class_col",
                     "mask_placeholder", "img_format"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise TypeError(f"{name} must be a non-empty str, got {value!r}")
        for name in ("hf_dataset", "split_col", "split_group_col", "run_id"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
        for name in ("max_counterfactuals_per_sentence", "n_features", "eval_neutral_max_rows",
                     "decoder_eval_lms_max_samples", "img_dpi", "random_state"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{name} must be an int{'' if name == 'n_features' else ' or None'}, got {value!r}")
        for name in ("max_counterfactuals_per_sentence", "eval_neutral_max_rows", "decoder_eval_lms_max_samples",
                     "img_dpi"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        for name in ("use_class_names_as_columns", *_DECODER_FLAGS):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.dataset_trust_remote_code is not None and not isinstance(self.dataset_trust_remote_code, bool):
            raise TypeError(f"dataset_trust_remote_code must be a bool or None, got {self.dataset_trust_remote_code!r}")

    def _check_options(self) -> None:
        if self.data is not None and self.hf_dataset is not None:
            raise DataError("Pass either data= or hf_dataset=, not both")
        if self.hf_dataset is None and (self.hf_subset is not None or self.hf_splits is not None):
            raise DataError("hf_subset and hf_splits choose what hf_dataset= loads; pass hf_dataset= too")
        if self.img_format.lower().lstrip(".") not in IMG_FORMATS:
            raise ValueError(f"img_format must be one of {IMG_FORMATS}, got {self.img_format!r}")
        self.img_format = self.img_format.lower().lstrip(".")
        self._check_decoder_options()
        check_transition_groups(self.class_merge_transition_groups, check_merge_map(self.class_merge_map))
        self._check_split_options()

    def _check_decoder_options(self) -> None:
        """`decoder_eval_targets` (class → words), the ignored LMS words and the excluded neutral words."""
        from gradiend.decoder_eval import check_targets

        if isinstance(self.decoder_eval_targets, str) and self.decoder_eval_targets != ROW_WISE:
            raise ValueError(f"decoder_eval_targets={self.decoder_eval_targets!r}: pass {ROW_WISE!r} (score each row "
                             f"on its own factual and counterfactual word), a dict class -> [words], or None for the "
                             f"data's words")
        check_targets(None if self.decoder_eval_targets == ROW_WISE else self.decoder_eval_targets,
                      self.decoder_eval_ignore_tokens)
        words = self.eval_neutral_additional_excluded_words
        if words is not None and (isinstance(words, str) or not isinstance(words, Sequence)
                                  or not all(isinstance(w, str) for w in words)):
            raise TypeError(f"eval_neutral_additional_excluded_words must be a list of words, got {words!r}")

    def _check_split_options(self) -> None:
        if self.split_col in (None, HELDOUT):
            if self.split_group_col is not None and self.split_col != HELDOUT:
                raise ValueError("split_group_col groups a vocabulary-held-out split; pass split_col='heldout'")
            if self.split_group_col is not None and self.split_group_col not in GROUP_COLUMNS:
                raise ValueError(f"split_group_col must be one of {GROUP_COLUMNS} (columns of the unified rows), got "
                                 f"{self.split_group_col!r}")
            if self.split_group_key is not None and self.split_col != HELDOUT:
                raise ValueError("split_group_key groups a vocabulary-held-out split; pass split_col='heldout'")
            _group_key(self.split_group_key)  # callables or a clear error
            return
        if self.split_group_col is not None or self.split_group_key is not None:
            raise ValueError("split_group_col/split_group_key group a vocabulary-held-out split; pass "
                             "split_col='heldout'")
        if (self.split_train_ratio, self.split_val_ratio, self.split_test_ratio) != (0.8, 0.1, 0.1):
            raise ValueError(f"split ratios draw the splits when split_col is None (random rows) or 'heldout' "
                             f"(held-out vocabulary); with split_col={self.split_col!r} the data's column decides")

    def replace(self, **changes: Any) -> TextPredictionConfig:
        """A validated copy with `changes` applied."""
        return dataclasses.replace(self, **changes)


def split_ratios(ratios: Sequence[float] | Mapping[str, float] | None, train: float, val: float,
                 test: float) -> tuple[float, float, float]:
    """(train, validation, test) fractions from `split_ratios` (a triple or a mapping) or the three ratios."""
    if ratios is not None:
        if isinstance(ratios, Mapping):
            aliases = {"train": "train", "val": "validation", "validation": "validation", "dev": "validation",
                       "test": "test"}
            unknown = [k for k in ratios if k not in aliases]
            if unknown:
                raise ValueError(f"split_ratios keys must be train, validation (val) and test, got {unknown}")
            named = {aliases[k]: v for k, v in ratios.items()}
            train, val, test = (named.get(name, 0.0) for name in SPLIT_NAMES)
        elif isinstance(ratios, Sequence) and not isinstance(ratios, str) and len(ratios) == 3:
            train, val, test = ratios
        else:
            raise ValueError(f"split_ratios must be (train, validation, test) or a mapping of them, got {ratios!r}")
    values = (train, val, test)
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"split ratios must be finite numbers >= 0, got {values}")
    if not math.isclose(sum(values), 1.0, abs_tol=1e-6) or train <= 0:
        raise ValueError(f"split ratios (train, validation, test) must sum to 1 with a positive train share, got "
                         f"{values}")
    return float(train), float(val), float(test)


# -- loading and reshaping the user's table ------------------------------------------------------------------
def load_table(config: TextPredictionConfig) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """The user's table: `data` (any input `resolve_table_input` reads) or the Hub dataset of `hf_dataset`."""
    if config.hf_dataset is None:
        if config.data is None:
            raise DataError("TextPredictionTrainer needs data= (a DataFrame, a dict of DataFrames, a path) or "
                            "hf_dataset= (a Hugging Face dataset id)")
        return resolve_table_input(config.data, "Training data", config.dataset_trust_remote_code)
    return _hub_table(config.hf_dataset, config)


def _hub_table(name: str, config: TextPredictionConfig) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """Merged rows of the chosen subsets (configs) and splits of a Hub dataset."""
    subsets = [config.hf_subset] if config.hf_subset is None or isinstance(config.hf_subset, str) \
        else list(config.hf_subset)
    frames = []
    for subset in subsets:
        loaded = dataset_to_frames(load_hub_dataset(name, subset, trust_remote_code=config.dataset_trust_remote_code))
        if isinstance(loaded, dict):
            raise DataError(f"{name}{'/' + subset if subset else ''}: expected split names as dataset keys, got "
                            f"{list(loaded)}")
        frames.append(loaded)
    table = pd.concat(frames, ignore_index=True)
    if config.hf_splits is not None:
        from gradiend.data_sources import normalize_split_name

        wanted = {normalize_split_name(s) for s in config.hf_splits}
        if "split" not in table.columns:
            raise DataError(f"{name}: hf_splits needs the dataset's splits, but it has none")
        table = table[table["split"].astype(str).map(normalize_split_name).isin(wanted)].reset_index(drop=True)
        if table.empty:
            raise DataError(f"{name}: no rows in the splits {sorted(wanted)}")
    return table


def reshape_table(table: pd.DataFrame | dict[str, pd.DataFrame], config: TextPredictionConfig,
                  pair: Sequence[str] | None, seed: int | None) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """The table in the layout `unify` reads: our column names, `[MASK]` slots, a split column, counterfactuals."""
    if isinstance(table, Mapping):
        return {str(cls): _reshape_class_frame(frame, str(cls), config) for cls, frame in table.items()}
    frame = _rename(table, {config.masked_col: "masked", config.label_col: "label",
                            config.label_class_col: "label_class"}, "Training data", required=True)
    frame = _rename(frame, {config.alternative_col: "alternative",
                            config.alternative_class_col: "alternative_class"}, "Training data", required=False)
    frame = _with_split_column(frame, config, "Training data")
    frame = _mask_slots(frame, config.mask_placeholder)
    if config.max_counterfactuals_per_sentence > 1:
        frame = add_counterfactuals(frame, pair, config.max_counterfactuals_per_sentence, seed)
    return frame


def _reshape_class_frame(frame: Any, cls: str, config: TextPredictionConfig) -> Any:
    if not isinstance(frame, pd.DataFrame):
        return frame  # unify names the bad entry
    where = f"Data of class {cls!r}"
    frame = _rename(frame, {config.masked_col: "masked"}, where, required=True)
    if not config.use_class_names_as_columns:
        if config.label_col not in frame.columns:
            raise DataError(f"{where}: label_col {config.label_col!r} is not a column (use_class_names_as_columns="
                            f"False reads each class's token from it); columns: {list(frame.columns)}")
        frame = frame.drop(columns=[c for c in frame.columns if c not in ("masked", "split", config.label_col)])
        frame = frame.rename(columns={config.label_col: cls})
    if config.max_counterfactuals_per_sentence > 1:
        raise DataError("max_counterfactuals_per_sentence > 1 needs the merged layout (one DataFrame with "
                        "label_class and label columns); pass the classes as one table")
    frame = _with_split_column(frame, config, where, optional=True)
    return _mask_slots(frame, config.mask_placeholder)


def _rename(frame: pd.DataFrame, names: Mapping[str, str], where: str, required: bool) -> pd.DataFrame:
    """Rename the user's columns to ours; a renamed-away name that is missing is an error naming the argument."""
    renames = {}
    for user, ours in names.items():
        if user == ours:
            continue
        if user not in frame.columns:
            if required:
                raise DataError(f"{where}: column {user!r} (given as the {ours!r} column) does not exist; columns: "
                                f"{list(frame.columns)}")
            continue
        if ours in frame.columns:
            raise DataError(f"{where}: both {user!r} and {ours!r} are columns; {user!r} was named as the {ours!r} "
                            f"column, so drop or rename the other")
        renames[user] = ours
    return frame.rename(columns=renames) if renames else frame


def _with_split_column(frame: pd.DataFrame, config: TextPredictionConfig, where: str,
                       optional: bool = False) -> pd.DataFrame:
    """`split_col` named the split column: rename it; None/'heldout': a placeholder split assigned later."""
    if config.split_col in (None, HELDOUT):
        return frame.drop(columns=["split"], errors="ignore").assign(split="train")
    if config.split_col != SPLIT_FROM_DATA:
        if config.split_col not in frame.columns:
            raise DataError(f"{where}: split_col {config.split_col!r} is not a column; columns: "
                            f"{list(frame.columns)}. Use split_col=None for random splits")
        return _rename(frame, {config.split_col: "split"}, where, required=True)
    if "split" not in frame.columns and not optional:
        raise DataError(f"{where}: no 'split' column; name it with split_col=..., or draw splits with "
                        f"split_col=None (random rows) or split_col='heldout' (held-out vocabulary)")
    return frame


def _mask_slots(frame: pd.DataFrame, placeholder: str) -> pd.DataFrame:
    """The data's slot marker (e.g. `[PRONOUN]`) as gradiend's `[MASK]`."""
    if placeholder == MASK or "masked" not in frame.columns:
        return frame
    texts = frame["masked"].astype(str)
    lacking = ~texts.str.contains(placeholder, regex=False)
    if lacking.any():
        raise DataError(f"Training data: {int(lacking.sum())} row(s) of 'masked' contain no {placeholder} "
                        f"placeholder (mask_placeholder), e.g. {texts[lacking].iloc[0]!r}")
    return frame.assign(masked=texts.str.replace(placeholder, MASK, regex=False))


def add_counterfactuals(frame: pd.DataFrame, pair: Sequence[str] | None, limit: int,
                        seed: int | None) -> pd.DataFrame:
    """Rows without an alternative become up to `limit` rows, each with a different token of the other class.

    Tokens are drawn without replacement, weighted by how often the other class uses them (case-insensitive
    distinct). Rows that name their alternative are kept as they are.
    """
    has_alt = "alternative" in frame.columns and frame["alternative"].fillna("").astype(str).str.strip().ne("")
    classes = sorted(frame["label_class"].astype(str).unique())
    chosen = list(pair) if pair is not None else classes
    if len(chosen) != 2:
        raise DataError(f"max_counterfactuals_per_sentence pairs two classes; the data has {classes}: pass "
                        f"target_classes=[A, B]")
    rng = np.random.default_rng(seed)
    out = []
    for index, row in frame.iterrows():
        cls = str(row["label_class"])
        if (isinstance(has_alt, pd.Series) and has_alt[index]) or cls not in chosen:
            out.append(row.to_dict())
            continue
        other = chosen[1 - chosen.index(cls)]
        for token in _draw_tokens(frame.loc[frame["label_class"].astype(str) == other, "label"], limit, rng):
            out.append({**row.to_dict(), "alternative": token, "alternative_class": other})
    return pd.DataFrame(out, columns=[*frame.columns, *[c for c in ("alternative", "alternative_class")
                                                          if c not in frame.columns]])


def _draw_tokens(tokens: pd.Series, limit: int, rng: np.random.Generator) -> list[str]:
    counts = Counter(str(t) for t in tokens if str(t).strip())
    by_lower: dict[str, tuple[str, int]] = {}
    for token, count in sorted(counts.items()):
        first, total = by_lower.get(token.lower(), (token, 0))
        by_lower[token.lower()] = (first, total + count)
    if not by_lower:
        return []
    names = sorted(by_lower)
    weights = np.array([by_lower[n][1] for n in names], dtype=float)
    picks = rng.choice(len(names), size=min(limit, len(names)), replace=False, p=weights / weights.sum())
    return [by_lower[names[i]][0] for i in picks]


# -- splits of the unified rows ----------------------------------------------------------------------------------
def assign_splits(rows: pd.DataFrame, config: TextPredictionConfig, seed: int | None) -> pd.DataFrame:
    """Draw the splits of unified rows when `split_col` is None (random rows) or 'heldout' (held-out words)."""
    if config.split_col not in (None, HELDOUT):
        return rows
    ratios = (config.split_train_ratio, config.split_val_ratio, config.split_test_ratio)
    rng = np.random.default_rng(seed)
    rows = rows.copy()
    if config.split_col is None:
        for _, index in rows.groupby("factual_class").groups.items():
            rows.loc[index, "split"] = _spread(list(index), ratios, rng, "rows")
        return rows
    key = _group_key(config.split_group_key)
    column = config.split_group_col or "factual"
    for cls, part in rows.groupby("factual_class"):
        groups = part[column].astype(str).map(key)
        names = sorted(groups.unique())
        placed = dict(zip(names, _spread(names, ratios, rng, f"{column} groups of class {cls!r}"), strict=True))
        rows.loc[part.index, "split"] = groups.map(placed).to_numpy()
    logger.info("Vocabulary-held-out splits by %s: %s", column,
                rows.groupby(["factual_class", "split"]).size().to_dict())
    return rows


def _spread(items: list[Any], ratios: tuple[float, float, float], rng: np.random.Generator, what: str) -> list[str]:
    """A split name per item (shuffled), by the ratios; every split with a positive ratio gets at least one."""
    needed = sum(r > 0 for r in ratios)
    if len(items) < needed:
        raise DataError(f"{len(items)} {what} cannot fill {needed} splits (ratios {ratios}); add data or set the "
                        f"ratio of a split to 0")
    counts = [round(r * len(items)) for r in ratios]
    for i, r in enumerate(ratios):
        if r > 0 and counts[i] == 0:
            counts[i] = 1
    counts[0] = len(items) - counts[1] - counts[2]
    while counts[0] < 1:  # rounding took the train share: give it back from the largest other split
        j = 1 if counts[1] >= counts[2] else 2
        counts[j] -= 1
        counts[0] += 1
    labels = np.repeat(np.array(SPLIT_NAMES), counts)
    return list(labels[rng.permutation(len(items))])


def _group_key(key: Any) -> Callable[[str], Any]:
    """One callable applying `split_group_key` (a callable or a sequence of them, in order)."""
    if key is None:
        return str
    steps = [key] if callable(key) else list(key) if isinstance(key, Sequence) and not isinstance(key, str) else None
    if not steps or not all(callable(step) for step in steps):
        raise TypeError(f"split_group_key must be a callable or a sequence of callables, got {key!r}")

    def apply(value: str) -> Any:
        for step in steps:
            value = step(value)
        return value

    return apply


def neutral_cap(texts: list[str] | None, limit: int | None, seed: int | None) -> list[str] | None:
    """At most `limit` neutral texts (a seeded sample in their original order)."""
    if texts is None or limit is None or len(texts) <= limit:
        return texts
    picks = np.random.default_rng(seed).choice(len(texts), size=limit, replace=False)
    return [texts[i] for i in sorted(picks)]


def pair_from_correlation_mapping(mapping: Mapping[str, float] | None,
                                  target_classes: Sequence[str] | None) -> list[str] | None:
    """The pair ordered so the class mapped to +1 comes first (it encodes positively), or `target_classes`."""
    if mapping is None:
        return list(target_classes) if target_classes is not None else None
    if not isinstance(mapping, Mapping) or len(mapping) != 2 or sorted(
            float(v) for v in mapping.values()) != [-1.0, 1.0]:
        raise ValueError(f"correlation_mapping must map the two target classes to +1 and -1, got {mapping!r}")
    ordered = sorted(mapping, key=lambda cls: -float(mapping[cls]))
    if target_classes is not None and set(map(str, target_classes)) != set(map(str, ordered)):
        raise ValueError(f"correlation_mapping names {ordered}, target_classes {list(target_classes)}; they must "
                         f"name the same two classes")
    return [str(c) for c in ordered]
