"""The `gradiend` command line: argument handling around the Python API, nothing more.

`gradiend train` builds `TrainingArguments` from a YAML/JSON file and/or flags generated from the
dataclass fields (new fields appear automatically); `evaluate`, `rewrite` and `report` work on an
experiment directory. Exit codes are listed in `gradiend --help`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import logging
import os
import re
import sys
import types
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gradiend._version import __version__

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
TRAINER_KEYS = ("model", "data", "target_classes", "eval_neutral_data", "run_id")
ARGS_KEYS = ("training_args", "args")  # a config file may nest the TrainingArguments fields under these

# One line per TrainingArguments field for `--help`; fields missing here fall back to the comments
# in arguments.py (their section and any trailing comment), so new fields still get a help text.
FIELD_DOCS: dict[str, str] = {
    "experiment_dir": "directory for the checkpoint, caches, plots and report (required by the CLI)",
    "output_dir": "save the checkpoint here instead of EXPERIMENT_DIR/model",
    "use_cache": "reuse a finished run: true (same settings and data), always, only_convergent, false",
    "source": "gradient fed to the encoder: factual, alternative or diff",
    "target": "gradient the decoder reconstructs: factual, alternative or diff",
    "params": "parameter names or glob patterns to learn from (default: the backbone, heads excluded)",
    "latent_dim": "number of feature neurons",
    "activation_encoder": "encoder activation: tanh or hardtanh",
    "bias_decoder": "learn a decoder bias",
    "torch_dtype": "dtype of the GRADIEND: float32, float16, bfloat16 or float64",
    "normalize_gradiend": "flip the sign so that the first target class encodes positively",
    "standardize_gradients": "scale encoder inputs and decoder targets to fixed norms (estimated once)",
    "scale_estimation_batches": "batches used to estimate the gradient scales",
    "add_identity_for_other_classes": "also train on identity rows of classes outside the pair",
    "train_batch_size": "sentences per gradient (single-class batches)",
    "gradiend_batch_size": "gradients per GRADIEND optimiser step",
    "train_max_size": "at most this many training rows per class",
    "learning_rate": "AdamW learning rate of the GRADIEND",
    "weight_decay": "AdamW weight decay",
    "adam_epsilon": "AdamW epsilon",
    "optim": "optimiser: adamw or adam",
    "num_train_epochs": "epochs (ignored when max_steps > 0)",
    "num_epochs": "alias of num_train_epochs",
    "max_steps": "optimiser steps; -1 trains num_train_epochs epochs",
    "seed": "random seed (batches, initialisation, sampling)",
    "max_length": "tokens per sentence at most",
    "objective": "prediction objective: mlm (masked token) or clm (next token); default: from the model",
    "min_left_context_tokens": "causal LMs: drop rows with fewer tokens left of the slot",
    "do_eval": "evaluate on the validation split during training",
    "eval_steps": "evaluate every this many steps",
    "eval_batch_size": "batch size of evaluations",
    "encoder_eval_train_max_size": "validation rows per class used during training",
    "encoder_eval_max_size": "rows per class of evaluate_encoder (default: all)",
    "save_only_best": "keep the checkpoint of the best validation correlation",
    "convergent_score_threshold": "|correlation| a converged run reaches",
    "convergent_mean_by_class_threshold": "|mean encoding| each class of a converged run reaches",
    "fail_on_non_convergence": "exit with an error when training does not converge",
    "max_seeds": "train up to this many seeds",
    "min_convergent_seeds": "stop after this many convergent seeds",
    "seed_selection_eval_max_size": "rows per class used to pick the best seed",
    "saved_seed_runs": "which seed runs to keep: best_only, all_convergent or all_tried",
    "pre_prune_config": "prune inputs before training, e.g. '{topk: 0.1, n_samples: 8}'",
    "post_prune_config": "prune inputs after training, e.g. '{topk: 0.01}'",
    "decoder_eval_lrs": "learning rates of the decoder grid",
    "decoder_eval_feature_factors": "feature factors of the decoder grid (default: the strengthening sign)",
    "decoder_eval_max_size_training_like": "rows per class scored by the decoder grid",
    "decoder_eval_max_size_neutral": "neutral texts for the decoder grid's LMS",
    "convergent_metric": "what decides convergence: correlation or loss",
    "seed_runs_dir": "where per-seed runs go (default: EXPERIMENT_DIR/seeds)",
    "keep_seed_runs": "Python API: train() returns every seed's model",
    "data_seed": "seed of the batch order (default: seed); fixed across seeds",
    "gradient_cache": "reuse base-model gradients across epochs and seeds: off, memory or disk",
    "gradient_cache_max_gb": "size limit of the gradient cache in GB",
    "gradient_cache_dtype": "dtype of cached gradients: float32 or bfloat16",
    "trust_remote_code": "allow custom model code from the Hub",
    "show_progress": "progress bars (--quiet turns them off)",
    "metadata": "free-form JSON/YAML mapping stored with the run",
}


class UsageError(ValueError):
    """Bad command-line input (flags, config file, values): exit code 2."""


# -- TrainingArguments ↔ flags ------------------------------------------------------------------------
def _training_arguments() -> type:
    from gradiend.arguments import TrainingArguments

    return TrainingArguments


def field_comments(cls: type) -> dict[str, tuple[str | None, str | None]]:
    """(section comment, trailing comment) of each field, read from the dataclass source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, tuple[str | None, str | None]] = {}
    section = None
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("def "):
            break
        if stripped.startswith("#"):
            section = stripped.lstrip("#").strip()
            continue
        match = re.match(r"^\s+([A-Za-z_]\w*)\s*:[^#]*?(?:#\s*(.*))?$", line)
        if match:
            out[match[1]] = (section, match[2].strip() if match[2] else None)
    return out


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable annotations fall back to YAML values
        return {}


