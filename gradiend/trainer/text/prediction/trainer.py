"""`TextPredictionTrainer`: GRADIEND on masked-token prediction data."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from gradiend.arguments import TrainingArguments, suggest
from gradiend.data import MASK, DataError, unify_classes
from gradiend.data_sources import load_texts
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.trainer.text.prediction.inputs import (
    HELDOUT,
    ROW_WISE,
    TextPredictionConfig,
    assign_splits,
    load_table,
    neutral_cap,
    pair_from_correlation_mapping,
    reshape_table,
)
from gradiend.trainer.trainer import Trainer

logger = logging.getLogger(__name__)

# DataFrame, dict class → DataFrame/Dataset, file or directory path, datasets.Dataset/DatasetDict, or Hub id
DataInput = Any
# list of str, DataFrame/file/dataset with a `text` column, or Hub id
NeutralInput = Any


class TextPredictionTrainer(Trainer):
    """Train a GRADIEND from (masked text, factual token, alternative token) rows.

    `data`: merged DataFrame (`masked, split, label_class, label[, alternative,
    alternative_class]`), a dict class → DataFrame, a CSV/TSV/parquet file or directory, a
    `datasets.Dataset`/`DatasetDict`, a saved dataset directory or a Hugging Face dataset id
    (or `hf_dataset=` with `hf_subset`/`hf_splits`).
    `eval_neutral_data`: feature-free texts (list of str, DataFrame/file/dataset with `text`).
    `model`: a base model id/path, a loaded Hugging Face model with its `tokenizer=` (used as it is, never
    reloaded), or a `ModelWithGradiend`.
    `class_merge_map` merges classes (`{"masc": ["der_nom", "den_acc"], ...}`), `all_classes` keeps only
    those classes; rows of classes outside the pair are kept for `include_other_classes` evaluations.
    The reference's data options (column names, `split_col` with random or vocabulary-held-out splits, split
    ratios, `max_counterfactuals_per_sentence`, `random_state`, `img_format`/`img_dpi`, ...) are keyword
    arguments or one `config=TextPredictionConfig(...)`; see `gradiend.trainer.text.prediction.inputs`.
    Positional order is the reference's: `(model, run_id, data, correlation_mapping, config, target_classes)`.
    """

    def __init__(self, model: str | ModelWithGradiend | Any, run_id: str | None = None, data: DataInput | None = None,
                 correlation_mapping: Mapping[str, float] | None = None, config: TextPredictionConfig | None = None,
                 target_classes: Sequence[str] | None = None, *, args: TrainingArguments | None = None,
                 training_args: TrainingArguments | None = None, eval_neutral_data: NeutralInput | None = None,
                 n_features: int | None = None, mask: str | None = None, tokenizer: Any = None,
                 evaluator_class: Any = None, **options: Any) -> None:
        if args is not None and training_args is not None and args is not training_args:
            raise ValueError("Pass either args= or training_args=, not both")
        if run_id is not None and not isinstance(run_id, str):
            raise TypeError(f"run_id must be a str or None, got {type(run_id).__name__}; the second positional "
                            f"argument is run_id (as in the reference): pass data= by keyword")
        if evaluator_class is not None:
            raise ValueError("evaluator_class is not supported by gradiend; subclass TextPredictionTrainer and "
                             "override evaluate_encoder/evaluate_decoder to change the evaluation")
        config = _build_config(config, run_id=run_id, data=data, eval_neutral_data=eval_neutral_data,
                               n_features=n_features, correlation_mapping=correlation_mapping, **options)
        target_classes = pair_from_correlation_mapping(config.correlation_mapping,
                                                       target_classes if target_classes else config.target_classes)
        arguments = _with_config(training_args or args or TrainingArguments(), config)
        target_classes = _positive_first(target_classes, arguments.positive_class, config.correlation_mapping)
        super().__init__(model, target_classes=target_classes, args=arguments, run_id=config.run_id,
                         n_features=config.n_features, tokenizer=tokenizer)
        self.config = config
        self.correlation_mapping = dict(config.correlation_mapping or {})
        self._load_data(config, target_classes, _mask_placeholder(mask, config, arguments))

    def _load_data(self, config: TextPredictionConfig, target_classes: Sequence[str] | None, mask: str) -> None:
        """Read, reshape, unify and split the data; load the neutral texts."""
        config = config.replace(mask_placeholder=mask, dataset_trust_remote_code=_trust_remote_code(config,
                                                                                                    self._args))
        seed = config.random_state if config.random_state is not None else self._args.seed
        table = reshape_table(load_table(config), config, target_classes, seed)
        unified = unify_classes(table, target_classes, all_classes=config.all_classes,
                                class_merge_map=config.class_merge_map, seed=seed, mask=MASK,
                                transition_groups=config.class_merge_transition_groups)
        positive = self._args.positive_class
        if target_classes is None and positive is not None and unified.pair[0] != positive:
            if positive not in unified.pair:
                raise ValueError(f"positive_class={positive!r} is not one of the target classes {list(unified.pair)}")
            unified = unify_classes(table, list(unified.pair)[::-1], all_classes=config.all_classes,
                                    class_merge_map=config.class_merge_map, seed=seed, mask=MASK,
                                    transition_groups=config.class_merge_transition_groups)
        self._data_seed = seed
        self._rows, self._pair = assign_splits(unified.rows, config, seed), unified.pair
        self._other_rows = assign_splits(unified.other_rows, config, seed) if len(unified.other_rows) else \
            unified.other_rows
        self._all_classes = list(unified.all_classes)
        self._target_classes = list(self._pair)
        texts = _neutral_texts(config.eval_neutral_data, config.dataset_trust_remote_code)
        self._neutral = neutral_cap(texts, config.eval_neutral_max_rows, seed)
        self._decoder_targets = _decoder_targets(config, self._target_classes, self._all_classes, self._other_rows)

    # -- the run's inputs, saved with it ------------------------------------------------------------------------
    def train(self, *args: Any, **kwargs: Any) -> Any:
        """`Trainer.train`, then `run_config.json` records the inputs and data options (see `data_options`)."""
        result = super().train(*args, **kwargs)
        self.save_run_config()
        return result

    def data_options(self) -> dict[str, Any]:
        """The data options that shape the rows and their splits (JSON): column names, `split_col`, the drawn
        split's ratios and seed (`random_state`, resolved), extra counterfactuals, Hub inputs, the evaluation
        options. `Trainer.from_experiment` passes them back, so the same rows land in the same splits.
        A `split_group_key` function cannot be saved: its names are, and reattaching asks for it again."""
        config = self.config
        options = {name: getattr(config, name) for name in SAVED_DATA_OPTIONS}
        options["random_state"] = self._data_seed
        if config.split_col in (None, HELDOUT):
            options.update(split_train_ratio=config.split_train_ratio, split_val_ratio=config.split_val_ratio,
                           split_test_ratio=config.split_test_ratio)
        if config.split_group_key is not None:
            keys = config.split_group_key if isinstance(config.split_group_key, Sequence) else [config.split_group_key]
            options["split_group_key"] = [getattr(k, "__qualname__", repr(k)) for k in keys]
        return options

    def run_config(self, as_input: Callable[[Any], Any] | None = None) -> dict[str, Any]:
        """The `run_config.json` record: the inputs, the arguments and the data options (`data_options`).

        `as_input` renders the model, data and neutral-data inputs (default: a file or directory as its absolute
        path, a Hub id as given, None for an in-memory value, which `from_experiment` then asks for); `gradiend
        train` keeps a config file's inline values. A model passed in loaded has no path: None.
        """
        render = as_input or _path_or_id
        config = self.config
        return {"model": None if self._base is not None else render(self._base_model_arg),
                "data": render(config.data), "target_classes": list(self.pair), "run_id": self.run_id,
                "eval_neutral_data": render(config.eval_neutral_data),
                "training_args": self._layout_args.to_dict(), "all_classes": config.all_classes,
                "class_merge_map": config.class_merge_map, "data_options": self.data_options()}

    def save_run_config(self, as_input: Callable[[Any], Any] | None = None) -> Path:
        """Write `run_config` (see there) into the experiment directory (main rank only); the file's path."""
        from gradiend import distributed
        from gradiend.experiment import atomic_write_json

        path = Path(self.experiment.run_config)
        if distributed.is_main():
            atomic_write_json(path, self.run_config(as_input))
        return path

    # -- the configuration's evaluation options -----------------------------------------------------------------
    def _decoder_eval_options(self) -> dict[str, Any]:
        """`decoder_eval_targets` (restricted to the pair unless `decoder_eval_restrict_to_target_classes=False`;
        `"label"`: row-wise scoring), `decoder_eval_ignore_tokens`, `decoder_eval_prob_on_other_class` and
        `decoder_eval_export_row_wise_csv` (the rows' scores as `decoder_row_wise_scores.csv` in the experiment)
        for the decoder grid."""
        config = self.config
        export = Path(self.experiment_dir) / ROW_SCORES_CSV if config.decoder_eval_export_row_wise_csv else None
        return {"targets": self._decoder_targets, "ignore_tokens": config.decoder_eval_ignore_tokens,
                "prob_on_other_class": config.decoder_eval_prob_on_other_class,
                "row_wise": True if config.decoder_eval_targets == ROW_WISE else None, "export_rows": export}

    def _neutral_excluded_words(self) -> list[str]:
        return list(self.config.eval_neutral_additional_excluded_words or [])

    @staticmethod
    def _maybe_fail_on_non_convergence(args: TrainingArguments, convergent_count: int, min_convergent: int) -> None:
        """Raise when `fail_on_non_convergence` is set and fewer than `min_convergent` seeds converged."""
        if args.fail_on_non_convergence and convergent_count < min_convergent:
            raise RuntimeError(f"Training did not converge (fail_on_non_convergence=True): {convergent_count} of the "
                               f"required {min_convergent} seed(s) converged; try more steps, more seeds or another "
                               f"learning_rate")

    # -- plots: the config's image format and resolution as defaults --------------------------------------------
    def _plot_options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs.setdefault("img_format", self.config.img_format)
        if self.config.img_dpi is not None:
            kwargs.setdefault("dpi", self.config.img_dpi)
        return kwargs

    def plot_training_convergence(self, *args: Any, **kwargs: Any) -> Any:
        return super().plot_training_convergence(*args, **self._plot_options(kwargs))

    def plot_encoder_distributions(self, *args: Any, **kwargs: Any) -> Any:
        return super().plot_encoder_distributions(*args, **self._plot_options(kwargs))

    def plot_probability_shifts(self, *args: Any, **kwargs: Any) -> Any:
        return super().plot_probability_shifts(*args, **self._plot_options(kwargs))

    def unified_data(self) -> tuple[pd.DataFrame, tuple[str, str]]:
        return self._rows, self._pair

    def neutral_texts(self) -> list[str] | None:
        return self._neutral

    @property
    def all_classes(self) -> list[str]:
        """Every class kept from the data (`all_classes=`, default: all), the pair included."""
        return list(self._all_classes)

    def other_class_rows(self) -> pd.DataFrame:
        """Rows of the classes outside the pair (label 0; never trained on), for `include_other_classes`."""
        return self._other_rows

    @property
    def combined_data(self) -> pd.DataFrame:
        """The validated training rows in the unified schema (a copy)."""
        return self._rows.copy()


