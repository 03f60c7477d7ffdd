"""Suites: several GRADIENDs over pairs of classes of one data set, trained and compared together.

A GRADIEND learns one pair of classes. For more classes a suite trains one per pair, each through the
normal `TextPredictionTrainer` in its own sub-directory `experiment_dir/[run_id/]<member_id>/`:

* `SymmetricSuite`: every unordered pair of the classes (member ids `a__b`);
* `PositiveSuite`: each class against all the others merged (`class_merge_map`; member id = the class);
* `GradiendSuite`: the pairs you list (`PairDefinition`, or `(a, b)` tuples);
* `PositiveTrainerSuite` (the reference's spelling): features with their own negative class in the data
  (`F` / `non_F`), one member per feature (`mode="single"`) or per held-out feature (`"all_but_one"`);
* `GradiendCollection`: trainers you built yourself (any data, any base model), compared the same way.

Training is resume-safe: `train()` reuses a finished member whose run fingerprint matches (the
trainer's `use_cache`) and an interrupted one continues from its checkpoint, so rerunning a killed
suite trains only what is missing. `summary()` tabulates each member's scores, `cross_encoding()`
encodes every member's classes with every other member (`suite_summary_<split>.csv` and
`cross_encoding_<split>.json` beside the members).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from gradiend.data import MASK, cap_per_class, check_merge_map, data_classes, rows_with_context, unify_classes
from gradiend.experiment import atomic_write_json, atomic_write_with, safe_path_part

if TYPE_CHECKING:
    from gradiend.arguments import TrainingArguments
    from gradiend.model_with_gradiend import ModelWithGradiend
    from gradiend.trainer.trainer import Trainer

logger = logging.getLogger(__name__)

__all__ = ["GradiendCollection", "GradiendSuite", "PairDefinition", "PositiveFeatureDefinition", "PositiveSuite",
           "PositiveTrainerSuite", "SymmetricSuite", "SymmetricTrainerSuite", "TrainerCollection", "cross_encoding",
           "positive_feature_pairs"]


@dataclass(frozen=True)
class PairDefinition:
    """One suite member: the pair it learns, its directory name and an optional `class_merge_map`.

    `member_id` defaults to `"<a>__<b>"`; with `class_merge_map` the pair names merged classes.
    `all_classes` (after merging) overrides the suite's `all_classes=` for this member.
    """

    target_classes: tuple[str, str]
    member_id: str | None = None
    class_merge_map: Mapping[str, Sequence[str]] | None = field(default=None, hash=False)
    all_classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        pair = self.target_classes
        if isinstance(pair, str) or len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f"PairDefinition.target_classes must be two different class names, got {pair!r}")
        object.__setattr__(self, "target_classes", (str(pair[0]), str(pair[1])))
        member_id = self.member_id if self.member_id is not None else f"{pair[0]}__{pair[1]}"
        object.__setattr__(self, "member_id", safe_path_part(str(member_id), "member_id"))
        object.__setattr__(self, "class_merge_map", check_merge_map(self.class_merge_map))
        if self.all_classes is not None:
            object.__setattr__(self, "all_classes", tuple(str(c) for c in self.all_classes))


class GradiendCollection:
    """Several trainers (member id → trainer), trained and compared together.

    Built from already constructed trainers (a dict, or a list keyed by `run_id`). Members are
    compared on their own data; `cross_encoding` needs trainers that share a base model.
    """

    def __init__(self, trainers: Mapping[str, Trainer] | Sequence[Trainer], *, output_dir: str | None = None) -> None:
        if isinstance(trainers, Mapping):
            members = {str(k): t for k, t in trainers.items()}
        else:
            members = {}
            for i, trainer in enumerate(trainers):
                key = trainer.run_id or f"gradiend_{i}"
                if key in members:
                    raise ValueError(f"Two trainers have run_id {key!r}; give each a different run_id or pass a dict")
                members[key] = trainer
        if not members:
            raise ValueError("A collection needs at least one trainer")
        self._members = members
        self._output_dir = output_dir

    # -- access ---------------------------------------------------------------------------------
    @property
    def members(self) -> dict[str, Trainer]:
        """Member id → trainer (a copy of the mapping)."""
        return dict(self._members)

    def __getitem__(self, member_id: str) -> Trainer:
        if member_id not in self._members:
            raise KeyError(f"No member {member_id!r}; members: {list(self._members)}")
        return self._members[member_id]

    def get_trainer(self, member_id: str) -> Trainer:
        return self[member_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def items(self) -> list[tuple[str, Trainer]]:
        return list(self._members.items())

    @property
    def output_dir(self) -> Path:
        """Where the suite's own files go (summary table, cross-encoding)."""
        if self._output_dir is not None:
            return Path(self._output_dir)
        parents = {Path(t.experiment_dir).parent for t in self._members.values()}
        if len(parents) != 1:
            raise ValueError("The members lie in different directories; pass output_dir= to the collection")
        return parents.pop()

    # -- training and evaluation ----------------------------------------------------------------
    def train(self, use_cache: bool | str | None = None, **overrides: Any) -> GradiendCollection:
        """Train every member; a finished member (same fingerprint) is reused.

        `use_cache` (default: the member's own setting when it has one, else True) decides which
        finished runs count; `use_cache=False` retrains every member.
        """
        for i, (member_id, trainer) in enumerate(self._members.items(), start=1):
            logger.info("Suite member %d/%d: %s %s", i, len(self._members), member_id, list(trainer.pair))
            mode = use_cache if use_cache is not None else (trainer.training_args.use_cache or True)
            trainer.train(use_cache=mode, **overrides)
        return self

    def evaluate_encoder(self, split: str = "test", max_size: int | None = None,
                         include_other_classes: bool = True, **kwargs: Any) -> dict[str, dict[str, Any]]:
        """Each member's `evaluate_encoder` (other classes included by default): member id → result."""
        return {member_id: trainer.evaluate_encoder(split=split, max_size=max_size,
                                                    include_other_classes=include_other_classes, **kwargs)
                for member_id, trainer in self._members.items()}

    def summary(self, split: str = "test", max_size: int | None = None, *, write: bool = True) -> pd.DataFrame:
        """One row per member: its pair, convergence, correlation, all-data scores, mean h of its two
        classes (`mean_a`, `mean_b`) and of every class it encodes (`mean_<class>`).

        Written to `<output_dir>/suite_summary_<split>.csv` when `write`.
        """
        results = self.evaluate_encoder(split=split, max_size=max_size)
        records = []
        for member_id, result in results.items():
            trainer = self._members[member_id]
            stats = trainer.get_training_record()
            means = result["mean_by_feature_class"]
            record = {"member": member_id, "class_a": trainer.pair[0], "class_b": trainer.pair[1],
                      "converged": bool(stats.converged) if stats is not None else False,
                      "correlation": result["correlation"], "all_data_correlation": result["all_data_correlation"],
                      "all_data_accuracy": result["all_data_accuracy"], "mean_a": means.get(trainer.pair[0]),
                      "mean_b": means.get(trainer.pair[1])}
            record.update({f"mean_{c}": v for c, v in result["mean_by_feature_class"].items()})
            records.append(record)
        table = pd.DataFrame(records)
        if write:
            path = self.output_dir / f"suite_summary_{safe_path_part(split, 'split')}.csv"
            atomic_write_with(path, lambda tmp: table.to_csv(tmp, index=False))
        return table

    def class_rows(self, member_id: str) -> pd.DataFrame:
        """The member's rows of every class (pair and other classes) with a `raw_class` column."""
        trainer = self[member_id]
        rows = pd.concat([trainer.unified_data()[0], trainer.other_class_rows()], ignore_index=True)
        return rows.assign(raw_class=rows["factual_class"])

    def cross_encoding(self, split: str = "test", max_size: int | None = 50, *, write: bool = True
                       ) -> dict[str, Any]:
        """Encode every member's classes with every member (see `cross_encoding`)."""
        result = cross_encoding({m: self[m] for m in self}, {m: self.class_rows(m) for m in self}, split=split,
                                max_size=max_size)
        if write:
            atomic_write_json(self.output_dir / f"cross_encoding_{safe_path_part(split, 'split')}.json", result)
        return result


