"""Typed records of the JSON files in an experiment directory.

Each record is a dataclass with `from_json(dict)` / `to_json() -> dict`. `to_json` reproduces the
file the library writes today key for key and in the same order; keys a record does not know are
kept in `extra` and written back after the known ones (files from newer versions survive a round
trip), and known keys a file lacks are not invented on the way back. Records also read like the
dicts they replace (`rec["correlation"]`, `rec.get(...)`, `dict(rec)`), because public methods
return them and users index them.

`format_version`: the layout of today's files is version 1; files without the key are version 1
and writers keep omitting it, so saved files stay byte-identical. A later layout change bumps
`FORMAT_VERSION`, writes the key and converts older versions in `from_json`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_SELF = TypeVar("_SELF", bound="Record")
_BOOKKEEPING = ("extra", "format_version", "absent")


@dataclass(eq=False)
class Record(Mapping[str, Any]):
    """Base of the records: JSON round trip plus read-only mapping access to the JSON keys.

    Subclasses list their keys as dataclass fields in file order. `_NESTED` maps a key to the
    function that turns its JSON value into records; `_OMIT_NONE` names keys that writers leave
    out when they have no value.
    """

    _NESTED: ClassVar[dict[str, Callable[[Any], Any]]] = {}
    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset()

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False)
    format_version: int = field(default=FORMAT_VERSION, kw_only=True, repr=False)
    # known keys the file lacked: left out of `to_json` while they hold their default
    absent: frozenset[str] = field(default=frozenset(), kw_only=True, repr=False)

    @classmethod
    def _keys(cls) -> list[dataclasses.Field[Any]]:
        return [f for f in dataclasses.fields(cls) if f.name not in _BOOKKEEPING]

    @classmethod
    def from_json(cls: type[_SELF], data: Mapping[str, Any]) -> _SELF:
        """Build the record from a parsed JSON object (missing optional keys stay absent)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = int(data.pop("format_version", 1))
        if version > FORMAT_VERSION:
            logger.warning("%s has format_version %d, newer than this library's %d; unknown keys are kept as-is",
                           cls.__name__, version, FORMAT_VERSION)
        values: dict[str, Any] = {}
        absent = []
        for f in cls._keys():
            if f.name in data:
                raw = data.pop(f.name)
                convert = cls._NESTED.get(f.name)
                values[f.name] = convert(raw) if convert is not None and raw is not None else raw
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{cls.__name__}: the file lacks the required key {f.name!r}")
            else:
                absent.append(f.name)
        return cls(**values, extra=data, format_version=version, absent=frozenset(absent))

    def _items(self) -> Iterator[tuple[str, Any]]:
        if self.format_version != 1:
            yield "format_version", self.format_version
        for f in self._keys():
            value = getattr(self, f.name)
            if (value is None and f.name in self._OMIT_NONE) or (f.name in self.absent and _is_default(f, value)):
                continue
            yield f.name, value
        yield from self.extra.items()

    def to_json(self) -> dict[str, Any]:
        """The JSON object this record is saved as (same keys and order as the file it came from)."""
        return {key: to_plain(value) for key, value in self._items()}

    # read-only mapping access over the JSON keys (nested records stay records)
    def __getitem__(self, key: str) -> Any:
        for name, value in self._items():
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items())

    def __len__(self) -> int:
        return sum(1 for _ in self._items())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self._items())
        return f"{type(self).__name__}({shown})"


def _is_default(f: dataclasses.Field[Any], value: Any) -> bool:
    if f.default_factory is not dataclasses.MISSING:
        return bool(value == f.default_factory())
    return value is None or (f.default is not dataclasses.MISSING and value == f.default)


def to_plain(value: Any) -> Any:
    """`value` with every record (also inside lists and dicts) replaced by its JSON object."""
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def _list_of(cls: type[Record]) -> Callable[[Any], list[Any]]:
    return lambda items: [cls.from_json(item) for item in items]


def _dict_of(cls: type[Record]) -> Callable[[Any], dict[str, Any]]:
    return lambda items: {key: cls.from_json(item) for key, item in items.items()}


