"""The trainer's evaluation and rewriting methods: each builds a request and calls `encoder_eval`,
`decoder_eval` or `rewrite`, with caches in the experiment directory keyed by the model's identity."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from gradiend.arguments import TrainingArguments
    from gradiend.decoder_eval import Selector, SummaryExtractor
    from gradiend.experiment import ExperimentDir
    from gradiend.model_with_gradiend import ModelWithGradiend
    from gradiend.selection import MetricsFn, SelectionPolicy


class EvaluationMethods:
    """`evaluate_encoder`, `encode`, `evaluate_decoder`, `evaluate`, `rewrite_base_model` of the Trainer."""

    _args: TrainingArguments
    _model_path: str
    _base_model_arg: str
    _prune_revision: int
    pair: tuple[str, str]
    experiment: ExperimentDir

    # provided by Trainer
    unified_data: Callable[[], tuple[pd.DataFrame, tuple[str, str]]]
    other_class_rows: Callable[[], pd.DataFrame]
    neutral_texts: Callable[[], list[str] | None]
    get_model: Callable[[], ModelWithGradiend]
    load_model: Callable[[str | os.PathLike], ModelWithGradiend]
    plot_probability_shifts: Callable[..., str]
    plot_encoder_distributions: Callable[..., str]

    def _decoder_eval_options(self) -> dict[str, Any]:
        """`DecoderRequest` options a trainer's configuration sets (targets, ignored words, metric); none here."""
        return {}

    def _neutral_excluded_words(self) -> list[str]:
        """Words, besides the target words, never masked in the neutral variants of the encoder evaluation."""
        return []

    def _model_identity(self) -> dict[str, Any]:
        """What identifies the current model in evaluation caches: path, file stamp, in-memory prunes, and
        `max_length` (it changes tokenisation, so a reattached trainer with another value recomputes)."""
        from gradiend.experiment import weights_stamp

        stamp = weights_stamp(self._model_path)
        if self._prune_revision:
            stamp = f"{stamp}+post-pruned-{self._prune_revision}"
        return {"model": self._model_path, "weights": stamp, "max_length": self._args.max_length}

    # -- encoder evaluation ---------------------------------------------------------------------
    def evaluate_encoder(self, split: str | Sequence[str] = "test", max_size: int | None = None,
                         neutral_data_df: pd.DataFrame | None = None, use_cache: bool | None = None,
                         return_df: bool = False, encoder_df: pd.DataFrame | Mapping[str, Any] | None = None,
                         model_with_gradiend: ModelWithGradiend | None = None, plot: bool = False,
                         show_progress: bool | None = None, plot_kwargs: dict[str, Any] | None = None, *,
                         source: str | None = None, include_other_classes: bool | None = None) -> dict[str, Any]:
        """Encode a split plus neutral variants; return correlation, class means, accuracies.

        `split`: "train", "validation" (or "val"/"dev"), "test", "all" (the three) or a list; with
        several splits the rows carry an `eval_split` column, the metrics cover them together (neutral
        texts once) and `result["by_split"]` holds each split's own metrics. `source` encodes the pair's
        rows with another gradient kind (factual, alternative, diff; default: the one trained on).
        `encoder_df` (a DataFrame or this method's `return_df=True` result) skips encoding.
        `include_other_classes` (default: `TrainingArguments.include_other_classes`) also encodes the rows of
        the data's other classes (label 0; `result["mean_by_feature_class"]` has every class's mean).
        `plot=True` also saves the encoder distribution plot (`result["plot_path"]`); `plot_kwargs`
        go to `plot_encoder_distributions` (`show` defaults to True, a no-op without a display).
        """
        splits = _splits(split)
        _check_optional_positive("max_size", max_size)
        if plot_kwargs is not None and not isinstance(plot_kwargs, dict):
            raise TypeError(f"plot_kwargs must be a dict or None, got {type(plot_kwargs).__name__}")
        if source is not None and source not in _SOURCES:
            raise ValueError(f"source must be one of {list(_SOURCES)} or None, got {source!r}")
        encoder_df = _given_frame(encoder_df)
        writes = encoder_df is None or plot  # the encodings cache and plots go into the experiment
        with self.experiment.writing() if writes else contextlib.nullcontext():
            if encoder_df is None:
                from gradiend.sharded_model import evaluation_scope

                model = model_with_gradiend or self.get_model()
                others = self._args.include_other_classes if include_other_classes is None else include_other_classes
                with evaluation_scope(model):  # a sharded GRADIEND: every rank encodes every row (a collective)
                    frames = {s: self._encodings(model, s, max_size, neutral_data_df, use_cache, show_progress,
                                                 source, bool(others)) for s in splits}
                encoder_df = _combined(frames)
            result = self._encoder_result(encoder_df)
            if plot:
                options = {"split": splits[0] if len(splits) == 1 else splits, "show": True, **(plot_kwargs or {})}
                result["plot_path"] = self.plot_encoder_distributions(encoder_df=encoder_df, **options)
        if return_df:
            result["encoder_df"] = encoder_df
        return result

    def _encoder_result(self, frame: pd.DataFrame) -> dict[str, Any]:
        """Metrics of `frame`; per split too when it holds several (`eval_split`), neutral texts counted once."""
        from gradiend.encoder_eval import NEUTRAL_DATASET, encoder_metrics

        if "eval_split" not in frame.columns or frame["eval_split"].nunique() < 2:
            return encoder_metrics(frame, self.pair)
        first = frame["eval_split"].iloc[0]
        once = frame[(frame["type"] != NEUTRAL_DATASET) | (frame["eval_split"] == first)]
        result = encoder_metrics(once, self.pair)
        result["by_split"] = {str(s): encoder_metrics(part, self.pair)
                              for s, part in frame.groupby("eval_split", sort=False)}
        return result

    def _encodings(self, model: ModelWithGradiend, split: str, max_size: int | None,
                   neutral_data_df: pd.DataFrame | None, use_cache: bool | None, show_progress: bool | None,
                   source: str | None, include_other_classes: bool = False) -> pd.DataFrame:
        """The encoder DataFrame of one split (cached in the experiment), re-encoded for another `source`."""
        from gradiend.encoder_eval import TRAINING, EncoderCache, split_encodings

        args, (rows, pair) = self._args, self.unified_data()
        if include_other_classes:
            import pandas as pd

            rows = pd.concat([rows, self.other_class_rows()], ignore_index=True)
        max_size = max_size if max_size is not None else args.encoder_eval_max_size
        experiment = self.experiment
        cache = EncoderCache(experiment.encoder_csv(split, max_size), experiment.encoder_meta(split, max_size),
                             self._model_identity())
        frame = split_encodings(
            model, rows, pair, split, max_size=max_size,
            neutral_texts=list(neutral_data_df["text"]) if neutral_data_df is not None else self.neutral_texts(),
            seed=args.seed, batch_size=args.eval_batch_size, cache=cache,
            use_cache=bool(args.use_cache if use_cache is None else use_cache),
            show_progress=args.show_progress if show_progress is None else show_progress,
            excluded_words=self._neutral_excluded_words())
        if source is not None and source != model.config.source:
            frame = frame.copy()
            pairs = (frame["type"] == TRAINING).to_numpy()
            sub = frame[pairs]
            values = model.encode(list(sub["text"]), list(sub["factual"]), list(sub["alternative"]), kind=source,
                                  batch_size=args.eval_batch_size)
            frame.loc[pairs, "encoded"] = values[:, 0]
            for j in range(1, values.shape[1]):
                frame.loc[pairs, f"encoded_{j}"] = values[:, j]
            frame["source"] = ""
            frame.loc[pairs, "source"] = source
        return frame

    def get_encoder_metrics(self, model_path: str | None = None, encoder_df: pd.DataFrame | None = None,
                            **kwargs: Any) -> dict[str, Any]:
        """Encoder metrics from `encoder_df`, or from a (cached) evaluation."""
        if model_path is not None and model_path != self._model_path:
            kwargs["model_with_gradiend"] = self.load_model(model_path)
        return self.evaluate_encoder(encoder_df=encoder_df, use_cache=kwargs.pop("use_cache", True), **kwargs)

    def get_encodings(self, model_path: str | None = None, **kwargs: Any) -> pd.DataFrame:
        """The per-row encoder DataFrame (text, encoded, label, type, …)."""
        if model_path is not None and model_path != self._model_path:
            kwargs["model_with_gradiend"] = self.load_model(model_path)
        return self.evaluate_encoder(return_df=True, use_cache=kwargs.pop("use_cache", True), **kwargs)["encoder_df"]

    def encode(self, texts: Sequence[str] | None = None, factual: Sequence[str] | None = None,
               alternative: Sequence[str] | None = None, *, split: str = "test", kind: str | None = None,
               max_size: int | None = None) -> list[float]:
        """Feature values of given rows, or of the pair rows of `split` when no texts are given."""
        from gradiend.data import prepare_rows

        model = self.get_model()
        if texts is None:
            rows, pair = self.unified_data()
            part = prepare_rows(rows, split, pair, model.objective, f"encoding {split!r}")
            part = part.head(max_size) if max_size is not None else part
            texts, factual, alternative = list(part["masked"]), list(part["factual"]), list(part["alternative"])
        if factual is None:
            raise ValueError("encode(texts=...) also needs factual= (the token that fills each slot)")
        return model.encode(list(texts), list(factual), None if alternative is None else list(alternative),
                            kind=kind, batch_size=self._args.eval_batch_size)[:, 0].tolist()

    # -- decoder evaluation and rewriting ------------------------------------------------------
    def evaluate_decoder(self, lrs: Sequence[float] | None = None, feature_factors: Sequence[float] | None = None,
                         use_cache: bool | None = None, max_size_training_like: int | None = None,
                         max_size_neutral: int | None = None, eval_batch_size: int | None = None,
                         training_like_df: pd.DataFrame | None = None, neutral_df: pd.DataFrame | None = None,
                         selector: Selector | SelectionPolicy | None = None,
                         summary_extractor: SummaryExtractor | None = None,
                         summary_metrics: Sequence[str] | None = None, target_class: str | Sequence[str] | None = None,
                         increase_target_probabilities: bool = True, plot: bool = False,
                         show: bool | None = None, search: str = "adaptive", *,
                         metrics_fn: MetricsFn | None = None) -> dict[str, Any]:
        """Grid of rewrites (feature factor × learning rate) → the selected candidate per class.

        Returns `{class: summary}` (or `{class}_weaken`) with value, feature_factor, learning_rate,
        id, strengthen, lms, base_lms, base_value, plus `"grid"`: every scored candidate as a record.
        `target_class`: one class or a list (default: both). `search="adaptive"` bisects the learning
        rates against the LMS bound and selects what the full grid selects with fewer candidates;
        `"grid"` scores every candidate. `selector`: a callable `(candidates, base) -> record` or a
        policy object with `select(metric, candidates, ctx)` (`gradiend.selection`).
        `summary_metrics=["3SG_weaken", "bpi", ...]`: one selection per named metric instead (keys =
        metric names; every candidate scored); `metrics_fn(record) -> {name: value}` adds metrics
        the grid does not hold.
        """
        from gradiend.decoder_eval import DecoderRequest, evaluate_decoder, selection_key
        from gradiend.selection import as_selector, select_metrics
        from gradiend.sharded_model import evaluation_scope

        classes = _target_classes(target_class, self.pair)
        _check_number_list("lrs", lrs)
        _check_number_list("feature_factors", feature_factors)
        if summary_metrics is not None and (isinstance(summary_metrics, str) or not list(summary_metrics)):
            raise TypeError(f"summary_metrics must be a non-empty list of metric names, got {summary_metrics!r}")
        if metrics_fn is not None and summary_metrics is None:
            raise ValueError("metrics_fn adds metrics for summary_metrics=[...]; pass the metric names to select by")
        request = DecoderRequest.from_arguments(
            self._args, classes, strengthen=increase_target_probabilities, lrs=lrs, feature_factors=feature_factors,
            max_size_training_like=max_size_training_like, max_size_neutral=max_size_neutral,
            batch_size=eval_batch_size, training_like=training_like_df, selector=as_selector(selector),
            neutral_texts=list(neutral_df["text"]) if neutral_df is not None else self.neutral_texts(),
            summary_extractor=summary_extractor, search=search if summary_metrics is None else "grid",
            **self._decoder_eval_options())
        use_cache = self._args.use_cache if use_cache is None else use_cache
        model = self.get_model()
        # the decoder grid, its summaries and plots go into the experiment; a sharded GRADIEND decodes every
        # candidate from the ranks' slices (a collective), so every rank scores every candidate
        with self.experiment.writing(), evaluation_scope(model):
            result = evaluate_decoder(model, *self.unified_data(), request, self._decoder_cache(use_cache))
            if summary_metrics is not None:
                grid = result["grid"]
                result = {**select_metrics(grid, list(summary_metrics), selector, metrics_fn), "grid": grid}
            if plot:
                result["plot_paths"] = [self.plot_probability_shifts(result, cls, increase_target_probabilities,
                                                                     show=True if show is None else bool(show))
                                        for cls in classes if selection_key(cls, increase_target_probabilities)
                                        in result]
                if len(result["plot_paths"]) == 1:
                    result["plot_path"] = result["plot_paths"][0]
        return result

    def evaluate_base_model(self, max_size_training_like: int | None = None, max_size_neutral: int | None = None,
                            eval_batch_size: int | None = None, training_like_df: pd.DataFrame | None = None,
                            neutral_df: pd.DataFrame | None = None) -> dict[str, Any]:
        """Decoder metrics of the unmodified base model, on the data `evaluate_decoder` scores.

        `{"id": "base", "feature_factor": None, "learning_rate": None, "lms": ..., "probs": {dataset
        class: {class: mean P(class tokens)}}}`, the grid's base record; nothing is cached or written.
        """
        from gradiend.decoder_eval import DecoderRequest, base_record

        rows, pair = self.unified_data()
        request = DecoderRequest.from_arguments(
            self._args, list(pair), max_size_training_like=max_size_training_like, max_size_neutral=max_size_neutral,
            batch_size=eval_batch_size, training_like=training_like_df,
            neutral_texts=list(neutral_df["text"]) if neutral_df is not None else self.neutral_texts(),
            **self._decoder_eval_options())
        return base_record(self.get_model(), rows, pair, request)

    def _decoder_cache(self, use: bool | str = True) -> Any:
        from gradiend.decoder_eval import DecoderCache

        experiment = self.experiment
        return DecoderCache(experiment.decoder_grid, experiment.decoder_summaries, self._model_identity(), bool(use))

    def evaluate(self, *, kwargs_encoder: dict[str, Any] | None = None, kwargs_decoder: dict[str, Any] | None = None,
                 ) -> dict[str, Any]:
        """Encoder and decoder evaluation: `{"encoder": ..., "decoder": ...}`."""
        for name, value in (("kwargs_encoder", kwargs_encoder), ("kwargs_decoder", kwargs_decoder)):
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"{name} must be a dict or None, got {type(value).__name__}")
        return {"encoder": self.evaluate_encoder(**(kwargs_encoder or {})),
                "decoder": self.evaluate_decoder(**(kwargs_decoder or {}))}

    def rewrite_base_model(self, decoder_results: dict[str, Any] | None = None,
                           target_class: str | Sequence[str] | None = None, increase_target_probabilities: bool = True,
                           output_dir: str | os.PathLike | None = None, overwrite: bool = False) -> Any:
        """Apply the selected (feature factor, learning rate) to a copy of the base model.

        One class: the rewritten HF model, or its saved path when `output_dir` is given. Several
        classes: saved under `output_dir/<key>` or `experiment_dir/<key>`; returns the list of paths.
        An existing output directory is replaced only when gradiend wrote it, unless `overwrite`;
        it must not be the experiment directory, hold it, or lie inside its `model/`.
        """
        from gradiend.decoder_eval import load_selections, selection_key
        from gradiend.rewrite import rewrite_selected

        if output_dir is not None and not str(output_dir).strip():
            raise ValueError("output_dir is an empty string; pass a directory path or None")
        if not isinstance(overwrite, bool):
            raise TypeError(f"overwrite must be a bool, got {type(overwrite).__name__}")
        classes = [target_class] if isinstance(target_class, str) else list(target_class or self.pair)
        unknown = [c for c in classes if c not in self.pair]
        if unknown:
            raise ValueError(f"Unknown target_class {unknown[0]!r}; available: {list(self.pair)}")
        keys = [selection_key(c, increase_target_probabilities) for c in classes]
        saves = output_dir is not None or len(classes) > 1
        # saving takes the lock: the selections and the checkpoint read must not change mid-write
        with self.experiment.writing() if saves else contextlib.nullcontext():
            selections = decoder_results if decoder_results is not None else load_selections(self._decoder_cache())
            _check_selected(selections, keys, increase_target_probabilities)
            return rewrite_selected(self.get_model(), selections, classes, keys,
                                    feature_classes=list(self.pair), base_model=self._base_model_arg,
                                    output_dir=output_dir, overwrite=overwrite, experiment=self.experiment,
                                    default_dir=self.experiment.rewritten if self._args.experiment_dir else None)