class GradiendSuite(GradiendCollection):
    """One `TextPredictionTrainer` per listed pair, sharing the model, data and arguments.

    `pairs`: `PairDefinition`s or `(a, b)` tuples. Members live in `args.experiment_dir/[run_id/]<member_id>`.
    Further keyword arguments (e.g. `eval_neutral_data`, `all_classes`) go to every trainer.
    """

    def __init__(self, model: str | os.PathLike | ModelWithGradiend, data: Any, args: TrainingArguments,
                 pairs: Sequence[PairDefinition | tuple[str, str]], *, run_id: str | None = None,
                 **trainer_kwargs: Any) -> None:
        from gradiend.trainer.text.prediction.trainer import TextPredictionTrainer

        if args.experiment_dir is None:
            raise ValueError("A suite needs TrainingArguments(experiment_dir=...): each member trains into a "
                             "sub-directory of it")
        for reserved in ("target_classes", "class_merge_map", "run_id", "args", "training_args"):
            if reserved in trainer_kwargs:
                raise TypeError(f"{reserved}= is set by the suite per member; define members with pairs= instead")
        definitions = [p if isinstance(p, PairDefinition) else PairDefinition(tuple(p)) for p in pairs]
        ids = [d.member_id for d in definitions]
        if not definitions or len(set(ids)) != len(ids):
            raise ValueError(f"A suite needs at least one pair and distinct member ids, got {ids}")
        self.definitions = definitions
        self._data, self._trainer_kwargs = data, trainer_kwargs
        root = Path(args.experiment_dir) / run_id if run_id else Path(args.experiment_dir)
        members = {d.member_id: TextPredictionTrainer(
            model=model, data=data, args=args, target_classes=list(d.target_classes),
            class_merge_map=d.class_merge_map, run_id=f"{run_id}/{d.member_id}" if run_id else d.member_id,
            **self._member_kwargs(d)) for d in definitions}
        super().__init__(members, output_dir=str(root))

    def _member_kwargs(self, definition: PairDefinition) -> dict[str, Any]:
        if definition.all_classes is None:
            return self._trainer_kwargs
        return {**self._trainer_kwargs, "all_classes": list(definition.all_classes)}

    def class_rows(self, member_id: str) -> pd.DataFrame:
        """Rows of every class as the member sees them, `raw_class` naming the class before merging."""
        definition = next(d for d in self.definitions if d.member_id == member_id)
        kwargs = self._member_kwargs(definition)
        unified = unify_classes(self._data, list(definition.target_classes), all_classes=kwargs.get("all_classes"),
                                class_merge_map=definition.class_merge_map, seed=self[member_id].training_args.seed,
                                mask=kwargs.get("mask", MASK))
        return unified.class_rows()


