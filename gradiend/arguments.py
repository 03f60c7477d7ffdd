"""Typed, validated training configuration: section dataclasses, the flat `TrainingArguments`, pruning configs.

Each section (`OptimizationArgs`, `SeedArgs`, …) is a small dataclass with one job. Every field carries
its help text and constraints in `field(metadata=doc(...))`; one generic validator reads the
annotations (types, `Literal` choices, `Optional`, list elements) and that metadata (positive, >= 0,
finite, in [0, 1], non-empty), so the rules are written once. The few rules that relate two fields stay
explicit in a section's `_check`. `TrainingArguments` inherits every section, so it keeps the flat
constructor and flat JSON of the reference API, and exposes each section as a typed view
(`args.optimization`). The CLI builds its flags from the same metadata.

torch is imported only when a torch dtype is needed (`dtype`, `DTYPES`), so reading the configuration
(e.g. for `gradiend --help`) stays cheap.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

if TYPE_CHECKING:
    import torch

GradientKind = Literal["factual", "alternative", "diff"]
DtypeName = Literal["float32", "float16", "bfloat16", "float64"]
Activation = Literal["tanh", "hardtanh"]
Optimizer = Literal["adamw", "adam"]
Objective = Literal["mlm", "clm", "clm_mlm_head"]
CacheReuse = Literal["always", "only_convergent"]
SavedSeedRuns = Literal["best_only", "all_convergent", "all_tried"]
ConvergentMetric = Literal["correlation", "loss"]
TopkPart = Literal["decoder-weight", "encoder-weight", "decoder-bias", "decoder-sum"]
GradientCacheMode = Literal["off", "memory", "disk"]
GradientCacheDtype = Literal["float32", "bfloat16"]
FinalWeights = Literal["rank0_host", "every_rank"]
PrunePart = Literal["decoder-weight", "encoder-weight", "decoder-bias", "decoder-sum"]
DecoderFit = Literal["class_means", "trained"]

GRADIENT_KINDS: tuple[str, ...] = typing.get_args(GradientKind)
USE_CACHE_MODES: tuple[bool | str, ...] = (False, True, *typing.get_args(CacheReuse))
SAVED_SEED_RUNS: tuple[str, ...] = typing.get_args(SavedSeedRuns)
CONVERGENT_METRICS: tuple[str, ...] = typing.get_args(ConvergentMetric)
GRADIENT_CACHE_MODES: tuple[str, ...] = typing.get_args(GradientCacheMode)
GRADIENT_CACHE_DTYPES: tuple[str, ...] = typing.get_args(GradientCacheDtype)
PRUNE_PARTS: tuple[str, ...] = typing.get_args(PrunePart)
DECODER_FITS: tuple[str, ...] = typing.get_args(DecoderFit)
DTYPE_NAMES: tuple[str, ...] = typing.get_args(DtypeName)

# shortest useful sequence: a start token, the slot and an end token
MIN_MAX_LENGTH = 3

# constraint keys understood in field metadata (besides "help", "unused", "instead" and "only")
RULES = ("positive", "nonnegative", "finite", "unit_interval", "nonempty")


def __getattr__(name: str) -> Any:
    """`DTYPES` (name → torch dtype) is built on first use, so importing this module does not import torch."""
    if name == "DTYPES":
        import torch

        table = {dtype: getattr(torch, dtype) for dtype in DTYPE_NAMES}
        globals()["DTYPES"] = table
        return table
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dtype_name(dtype: torch.dtype | str | None) -> str | None:
    """Canonical short name ('float32', …) of a torch dtype or dtype string."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
    else:
        import torch  # already loaded: a torch.dtype was passed

        name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else ""
    if name not in DTYPE_NAMES:
        raise ValueError(f"torch_dtype {dtype!r} is not supported; use one of {sorted(DTYPE_NAMES)}")
    return name