@dataclass(eq=False, repr=False)
class BestCheckpoint(Record):
    """`best_score_checkpoint` of training.json: the evaluation whose weights were kept."""

    correlation: float | None = None
    global_step: int | None = None
    epoch: int | None = None
    mean_by_class: dict[str, float] | None = None
    loss: float | None = None


@dataclass(eq=False, repr=False)
class ConvergenceInfo(Record):
    """`convergence_info` of training.json; multi-seed runs add the seed keys."""

    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset({
        "convergent_count", "min_convergent_seeds", "convergence_metric", "threshold", "best_seed", "seeds_tried"})

    converged: bool | None = None
    reason: str | None = None
    convergent_score_threshold: float | None = None
    convergent_mean_by_class_threshold: float | None = None
    convergent_count: int | None = None
    min_convergent_seeds: int | None = None
    convergence_metric: str | None = None
    threshold: float | None = None
    best_seed: int | None = None
    seeds_tried: list[int] | None = None


@dataclass(eq=False, repr=False)
class TrainingRecord(Record):
    """`model/training.json`: per-evaluation scores, the kept checkpoint, losses, timings, arguments."""

    _NESTED: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "best_score_checkpoint": BestCheckpoint.from_json, "convergence_info": ConvergenceInfo.from_json}
    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset(
        {"gradient_cache", "post_prune", "base_model_resolved", "base_model_fingerprint", "diagnostics",
         "calibration", "decoder_fit"})

    training_stats: dict[str, Any] = field(default_factory=dict)
    best_score_checkpoint: BestCheckpoint | None = None
    losses: list[float] = field(default_factory=list)
    gradient_scales: dict[str, float] = field(default_factory=dict)
    convergence_info: ConvergenceInfo | None = None
    time: dict[str, float] = field(default_factory=dict)
    memory_estimate_bytes: dict[str, int] = field(default_factory=dict)
    diagnostics: list[dict[str, Any]] | None = None  # early warnings of a run not learning (None: older files)
    decoder_fit: dict[str, Any] | None = None  # which decoder was saved (`decoder_fit`; None: older files)
    calibration: dict[str, Any] | None = None  # the encoder's refitted gain and offset (`gradiend.calibration`)
    gradient_cache: dict[str, Any] | None = None
    training_args: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    base_model: str | None = None
    base_model_resolved: str | None = None  # absolute path of a local base model (None: older files)
    base_model_fingerprint: str | None = None  # content key of its weights (`gradiend.base_identity`)
    pair: list[str] = field(default_factory=list)
    n_inputs: int | None = None
    post_prune: dict[str, Any] | None = None

    @property
    def best_correlation(self) -> float | None:
        """Correlation of the kept checkpoint (None when training never evaluated)."""
        return self.best_score_checkpoint.correlation if self.best_score_checkpoint is not None else None

    @property
    def converged(self) -> bool | None:
        """The convergence verdict; None when the file records none."""
        return self.convergence_info.converged if self.convergence_info is not None else None

    def convergence_metric_value(self, metric: str) -> float | None:
        """The value `convergent_metric` judges: the kept checkpoint's loss or correlation, with fallbacks."""
        best = self.best_score_checkpoint or BestCheckpoint()
        if metric == "loss":
            return best.loss if best.loss is not None else (self.losses[-1] if self.losses else None)
        return best.correlation if best.correlation is not None else self.training_stats.get("correlation")


@dataclass(eq=False, repr=False)
class SeedRun(Record):
    """One row of the seed report (every key optional when read, so partial reports load)."""

    seed: int | None = None
    output_dir: str | None = None
    trained: bool | None = None
    used_cache: bool | None = None
    training_score: float | None = None
    eval_correlation: float | None = None
    eval_correlation_source: str | None = None
    selection_score: float | None = None
    convergence_metric: str | None = None
    convergence_metric_value: float | None = None
    best_checkpoint_global_step: int | None = None
    threshold: float | None = None
    converged: bool | None = None
    reason: str | None = None
    seconds: float | None = None


