"""The `gradiend` command line: argument handling around the Python API, nothing more.

`gradiend train` builds `TrainingArguments` from a YAML/JSON file and/or flags generated from the
dataclass fields and their metadata (help, type, default, choices, constraints; grouped by section), so new
fields appear automatically; `evaluate`, `rewrite` and `report` work on an experiment directory. Exit codes
are listed in `gradiend --help`. Module-level imports are stdlib only: `--version` and `--help` stay cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import sys
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from gradiend._version import __version__
from gradiend.hub import add_push_command

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1  # the run itself failed (e.g. non-convergence with fail_on_non_convergence)
EXIT_USAGE = 2  # bad flags, config file or argument values
EXIT_MISSING = 3  # a needed input file or experiment result is missing
EXIT_EXTRA = 4  # an optional dependency (extra) is not installed
EXIT_UNWRITABLE = 5  # an output path cannot be written
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """exit codes:
  0  success            1  the run failed         2  bad flags, config or values
  3  missing input or experiment result            4  optional extra not installed
  5  output path not writable                      130 interrupted"""

# Trainer inputs that are not TrainingArguments fields (config-file keys and `train` flags).
TRAINER_KEYS = ("model", "data", "target_classes", "eval_neutral_data", "run_id", "all_classes", "class_merge_map")
# TrainingArguments paths that a config file's relative values resolve against (the file's directory)
OUTPUT_PATH_KEYS = ("experiment_dir", "output_dir", "seed_runs_dir")
ARGS_KEYS = ("training_args", "args")  # a config file may nest the TrainingArguments fields under these
TRUE_TEXTS = ("true", "yes", "on", "1")
FALSE_TEXTS = ("false", "no", "off", "0")
NONE_TEXTS = ("none", "null", "~")


class UsageError(ValueError):
    """Bad command-line input (flags, config file, values): exit code 2."""


# -- TrainingArguments ↔ flags ------------------------------------------------------------------------
def _training_arguments() -> Any:
    from gradiend.arguments import TrainingArguments

    return TrainingArguments


def _field_types() -> dict[str, Any]:
    from gradiend.arguments import field_types

    return field_types(_training_arguments())


def _members(tp: Any) -> tuple[Any, ...]:
    """The alternatives of a union annotation (the annotation itself otherwise)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _optional(tp: Any) -> bool:
    return type(None) in _members(tp)


def _without_none(tp: Any) -> tuple[Any, ...]:
    return tuple(m for m in _members(tp) if m is not type(None))


def parse_bool(text: str) -> bool:
    """true/false, yes/no, on/off, 1/0 (any case) → bool; anything else is a ValueError."""
    lowered = text.strip().lower()
    if lowered in TRUE_TEXTS:
        return True
    if lowered in FALSE_TEXTS:
        return False
    raise ValueError(f"expected a boolean ({'/'.join(TRUE_TEXTS)} or {'/'.join(FALSE_TEXTS)}), got {text!r}")