_ALL_SPLITS = ("train", "validation", "test")
_SOURCES = ("factual", "alternative", "diff")


def _splits(split: str | Sequence[str]) -> list[str]:
    """Canonical split names of `split` ("all" = train, validation, test; aliases such as "val" accepted)."""
    from gradiend.data_sources import SPLIT_ALIASES

    names = list(_ALL_SPLITS) if split == "all" else [split] if isinstance(split, str) else split
    if isinstance(names, (bytes, Mapping)) or not isinstance(names, Iterable):
        raise TypeError(f"split must be a split name, 'all' or a list of names, got {type(split).__name__}")
    out = []
    for name in names:
        canonical = SPLIT_ALIASES.get(name.strip().lower(), name.strip().lower()) if isinstance(name, str) else None
        if canonical not in _ALL_SPLITS:
            raise ValueError(f"Unknown split {name!r}; use one of {list(_ALL_SPLITS)}, 'val', 'all' or a list of them")
        out.append(canonical)
    if not out:
        raise ValueError("split is an empty list; name at least one split, e.g. split='test'")
    return list(dict.fromkeys(out))


def _given_frame(encoder_df: Any) -> pd.DataFrame | None:
    """`encoder_df` as a DataFrame: given as one, or inside a `return_df=True` result (`{"encoder_df": ...}`)."""
    import pandas as pd

    if encoder_df is None or isinstance(encoder_df, pd.DataFrame):
        return encoder_df
    if isinstance(encoder_df, Mapping) and isinstance(encoder_df.get("encoder_df"), pd.DataFrame):
        return encoder_df["encoder_df"]
    raise TypeError("encoder_df must be a DataFrame or the dict evaluate_encoder(return_df=True) returned, got "
                    f"{type(encoder_df).__name__}" + (" without an 'encoder_df' entry" if isinstance(
                        encoder_df, Mapping) else ""))