#: The decoder's per-row scores (`decoder_eval_export_row_wise_csv=True`), in the experiment directory
ROW_SCORES_CSV = "decoder_row_wise_scores.csv"
#: `TextPredictionConfig` fields saved in run_config.json as they are (see `TextPredictionTrainer.data_options`)
SAVED_DATA_OPTIONS = ("masked_col", "label_col", "label_class_col", "alternative_col", "alternative_class_col",
                      "use_class_names_as_columns", "mask_placeholder", "split_col", "split_group_col",
                      "max_counterfactuals_per_sentence", "hf_dataset", "hf_subset", "hf_splits",
                      "eval_neutral_max_rows", "decoder_eval_targets", "decoder_eval_restrict_to_target_classes",
                      "decoder_eval_prob_on_other_class", "decoder_eval_ignore_tokens",
                      "decoder_eval_export_row_wise_csv", "eval_neutral_additional_excluded_words", "img_format",
                      "img_dpi", "correlation_mapping", "class_merge_transition_groups")


def _path_or_id(value: Any) -> str | None:
    """A file/directory (absolute) or Hub id input as a string; None for in-memory inputs (data= on reattach)."""
    if isinstance(value, os.PathLike) or isinstance(value, str):
        path = Path(value)
        return str(path.resolve()) if path.exists() else str(value)
    return None