def _yaml_value(text: str) -> Any:
    """A flag value read as YAML (covers JSON): numbers, booleans, null, lists, mappings, strings."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"not valid YAML/JSON: {text!r} ({err})") from err


def _scalar(tp: type, optional: bool) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        if optional and text.strip().lower() in ("none", "null"):
            return None
        if tp is bool:
            lowered = text.strip().lower()
            if lowered in ("true", "yes", "1", "on"):
                return True
            if lowered in ("false", "no", "0", "off"):
                return False
            raise ValueError(text)
        return tp(text)

    convert.__name__ = tp.__name__
    return convert


def _split_optional(tp: Any) -> tuple[Any, bool, tuple[Any, ...]]:
    """(inner type, optional?, union members) of an annotation."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = tuple(a for a in typing.get_args(tp) if a is not type(None))
        optional = len(members) < len(typing.get_args(tp))
        return (members[0] if len(members) == 1 else None), optional, members
    return tp, False, (tp,)


def flag_spec(tp: Any) -> dict[str, Any]:
    """argparse keyword arguments for a field annotation."""
    inner, optional, members = _split_optional(tp)
    if inner is None:  # a union such as bool | str: read the value as YAML; a bare flag means true
        spec: dict[str, Any] = {"type": _yaml_value, "metavar": "VALUE"}
        if bool in members:
            spec.update(nargs="?", const=True)
        return spec
    if inner is bool:
        return {"action": argparse.BooleanOptionalAction}
    if inner in (int, float, str):
        return {"type": _scalar(inner, optional), "metavar": inner.__name__.upper()}
    if typing.get_origin(inner) in (list, tuple, Sequence):
        elem = (typing.get_args(inner) or (str,))[0]
        elem = elem if elem in (int, float, str) else str
        return {"type": _scalar(elem, optional), "nargs": "+", "metavar": elem.__name__.upper()}
    return {"type": _yaml_value, "metavar": "YAML"}


def _type_text(field: dataclasses.Field) -> str:
    return field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return repr(field.default_factory())  # type: ignore[misc]
    return "required"


def field_help(field: dataclasses.Field, comments: dict[str, tuple[str | None, str | None]]) -> str:
    section, trailing = comments.get(field.name, (None, None))
    doc = FIELD_DOCS.get(field.name) or trailing or (f"({section})" if section else "")
    if FIELD_DOCS.get(field.name) and trailing:
        doc += f"; {trailing}"
    return f"{doc} [{_type_text(field)}; default {_default_text(field)}]".replace("%", "%%").strip()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _group_title(section: str) -> str:
    """The head of a section comment: up to '; ' or a ': ' outside parentheses."""
    head = section.split("; ")[0]
    colon, paren = head.find(": "), head.find("(")
    return head[:colon] if colon > 0 and (paren < 0 or colon < paren) else head


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainingArguments field, grouped by the section comments of arguments.py."""
    cls = _training_arguments()
    hints, comments = _hints(cls), field_comments(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field in dataclasses.fields(cls):
        section = _group_title(comments.get(field.name, (None, None))[0] or "other")
        if section not in groups:
            groups[section] = parser.add_argument_group(f"TrainingArguments: {section}")
        spec = flag_spec(hints.get(field.name, Any))
        groups[section].add_argument(flag_name(field.name), dest=f"ta_{field.name}", default=argparse.SUPPRESS,
                                     help=field_help(field, comments), **spec)


def coerce_field(name: str, value: Any) -> Any:
    """Convert a config-file value to the field's type where YAML left a string (e.g. `1e-3`)."""
    cls = _training_arguments()
    tp = _hints(cls).get(name, Any)
    inner, optional, _ = _split_optional(tp)
    if value is None:
        return value
    try:
        if inner in (int, float) and isinstance(value, str):
            return _scalar(inner, optional)(value)
        if inner is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if typing.get_origin(inner) in (list, tuple, Sequence) and isinstance(value, list):
            elem = (typing.get_args(inner) or (str,))[0]
            if elem in (int, float):
                return [_scalar(elem, False)(v) if isinstance(v, str) else v for v in value]
    except ValueError as err:
        raise UsageError(f"{name}: cannot read {value!r} as {getattr(inner, '__name__', inner)}") from err
    return value