class SymmetricSuite(GradiendSuite):
    """Every unordered pair of `classes` (default: all classes of the data), member ids `a__b` (sorted)."""

    def __init__(self, model: str | os.PathLike | ModelWithGradiend, data: Any, args: TrainingArguments, *,
                 classes: Sequence[str] | None = None, run_id: str | None = None, **trainer_kwargs: Any) -> None:
        names = _suite_classes(data, classes, trainer_kwargs.get("all_classes"))
        super().__init__(model, data, args, [PairDefinition((a, b)) for a, b in itertools.combinations(
            sorted(names), 2)], run_id=run_id, **trainer_kwargs)


class PositiveSuite(GradiendSuite):
    """Each class against all the others merged into `negative_name` (default `non_<class>`); member id = class.

    Every member's positive class (encoded +1) is its class, so the cross-encoding diagonal is the
    member's own class.
    """

    def __init__(self, model: str | os.PathLike | ModelWithGradiend, data: Any, args: TrainingArguments, *,
                 classes: Sequence[str] | None = None, negative_name: str = "non_{}", run_id: str | None = None,
                 **trainer_kwargs: Any) -> None:
        names = _suite_classes(data, classes, trainer_kwargs.pop("all_classes", None))
        super().__init__(model, data, args, self._definitions(names, negative_name), run_id=run_id, **trainer_kwargs)

    @staticmethod
    def _definitions(names: Sequence[str], negative_name: str) -> list[PairDefinition]:
        """Each class against the others merged into `negative_name.format(class)`."""
        if "{}" not in negative_name:
            raise ValueError(f"negative_name must contain '{{}}' for the class, e.g. 'non_{{}}', got {negative_name!r}")
        definitions = []
        for cls in names:
            negative = negative_name.format(cls)
            if negative in names:
                raise ValueError(f"negative class name {negative!r} is also a class of the data; pass another "
                                 f"negative_name")
            merge = {cls: [cls], negative: [c for c in names if c != cls]}
            definitions.append(PairDefinition((cls, negative), member_id=cls, class_merge_map=merge,
                                              all_classes=(cls, negative)))
        return definitions