def _positive_first(pair: list[str] | None, positive: str | None,
                    mapping: Mapping[str, float] | None) -> list[str] | None:
    """`TrainingArguments.positive_class` first in the pair (it encodes +1); a different correlation_mapping is an
    error. Without target_classes the pair comes from the data, and is ordered once it is known."""
    if positive is None or pair is None:
        return pair
    if positive not in pair:
        raise ValueError(f"positive_class={positive!r} is not one of the target classes {list(pair)}")
    if mapping is not None and pair[0] != positive:
        raise ValueError(f"correlation_mapping puts {pair[0]!r} first (+1), positive_class names {positive!r}; "
                         f"pass one of them")
    return [positive, *[c for c in pair if c != positive]]


def _decoder_targets(config: TextPredictionConfig, pair: Sequence[str], known: Sequence[str],
                     other_rows: pd.DataFrame) -> dict[str, list[str]] | None:
    """Words the decoder grid scores per class: the given ones (classes must exist in the data), kept to the pair
    when `decoder_eval_restrict_to_target_classes`, else with every other class (its data's words by default).
    `"label"` (row-wise) gives none: the pair is scored on each row's own words."""
    given = {} if config.decoder_eval_targets == ROW_WISE else dict(config.decoder_eval_targets or {})
    unknown = sorted(set(given) - set(known) - set(pair))
    if unknown:
        raise ValueError(f"decoder_eval_targets names classes the data does not have: {unknown}; known classes: "
                         f"{sorted(set(known) | set(pair))}")
    if config.decoder_eval_restrict_to_target_classes:
        dropped = sorted(set(given) - set(pair))
        if dropped:
            logger.info("decoder_eval_targets: classes %s are outside the pair and not scored "
                        "(decoder_eval_restrict_to_target_classes=True)", dropped)
        given = {c: w for c, w in given.items() if c in pair}
    elif len(other_rows):
        for cls, words in other_rows.groupby("factual_class")["factual"]:
            given.setdefault(str(cls), sorted(set(map(str, words))))
    return given or None