def suggest(name: str, candidates: Sequence[str]) -> str:
    """' (did you mean X?)' for the closest candidate, or ''."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


# -- config files ------------------------------------------------------------------------------------------
def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML or JSON run configuration: trainer inputs plus TrainingArguments fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # JSON and YAML raise different types
        raise UsageError(f"Config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                         f"{err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"Config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def split_config(data: dict[str, Any], origin: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer inputs, TrainingArguments fields) of a config mapping; unknown keys are an error."""
    fields = [f.name for f in dataclasses.fields(_training_arguments())]
    trainer, args = {}, {}
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
        else:
            where = f" in {origin}" if origin else ""
            raise UsageError(f"Unknown setting {key!r}{where}{suggest(key, [*fields, *TRAINER_KEYS])}")
    if origin is not None:
        for key in ("model", "data", "eval_neutral_data"):
            value = trainer.get(key)
            if isinstance(value, str) and not Path(value).is_absolute() and (origin.parent / value).exists():
                trainer[key] = str((origin.parent / value).resolve())
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
    """A trainer attached to the finished run in `experiment_dir` (never trains)."""
    from gradiend.arguments import TrainingArguments
    from gradiend.results import experiment_root, load_run_config, load_training
    from gradiend.trainer.text.prediction.trainer import TextPredictionTrainer

    root = experiment_root(experiment_dir)
    training = load_training(root)
    run = load_run_config(root) or {}
    data = getattr(ns, "data", None) or run.get("data")
    if data is None:
        raise UsageError(f"{root} has no run_config.json (written by `gradiend train`); pass --data with the "
                         f"training data so the test split can be rebuilt")
    stored = dict(run.get("training_args") or training.get("training_args") or {})
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    dropped = sorted(set(stored) - known)
    if dropped:
        logger.warning("Ignoring saved arguments this version does not know: %s", dropped)
    stored = {k: v for k, v in stored.items() if k in known}
    stored.update(experiment_dir=str(root), output_dir=None, use_cache="always",
                  show_progress=_show_progress(ns, bool(stored.get("show_progress", True))))
    args = TrainingArguments.from_dict(stored)
    model = getattr(ns, "base_model", None) or run.get("model") or training.get("base_model")
    neutral = getattr(ns, "eval_neutral_data", None) or run.get("eval_neutral_data")
    trainer = TextPredictionTrainer(model=model, data=data, args=args,
                                    target_classes=run.get("target_classes") or training.get("pair"),
                                    eval_neutral_data=neutral)
    trainer.train()  # use_cache="always": attaches the saved checkpoint
    return trainer


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
    from gradiend.arguments import TrainingArguments
    from gradiend.experiment import atomic_write_json
    from gradiend.results import RUN_CONFIG
    from gradiend.trainer.text.prediction.trainer import TextPredictionTrainer

    trainer_inputs, arg_values = ({}, {}) if ns.config is None else split_config(read_config(ns.config),
                                                                                 Path(ns.config))
    for key in TRAINER_KEYS:
        if getattr(ns, key, None) is not None:
            trainer_inputs[key] = getattr(ns, key)
    arg_values.update({k[3:]: v for k, v in vars(ns).items() if k.startswith("ta_")})
    for key in ("params", "decoder_eval_lrs", "decoder_eval_feature_factors"):
        if arg_values.get(key) == [None]:
            arg_values[key] = None
    missing = [k for k in ("model", "data") if not trainer_inputs.get(k)]
    if missing:
        raise UsageError(f"gradiend train needs {' and '.join(missing)}: set them in the config file or pass "
                         + " ".join(f"--{k}" for k in missing))
    if not arg_values.get("experiment_dir"):
        raise UsageError("gradiend train needs experiment_dir: set it in the config file or pass --experiment-dir")
    if ns.quiet and "show_progress" not in arg_values:
        arg_values["show_progress"] = False
    try:
        args = TrainingArguments(**arg_values)
    except (TypeError, ValueError) as err:
        raise UsageError(f"Invalid TrainingArguments: {err}") from err
    _ensure_writable(Path(args.experiment_dir))
    trainer = TextPredictionTrainer(model=trainer_inputs["model"], data=trainer_inputs["data"], args=args,
                                    target_classes=trainer_inputs.get("target_classes"),
                                    run_id=trainer_inputs.get("run_id"),
                                    eval_neutral_data=trainer_inputs.get("eval_neutral_data"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        trainer.train()
    for warning in caught:
        print(f"gradiend: warning: {warning.message}", file=sys.stderr)
    exp = Path(trainer.experiment_dir)
    run_config = {"model": _absolute_if_local(trainer_inputs["model"]),
                  "data": _absolute_if_local(trainer_inputs["data"]),
                  "target_classes": list(trainer.pair), "run_id": trainer_inputs.get("run_id"),
                  "eval_neutral_data": _absolute_if_local(trainer_inputs.get("eval_neutral_data")),
                  "training_args": args.to_dict()}
    atomic_write_json(exp / RUN_CONFIG, run_config)
    if not ns.no_plots:
        _plot_or_hint(trainer.plot_training_convergence)
    stats = trainer.get_training_stats() or {}
    best = stats.get("best_score_checkpoint") or {}
    converged = (stats.get("convergence_info") or {}).get("converged")
    if ns.json:
        _print_json({"experiment_dir": str(exp), "model": trainer.model_path, "converged": converged,
                     "best_score_checkpoint": best})
    elif ns.quiet:
        print(exp)
    else:
        print(f"experiment directory: {exp}\nGRADIEND checkpoint:  {trainer.model_path}\n"
              f"best validation correlation: {best.get('correlation')} (step {best.get('global_step')})\n"
              f"converged: {converged}\nnext: gradiend evaluate {exp}")
    return EXIT_OK


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
                lambda: trainer.plot_encoder_distributions(encoder_df=frame, split=ns.split))
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
                    lambda dec=dec, cls=cls: trainer.plot_probability_shifts(dec, cls, not ns.weaken))
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
    out = Path(ns.out) if ns.out else root / key
    _ensure_writable(out)
    trainer = _trainer_for(str(root), ns)
    path = trainer.rewrite_base_model(target_class=ns.target_class, increase_target_probabilities=not ns.weaken,
                                      output_dir=out)
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