class TorchDtypeName(str):
    """A dtype name ('float16') that also equals its torch dtype (`args.torch_dtype == torch.float16`).

    The reference stores `torch_dtype` as a `torch.dtype`; a `str` subclass keeps the configuration torch-free,
    JSON-serialisable as the plain name and usable as a key of `DTYPES`, while comparisons with torch dtypes
    work as reference users write them. `.dtype` is the torch dtype itself (for `tensor.to(...)`).
    """

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if _is_torch_dtype(other):
            return str(other) == f"torch.{self}"
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = str.__hash__

    def __reduce__(self) -> tuple[Any, ...]:
        return TorchDtypeName, (str(self),)

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of this name."""
        import torch

        return getattr(torch, str(self))


def _is_torch_dtype(value: object) -> bool:
    """Whether `value` is a torch.dtype, without importing torch (a dtype exists only once torch is loaded)."""
    return type(value).__module__ == "torch" and type(value).__name__ == "dtype"


def doc(help_text: str, *, unused: bool = False, instead: str | None = None, only: tuple[Any, ...] | None = None,
        **rules: bool) -> dict[str, Any]:
    """Field metadata: the help text, whether nothing reads the field, and its constraints (keys of `RULES`).

    Used as `field(default=..., metadata=doc("what it does", positive=True))`. A reference (gradiend 0.2.x)
    setting that has no effect here is accepted only with the values in `only` (default: its default value,
    which matches what gradiend does) and refused otherwise with `instead`: what to use in its place.
    """
    bad = sorted(set(rules) - set(RULES))
    if bad:
        raise TypeError(f"unknown field rule(s) {bad}; known: {RULES}")
    if not help_text.strip():
        raise TypeError("every configuration field needs a help text")
    if only is not None and instead is None:
        raise TypeError("only= needs instead= (what to use in place of the refused values)")
    meta = {"help": help_text, "unused": unused, **{k: v for k, v in rules.items() if v}}
    if instead is not None:
        meta.update(instead=instead, only=only)
    return meta


def refused_value(f: dataclasses.Field, value: Any) -> str | None:
    """Why `value` of a reference-only field (metadata `instead`) is refused, or None when it is accepted."""
    if "instead" not in f.metadata:
        return None
    accepted = f.metadata["only"] if f.metadata["only"] is not None else (f.default,)
    if any(type(value) is type(ok) and value == ok for ok in accepted):
        return None
    shown = " or ".join(repr(ok) for ok in accepted)
    return (f"{f.name}={value!r} is not supported by gradiend (accepted for reference compatibility only as "
            f"{shown}); {f.metadata['instead']}")


# -- generic validation ----------------------------------------------------------------------------------------
@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotation of each dataclass field of `cls` (string annotations evaluated once)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def matches(value: Any, tp: Any) -> bool:
    """Whether `value` has annotation `tp` (Literal, Optional/Union, list[...], dict[...], classes)."""
    if tp is Any:
        return True
    if tp is None or tp is type(None):
        return value is None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, member) for member in typing.get_args(tp))
    if origin is Literal:  # exact type: True is not 1, "1" is not 1
        return any(type(value) is type(choice) and value == choice for choice in typing.get_args(tp))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list:
        (elem,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(matches(v, elem) for v in value)
    if origin is dict:
        key, val = typing.get_args(tp) or (Any, Any)
        return isinstance(value, dict) and all(matches(k, key) and matches(v, val) for k, v in value.items())
    if isinstance(tp, type):
        return isinstance(value, tp)
    raise TypeError(f"unsupported annotation {tp!r}")


def describe(tp: Any) -> str:
    """Readable expected-type text for an annotation ("a positive …" is added by the rules)."""
    if tp is Any:
        return "any value"
    if tp is None or tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(m) for m in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin is list:
        (elem,) = typing.get_args(tp) or (Any,)
        return f"a list of {_plural(elem)}"
    if origin is dict:
        return "a mapping"
    names = {bool: "a bool (true or false)", int: "an integer", float: "a number", str: "a string"}
    if tp in names:
        return names[tp]
    return f"a {tp.__name__} (or a mapping of its fields)" if isinstance(tp, type) else repr(tp)


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "bools"}.get(tp, describe(tp))


def _rule_problem(value: Any, meta: Mapping[str, Any], noun: str = "number") -> str | None:
    """What a (type-correct, not None) value violates among the field's rules, or None.

    `noun` comes from the field's annotation ("integer" for int fields), not from the value's type.
    """
    if isinstance(value, list):
        if meta.get("nonempty") and (not value or any(v == "" for v in value)):
            return "must be a non-empty list (of non-empty items)"
        return next((f"{p} (item {v!r})" for v in value if (p := _rule_problem(v, meta, noun))), None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "must not be empty" if meta.get("nonempty") and value in ("", {}) else None
    if meta.get("finite") and not math.isfinite(value):
        return f"must be a finite {noun}"
    if meta.get("positive") and not value > 0:
        return f"must be a positive {noun}"
    if meta.get("nonnegative") and not value >= 0:
        return "must be a number >= 0"
    if meta.get("unit_interval") and not 0.0 <= value <= 1.0:
        return "must be in [0, 1]"
    return None


def _noun(hint: Any) -> str:
    """'integer' for int fields (also optional or lists of int), else 'number'."""
    members = {hint} | set(typing.get_args(hint))
    for member in list(members):
        members |= set(typing.get_args(member))
    return "integer" if int in members and float not in members else "number"


def field_problems(obj: Any) -> list[str]:
    """One message per field of dataclass `obj` whose value breaks its annotation or metadata rules."""
    hints = field_types(type(obj))
    problems = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        refused = refused_value(f, value)
        if refused:
            problems.append(refused)
        elif not matches(value, hints[f.name]):
            problems.append(f"{f.name} must be {describe(hints[f.name])}, got {value!r}")
        elif value is not None:
            problem = _rule_problem(value, f.metadata, _noun(hints[f.name]))
            if problem:
                problems.append(f"{f.name} {problem}, got {value!r}")
    return problems


def constraint_text(meta: Mapping[str, Any]) -> str:
    """Short text of a field's rules for help output, e.g. '> 0' or 'in [0, 1]'."""
    parts = [text for key, text in (("positive", "> 0"), ("nonnegative", ">= 0"), ("unit_interval", "in [0, 1]"),
                                    ("finite", "finite"), ("nonempty", "non-empty")) if meta.get(key)]
    return ", ".join(parts)