def positive_int(text: str) -> int:
    """A flag value that must be a whole number ≥ 1 (`--steps -1` is refused, not read as 'all epochs')."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def finite_float(text: str) -> float:
    """A flag value that must be a finite number (nan and inf are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite flag value > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def _yaml_value(text: str) -> Any:
    """A flag value read as YAML (covers JSON): numbers, booleans, null, lists, mappings, strings."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"not valid YAML/JSON: {text!r} ({err})") from err


def type_text(tp: Any) -> str:
    """Short annotation text for help output: 'int', 'float | None', 'tanh | hardtanh', 'list[str]'."""
    if tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(m) for m in typing.get_args(tp))
    if origin is Literal:
        return " | ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in typing.get_args(tp))
    if origin is list:
        return f"list[{type_text((typing.get_args(tp) or (str,))[0])}]"
    if origin is dict or tp is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return f"{tp.__name__} mapping"
    return getattr(tp, "__name__", str(tp))


def _convert_one(tp: Any, text: str) -> Any:
    """`text` read as one (non-union) annotation; ValueError when it does not fit."""
    if typing.get_origin(tp) is Literal:
        for choice in typing.get_args(tp):
            if isinstance(choice, bool):
                if text.strip().lower() in (TRUE_TEXTS if choice else FALSE_TEXTS):
                    return choice
            elif text == str(choice):
                return choice
        raise ValueError(text)
    if tp is bool:
        return parse_bool(text)
    if tp is type(None):
        if text.strip().lower() in NONE_TEXTS:
            return None
        raise ValueError(text)
    if tp in (int, float, str):
        return tp(text)
    raise ValueError(text)


def text_converter(tp: Any) -> Callable[[str], Any]:
    """A converter of flag/config text to a scalar annotation: the first union member that reads it wins.

    None ('none'/'null') is tried first, then bool, int, float, Literal choices and str, so `--seed none`,
    `--use-cache always` and `--learning-rate 1e-3` all get their field's type.
    """
    order = {type(None): 0, bool: 1, int: 2, float: 3, str: 5}
    members = sorted(_members(tp), key=lambda m: order.get(m, 4))

    def convert(text: str) -> Any:
        for member in members:
            try:
                return _convert_one(member, text)
            except ValueError:
                continue
        from gradiend.arguments import suggest

        choices = [str(c) for m in members if typing.get_origin(m) is Literal for c in typing.get_args(m)]
        raise argparse.ArgumentTypeError(f"expected {type_text(tp)}, got {text!r}{suggest(text, choices)}")

    convert.__name__ = type_text(tp)
    return convert


class _ListFlag(argparse.Action):
    """A list field: `--x A B`, a YAML/JSON list `--x '[A, B]'`, or `--x none` for an optional list."""

    def __init__(self, option_strings: list[str], dest: str, element: Any, optional: bool, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="+", **kwargs)
        self.element, self.optional = element, optional

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items: list[Any] = list(values)
        if len(items) == 1 and items[0].lstrip().startswith("["):
            loaded = _yaml_value(items[0])
            if not isinstance(loaded, list):
                raise argparse.ArgumentError(self, f"expected a list, got {items[0]!r}")
            items = loaded
        if self.optional and len(items) == 1 and str(items[0]).strip().lower() in NONE_TEXTS:
            setattr(namespace, self.dest, None)
            return
        convert = text_converter(self.element)
        try:
            result = [convert(str(item)) for item in items]
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentError(self, str(err)) from err
        setattr(namespace, self.dest, result)


def flag_spec(tp: Any) -> dict[str, Any]:
    """argparse keyword arguments for a field annotation."""
    inner = _without_none(tp)
    if inner == (bool,):
        return {"action": argparse.BooleanOptionalAction}
    if len(inner) == 1 and typing.get_origin(inner[0]) is list:
        element = (typing.get_args(inner[0]) or (str,))[0]
        return {"action": _ListFlag, "element": element, "optional": _optional(tp),
                "metavar": type_text(element).upper()}
    scalar = all(m in (bool, int, float, str) or typing.get_origin(m) is Literal for m in inner)
    if not scalar:  # mappings and nested configs: a YAML/JSON value
        return {"type": _yaml_value, "metavar": "YAML"}
    spec: dict[str, Any] = {"type": text_converter(tp)}
    literals = [c for m in inner if typing.get_origin(m) is Literal for c in typing.get_args(m)]
    if bool in inner:  # e.g. use_cache: true | false | always | …; a bare flag means true
        spec.update(nargs="?", const=True, metavar="VALUE")
    elif literals and len(inner) == 1:
        spec["metavar"] = "{" + ",".join(map(str, literals)) + (",none}" if _optional(tp) else "}")
    else:
        spec["metavar"] = type_text(inner[0]).upper() if len(inner) == 1 else "VALUE"
    return spec


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return repr(field.default_factory())
    return "required"


def field_help(field: dataclasses.Field, tp: Any) -> str:
    """'<help> [<type>, <constraints>; default <value>]' from the field's metadata and annotation."""
    from gradiend.arguments import constraint_text

    kind = ", ".join(part for part in (type_text(tp), constraint_text(field.metadata)) if part)
    return f"{field.metadata['help']} [{kind}; default {_default_text(field)}]".replace("%", "%%")


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainingArguments field, grouped by section (the section's docstring heads its group)."""
    cls, hints = _training_arguments(), _field_types()
    for view, section in cls.sections().items():
        title, _, details = (section.__doc__ or section.__name__).strip().partition("\n")
        where = (f"TrainingArguments.{view} ({section.__name__}); config files may also nest these settings "
                 f"under '{view}:'.")
        group = parser.add_argument_group(title.rstrip("."), " ".join([*details.split(), where]))
        for field in dataclasses.fields(section):
            group.add_argument(flag_name(field.name), dest=f"ta_{field.name}", default=argparse.SUPPRESS,
                               help=field_help(field, hints[field.name]), **flag_spec(hints[field.name]))


def coerce_field(name: str, value: Any) -> Any:
    """A config-file value in its field's type where YAML/JSON left text (`1e-3`, `"false"`, `none`)."""
    from gradiend.arguments import matches

    tp = _field_types()[name]
    inner = _without_none(tp)
    try:
        if len(inner) == 1 and typing.get_origin(inner[0]) is list and isinstance(value, list):
            element = (typing.get_args(inner[0]) or (str,))[0]
            return [_coerce_scalar(element, item) for item in value]
        if all(m in (bool, int, float, str) or typing.get_origin(m) is Literal for m in inner):
            return _coerce_scalar(tp, value)
    except argparse.ArgumentTypeError as err:
        raise UsageError(f"{name}: cannot read {value!r} as {type_text(tp)}") from err
    if not matches(value, tp) and isinstance(value, str) and value.strip().lower() in NONE_TEXTS and _optional(tp):
        return None
    return value


def _coerce_scalar(tp: Any, value: Any) -> Any:
    from gradiend.arguments import matches

    if not isinstance(value, str) or matches(value, tp):
        return float(value) if _int_for_float(tp, value) else value  # `learning_rate: 1` is the float 1.0
    if _optional(tp) and value.strip().lower() in NONE_TEXTS:
        return None
    if not all(typing.get_origin(m) is Literal for m in _without_none(tp)):
        return text_converter(tp)(value)
    return value  # not one of the choices: TrainingArguments judges it (it accepts e.g. 'torch.float16')


def _int_for_float(tp: Any, value: Any) -> bool:
    from gradiend.arguments import matches

    return float in _members(tp) and int not in _members(tp) and matches(value, int)


def suggest(name: str, candidates: Sequence[str]) -> str:
    """' (did you mean X?)' for the closest candidate, or ''."""
    from gradiend.arguments import suggest as closest

    return closest(name, candidates)


# -- config files ------------------------------------------------------------------------------------------
def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML or JSON run configuration: trainer inputs plus TrainingArguments fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    import yaml

    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise UsageError(f"Config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                         f"{err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"Config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def split_config(data: dict[str, Any], origin: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer inputs, TrainingArguments fields) of a config mapping; unknown keys are an error.

    TrainingArguments fields may sit at the top level, under `training_args:`/`args:`, or nested under
    their section's name (`optimization: {learning_rate: 1e-3}`).
    """
    cls = _training_arguments()
    fields, sections = cls.field_names(), cls.sections()
    trainer, args = {}, {}
    where = f" in {origin}" if origin else ""
    for key, value in data.items():
        if key in ARGS_KEYS:
            if not isinstance(value, dict):
                raise UsageError(f"{key!r} must be a mapping of TrainingArguments fields")
            nested_trainer, nested_args = split_config(value, origin)
            if nested_trainer:
                raise UsageError(f"{sorted(nested_trainer)} belong at the top level, not under {key!r}")
            args.update(nested_args)
        elif key in TRAINER_KEYS:
            trainer[key] = value
        elif key in fields:
            args[key] = coerce_field(key, value)
        elif key in sections and isinstance(value, dict):
            allowed = sections[key].field_names()
            for name, item in value.items():
                if name not in allowed:
                    raise UsageError(f"Unknown setting {key}.{name}{where}: not a field of {sections[key].__name__}"
                                     f"{suggest(name, allowed)}")
                args[name] = coerce_field(name, item)
        else:
            raise UsageError(f"Unknown setting {key!r}{where}{suggest(key, [*fields, *TRAINER_KEYS, *sections])}")
    if origin is not None:
        for key in ("model", "data", "eval_neutral_data"):
            value = trainer.get(key)
            if isinstance(value, str) and not Path(value).is_absolute() and (origin.parent / value).exists():
                trainer[key] = str((origin.parent / value).resolve())
        for key in OUTPUT_PATH_KEYS:  # outputs need not exist yet: relative ones always belong to the file
            value = args.get(key)
            if isinstance(value, str) and not Path(value).is_absolute():
                args[key] = str((origin.parent / value).resolve())
    return trainer, args


# -- shared helpers -----------------------------------------------------------------------------------------
def _ensure_writable(path: Path) -> None:
    from gradiend.results import OutputNotWritableError

    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputNotWritableError(f"Cannot write {path}: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputNotWritableError(f"Cannot write {path}: {probe} is not writable; choose another path")


def _absolute_if_local(value: Any) -> Any:
    if isinstance(value, str) and Path(value).exists():
        return str(Path(value).resolve())
    return value


def _plot_or_hint(make: Callable[[], Any]) -> Any:
    """Run a plotting step; a missing extra prints its one-line install hint instead of failing."""
    try:
        return make()
    except ImportError as err:
        print(f"gradiend: note: {err}", file=sys.stderr)
        return None


def _show_progress(ns: argparse.Namespace, default: bool = True) -> bool:
    return default and not ns.quiet


def _trainer_for(experiment_dir: str, ns: argparse.Namespace) -> Any:
    """A trainer attached to the finished run in `experiment_dir` (never trains, never hashes the data)."""
    from gradiend.trainer.trainer import Trainer

    return Trainer.from_experiment(experiment_dir, data=getattr(ns, "data", None),
                                   eval_neutral_data=getattr(ns, "eval_neutral_data", None),
                                   model=getattr(ns, "base_model", None),
                                   **({"show_progress": False} if ns.quiet else {}),
                                   **({"device": ns.device} if getattr(ns, "device", None) else {}))


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


# -- commands -----------------------------------------------------------------------------------------------
def _demo(ns: argparse.Namespace) -> int:
    from gradiend.demo import format_report, run_demo

    result = run_demo(model=ns.model, experiment_dir=ns.experiment_dir, max_steps=ns.steps,
                      train_batch_size=ns.batch_size, eval_steps=ns.eval_steps, learning_rate=ns.learning_rate,
                      seed=ns.seed, show_progress=_show_progress(ns), plots=not ns.no_plots)
    print(format_report(result))
    return EXIT_OK


def _embedded(ns: argparse.Namespace) -> int:
    from gradiend.embedded import embedded_model_path

    print(embedded_model_path(ns.kind))
    return EXIT_OK


def _train(ns: argparse.Namespace) -> int:
    trainer_inputs, arg_values = _train_settings(ns)
    args = _make_training_arguments(arg_values)
    _ensure_writable(Path(args.experiment_dir))
    from gradiend import distributed

    # `torchrun --nproc-per-node N -m gradiend train run.yaml`: every rank runs this; nothing changes in one process
    with distributed.session(args.distributed_timeout):
        trainer = _run_training(trainer_inputs, args)
        exp = _write_run_config(trainer)
        if distributed.is_main():  # rank 0 plots and reports
            if not ns.no_plots:
                _plot_or_hint(lambda: trainer.plot_training_convergence(show=False))
            _print_training_outcome(ns, trainer, exp)
    return EXIT_OK


def _train_settings(ns: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer inputs, TrainingArguments values) from the config file, then the flags (which win)."""
    trainer_inputs, arg_values = ({}, {}) if ns.config is None else split_config(read_config(ns.config),
                                                                                 Path(ns.config))
    for key in TRAINER_KEYS:
        if getattr(ns, key, None) is not None:
            trainer_inputs[key] = getattr(ns, key)
    arg_values.update({k[3:]: v for k, v in vars(ns).items() if k.startswith("ta_")})
    missing = [k for k in ("model", "data") if not trainer_inputs.get(k)]
    if missing:
        raise UsageError(f"gradiend train needs {' and '.join(missing)}: set them in the config file or pass "
                         + " ".join(f"--{k}" for k in missing))
    if not arg_values.get("experiment_dir"):
        raise UsageError("gradiend train needs experiment_dir: set it in the config file or pass --experiment-dir")
    if ns.quiet and "show_progress" not in arg_values:
        arg_values["show_progress"] = False
    return trainer_inputs, arg_values


def _make_training_arguments(values: dict[str, Any]) -> Any:
    """`TrainingArguments(**values)`; invalid values are a usage error."""
    try:
        return _training_arguments()(**values)
    except (TypeError, ValueError) as err:
        raise UsageError(f"Invalid TrainingArguments: {err}") from err


def _run_training(trainer_inputs: dict[str, Any], args: Any) -> Any:
    """Build the trainer and train; runtime warnings are printed to stderr once training is done."""
    from gradiend.trainer.text.prediction.trainer import TextPredictionTrainer

    trainer = TextPredictionTrainer(model=trainer_inputs["model"], data=trainer_inputs["data"], args=args,
                                    target_classes=trainer_inputs.get("target_classes"),
                                    run_id=trainer_inputs.get("run_id"),
                                    eval_neutral_data=trainer_inputs.get("eval_neutral_data"),
                                    all_classes=trainer_inputs.get("all_classes"),
                                    class_merge_map=trainer_inputs.get("class_merge_map"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        trainer.train()
    for warning in caught:
        print(f"gradiend: warning: {warning.message}", file=sys.stderr)
    return trainer


def _write_run_config(trainer: Any) -> Path:
    """Write run_config.json (what `evaluate`/`rewrite` reattach with) as the trainer does, keeping the config
    file's inline inputs (e.g. a list of neutral texts) as they are; the experiment directory."""
    trainer.save_run_config(as_input=_absolute_if_local)
    return Path(trainer.experiment_dir)


def _print_training_outcome(ns: argparse.Namespace, trainer: Any, exp: Path) -> None:
    """The outcome as JSON (--json), the directory only (--quiet) or a short summary."""
    from gradiend.records import BestCheckpoint

    stats = trainer.get_training_record()
    best = stats.best_score_checkpoint or BestCheckpoint()
    if ns.json:
        _print_json({"experiment_dir": str(exp), "model": trainer.model_path, "converged": stats.converged,
                     "best_score_checkpoint": best.to_json()})
    elif ns.quiet:
        print(exp)
    else:
        print(f"experiment directory: {exp}\nGRADIEND checkpoint:  {trainer.model_path}\n"
              f"best validation correlation: {best.correlation} (step {best.global_step})\n"
              f"converged: {stats.converged}\nnext: gradiend evaluate {exp}")


def _evaluate(ns: argparse.Namespace) -> int:
    do_encoder = ns.encoder or not ns.decoder
    do_decoder = ns.decoder or not ns.encoder
    trainer = _trainer_for(ns.experiment_dir, ns)
    plots = not ns.no_plots
    out: dict[str, Any] = {}
    if do_encoder:
        enc = trainer.evaluate_encoder(split=ns.split, max_size=ns.max_size, use_cache=not ns.no_cache,
                                       return_df=plots)
        frame = enc.pop("encoder_df", None)
        if plots and frame is not None:
            enc["plot_path"] = _plot_or_hint(
                lambda: trainer.plot_encoder_distributions(encoder_df=frame, split=ns.split, show=False))
        out["encoder"] = enc
    if do_decoder:
        classes = ns.target_class or list(trainer.pair)
        decoder: dict[str, Any] = {}
        for cls in classes:
            dec = trainer.evaluate_decoder(target_class=cls, increase_target_probabilities=not ns.weaken,
                                           lrs=ns.lrs, feature_factors=ns.feature_factors,
                                           use_cache=not ns.no_cache)
            key = cls if not ns.weaken else f"{cls}_weaken"
            decoder[key] = dec[key]
            if plots:
                decoder[key]["plot_path"] = _plot_or_hint(
                    lambda dec=dec, cls=cls: trainer.plot_probability_shifts(dec, cls, not ns.weaken, show=False))
        out["decoder"] = decoder
    if ns.json:
        _print_json(out)
        return EXIT_OK
    if "encoder" in out:
        enc = out["encoder"]
        print(f"encoder ({ns.split} split): correlation {enc['correlation']:+.3f}, accuracy {enc['accuracy']:.3f}")
        for name, value in {**enc["mean_by_class"], **enc["neutral_mean_by_type"]}.items():
            print(f"  mean h {name:<28}{value:+.3f}")
    for key, summary in out.get("decoder", {}).items():
        print(f"decoder {key}: feature factor {summary['feature_factor']:g}, learning rate "
              f"{summary['learning_rate']:g}, value {summary['base_value']:.4f} → {summary['value']:.4f}, "
              f"LMS {summary['base_lms']:.4f} → {summary['lms']:.4f}")
    for path in [out.get("encoder", {}).get("plot_path"),
                 *(s.get("plot_path") for s in out.get("decoder", {}).values())]:
        if path and not ns.quiet:
            print(f"plot: {path}")
    return EXIT_OK


def _rewrite(ns: argparse.Namespace) -> int:
    from gradiend.results import MissingResultError, experiment_root, load_decoder, load_training

    root = experiment_root(ns.experiment_dir)
    load_training(root)
    key = ns.target_class if not ns.weaken else f"{ns.target_class}_weaken"
    command = (f"gradiend evaluate {root} --decoder --target-class {ns.target_class}"
               + (" --weaken" if ns.weaken else ""))
    try:
        decoder = load_decoder(root)
    except MissingResultError as err:
        raise MissingResultError(f"No decoder evaluation in {root}; run `{command}` first") from err
    if key not in decoder:
        have = sorted(k for k in decoder if k != "grid")
        raise MissingResultError(f"No decoder selection {key!r} in {root} (have {have}); run `{command}` first")
    from gradiend.experiment import ExperimentDir

    out = Path(ns.out) if ns.out else ExperimentDir(root).rewritten(key)  # the class as a safe directory name
    _ensure_writable(out)
    trainer = _trainer_for(str(root), ns)
    path = trainer.rewrite_base_model(target_class=ns.target_class, increase_target_probabilities=not ns.weaken,
                                      output_dir=out, overwrite=ns.overwrite)
    print(path)
    return EXIT_OK


def _report(ns: argparse.Namespace) -> int:
    from gradiend.plots import plot_encoder_scatter
    from gradiend.report import write_report
    from gradiend.results import experiment_root

    root = experiment_root(ns.experiment_dir)
    if ns.out:
        _ensure_writable(Path(ns.out))
    path = write_report(root, ns.out, title=ns.title, plots=not ns.no_plots)
    print(path)
    if ns.scatter:
        print(plot_encoder_scatter(root, split=ns.split))
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------------------------------
class _HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions; keeps the exit-code table as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("exit codes"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose unknown-flag errors suggest the closest known flag."""

    def known_flags(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings if s.startswith("--")]


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or logging below errors; print only results")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log progress details; show tracebacks on errors")
    return common


_CommandFactory = Callable[..., _Parser]  # command(name, help_text, description=None) -> sub-parser


def build_parser() -> _Parser:
    """The `gradiend` parser with one sub-command per command function."""
    common = _common()
    parser = _Parser(prog="gradiend", parents=[common], allow_abbrev=False,
                     formatter_class=_HelpFormatter, epilog=EXIT_CODES_HELP,
                     description="Learn, measure and rewrite a feature neuron from a language model's gradients.")
    parser.add_argument("--version", action="version", version=f"gradiend {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    def command(name: str, help_text: str, description: str | None = None) -> _Parser:
        return sub.add_parser(name, help=help_text, description=description or help_text, parents=[common],
                              allow_abbrev=False, formatter_class=_HelpFormatter,
                              epilog=EXIT_CODES_HELP)

    for add in (_add_demo_command, _add_train_command, _add_evaluate_command, _add_rewrite_command,
                _add_report_command, _add_embedded_command, _add_push_command):
        add(command)
    return parser


def _add_demo_command(command: _CommandFactory) -> None:
    demo = command("demo", "offline demo on an embedded model (3SG vs 3PL with mlm, he vs she with clm)")
    demo.add_argument("--model", choices=("mlm", "clm"), default="mlm",
                      help="embedded masked LM (MiniLM) or causal LM (SmolLM2-135M)")
    demo.add_argument("--experiment-dir", default=None, help="default: runs/demo (runs/demo_clm for clm)")
    demo.add_argument("--steps", type=positive_int, default=100, help="training steps")
    demo.add_argument("--batch-size", type=positive_int, default=None, help="sentences per gradient")
    demo.add_argument("--eval-steps", type=positive_int, default=25)
    demo.add_argument("--learning-rate", type=positive_float, default=1e-3)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-plots", action="store_true", help="skip the plots and the HTML report")
    demo.set_defaults(func=_demo)


def _add_train_command(command: _CommandFactory) -> None:
    train = command("train", "train a GRADIEND → experiment directory",
                    "Train a GRADIEND. Settings come from CONFIG (YAML or JSON: model, data, target_classes, "
                    "eval_neutral_data, run_id and any TrainingArguments field, top level or under "
                    "training_args), then from flags, which win.")
    train.add_argument("config", nargs="?", help="YAML or JSON run configuration")
    inputs = train.add_argument_group("trainer inputs")
    inputs.add_argument("--model", help="Hugging Face model id or local checkpoint directory")
    inputs.add_argument("--data", help="training data: CSV/TSV/parquet file, directory or Hub dataset id")
    inputs.add_argument("--target-classes", nargs=2, metavar="CLASS", help="the two feature classes (+1, −1)")
    inputs.add_argument("--eval-neutral-data", help="feature-free texts (file, directory or Hub id)")
    inputs.add_argument("--run-id", help="sub-directory of experiment_dir for this run")
    inputs.add_argument("--all-classes", nargs="+", metavar="CLASS",
                        help="the classes the data holds (others are dropped); see include_other_classes")
    inputs.add_argument("--class-merge-map", type=_yaml_value, metavar="YAML",
                        help='merge classes into one, e.g. \'{"sg": ["1SG", "3SG"], "pl": ["1PL", "3PL"]}\'')
    train.add_argument("--no-plots", action="store_true", help="do not save the convergence plot")
    train.add_argument("--json", action="store_true", help="print the outcome as JSON")
    add_training_arguments(train)
    train.set_defaults(func=_train)


def _add_evaluate_command(command: _CommandFactory) -> None:
    evaluate = command("evaluate", "evaluate the encoder and/or the decoder of a trained experiment",
                       "Evaluate a trained experiment (both parts unless --encoder or --decoder is given); "
                       "results, caches and plots go into EXPERIMENT_DIR.")
    evaluate.add_argument("experiment_dir", metavar="EXPERIMENT_DIR")
    evaluate.add_argument("--encoder", action="store_true", help="evaluate the encoder")
    evaluate.add_argument("--decoder", action="store_true", help="evaluate the decoder grid")
    evaluate.add_argument("--split", default="test", help="encoder: data split to encode")
    evaluate.add_argument("--max-size", type=positive_int, default=None, help="encoder: rows per class at most")
    evaluate.add_argument("--target-class", nargs="+", default=None, metavar="CLASS",
                          help="decoder: classes to select a rewrite for (default: both)")
    evaluate.add_argument("--weaken", action="store_true", help="decoder: weaken instead of strengthen")
    evaluate.add_argument("--lrs", type=finite_float, nargs="+", default=None, help="decoder: learning rates")
    evaluate.add_argument("--feature-factors", type=finite_float, nargs="+", default=None,
                          help="decoder: feature factors")
    _add_data_overrides(evaluate)
    evaluate.add_argument("--no-cache", action="store_true", help="recompute instead of reusing saved results")
    evaluate.add_argument("--no-plots", action="store_true", help="skip the plots")
    evaluate.add_argument("--json", action="store_true", help="print the results as JSON")
    evaluate.set_defaults(func=_evaluate)


def _add_rewrite_command(command: _CommandFactory) -> None:
    rewrite = command("rewrite", "save the base model rewritten with the selected decoder update")
    rewrite.add_argument("experiment_dir", metavar="EXPERIMENT_DIR")
    rewrite.add_argument("--target-class", required=True, metavar="CLASS", help="class to strengthen (or weaken)")
    rewrite.add_argument("--weaken", action="store_true", help="weaken the class instead")
    rewrite.add_argument("--out", default=None, metavar="DIR", help="default: EXPERIMENT_DIR/CLASS[_weaken]")
    rewrite.add_argument("--overwrite", action="store_true",
                         help="replace --out even if it holds files gradiend did not write (they are deleted)")
    _add_data_overrides(rewrite)
    rewrite.set_defaults(func=_rewrite)


def _add_report_command(command: _CommandFactory) -> None:
    report = command("report", "write EXPERIMENT_DIR/report.html: one self-contained HTML report")
    report.add_argument("experiment_dir", metavar="EXPERIMENT_DIR")
    report.add_argument("--out", default=None, metavar="PATH", help="default: EXPERIMENT_DIR/report.html")
    report.add_argument("--title", default=None)
    report.add_argument("--no-plots", action="store_true", help="tables only")
    report.add_argument("--scatter", action="store_true",
                        help="also write the interactive encoder scatter (needs the [interactive] extra)")
    report.add_argument("--split", default="test", help="split shown in the scatter")
    report.set_defaults(func=_report)


def _add_push_command(command: _CommandFactory) -> None:
    add_push_command(command).set_defaults(func=_push)


def _push(ns: argparse.Namespace) -> int:
    """`gradiend push`: print the commit URL."""
    from gradiend.hub import push_to_hub

    print(push_to_hub(ns.directory, ns.repo_id, private=ns.private, token=ns.token, revision=ns.revision,
                      commit_message=ns.message))
    return EXIT_OK


def _add_embedded_command(command: _CommandFactory) -> None:
    emb = command("embedded-model", "build (once) and print the path of an embedded default model")
    emb.add_argument("kind", nargs="?", default="mlm", choices=("mlm", "clm"))
    emb.set_defaults(func=_embedded)


def _add_data_overrides(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inputs (default: EXPERIMENT_DIR/run_config.json, written by `gradiend train`)")
    group.add_argument("--data", default=None, help="training data the experiment was trained on")
    group.add_argument("--eval-neutral-data", default=None, help="feature-free texts")
    group.add_argument("--base-model", default=None, help="base model id or path (default: the one trained on)")
    group.add_argument("--device", default=None, type=_device_flag,
                       help="device for the models: cpu, cuda, cuda:N, mps (default: cuda when available, else cpu)")


def _device_flag(text: str) -> str:
    """`--device` value, checked like `TrainingArguments.device` (argparse shows the message)."""
    from gradiend.devices import device_name

    try:
        return str(device_name(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _bool_flags(parser: argparse.ArgumentParser) -> set[str]:
    """The `--x` spellings of every `--x/--no-x` flag of the parser and its sub-commands."""
    out = set()
    for action in parser._actions:
        if isinstance(action, argparse.BooleanOptionalAction):
            out.update(s for s in action.option_strings if not s.startswith("--no-"))
        elif isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _bool_flags(sub)
    return out


def _normalize_flags(argv: Sequence[str], bool_flags: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Accept field spellings with underscores (`--max_steps` → `--max-steps`) and boolean flag values.

    `--do-eval=false`, `--do-eval no` (any of true/false/yes/no/on/off/1/0) become `--no-do-eval`; the
    value is only taken from the next token when it is such a word, so `--do-eval CONFIG.yaml` still works.
    """
    tokens = []
    for token in argv:
        if token.startswith("--") and "_" in token:
            name, sep, value = token.partition("=")
            token = name.replace("_", "-") + sep + value
        tokens.append(token)
    out: list[str] = []
    i = 0
    while i < len(tokens):
        name, sep, value = tokens[i].partition("=")
        words = (*TRUE_TEXTS, *FALSE_TEXTS)
        if name in bool_flags and not sep and i + 1 < len(tokens) and tokens[i + 1].strip().lower() in words:
            sep, value = "=", tokens[i + 1]
            i += 1
        if name in bool_flags and sep and value.strip().lower() in words:
            out.append(name if parse_bool(value) else "--no-" + name[2:])
        else:
            out.append(tokens[i])
        i += 1
    return out


def _subparser(parser: _Parser, command: str | None) -> _Parser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse; unknown flags exit with code 2 and the closest known flag."""
    parser = build_parser()
    argv = _normalize_flags(sys.argv[1:] if argv is None else argv, _bool_flags(parser))
    ns, extra = parser.parse_known_args(argv)
    if extra:
        target = _subparser(parser, getattr(ns, "command", None))
        unknown = [e for e in extra if e.startswith("-")] or extra
        hints = [f"{u}{suggest(u.split('=')[0], target.known_flags())}" for u in unknown]
        target.error(f"unrecognized arguments: {' '.join(hints)}")
    ns.quiet = getattr(ns, "quiet", False)
    ns.verbose = getattr(ns, "verbose", False)
    return ns


@contextlib.contextmanager
def _command_process(ns: argparse.Namespace) -> Iterator[None]:
    """Process settings a command runs with, restored afterwards (so `main()` may also run in-process).

    A handler on the package's logger (never the root's); malloc tuning, which the library leaves off
    (1.35x per MiniLM gradient pass, see gradiend.allocator); with --quiet, Hugging Face's loading bars.
    """
    from gradiend import allocator

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    package_logger = logging.getLogger("gradiend")
    level, tuned = package_logger.level, allocator.ENABLED
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.ERROR if ns.quiet else logging.INFO if ns.verbose else logging.WARNING)
    allocator.enable()
    with contextlib.ExitStack() as stack:
        if ns.quiet:
            stack.enter_context(_quiet_transformers())
        try:
            yield
        finally:
            package_logger.removeHandler(handler)
            package_logger.setLevel(level)
            allocator.enable(tuned)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# write failures that are about the disk, not the input: exit 5 like any other unwritable output
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def _as_write_error(err: BaseException) -> BaseException:
    """A raw OSError of a full or read-only disk as an `OutputNotWritableError` naming its file and the fix."""
    from gradiend.experiment import OutputNotWritableError

    if isinstance(err, OSError) and not isinstance(err, OutputNotWritableError) and err.errno in _DISK_ERRNOS:
        return OutputNotWritableError.wrap(err.filename or "an output file", err)
    return err


def _exit_code(err: BaseException) -> int:
    from gradiend.data import DataError
    from gradiend.experiment import OutputNotOursError, OutputNotWritableError

    if isinstance(err, (OutputNotWritableError, OutputNotOursError, PermissionError)):
        return EXIT_UNWRITABLE
    if isinstance(err, (FileNotFoundError, NotADirectoryError)):
        return EXIT_MISSING
    if isinstance(err, ImportError):
        return EXIT_EXTRA
    if isinstance(err, (UsageError, DataError, ValueError, TypeError, KeyError)):
        return EXIT_USAGE
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_args(argv)
    try:
        with _command_process(ns):
            return ns.func(ns)
    except KeyboardInterrupt:
        print("gradiend: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as raised:  # every failure becomes a message and an exit code
        err = _as_write_error(raised)
        if ns.verbose:
            import traceback

            traceback.print_exc()
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"gradiend: error: {message}", file=sys.stderr)
        return _exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