def build_parser() -> _Parser:
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

    demo = command("demo", "offline demo on an embedded model (3SG vs 3PL with mlm, he vs she with clm)")
    demo.add_argument("--model", choices=("mlm", "clm"), default="mlm",
                      help="embedded masked LM (MiniLM) or causal LM (SmolLM2-135M)")
    demo.add_argument("--experiment-dir", default=None, help="default: runs/demo (runs/demo_clm for clm)")
    demo.add_argument("--steps", type=int, default=100, help="training steps")
    demo.add_argument("--batch-size", type=int, default=None, help="sentences per gradient")
    demo.add_argument("--eval-steps", type=int, default=25)
    demo.add_argument("--learning-rate", type=float, default=1e-3)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-plots", action="store_true", help="skip the plots and the HTML report")
    demo.set_defaults(func=_demo)

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
    train.add_argument("--no-plots", action="store_true", help="do not save the convergence plot")
    train.add_argument("--json", action="store_true", help="print the outcome as JSON")
    add_training_arguments(train)
    train.set_defaults(func=_train)

    evaluate = command("evaluate", "evaluate the encoder and/or the decoder of a trained experiment",
                       "Evaluate a trained experiment (both parts unless --encoder or --decoder is given); "
                       "results, caches and plots go into EXPERIMENT_DIR.")
    evaluate.add_argument("experiment_dir", metavar="EXPERIMENT_DIR")
    evaluate.add_argument("--encoder", action="store_true", help="evaluate the encoder")
    evaluate.add_argument("--decoder", action="store_true", help="evaluate the decoder grid")
    evaluate.add_argument("--split", default="test", help="encoder: data split to encode")
    evaluate.add_argument("--max-size", type=int, default=None, help="encoder: rows per class at most")
    evaluate.add_argument("--target-class", nargs="+", default=None, metavar="CLASS",
                          help="decoder: classes to select a rewrite for (default: both)")
    evaluate.add_argument("--weaken", action="store_true", help="decoder: weaken instead of strengthen")
    evaluate.add_argument("--lrs", type=float, nargs="+", default=None, help="decoder: learning rates")
    evaluate.add_argument("--feature-factors", type=float, nargs="+", default=None, help="decoder: feature factors")
    _add_data_overrides(evaluate)
    evaluate.add_argument("--no-cache", action="store_true", help="recompute instead of reusing saved results")
    evaluate.add_argument("--no-plots", action="store_true", help="skip the plots")
    evaluate.add_argument("--json", action="store_true", help="print the results as JSON")
    evaluate.set_defaults(func=_evaluate)

    rewrite = command("rewrite", "save the base model rewritten with the selected decoder update")
    rewrite.add_argument("experiment_dir", metavar="EXPERIMENT_DIR")
    rewrite.add_argument("--target-class", required=True, metavar="CLASS", help="class to strengthen (or weaken)")
    rewrite.add_argument("--weaken", action="store_true", help="weaken the class instead")
    rewrite.add_argument("--out", default=None, metavar="DIR", help="default: EXPERIMENT_DIR/CLASS[_weaken]")
    _add_data_overrides(rewrite)
    rewrite.set_defaults(func=_rewrite)

    report = command("report", "write EXPERIMENT_DIR/report.html: one self-contained HTML report")
    report.add_argument("experiment_dir", metavar="EXPERIMENT_DIR")
    report.add_argument("--out", default=None, metavar="PATH", help="default: EXPERIMENT_DIR/report.html")
    report.add_argument("--title", default=None)
    report.add_argument("--no-plots", action="store_true", help="tables only")
    report.add_argument("--scatter", action="store_true",
                        help="also write the interactive encoder scatter (needs the [interactive] extra)")
    report.add_argument("--split", default="test", help="split shown in the scatter")
    report.set_defaults(func=_report)

    emb = command("embedded-model", "build (once) and print the path of an embedded default model")
    emb.add_argument("kind", nargs="?", default="mlm", choices=("mlm", "clm"))
    emb.set_defaults(func=_embedded)
    return parser