def _combined(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One split's frame as it is; several concatenated with an `eval_split` column."""
    import pandas as pd

    if len(frames) == 1:
        return next(iter(frames.values()))
    return pd.concat([f.assign(eval_split=s) for s, f in frames.items()], ignore_index=True)


def _target_classes(target_class: str | Sequence[str] | None, pair: Sequence[str]) -> list[str]:
    """The classes to select for: one, a list, or (None) every class of the pair."""
    if target_class is None:
        return list(pair)
    classes = [target_class] if isinstance(target_class, str) else target_class
    if not isinstance(classes, Iterable) or isinstance(classes, (bytes, Mapping)):
        raise TypeError(f"target_class must be a class name or a list of them, got {type(target_class).__name__}")
    classes = list(classes)
    if not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"target_class must name at least one class of {list(pair)}, got {target_class!r}")
    return list(dict.fromkeys(classes))


def _check_optional_positive(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def _check_number_list(name: str, value: Any) -> None:
    """A decoder grid axis is a list of numbers (a bare string would become a list of characters)."""
    if value is not None and (isinstance(value, (str, bytes, int, float)) or not isinstance(value, Iterable)):
        raise TypeError(f"{name} must be a list of numbers, got {value!r}; e.g. {name}=[1.0, 0.1]")


class MissingSelectionError(KeyError):
    """A class to rewrite has no selected decoder candidate; the message names the call that selects one
    (a KeyError, as before, but printed as plain text)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()


def _check_selected(selections: Any, keys: Sequence[str], strengthen: bool) -> None:
    """Every class to rewrite needs its selected candidate (from `evaluate_decoder`)."""
    if not isinstance(selections, Mapping):
        raise TypeError(f"decoder_results must be the dict evaluate_decoder() returns, got {type(selections).__name__}")
    missing = [k for k in keys if k not in selections]
    if missing:
        have = sorted(k for k in selections if k != "grid")
        raise MissingSelectionError(f"No decoder selection for {missing} (have {have}); run "
                                 f"evaluate_decoder(target_class={missing[0].removesuffix('_weaken')!r}, "
                                 f"increase_target_probabilities={strengthen}) first")