@dataclass(eq=False, repr=False)
class SeedReport(Record):
    """`seeds/seed_report.json`: every seed tried, which converged, and the one kept."""

    _NESTED: ClassVar[dict[str, Callable[[Any], Any]]] = {"runs": _list_of(SeedRun)}

    convergence_metric: str | None = None
    threshold: float | None = None
    convergent_mean_by_class_threshold: float | None = None
    min_convergent_seeds: int | None = None
    max_seeds: int | None = None
    seeds_tried: list[int] | None = None
    convergent_count: int | None = None
    convergent_seeds: list[int] | None = None
    best_seed: int | None = None
    best_selection_score: float | None = None
    best_seed_selection_strategy: str | None = None
    early_stop_reason: str | None = None
    runs: list[SeedRun] = field(default_factory=list)


@dataclass(eq=False, repr=False)
class EncoderMetrics(Record):
    """The metrics of one encoder evaluation (`metrics` in `encoded_values_*.json`)."""

    n_samples: int | None = None
    sample_counts: dict[str, int] = field(default_factory=dict)
    correlation: float | None = None
    accuracy: float | None = None
    all_data_correlation: float | None = None  # every row, neutral rows labelled 0
    all_data_accuracy: float | None = None
    training_only: dict[str, Any] = field(default_factory=dict)
    all_data: dict[str, Any] = field(default_factory=dict)
    target_classes_only: dict[str, Any] = field(default_factory=dict)
    mean_by_class: dict[str, float] = field(default_factory=dict)
    mean_by_feature_class: dict[str, float] = field(default_factory=dict)  # every class encoded, other classes too
    n_by_feature_class: dict[str, int] = field(default_factory=dict)
    mean_by_type: dict[str, float] = field(default_factory=dict)
    abs_mean_by_type: dict[str, float] = field(default_factory=dict)
    neutral_mean_by_type: dict[str, float] = field(default_factory=dict)
    neutral_abs_mean_by_type: dict[str, float] = field(default_factory=dict)
    neutral_within_bounds_by_type: dict[str, float] = field(default_factory=dict)  # share with |h| < 0.5
    std_by_class: dict[str, float] = field(default_factory=dict)
    boundaries: dict[str, float] = field(default_factory=dict)
    label_value_to_class_name: dict[str, str] = field(default_factory=dict)


@dataclass(eq=False, repr=False)
class EncoderMeta(Record):
    """`encoded_values_split_<s>[_max_size_<n>].json`: cache key, split, row cap and metrics.

    Files written before the split and cap were stored lack them (see `absent`).
    """

    _NESTED: ClassVar[dict[str, Callable[[Any], Any]]] = {"metrics": EncoderMetrics.from_json}

    fingerprint: str | None = None
    model: str | None = None  # weights stamp of the GRADIEND that made it (experiment.weights_stamp)
    split: str | None = None
    max_size: int | None = None
    metrics: EncoderMetrics = field(default_factory=EncoderMetrics)


@dataclass(eq=False, repr=False)
class DecoderSelection(Record):
    """The candidate selected for one goal (one entry of `decoder_summaries.json`)."""

    value: float | None = None
    feature_factor: float | None = None
    learning_rate: float | None = None
    id: str | None = None
    strengthen: bool | None = None
    lms: float | None = None
    base_lms: float | None = None
    base_value: float | None = None


@dataclass(eq=False, repr=False)
class DecoderSummaries(Record):
    """`decoder_summaries.json`: the selections of one GRADIEND model, by key (`<class>[_weaken]`)."""

    _NESTED: ClassVar[dict[str, Callable[[Any], Any]]] = {"summaries": _dict_of(DecoderSelection)}

    model: str | None = None
    summaries: dict[str, DecoderSelection] = field(default_factory=dict)


@dataclass(eq=False, repr=False)
class RunConfig(Record):
    """`run_config.json`: the inputs `gradiend train` was given, so later commands need only the directory."""

    model: str | None = None
    data: Any = None
    target_classes: list[str] | None = None
    run_id: str | None = None
    eval_neutral_data: Any = None
    training_args: dict[str, Any] = field(default_factory=dict)
    all_classes: list[str] | None = None
    class_merge_map: dict[str, list[str]] | None = None
    # the data options that shape the rows and their drawn splits (column names, split_col, ratios, the
    # resolved random_state, ...), so a reattached trainer rebuilds the same rows; see
    # TextPredictionTrainer.data_options
    data_options: dict[str, Any] | None = None