def _build_config(config: TextPredictionConfig | None, **given: Any) -> TextPredictionConfig:
    """`config`, or one built from the keyword arguments; both at once is an error (nothing is ignored)."""
    known = {f.name for f in dataclasses.fields(TextPredictionConfig)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"TextPredictionTrainer got unexpected keyword argument(s) {unknown}"
                        f"{suggest(unknown[0], known)}")
    set_here = {k: v for k, v in given.items() if v is not None or k == "split_col"}  # split_col=None draws splits
    if config is None:
        return TextPredictionConfig(**set_here)
    if not isinstance(config, TextPredictionConfig):
        raise TypeError(f"config must be a TextPredictionConfig, got {type(config).__name__}")
    if set_here:
        raise ValueError(f"Pass the data options either in config= or as arguments, not both (given as arguments: "
                         f"{sorted(set_here)})")
    return config


def _with_config(args: TrainingArguments, config: TextPredictionConfig) -> TrainingArguments:
    """`decoder_eval_lms_max_samples` is the reference name of `decoder_eval_max_size_neutral`."""
    if not isinstance(args, TrainingArguments):
        raise TypeError(f"args must be TrainingArguments, got {type(args).__name__}")
    cap = config.decoder_eval_lms_max_samples
    if cap is None or args.decoder_eval_max_size_neutral == cap:
        return args
    if args.decoder_eval_max_size_neutral is not None:
        raise ValueError(f"decoder_eval_lms_max_samples={cap} and TrainingArguments.decoder_eval_max_size_neutral="
                         f"{args.decoder_eval_max_size_neutral} name the same cap; pass one of them")
    return args.replace(decoder_eval_max_size_neutral=cap)


def _mask_placeholder(mask: str | None, config: TextPredictionConfig, args: TrainingArguments) -> str:
    """The data's slot marker: `mask=`, else the config's, else `TrainingArguments.mask_placeholder`."""
    candidates = {value for value in (mask, config.mask_placeholder, args.mask_placeholder)
                  if value is not None and value != MASK}
    if len(candidates) > 1:
        raise ValueError(f"Different mask placeholders given ({sorted(candidates)}); the data has one slot marker")
    return candidates.pop() if candidates else MASK


def _trust_remote_code(config: TextPredictionConfig, args: TrainingArguments) -> bool | None:
    if config.dataset_trust_remote_code is None:
        return args.dataset_trust_remote_code
    if args.dataset_trust_remote_code not in (None, config.dataset_trust_remote_code):
        raise ValueError("dataset_trust_remote_code differs between the trainer and TrainingArguments; pass one")
    return config.dataset_trust_remote_code


def _neutral_texts(data: NeutralInput | None, trust_remote_code: bool | None = None) -> list[str] | None:
    if data is None:
        return None
    texts, _ = load_texts(data, "text", trust_remote_code=trust_remote_code, what="eval_neutral_data")
    if not texts:
        raise DataError("eval_neutral_data has no non-empty texts")
    return texts