def _suite_classes(data: Any, classes: Sequence[str] | None, all_classes: Sequence[str] | None) -> tuple[str, ...]:
    """The suite's classes: `classes`, else every class of the data (within `all_classes`)."""
    found = data_classes(data, all_classes=all_classes)
    if classes is None:
        if len(found) < 2:
            raise ValueError(f"A suite needs at least two classes; the data has {list(found)}")
        return found
    names = tuple(dict.fromkeys(str(c) for c in classes))
    unknown = [c for c in names if c not in found]
    if unknown or len(names) < 2:
        raise ValueError(f"classes {list(names)} must name at least two classes of the data; {unknown or 'too few'} "
                         f"(the data has {list(found)})")
    return names


# -- cross-encoding ----------------------------------------------------------------------------
def _encode_split(model: ModelWithGradiend, rows: pd.DataFrame, split: str, group: str, max_size: int | None,
                  seed: int | None, batch_size: int) -> pd.DataFrame:
    """The rows of `split` the model can score, at most `max_size` per `group` value, with their h."""
    part = rows[rows["split"] == split]
    part = rows_with_context(part, model.objective, f"cross-encoding on {split!r}") if len(part) else part
    if max_size is not None and len(part):
        part = cap_per_class(part.assign(factual_class=part[group]), max_size, seed).assign(
            factual_class=part["factual_class"])
    if part.empty:
        return part.assign(encoded=np.zeros(0))
    values = model.encode(list(part["masked"]), list(part["factual"]), list(part["alternative"]),
                          batch_size=batch_size)
    return part.assign(encoded=values[:, 0])


def cross_encoding(trainers: Mapping[str, Trainer], class_rows: Mapping[str, pd.DataFrame], *, split: str = "test",
                   max_size: int | None = 50) -> dict[str, Any]:
    """Encode each member's classes with each member's GRADIEND.

    * `classes`: member × class, the member's mean h on the `split` rows of each class (`raw_class`,
      so a merged class shows its parts), the member's first class encoding positively;
    * `pairs`: member G × member P, G's separation of P's pair, (mean h on P's first class − mean h on
      its second) / 2: the diagonal is each GRADIEND's own separation (≈ 1 when it learnt its pair),
      off the diagonal how much P's feature moves G's neuron.

    Each is `{"model_ids", "column_ids", "matrix", "n"}` (rows per cell); at most `max_size` rows
    per class and member (seeded).
    """
    ids = list(trainers)
    classes = sorted({str(c) for rows in class_rows.values() for c in rows["raw_class"]})
    class_matrix, class_n = np.full((len(ids), len(classes)), np.nan), np.zeros((len(ids), len(classes)), dtype=int)
    pair_matrix, pair_n = np.full((len(ids), len(ids)), np.nan), np.zeros((len(ids), len(ids)), dtype=int)
    for i, member in enumerate(ids):
        trainer = trainers[member]
        model, args = trainer.get_model(), trainer.training_args
        encoded = _encode_split(model, class_rows[member], split, "raw_class", max_size, args.seed,
                                args.eval_batch_size)
        for j, cls in enumerate(classes):
            values = encoded.loc[encoded["raw_class"] == cls, "encoded"]
            class_matrix[i, j], class_n[i, j] = (float(values.mean()) if len(values) else np.nan), len(values)
        for j, other in enumerate(ids):
            pair = trainers[other].pair
            rows = class_rows[other]
            rows = rows[rows["factual_class"].isin(pair) & (rows["label"] != 0)]
            enc = _encode_split(model, rows, split, "factual_class", max_size, args.seed, args.eval_batch_size)
            first, second = (enc.loc[enc["factual_class"] == c, "encoded"] for c in pair)
            if len(first) and len(second):
                pair_matrix[i, j] = float(first.mean() - second.mean()) / 2
            pair_n[i, j] = len(enc)
    return {"split": split, "max_size": max_size,
            "classes": {"model_ids": ids, "column_ids": classes, "matrix": _json_matrix(class_matrix),
                        "n": class_n.tolist()},
            "pairs": {"model_ids": ids, "column_ids": ids, "matrix": _json_matrix(pair_matrix), "n": pair_n.tolist()},
            "member_pairs": {m: list(trainers[m].pair) for m in ids}}


def _json_matrix(matrix: np.ndarray) -> list[list[float | None]]:
    """Rows of floats, None where a cell has no rows (JSON has no NaN)."""
    return [[None if np.isnan(v) else float(v) for v in row] for row in matrix]