def _add_data_overrides(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inputs (default: EXPERIMENT_DIR/run_config.json, written by `gradiend train`)")
    group.add_argument("--data", default=None, help="training data the experiment was trained on")
    group.add_argument("--eval-neutral-data", default=None, help="feature-free texts")
    group.add_argument("--base-model", default=None, help="base model id or path (default: the one trained on)")


def _normalize_flags(argv: Sequence[str]) -> list[str]:
    """Accept field spellings with underscores (`--max_steps` → `--max-steps`)."""
    out = []
    for token in argv:
        if token.startswith("--") and "_" in token:
            name, sep, value = token.partition("=")
            token = name.replace("_", "-") + sep + value
        out.append(token)
    return out


def _subparser(parser: _Parser, command: str | None) -> _Parser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse; unknown flags exit with code 2 and the closest known flag."""
    parser = build_parser()
    argv = _normalize_flags(sys.argv[1:] if argv is None else argv)
    ns, extra = parser.parse_known_args(argv)
    if extra:
        target = _subparser(parser, getattr(ns, "command", None))
        unknown = [e for e in extra if e.startswith("-")] or extra
        hints = [f"{u}{suggest(u.split('=')[0], target.known_flags())}" for u in unknown]
        target.error(f"unrecognized arguments: {' '.join(hints)}")
    ns.quiet = getattr(ns, "quiet", False)
    ns.verbose = getattr(ns, "verbose", False)
    return ns


def _configure_logging(ns: argparse.Namespace) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    package_logger = logging.getLogger("gradiend")  # the package's logger only, never the root
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.ERROR if ns.quiet else logging.INFO if ns.verbose else logging.WARNING)
    if ns.quiet:  # the user asked for silence: also the Hugging Face loading bars
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def _exit_code(err: BaseException) -> int:
    from gradiend.data import DataError
    from gradiend.results import OutputNotWritableError

    if isinstance(err, (OutputNotWritableError, PermissionError)):
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
    _configure_logging(ns)
    try:
        return ns.func(ns)
    except KeyboardInterrupt:
        print("gradiend: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # every failure becomes a message and an exit code
        if ns.verbose:
            import traceback

            traceback.print_exc()
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"gradiend: error: {message}", file=sys.stderr)
        return _exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