def suggest(name: str, candidates: Any) -> str:
    """' (did you mean X?)' for the closest candidate, or ''."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _plain(value: Any) -> Any:
    """JSON-safe copy: nested configs as dicts, tuples as lists, dtype names as plain strings."""
    if isinstance(value, TorchDtypeName):
        return str(value)
    if isinstance(value, ConfigSection):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_C = TypeVar("_C", bound="ConfigSection")


class ConfigSection:
    """Base of every configuration dataclass: generic validation plus dict conversion.

    `__post_init__` runs, along the class hierarchy, each class's own `_prepare` (normalise inputs such as
    aliases or paths), then the generic field validation, then each class's own `_check` (rules that relate
    fields). All problems found by the generic validation are reported together.
    """

    error_prefix: typing.ClassVar[str] = ""

    def __post_init__(self) -> None:
        own = [klass for klass in reversed(type(self).__mro__) if issubclass(klass, ConfigSection)]
        for klass in own:
            if "_prepare" in vars(klass):
                vars(klass)["_prepare"](self)
        problems = field_problems(self)
        if problems:
            raise ValueError("; ".join(self.error_prefix + p for p in problems))
        for klass in own:
            if "_check" in vars(klass):
                vars(klass)["_check"](self)

    @classmethod
    def sections(cls) -> dict[str, type[ConfigSection]]:
        """Named sub-sections whose fields this config holds (empty for a single section)."""
        return {}

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of this config's fields, in declaration order."""
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def flatten(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """Flat field → value dict of `data`, where a section name may hold a mapping of that section's fields.

        Unknown names (flat or inside a section) are a ValueError naming them and the closest known field.
        """
        known, sections = cls.field_names(), cls.sections()
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if key in sections and key not in known and isinstance(value, Mapping):
                allowed = sections[key].field_names()
                _reject_unknown(f"{sections[key].__name__}", set(value) - set(allowed), allowed)
                items = list(value.items())
            else:
                items = [(key, value)]
            for name, item in items:
                if name in flat:
                    raise ValueError(f"{cls.__name__} field {name!r} is given twice (flat and in its section)")
                flat[name] = item
        _reject_unknown(cls.__name__, set(flat) - set(known), [*known, *sections])
        return flat

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field in declaration order; `from_dict` restores an equal object."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
        """Inverse of `to_dict`; also accepts section-nested dicts. Unknown keys are an error, not dropped."""
        return cls(**cls.flatten(data))

    def replace(self: _C, **overrides: Any) -> _C:
        """A validated copy with `overrides` applied (unknown names are an error)."""
        return dataclasses.replace(self, **type(self).flatten(overrides))  # type: ignore[type-var]

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style access used by older scripts: the field's value, or `default` for unknown names."""
        return getattr(self, key) if key in type(self).field_names() else default


def _reject_unknown(owner: str, unknown: set[str], known: list[str]) -> None:
    if unknown:
        names = sorted(unknown)
        raise ValueError(f"Unknown {owner} field(s): {names}{suggest(names[0], known)}")


def _none_to_default(obj: ConfigSection, *names: str) -> None:
    """The reference spells "the default" as None for these fields: None becomes the field's default."""
    defaults = {f.name: f.default for f in fields(obj)}  # type: ignore[arg-type]
    for name in names:
        if getattr(obj, name) is None:
            setattr(obj, name, defaults[name])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_topk(name: str, value: int | float) -> None:
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        raise ValueError(f"{name} as a fraction must be in (0, 1], got {value}")
    if isinstance(value, int) and value <= 0:
        raise ValueError(f"{name} as a count must be positive, got {value}")


# -- pruning configs -------------------------------------------------------------------------------------------
@dataclass
class PrePruneConfig(ConfigSection):
    """Keep the top-k input coordinates by |mean source gradient| before training."""

    error_prefix: typing.ClassVar[str] = "PrePruneConfig."

    n_samples: int = field(default=8, metadata=doc("gradient batches averaged to rank the coordinates", positive=True))
    topk: int | float = field(default=0.1, metadata=doc("coordinates kept: an int count or a float fraction in (0, 1]"))
    threshold: float | None = field(
        default=None, metadata=doc("keep coordinates whose |mean gradient| reaches this instead", finite=True))
    source: GradientKind = field(default="alternative", metadata=doc("gradient ranked: factual, alternative or diff"))
    batch_size: int = field(default=8, metadata=doc("sentences per ranked gradient", positive=True))
    seed: int | None = field(default=None, metadata=doc("seed of the sampled batches (None: the training seed)"))

    def _check(self) -> None:
        _check_topk("PrePruneConfig.topk", self.topk)


@dataclass
class PostPruneConfig(ConfigSection):
    """Keep the top-k input coordinates by trained-weight importance after training."""

    error_prefix: typing.ClassVar[str] = "PostPruneConfig."

    topk: int | float = field(
        default=0.01, metadata=doc("coordinates kept: an int count or a float fraction in (0, 1]"))
    threshold: float | None = field(
        default=None, metadata=doc("keep coordinates whose importance reaches this instead", finite=True))
    part: PrunePart = field(
        default="decoder-weight", metadata=doc("importance measure: which trained weights rank the inputs"))
    inplace: bool = field(default=True, metadata=doc("prune the trained GRADIEND itself instead of a copy"))

    def _check(self) -> None:
        _check_topk("PostPruneConfig.topk", self.topk)


# -- sections ---------------------------------------------------------------------------------------------------
@dataclass
class OutputArgs(ConfigSection):
    """Output: where the run writes, and whether a finished run is reused."""

    experiment_dir: str | None = field(
        default=None, metadata=doc("directory for the checkpoint, caches, plots and report (required by the CLI)"))
    output_dir: str | None = field(
        default=None, metadata=doc("save the checkpoint here instead of EXPERIMENT_DIR/model"))
    use_cache: bool | CacheReuse = field(default=False, metadata=doc(
        "reuse a finished run: true (same settings and data), always, only_convergent, false"))
    overwrite_output_dir: bool = field(default=False, metadata=doc(
        "replace an existing output directory that is not ours (by default only empty or gradiend-made "
        "directories are replaced)"))
    save_steps: int = field(default=500, metadata=doc(
        "save the training state every this many optimiser steps (EXPERIMENT_DIR/cache/resume, removed when "
        "the run finishes), so a killed run can continue (0: never)", nonnegative=True))
    resume_from_checkpoint: bool = field(default=True, metadata=doc(
        "continue an interrupted run from its last saved training state when settings, data and base model "
        "match (false: start from step 0)"))

    def _prepare(self) -> None:
        self.experiment_dir, self.output_dir = _fspath(self.experiment_dir), _fspath(self.output_dir)


@dataclass
class GradiendArgs(ConfigSection):
    """GRADIEND: which gradients go in and out, from which parameters, into what model."""

    source: GradientKind = field(
        default="alternative", metadata=doc("gradient fed to the encoder: factual, alternative or diff"))
    target: GradientKind = field(
        default="diff", metadata=doc("gradient the decoder reconstructs: factual, alternative or diff"))
    params: list[str] | None = field(default=None, metadata=doc(
        "parameter names or glob patterns to learn from (default: the backbone, heads excluded)", nonempty=True))
    latent_dim: int = field(default=1, metadata=doc("number of feature neurons", positive=True))
    activation_encoder: Activation = field(
        default="tanh", metadata=doc("encoder activation (odd, bounded): tanh or hardtanh"))
    bias_decoder: bool = field(default=True, metadata=doc("learn a decoder bias"))
    torch_dtype: DtypeName = field(default="float32", metadata=doc(
        "dtype the base model is loaded in: float32, float16, bfloat16 or float64 (a torch dtype is accepted)"))
    gradiend_dtype: DtypeName = field(default="float32", metadata=doc(
        "dtype of the GRADIEND's own weights (and so its optimizer state and checkpoint): float32, bfloat16, "
        "float16 or float64 (a torch dtype is accepted); the base model's dtype is torch_dtype"))
    normalize_gradiend: bool = field(
        default=True, metadata=doc("flip the sign so that the first target class encodes positively"))
    calibrate_encoder: bool = field(default=True, metadata=doc(
        "after training, refit the feature neuron's gain and offset by least squares so that the validation "
        "rows of the two classes read ±1 and training texts with another word masked read 0 (the neutral "
        "text the reconstruction loss never sees; gradiend.calibration); only the encoder changes"))
    decoder_fit: DecoderFit = field(default="class_means", metadata=doc(
        "the decoder that is saved: 'class_means' refits it after training so that dec(+1) and dec(-1) are the "
        "mean training targets of the two classes (the least-squares decoder for encodings ±1; the trained "
        "decoder is kept slow on purpose and holds only a few % of its target, gradiend.step.class_mean_decoder); "
        "'trained' keeps the decoder as trained"))
    standardize_gradients: bool = field(
        default=True, metadata=doc("scale encoder inputs and decoder targets to fixed norms (estimated once)"))
    scale_estimation_batches: int = field(
        default=4, metadata=doc("batches used to estimate the gradient scales", positive=True))
    add_identity_for_other_classes: bool = field(default=False, metadata=doc(
        "unused: accepted for reference compatibility only as false (no identity rows of other classes are added)",
        unused=True, instead="a GRADIEND is trained on the rows of its two target classes only"))

    def _prepare(self) -> None:
        _none_to_default(self, "latent_dim", "activation_encoder")
        self.torch_dtype = dtype_name(self.torch_dtype)  # type: ignore[assignment]
        self.gradiend_dtype = dtype_name(self.gradiend_dtype)  # type: ignore[assignment]
        if isinstance(self.params, str):
            self.params = [self.params]
        elif isinstance(self.params, tuple):
            self.params = list(self.params)

    def _check(self) -> None:
        # validated names that also equal their torch dtypes (`args.torch_dtype == torch.float16`)
        self.torch_dtype = TorchDtypeName(self.torch_dtype)
        self.gradiend_dtype = TorchDtypeName(self.gradiend_dtype)

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype named by `torch_dtype`."""
        import torch

        return getattr(torch, self.torch_dtype)  # one of DTYPE_NAMES, checked on construction


@dataclass
class OptimizationArgs(ConfigSection):
    """Optimisation: batch sizes, optimiser, schedule, seed and sequence length."""

    train_batch_size: int = field(
        default=32, metadata=doc("sentences per gradient (single-class batches)", positive=True))
    gradiend_batch_size: int | None = field(
        default=1, metadata=doc("gradients per GRADIEND optimiser step (None: 1, as in the reference)", positive=True))
    train_max_size: int | None = field(
        default=None, metadata=doc("at most this many training rows per class", positive=True))
    learning_rate: float = field(
        default=1e-3, metadata=doc("AdamW learning rate of the GRADIEND", positive=True, finite=True))
    weight_decay: float = field(default=1e-2, metadata=doc("AdamW weight decay", nonnegative=True, finite=True))
    adam_epsilon: float = field(default=1e-8, metadata=doc("AdamW epsilon", positive=True, finite=True))
    optim: Optimizer = field(default="adamw", metadata=doc("optimiser: adamw or adam"))
    num_train_epochs: int = field(default=3, metadata=doc("epochs (ignored when max_steps > 0)", positive=True))
    num_epochs: int | None = field(
        default=None, metadata=doc("alias of num_train_epochs (moved there on construction)"))
    max_steps: int = field(default=-1, metadata=doc("optimiser steps; -1 trains num_train_epochs epochs"))
    seed: int | None = field(default=0, metadata=doc("random seed (batches, initialisation, sampling)"))
    max_length: int = field(default=256, metadata=doc("tokens per sentence at most", positive=True))

    def _prepare(self) -> None:
        if self.gradiend_batch_size is None:
            self.gradiend_batch_size = 1
        if self.num_epochs is not None:
            if isinstance(self.num_epochs, bool) or not isinstance(self.num_epochs, int) or self.num_epochs <= 0:
                raise ValueError(f"num_epochs must be a positive integer, got {self.num_epochs!r}")
            self.num_train_epochs, self.num_epochs = self.num_epochs, None

    def _check(self) -> None:
        if self.max_length < MIN_MAX_LENGTH:
            raise ValueError(f"max_length must be at least {MIN_MAX_LENGTH} (room for the special tokens and the "
                             f"target slot), got {self.max_length}; the default is 256")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be a positive integer (or -1 for epochs), got {self.max_steps}")


@dataclass
class ObjectiveArgs(ConfigSection):
    """Prediction objective: masked token (mlm), next token (clm) or a slot head on a causal LM (clm_mlm_head)."""

    objective: Objective | None = field(default=None, metadata=doc(
        "prediction objective: mlm (masked token), clm (next token) or clm_mlm_head (causal LMs: a head trained on "
        "the frozen model reads the slot and the tokens after it); default: from the model"))
    min_left_context_tokens: int = field(
        default=3, metadata=doc("causal LMs: drop rows with fewer tokens left of the slot (logged)", positive=True))
    decoder_mlm_head_pooling_length: int = field(default=3, metadata=doc(
        "clm_mlm_head: hidden states averaged from the slot on (the slot and the next N-1 tokens)", positive=True))
    decoder_mlm_head_placeholder: str | None = field(default=None, metadata=doc(
        "clm_mlm_head: one-token string that fills the slot; default: the tokenizer's mask token, else its EOS token"))


@dataclass
class EvaluationArgs(ConfigSection):
    """Evaluation: in-training evaluation and checkpoints."""

    do_eval: bool = field(default=True, metadata=doc("evaluate on the validation split during training"))
    eval_steps: int = field(default=250, metadata=doc("evaluate every this many steps (checked when do_eval)"))
    eval_batch_size: int = field(default=32, metadata=doc("batch size of evaluations", positive=True))
    encoder_eval_train_max_size: int | None = field(
        default=None, metadata=doc("validation rows per class used during training", positive=True))
    encoder_eval_max_size: int | None = field(
        default=None, metadata=doc("rows per class of evaluate_encoder (default: all)", positive=True))
    include_other_classes: bool = field(default=False, metadata=doc(
        "evaluate_encoder also encodes the rows of classes outside the trained pair (label 0; never trained on)"))
    save_only_best: bool = field(default=True, metadata=doc(
        "unused: accepted for reference compatibility only as true (the best-correlation checkpoint is the one "
        "kept)", unused=True, instead="gradiend keeps the best checkpoint of each seed; to keep the runs of several "
        "seeds use saved_seed_runs='all_convergent' or 'all_tried'"))

    def _check(self) -> None:
        if self.do_eval and self.eval_steps <= 0:
            raise ValueError(f"eval_steps must be a positive integer when do_eval is set, got {self.eval_steps}")


@dataclass
class ConvergenceArgs(ConfigSection):
    """Convergence: when a run counts as converged."""

    convergent_score_threshold: float = field(
        default=0.5, metadata=doc("|correlation| a converged run reaches", unit_interval=True))
    convergent_mean_by_class_threshold: float | None = field(default=0.5, metadata=doc(
        "|mean encoding| each class of a converged run reaches; None: correlation (or loss) alone decides",
        unit_interval=True))
    fail_on_non_convergence: bool = field(
        default=False, metadata=doc("raise (CLI: exit with an error) when training does not converge"))
    highlight_non_convergence: bool = field(default=True, metadata=doc(
        "plots of a run that did not converge say so (the convergence plot's title ends with '(not converged) †'); "
        "false: no convergence marker"))

    def _prepare(self) -> None:
        _none_to_default(self, "convergent_score_threshold")


@dataclass
class SeedArgs(ConfigSection):
    """Multiple seeds: train seed, seed+1, … until enough converged.

    Training stops once `min_convergent_seeds` runs converged; the best run is copied to model/.
    """

    max_seeds: int = field(default=1, metadata=doc("train up to this many seeds", positive=True))
    min_convergent_seeds: int = field(default=1, metadata=doc("stop after this many convergent seeds", positive=True))
    convergent_metric: ConvergentMetric = field(
        default="correlation", metadata=doc("what decides convergence: correlation or loss"))
    seed_selection_eval_max_size: int | None = field(default=None, metadata=doc(
        "rows per class used to pick the best seed (default: encoder_eval_max_size)", positive=True))
    seed_runs_dir: str | None = field(
        default=None, metadata=doc("where per-seed runs go (default: EXPERIMENT_DIR/seeds)"))
    keep_seed_runs: bool = field(default=False, metadata=doc("Python API: train() returns every seed's model"))
    saved_seed_runs: SavedSeedRuns = field(
        default="best_only", metadata=doc("which seed runs to keep on disk: best_only, all_convergent or all_tried"))
    data_seed: int | None = field(default=None, metadata=doc(
        "seed of the batches (which rows, in which order; default: seed); shared by all seeds"))
    seed_stability_topk: int | float | None = field(default=1000, metadata=doc(
        "top-k (count, or fraction in (0, 1]) of the seed-stability analysis written after a multi-seed run with "
        "min_convergent_seeds > 1 (seeds/seed_stability_topk.json: top-k overlap of the convergent seeds); None: off"))
    seed_stability_part: TopkPart = field(default="encoder-weight", metadata=doc(
        "weights ranked for the seed-stability top-k: encoder-weight, decoder-weight, decoder-bias or decoder-sum; "
        "encoder by default, since the seeds of a run share their batches, so their class-mean decoders "
        "(decoder_fit='class_means') are the same"))
    analyze_seed_stability: bool = field(default=False, metadata=doc(
        "a multi-seed run is for comparing seeds: it fails unless min_convergent_seeds seeds converged, and the "
        "convergent seeds' checkpoints are kept (saved_seed_runs 'best_only' becomes 'all_convergent')"))

    def _prepare(self) -> None:
        _none_to_default(self, "convergent_metric")
        if self.analyze_seed_stability is True and self.saved_seed_runs == "best_only":
            self.saved_seed_runs = "all_convergent"  # the seeds to compare must stay on disk
        self.seed_runs_dir = _fspath(self.seed_runs_dir)
        if self.max_seeds == 1 and _is_int(self.min_convergent_seeds) and self.min_convergent_seeds > 1:
            # asking for several convergent seeds implies trying at least that many (the default max_seeds is 1)
            self.max_seeds = self.min_convergent_seeds

    def _check(self) -> None:
        if self.seed_stability_topk is not None:
            _check_topk("seed_stability_topk", self.seed_stability_topk)
        if self.min_convergent_seeds > self.max_seeds:
            raise ValueError(f"min_convergent_seeds ({self.min_convergent_seeds}) exceeds max_seeds "
                             f"({self.max_seeds})")


@dataclass
class GradientCacheArgs(ConfigSection):
    """Gradient cache: per-batch base-model gradients reused across epochs and seeds."""

    gradient_cache: GradientCacheMode = field(
        default="memory", metadata=doc("reuse base-model gradients across epochs and seeds: off, memory or disk"))
    gradient_cache_max_gb: float = field(
        default=2.0, metadata=doc("size limit of the gradient cache in GB", nonnegative=True))
    gradient_cache_dtype: GradientCacheDtype = field(
        default="float32", metadata=doc("dtype of cached gradients: float32 or bfloat16"))


@dataclass
class PruningArgs(ConfigSection):
    """Pruning: drop GRADIEND inputs before and/or after training."""

    pre_prune_config: PrePruneConfig | None = field(
        default=None, metadata=doc("prune inputs before training, e.g. '{topk: 0.1, n_samples: 8}'"))
    post_prune_config: PostPruneConfig | None = field(
        default=None, metadata=doc("prune inputs after training, e.g. '{topk: 0.01}'"))

    def _prepare(self) -> None:
        if isinstance(self.pre_prune_config, Mapping):
            self.pre_prune_config = PrePruneConfig.from_dict(self.pre_prune_config)
        if isinstance(self.post_prune_config, Mapping):
            self.post_prune_config = PostPruneConfig.from_dict(self.post_prune_config)


@dataclass
class DecoderEvalArgs(ConfigSection):
    """Decoder evaluation: the feature factor × learning rate grid."""

    decoder_eval_lrs: list[float] | None = field(
        default=None, metadata=doc("learning rates of the decoder grid", nonempty=True, finite=True))
    decoder_eval_feature_factors: list[float] | None = field(default=None, metadata=doc(
        "feature factors of the decoder grid (default: the strengthening sign)", nonempty=True, finite=True))
    decoder_eval_max_size_training_like: int | None = field(
        default=None, metadata=doc("rows per class scored by the decoder grid", positive=True))
    decoder_eval_max_size_neutral: int | None = field(
        default=None, metadata=doc("neutral texts for the decoder grid's LMS", positive=True))

    def _prepare(self) -> None:
        for name in ("decoder_eval_lrs", "decoder_eval_feature_factors"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))


@dataclass
class MiscArgs(ConfigSection):
    """Miscellaneous: remote model code, progress bars, free-form metadata."""

    trust_remote_code: bool = field(default=False, metadata=doc("allow custom model code from the Hub"))
    show_progress: bool = field(default=True, metadata=doc("progress bars (--quiet turns them off)"))
    shard_gradiend: bool = field(default=False, metadata=doc(
        "torchrun with several processes: each rank holds a slice of the GRADIEND's coordinates (weights, "
        "optimizer state, cached gradients) instead of all of them"))
    sharded_final_weights: FinalWeights = field(default="rank0_host", metadata=doc(
        "shard_gradiend: where the trained weights go. rank0_host: the best weights gathered into rank 0's host "
        "memory (rank 0 saves them); every rank keeps only its slice, and evaluation and rewrites run slice-wise. "
        "every_rank: the full weights on every rank's device (12 B per input more on each GPU)"))
    overlap_step: bool = field(default=True, metadata=doc(
        "run each GRADIEND step while the next batch's base-model gradients are computed (a worker thread; a side "
        "CUDA stream on GPU): bitwise the same training, one more gradient buffer; off with a callback that "
        "overrides on_step_begin, or with shard_gradiend"))
    distributed_timeout: float = field(default=600.0, metadata=doc(
        "torchrun: seconds a rank waits for the others at a collective before it stops with an error",
        positive=True, finite=True))
    metadata: dict[str, Any] = field(
        default_factory=dict, metadata=doc("free-form JSON/YAML mapping stored with the run"))
    device: str | None = field(default=None, metadata=doc(
        "device of the base model and the GRADIEND: cpu, cuda, cuda:N, mps (a torch.device is accepted); "
        "default: a loaded model's own device, else cuda when available, else cpu"))

    def _prepare(self) -> None:
        from gradiend.devices import device_name

        self.device = device_name(self.device)

    def _check(self) -> None:
        if self.sharded_final_weights != "rank0_host" and not self.shard_gradiend:
            raise ValueError(f"sharded_final_weights={self.sharded_final_weights!r} says where a sharded GRADIEND's "
                             f"weights go, but shard_gradiend is off; set shard_gradiend=True or drop "
                             f"sharded_final_weights")


# prediction objectives of the reference: ours by their names here, the others refused with what to use
REFERENCE_OBJECTIVES: dict[str, str | None] = {"auto": None, "mlm_mask_token": "mlm", "clm_next_token": "clm",
                                               "clm_mlm_head": "clm_mlm_head"}
_REFUSED_OBJECTIVES = ("clm_sequence_cloze", "seq2seq_decoder", "seq2seq_decoder_sequence_cloze",
                       "seq2seq_encoder_mlm")
_FIXED_SPLITS = ("the train/validation/test split is the same for every seed of a run; to redraw it, train another run "
                 "with TextPredictionTrainer(random_state=...)")
_ONE_DEVICE = ("the base model and the GRADIEND share one device (device=...); to spread a large GRADIEND over GPUs, "
               "run under torchrun with shard_gradiend=True")
_NO_MONITOR = ("progress, per-phase logging and the early warnings of a run that is not learning go through the "
               "logging module; training.json lists the run's diagnostics")


@dataclass
class ReferenceArgs(ConfigSection):
    """Reference (gradiend 0.2.x) spellings: aliases of our settings, and settings accepted only at their default.

    A setting listed here either maps onto ours (`base_gradient_batch_size` is `train_batch_size`,
    `eval_strategy='no'` turns `do_eval` off, `prediction_objective` sets `objective`, `use_cached_gradients`
    switches the gradient cache, `mask_placeholder` is the data's mask token, `dataset_trust_remote_code` reaches
    `datasets.load_dataset`), or has no counterpart and is refused, with what to use instead, at any value other
    than the one that matches what gradiend does.
    """

    base_gradient_batch_size: int | None = field(default=None, metadata=doc(
        "reference name of train_batch_size (sentences per base-model gradient); None: train_batch_size",
        positive=True))
    precompute_gradient_batches: bool | None = field(default=None, metadata=doc(
        "reference: compute the next gradient in a background thread", only=(None, False),
        instead="gradients are computed in the training loop; the gradient cache (gradient_cache) reuses them "
                "across epochs and seeds"))
    precompute_gradient_buffer_size: int = field(default=1, metadata=doc(
        "reference: size of the background gradient queue",
        instead="there is no background gradient queue (see precompute_gradient_batches)"))
    gradient_timing_steps: int = field(default=0, metadata=doc(
        "reference: log gradient timings every N rows", instead="profile a run with a profiler, e.g. python -m "
                                                                  "cProfile -m gradiend train CONFIG"))
    runtime_monitor: bool = field(default=False, metadata=doc(
        "reference: write runtime diagnostics as JSONL", instead=_NO_MONITOR))
    runtime_monitor_interval: float = field(default=5.0, metadata=doc(
        "reference: seconds between runtime monitor samples", instead=_NO_MONITOR))
    runtime_monitor_system_stats: bool = field(default=True, metadata=doc(
        "reference: runtime monitor samples include memory statistics", instead=_NO_MONITOR))
    lr_search_config: Any = field(default=None, metadata=doc(
        "reference: options of learning_rate='tune'", instead="there is no learning-rate search; give learning_rate "
                                                             "a positive number (default 1e-3)"))
    criterion: Any = field(default=None, metadata=doc(
        "reference: loss module; gradiend trains with the mean squared error (None or torch.nn.MSELoss())",
        instead="the GRADIEND loss is the mean squared error; pass criterion=None or torch.nn.MSELoss()"))
    eval_strategy: Literal["steps", "no"] = field(default="steps", metadata=doc(
        "reference: 'steps' evaluates every eval_steps, 'no' turns in-training evaluation off (do_eval=False)"))
    encoder_eval_balance: bool = field(default=True, metadata=doc(
        "reference: balance encoder evaluation rows per class",
        instead="encoder metrics use the rows of the split; cap rows per class with encoder_eval_max_size"))
    evaluate_fn: Any = field(default=None, metadata=doc(
        "reference: custom in-training evaluation function",
        instead="pass callbacks=[...] to train() (TrainingCallback.on_evaluate sees every evaluation) or call "
                "evaluate_encoder() after training"))
    save_strategy: Literal["best", "steps", "no"] = field(default="best", metadata=doc(
        "reference: which checkpoints to keep; gradiend keeps the best one",
        instead="the best checkpoint (by correlation) is always kept; save_steps=N saves the training state every "
                "N steps so an interrupted run can resume"))
    delete_models: bool = field(default=False, metadata=doc(
        "reference: delete model files at the end", instead="the selected GRADIEND is always saved; "
                                                            "saved_seed_runs='best_only' keeps no per-seed copies"))
    dataset_trust_remote_code: bool | None = field(default=None, metadata=doc(
        "trust_remote_code for datasets.load_dataset of Hub data (None: not passed)"))
    model_use_cache: bool = field(default=False, metadata=doc(
        "reference: key/value cache in the base model's forward passes",
        instead="gradients are computed without the key/value cache, which only speeds up generation"))
    prediction_objective: str = field(default="auto", metadata=doc(
        "reference name of objective: auto, mlm_mask_token (objective mlm), clm_next_token (objective clm) or "
        "clm_mlm_head (objective clm_mlm_head)"))
    mask_placeholder: str = field(default="[MASK]", metadata=doc(
        "placeholder of the target slot in the masked texts (TextPredictionTrainer's mask)", nonempty=True))
    decoder_mlm_head_epochs: int = field(default=5, metadata=doc(
        "clm_mlm_head: epochs of the slot head's training", positive=True))
    decoder_mlm_head_batch_size: int = field(default=4, metadata=doc(
        "clm_mlm_head: batch size of the slot head's training", positive=True))
    decoder_mlm_head_lr: float = field(default=1e-4, metadata=doc(
        "clm_mlm_head: AdamW learning rate of the slot head", positive=True, finite=True))
    decoder_mlm_head_max_size: int | None = field(default=None, metadata=doc(
        "clm_mlm_head: training rows per target word for the slot head (None: all)", positive=True))
    decoder_sequence_cloze_rhs_window: int = field(default=-1, metadata=doc(
        "reference: right context of the clm_sequence_cloze objective",
        instead="the clm_sequence_cloze objective is not available; use prediction_objective='clm_next_token'"))
    activation_decoder: str | None = field(default=None, metadata=doc(
        "reference: decoder activation; the GRADIEND decoder is linear (None or 'id')", only=(None, "id"),
        instead="the decoder is linear: use activation_decoder=None or 'id'"))
    base_model_device_map: bool | str | dict[str, Any] | None = field(default=None, metadata=doc(
        "reference: Hugging Face device_map of the base model (None or False: one device)", only=(None, False),
        instead=_ONE_DEVICE))
    base_model_max_memory: dict[str, Any] | None = field(default=None, metadata=doc(
        "reference: Hugging Face max_memory of the base model", instead=_ONE_DEVICE))
    encoder_decoder_same_device: bool = field(default=False, metadata=doc(
        "reference: put the GRADIEND's encoder and decoder on one GPU", instead=_ONE_DEVICE))
    split_resplit_per_seed: bool = field(default=False, metadata=doc(
        "reference: redraw the data split for every seed", instead=_FIXED_SPLITS))
    split_resplit_strategy: Literal["random", "balanced_cycle"] = field(default="random", metadata=doc(
        "reference: how split_resplit_per_seed redraws", instead=_FIXED_SPLITS))
    supervised_encoder: bool = field(default=False, metadata=doc(
        "baseline: train the encoder alone against the class labels (+1/-1); the decoder stays as initialised"))
    supervised_decoder: bool = field(default=False, metadata=doc(
        "baseline: train the decoder alone from the class labels (needs convergent_metric='loss'); the encoder "
        "stays as initialised"))
    use_cached_gradients: bool | None = field(default=None, metadata=doc(
        "reference switch of the gradient cache: false turns it off (gradient_cache='off'), true requires it on; "
        "None: gradient_cache decides"))
    positive_class: str | None = field(default=None, metadata=doc(
        "the target class that encodes +1 (TextPredictionTrainer puts it first in the pair); None: the first of "
        "target_classes", nonempty=True))
    reuse_pre_prune: bool = field(default=True, metadata=doc(
        "pre-pruning runs once per train() and every seed trains on the same kept inputs (false, the reference's "
        "per-seed pre-pruning, is refused with a pre_prune_config)"))

    def _prepare(self) -> None:
        if self.criterion is not None and type(self.criterion).__name__ == "MSELoss" \
                and self.criterion.reduction == "mean":
            self.criterion = None  # what the GRADIEND loss is anyway

    def _check(self) -> None:
        if self.prediction_objective in _REFUSED_OBJECTIVES:
            raise ValueError(f"prediction_objective={self.prediction_objective!r} is not available in gradiend; use "
                             f"'clm_next_token' (objective='clm'), 'clm_mlm_head' (a slot head on a causal LM, for "
                             f"features decided by the words after the slot) or 'mlm_mask_token' (objective='mlm')")
        if self.prediction_objective not in REFERENCE_OBJECTIVES:
            raise ValueError(f"prediction_objective must be one of {sorted(REFERENCE_OBJECTIVES)}, got "
                             f"{self.prediction_objective!r}{suggest(self.prediction_objective, REFERENCE_OBJECTIVES)}")


_S = TypeVar("_S", bound=ConfigSection)


class SectionView(Generic[_S]):
    """Class attribute that reads one section of a `TrainingArguments` as its own validated config (a copy)."""

    def __init__(self, section: type[_S]) -> None:
        self.section = section

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> SectionView[_S]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> _S: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> SectionView[_S] | _S:
        if obj is None:
            return self
        return self.section(**{f.name: copy.deepcopy(getattr(obj, f.name)) for f in fields(self.section)})


@dataclass
class TrainingArguments(ReferenceArgs, MiscArgs, DecoderEvalArgs, PruningArgs, GradientCacheArgs, SeedArgs,
                        ConvergenceArgs, EvaluationArgs, ObjectiveArgs, OptimizationArgs, GradiendArgs, OutputArgs):
    """Everything that shapes a GRADIEND training run.

    `max_steps` (> 0) wins over `num_train_epochs`. `num_epochs` is accepted as an alias of
    `num_train_epochs` (the reference docs use both). Fields used by later features
    (decoder grid, multi-seed, pruning) are validated and stored now.

    `objective` forces the prediction objective ("mlm" masked token, "clm" next token);
    None picks it from the model. Causal LMs only see text left of the slot: training and
    evaluation rows with fewer than `min_left_context_tokens` tokens there are dropped (logged).

    Constructed flat (`TrainingArguments(learning_rate=1e-3, max_steps=10)`), it inherits the fields of
    every section (in their order: the flat JSON keys of `to_dict`); each section is also readable on its
    own (`args.optimization` is an `OptimizationArgs`), so code that needs a few settings can take one section.
    """

    output = SectionView(OutputArgs)
    gradiend = SectionView(GradiendArgs)
    optimization = SectionView(OptimizationArgs)
    prediction = SectionView(ObjectiveArgs)
    evaluation = SectionView(EvaluationArgs)
    convergence = SectionView(ConvergenceArgs)
    seeds = SectionView(SeedArgs)
    caching = SectionView(GradientCacheArgs)
    pruning = SectionView(PruningArgs)
    decoder_eval = SectionView(DecoderEvalArgs)
    misc = SectionView(MiscArgs)
    reference = SectionView(ReferenceArgs)

    @classmethod
    def sections(cls) -> dict[str, type[ConfigSection]]:
        """View name → section class, in field order (`from_dict` accepts these names as nested keys)."""
        return {name: view.section for name, view in vars(cls).items() if isinstance(view, SectionView)}

    def replace(self, **overrides: Any) -> TrainingArguments:
        """A validated copy with `overrides` applied; `train_batch_size` and its alias `base_gradient_batch_size`
        change together."""
        flat = type(self).flatten(overrides)
        for name, alias in (("train_batch_size", "base_gradient_batch_size"),
                            ("base_gradient_batch_size", "train_batch_size")):
            if name in flat and alias not in flat:
                flat[alias] = flat[name]
        return dataclasses.replace(self, **flat)

    def _prepare(self) -> None:
        """Reference spellings (`ReferenceArgs`) onto the settings they name, before validation."""
        _alias_batch_size(self)
        if self.eval_strategy == "no":
            self.do_eval = False
        mapped = REFERENCE_OBJECTIVES.get(self.prediction_objective) if isinstance(
            self.prediction_objective, str) else None
        if mapped is not None:
            if self.objective is not None and self.objective != mapped:
                raise ValueError(f"prediction_objective={self.prediction_objective!r} means objective={mapped!r}, "
                                 f"but objective={self.objective!r} was given; pass one of them")
            self.objective = mapped  # type: ignore[assignment]
        _apply_use_cached_gradients(self)

    def _check(self) -> None:
        if not self.reuse_pre_prune and self.pre_prune_config is not None:
            raise ValueError("reuse_pre_prune=False (pre-prune again for every seed) is not supported by gradiend: "
                             "pre-pruning runs once per train() and all seeds share its kept inputs, so their top-k "
                             "sets are comparable; drop reuse_pre_prune or pass True")


def _alias_batch_size(args: TrainingArguments) -> None:
    """`base_gradient_batch_size` is the reference's name of `train_batch_size`: a given value becomes it, and it
    reports `train_batch_size` when not given (as the reference does)."""
    base = args.base_gradient_batch_size
    if base is None:
        args.base_gradient_batch_size = args.train_batch_size
        return
    if not _is_int(base) or base == args.train_batch_size:
        return
    default = next(f.default for f in fields(OptimizationArgs) if f.name == "train_batch_size")
    if args.train_batch_size != default:
        raise ValueError(f"base_gradient_batch_size={base} and train_batch_size={args.train_batch_size} name the "
                         f"same setting here (sentences per base-model gradient); pass one of them")
    args.train_batch_size = base


def _apply_use_cached_gradients(args: TrainingArguments) -> None:
    """`use_cached_gradients` (reference): False turns the default memory cache off, True requires a cache."""
    use, mode = args.use_cached_gradients, args.gradient_cache
    if use is True and mode == "off":
        raise ValueError("use_cached_gradients=True asks for the gradient cache, but gradient_cache='off'; "
                         "pass gradient_cache='memory' or 'disk'")
    if use is False and mode == "disk":
        raise ValueError("use_cached_gradients=False turns the gradient cache off, but gradient_cache='disk'; "
                         "pass one of them")
    if use is False:
        args.gradient_cache = "off"