# -- the reference's spellings ----------------------------------------------------------------
def _reference_inputs(trainer_cls: type, trainer_args: tuple[Any, ...], kwargs: dict[str, Any]
                      ) -> tuple[Any, Any, TrainingArguments, dict[str, Any]]:
    """(model, data, args, other trainer kwargs) of a reference-style suite call."""
    from gradiend.trainer.text.prediction.trainer import TextPredictionTrainer

    if not (isinstance(trainer_cls, type) and issubclass(trainer_cls, TextPredictionTrainer)):
        raise TypeError(f"trainer_cls must be TextPredictionTrainer (or a subclass), got {trainer_cls!r}")
    if len(trainer_args) > 1:
        raise TypeError("Pass only the model positionally; data= and args= as keywords")
    model = trainer_args[0] if trainer_args else kwargs.pop("model", None)
    data, args = kwargs.pop("data", None), kwargs.pop("training_args", None) or kwargs.pop("args", None)
    if model is None or data is None or args is None:
        raise TypeError("A suite needs model=, data= and args= (TrainingArguments with experiment_dir)")
    return model, data, args, kwargs


class SymmetricTrainerSuite(SymmetricSuite):
    """The reference's spelling: `SymmetricTrainerSuite(TextPredictionTrainer, model=..., data=..., args=...,
    target_classes=[a, b, c], run_id=...)`, a `SymmetricSuite` over `target_classes`."""

    def __init__(self, trainer_cls: type, *trainer_args: Any, target_classes: Sequence[str] | None = None,
                 run_id: str | None = None, **trainer_kwargs: Any) -> None:
        model, data, args, rest = _reference_inputs(trainer_cls, trainer_args, dict(trainer_kwargs))
        super().__init__(model, data, args, classes=target_classes, run_id=run_id, **rest)


class TrainerCollection(GradiendCollection):
    """The reference's spelling: `TrainerCollection(trainer_a, trainer_b, ...)`, keyed by each trainer's run_id."""

    def __init__(self, *trainers: Trainer, output_dir: str | None = None) -> None:
        super().__init__(list(trainers), output_dir=output_dir)


# -- positive features with their own negative classes (the reference's PositiveTrainerSuite) -------------
POSITIVE_MODES = ("single", "all_but_one")


@dataclass(frozen=True)
class PositiveFeatureDefinition:
    """One feature of a positive suite: its class (`F`), its own negative class in the data (`non_F`) and an
    optional group; `mode="all_but_one"` holds out whole groups when every feature names one."""

    positive_feature_class: str
    negative_feature_class: str
    feature_class_group: str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        pos, neg = str(self.positive_feature_class), str(self.negative_feature_class)
        if not pos or not neg or pos == neg:
            raise ValueError(f"A positive feature needs two different class names, got {pos!r} / {neg!r}")
        object.__setattr__(self, "positive_feature_class", pos)
        object.__setattr__(self, "negative_feature_class", neg)
        if self.feature_class_group is not None:
            object.__setattr__(self, "feature_class_group", str(self.feature_class_group))


def _as_feature(item: Any) -> PositiveFeatureDefinition:
    if isinstance(item, PositiveFeatureDefinition):
        return item
    if isinstance(item, Mapping):
        return PositiveFeatureDefinition(**item)
    if isinstance(item, Sequence) and not isinstance(item, str) and len(item) in (2, 3):
        return PositiveFeatureDefinition(*item)
    raise TypeError(f"A positive feature definition is a PositiveFeatureDefinition, a dict of its fields or a "
                    f"(positive, negative[, group]) tuple, got {item!r}")


def _holdout_member(held_out: str, included: Sequence[PositiveFeatureDefinition], member_id: str) -> PairDefinition:
    """positive = the included features' classes, negative = their negative classes, merged; the held-out
    feature's rows stay in the data as other classes (label 0), so evaluations show the transfer to it."""
    if not included:
        raise ValueError(f"mode='all_but_one' holds out {held_out!r} and keeps no feature to train on; it needs at "
                         f"least two features (or groups)")
    merge = {"positive": [f.positive_feature_class for f in included],
             "negative": [f.negative_feature_class for f in included]}
    return PairDefinition(("positive", "negative"), member_id=member_id, class_merge_map=merge)


def positive_feature_pairs(features: Sequence[PositiveFeatureDefinition], mode: str) -> list[PairDefinition]:
    """The members of a positive suite.

    * `"single"`: one member per feature, its class against its negative class (member id = the class);
    * `"all_but_one"`: one member per held-out feature (`holdout__<F>__<non_F>`), or per held-out group
      (`holdout_group__<g>`) when every feature names a `feature_class_group`: the included features'
      positive classes merged into `positive`, their negative classes into `negative`.
    """
    if mode not in POSITIVE_MODES:
        raise ValueError(f"mode must be one of {list(POSITIVE_MODES)}, got {mode!r}")
    features = [_as_feature(f) for f in features]
    positives = [f.positive_feature_class for f in features]
    if not features or len(set(positives)) != len(positives):
        raise ValueError(f"A positive suite needs at least one feature and distinct positive classes, got {positives}")
    if mode == "single":
        return [PairDefinition((f.positive_feature_class, f.negative_feature_class), member_id=f.positive_feature_class)
                for f in features]
    grouped = [f.feature_class_group is not None for f in features]
    if any(grouped) and not all(grouped):
        raise ValueError("mode='all_but_one' holds out groups only when every feature names a feature_class_group; "
                         "give every feature one, or none (then each feature is held out alone)")
    if not any(grouped):
        return [_holdout_member(f.positive_feature_class, [g for g in features if g is not f],
                                f"holdout__{f.positive_feature_class}__{f.negative_feature_class}") for f in features]
    groups = list(dict.fromkeys(str(f.feature_class_group) for f in features))
    return [_holdout_member(group, [f for f in features if f.feature_class_group != group], f"holdout_group__{group}")
            for group in groups]


class PositiveTrainerSuite(GradiendSuite):
    """The reference's positive suite: `PositiveTrainerSuite(TextPredictionTrainer, model=..., data=..., args=...,
    target_classes=[...], mode="single" | "all_but_one")`.

    Each feature `F` has its own negative class in the data (`negative_class_fn(F)`, default `non_F`,
    e.g. a true/false property); the features come from `positive_feature_definitions` or from
    `target_classes` (default: the data's classes), names starting with `non_`/`non-` being negatives.
    See `positive_feature_pairs` for the members. Without any negative class in the data, `"single"`
    trains each class against the rest merged (`PositiveSuite`). Members evaluate the other classes
    too (`include_other_classes=True`).
    """

    def __init__(self, trainer_cls: type, *trainer_args: Any, mode: str = "single",
                 positive_feature_definitions: Sequence[Any] | None = None,
                 negative_class_fn: Any = None, target_classes: Sequence[str] | None = None,
                 run_id: str | None = None, **trainer_kwargs: Any) -> None:
        import dataclasses

        model, data, args, rest = _reference_inputs(trainer_cls, trainer_args, dict(trainer_kwargs))
        self.mode = str(mode).strip().lower()
        if self.mode not in POSITIVE_MODES:
            raise ValueError(f"mode must be one of {list(POSITIVE_MODES)}, got {mode!r}")
        present = data_classes(data, all_classes=rest.get("all_classes"))
        features = self._features(positive_feature_definitions, target_classes, present,
                                  negative_class_fn or (lambda c: f"non_{c}"))
        missing = sorted({c for f in features for c in (f.positive_feature_class, f.negative_feature_class)}
                         - set(present))
        args = dataclasses.replace(args, include_other_classes=True) if not args.include_other_classes else args
        if missing and self.mode == "single" and positive_feature_definitions is None and all(
                f.negative_feature_class in missing for f in features):
            classes = [f.positive_feature_class for f in features]
            pairs = PositiveSuite._definitions(_suite_classes(data, classes, rest.pop("all_classes", None)), "non_{}")
        elif missing:
            raise ValueError(f"The positive suite's classes {missing} are not in the data (its classes: "
                             f"{list(present)}); mode={self.mode!r} needs each feature's negative class in the data "
                             f"(negative_class_fn, default 'non_<class>')")
        else:
            pairs = positive_feature_pairs(features, self.mode)
        self.features = features
        super().__init__(model, data, args, pairs, run_id=run_id, **rest)

    @staticmethod
    def _features(definitions: Sequence[Any] | None, target_classes: Sequence[str] | None, present: Sequence[str],
                  negative_class_fn: Any) -> list[PositiveFeatureDefinition]:
        if definitions is not None:
            return [_as_feature(d) for d in definitions]
        names = [str(c) for c in (target_classes if target_classes is not None else present)]
        return [PositiveFeatureDefinition(c, str(negative_class_fn(c)))
                for c in names if not c.startswith(("non_", "non-"))]
