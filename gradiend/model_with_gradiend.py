"""A base language model paired with a GRADIEND: load, encode, save."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gradiend.allocator import reuse_large_blocks
from gradiend.arguments import DTYPES
from gradiend.base_identity import base_model_fingerprint, check_weight_files, local_model_dir, resolve_base_model
from gradiend.data import length_batches
from gradiend.devices import resolve_device, same_device
from gradiend.gradients import GradientEngine
from gradiend.loaded_base import FINGERPRINT_PREFIX, IN_MEMORY, LoadedBase, weights_fingerprint
from gradiend.model import GradiendConfig, GradiendModel, is_checkpoint, read_checkpoint_config
from gradiend.objectives import CausalLMObjective, CausalMLMHeadObjective, LMObjective, MaskedLMObjective
from gradiend.params import ParamMap
from gradiend.rewrite import applied, rewritten_copy

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedModel

    from gradiend.arguments import TrainingArguments

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


OBJECTIVES = ("mlm", "clm", "clm_mlm_head")


def recorded_base_model(config: GradiendConfig) -> str | None:
    """The base model a checkpoint was trained on: its resolved absolute path when that still exists
    (a relative spelling would mean another model from another directory), else the original spelling."""
    resolved = config.base_model_resolved
    if resolved is not None and local_model_dir(resolved) is not None:
        return resolved
    return config.base_model


def warn_if_other_weights(config: GradiendConfig, base: LoadedBase, directory: str | os.PathLike,
                          from_path: bool) -> None:
    """Warn when the base model's weights differ from those the checkpoint recorded at training time.

    A run trained on a model loaded from its files recorded the files' key (compared when `base` was read from
    a local path); a run trained on a model passed in as an object recorded a content digest (compared by
    hashing the weights now in memory, one read of them).
    """
    recorded = config.base_model_fingerprint
    if recorded is None:
        return
    if recorded.startswith(FINGERPRINT_PREFIX):
        current = weights_fingerprint(base.model)
    elif from_path and local_model_dir(base.name) is not None:
        current = base_model_fingerprint(base.name)
    else:
        return  # a file key against a model object: not comparable without hashing every file
    if current != recorded:
        warnings.warn(f"GRADIEND checkpoint {directory} was trained on base-model weights other than those of "
                      f"{base.name} (fingerprint {current}, recorded {recorded}), so its results may not apply. "
                      f"Pass the base model it was trained on (base_model=), or re-train.", UserWarning, stacklevel=3)


def detect_objective(config: Any) -> str:
    """"mlm" for masked LMs, "clm" for causal (decoder-only) LMs, judged from an HF config."""
    architectures = list(getattr(config, "architectures", None) or [])
    if any(a.endswith("ForMaskedLM") for a in architectures):
        return "mlm"
    if getattr(config, "is_decoder", False) or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "clm"
    # transformers is imported here, not at module level, so that `import gradiend` stays cheap
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "mlm"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "clm"
    raise ValueError(f"{model_type!r} models ({architectures or 'no architectures listed'}) have neither a masked- "
                     f"nor a causal-LM head in transformers; GRADIEND needs the model's token predictions "
                     f"(a BERT-like masked LM or a GPT-2/Llama-like causal LM)")


def resolve_objective(config: Any, objective: str | None, name: str = "the model") -> str:
    """The objective to train with: `objective` if given (checked against the model), else detected."""
    detected = detect_objective(config)
    if objective is None:
        return detected
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES} or None (automatic), got {objective!r}")
    needed = "clm" if objective == "clm_mlm_head" else objective  # the head objective reads a causal LM
    if needed != detected:
        kinds = {"mlm": "a masked LM", "clm": "a causal LM"}
        raise ValueError(f"objective={objective!r} needs {kinds[needed]}, but {name} is {kinds[detected]} "
                         f"({type(config).__name__}); use objective={detected!r} or objective=None (automatic)")
    return objective


def load_base_model(name_or_path: str, torch_dtype: str = "float32", trust_remote_code: bool = False,
                    device: torch.device | str | None = None, objective: str | None = None
                    ) -> tuple[PreTrainedModel, Any]:
    """Load an HF language model (masked or causal, see `objective`) and its tokenizer onto `device`
    (None: cuda when available, else cpu)."""
    model, tokenizer, _ = load_model_for_objective(name_or_path, torch_dtype, trust_remote_code, device, objective)
    return model, tokenizer


def load_model_for_objective(name_or_path: str, torch_dtype: str = "float32", trust_remote_code: bool = False,
                             device: torch.device | str | None = None, objective: str | None = None
                             ) -> tuple[PreTrainedModel, Any, str]:
    """(model, tokenizer, objective) with errors that name the fix; the weights are read straight onto `device`
    (None: cuda when available, else cpu).

    `objective=None` picks "mlm" for masked LMs and "clm" for causal LMs; a forced objective that
    does not fit the model is an error.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    path = Path(name_or_path).expanduser()
    if _looks_like_path(name_or_path) and not path.exists():
        raise FileNotFoundError(f"Model path {name_or_path!r} does not exist; pass an existing local "
                                f"checkpoint directory or a Hugging Face model id")
    if path.is_file():
        raise NotADirectoryError(f"Model path {name_or_path!r} is a file; pass the directory that holds the "
                                 f"model (config.json, weights and tokenizer files), e.g. {str(path.parent)!r}")
    if path.is_dir():
        check_weight_files(path)  # a truncated safetensors file fails here, with its path
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise FileNotFoundError(f"Could not load a model config from {name_or_path!r} ({err}). Offline? "
                                f"Pass a local checkpoint directory (e.g. gradiend.embedded_model_path()).") from err
    kind = resolve_objective(config, objective, repr(name_or_path))
    fix = "save the tokenizer next to the model with tokenizer.save_pretrained(path)"
    if path.is_dir() and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"No tokenizer files in {name_or_path!r} (looked for {list(TOKENIZER_FILES)}); {fix}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as err:
        raise FileNotFoundError(f"No usable tokenizer found for {name_or_path!r} ({err}); {fix}") from err
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise FileNotFoundError(f"The tokenizer of {name_or_path!r} has an empty vocabulary; {fix}")
    loader = AutoModelForMaskedLM if kind == "mlm" else AutoModelForCausalLM
    target = resolve_device(device)
    model, info = loader.from_pretrained(name_or_path, dtype=DTYPES[torch_dtype], trust_remote_code=trust_remote_code,
                                         output_loading_info=True, **_placement(target))
    prefix = getattr(model, "base_model_prefix", "")
    head_missing = sorted(k for k in info.get("missing_keys", ()) if not prefix or not k.startswith(prefix + "."))
    if head_missing:
        raise ValueError(f"{name_or_path!r} has no trained LM head (missing from the checkpoint: {head_missing}); "
                         f"GRADIEND needs the model's token predictions. Pass a checkpoint saved with its head "
                         f"({loader.__name__}), not a bare backbone.")
    model.eval()
    if not same_device(next(model.parameters()).device, target):
        model.to(target)  # transformers without a device_map loader: loaded on the CPU, then moved once
    return model, tokenizer, kind


def meta_base_model(name_or_path: str, torch_dtype: str = "float32", trust_remote_code: bool = False,
                    objective: str | None = None) -> PreTrainedModel:
    """The model `name_or_path` names, built from its config on the meta device (shapes and dtypes, no weights):
    what the memory plan reads before anything is loaded. OSError/ValueError when its config cannot be read."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    loader = AutoModelForMaskedLM if resolve_objective(config, objective) == "mlm" else AutoModelForCausalLM
    with torch.device("meta"):
        return loader.from_config(config, dtype=DTYPES[torch_dtype], trust_remote_code=trust_remote_code)


def _placement(device: torch.device) -> dict[str, Any]:
    """`from_pretrained` keyword arguments that put the weights on `device` as they are read.

    transformers 5 places them itself; 4.x needs accelerate for a `device_map` (else: CPU, then one move).
    """
    if device.type == "cpu":
        return {}
    import transformers
    from transformers.utils import is_accelerate_available

    if int(transformers.__version__.split(".")[0]) >= 5 or is_accelerate_available():
        return {"device_map": str(device)}
    return {}


def open_base(base_model: str | os.PathLike | PreTrainedModel | LoadedBase, tokenizer: Any = None,
              torch_dtype: str = "float32", trust_remote_code: bool = False,
              device: torch.device | str | None = None, objective: str | None = None) -> tuple[LoadedBase, str]:
    """(the base model with its tokenizer, its objective): loaded from an id/path, or a loaded model used as it is.

    A loaded model keeps its dtype and stays where it is unless `device` is given (then it is moved, in place).
    """
    if isinstance(base_model, (str, os.PathLike)):
        if tokenizer is not None:
            raise ValueError("tokenizer= goes with a loaded model object; a model id/path loads its own tokenizer. "
                             "Pass the loaded model (and its tokenizer), or the path alone")
        model, loaded_tokenizer, kind = load_model_for_objective(os.fspath(base_model), torch_dtype,
                                                                 trust_remote_code, device, objective)
        return LoadedBase(model, loaded_tokenizer, os.fspath(base_model)), kind
    base = base_model if isinstance(base_model, LoadedBase) else LoadedBase.of(base_model, tokenizer)
    kind = resolve_objective(base.model.config, objective, f"the loaded {type(base.model).__name__}")
    if device is not None:
        target = resolve_device(device)
        if not same_device(base.device, target):
            logger.info("Moving the loaded %s from %s to %s", type(base.model).__name__, base.device, target)
            base.model.to(target)
    if base.dtype_name != torch_dtype:
        logger.info("Using the loaded model in its own dtype %s (torch_dtype=%r applies to models loaded from a path)",
                    base.dtype_name, torch_dtype)
    base.model.eval()
    return base, kind


def make_objective(kind: str, tokenizer: Any, max_length: int = 256, options: dict[str, Any] | None = None,
                   tensors: dict[str, torch.Tensor] | None = None) -> LMObjective:
    """The objective named `kind` ("mlm", "clm" or "clm_mlm_head"); `options` go to the causal objectives (masked
    LMs ignore them); `tensors`: the clm_mlm_head's trained head (its config is `options["head"]`)."""
    if kind == "mlm":
        return MaskedLMObjective(tokenizer, max_length=max_length)
    if kind == "clm":
        return CausalLMObjective(tokenizer, max_length=max_length, **(options or {}))
    if kind == "clm_mlm_head":
        return CausalMLMHeadObjective(tokenizer, max_length=max_length, head_tensors=tensors or None,
                                      **(options or {}))
    raise ValueError(f"Unknown objective {kind!r}; use one of {OBJECTIVES}")


def _fit_max_length(base_model: PreTrainedModel, max_length: int) -> int:
    """`max_length` capped at the model's position limit, so a too-long text is caught by the objective's
    up-front "[MASK] beyond max_length" check instead of failing inside the model's position embeddings."""
    limit = getattr(base_model.config, "max_position_embeddings", None)  # absent for rotary-only configs
    if isinstance(limit, int) and 0 < limit < max_length:
        logger.info("max_length %d exceeds the model's %d positions; using %d", max_length, limit, limit)
        return limit
    return max_length


class ModelWithGradiend:
    """Base model + tokenizer + objective + gradient engine + GRADIEND weights."""

    def __init__(self, base_model: PreTrainedModel, tokenizer: Any, gradiend: GradiendModel,
                 max_length: int = 256) -> None:
        self.base_model = base_model
        self.tokenizer = tokenizer
        self.gradiend = gradiend if gradiend.shape_only else gradiend.to(next(base_model.parameters()).device)
        self.param_map = ParamMap.from_json(gradiend.config.param_map, gradiend.param_index)
        max_length = _fit_max_length(base_model, max_length)
        self.objective = make_objective(gradiend.config.objective, tokenizer, max_length,
                                        gradiend.config.objective_options, gradiend.objective_tensors)
        self.engine = GradientEngine(base_model, self.objective, self.param_map)

    @property
    def config(self) -> GradiendConfig:
        return self.gradiend.config

    @property
    def base_model_path(self) -> str | None:
        return self.config.base_model

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @classmethod
    def create(cls, base_model: str | os.PathLike | PreTrainedModel | LoadedBase, *, tokenizer: Any = None,
               params: Sequence[str] | None = None, latent_dim: int = 1,
               activation_encoder: str = "tanh", bias_decoder: bool = True, torch_dtype: str = "float32",
               gradiend_dtype: str = "float32",
               feature_classes: Sequence[str] = (), source: str = "alternative", target: str = "diff",
               seed: int | None = 0, max_length: int = 256, trust_remote_code: bool = False,
               device: torch.device | str | None = None, objective: str | None = None,
               objective_options: dict[str, Any] | None = None, param_map: ParamMap | None = None,
               shape_only: bool = False) -> ModelWithGradiend:
        """A fresh, untrained GRADIEND over `base_model`: an HF id or local path, or a loaded model (PEFT style,
        with `tokenizer=`; used as it is, never reloaded).

        `device`: where the base model and the GRADIEND live (None: a loaded model's own device, else cuda when
        available, else cpu); both are built there directly. `torch_dtype`: the base model's dtype when it is
        loaded from a path; `gradiend_dtype`: the GRADIEND's own. `objective`: "mlm", "clm" or None (chosen from
        the model); `objective_options` (causal LMs, e.g. `min_left_context_tokens`) are stored in the
        checkpoint. `param_map` (e.g. a pre-pruned one) replaces the selection by `params`. `shape_only=True`
        allocates no GRADIEND weights: a template for `with_new_gradiend` (the trainer's seeds), which saves
        one GRADIEND's memory and initialisation.
        """
        base, kind = open_base(base_model, tokenizer, torch_dtype, trust_remote_code, device, objective)
        make_objective(kind, base.tokenizer, max_length, objective_options)  # validate the options before any work
        if param_map is not None:
            param_map.check_against(base.model)
        else:
            param_map = ParamMap.select(base.model, params)
        direction = {cls_: sign for cls_, sign in zip(feature_classes, (1, -1), strict=False)}
        from_path = isinstance(base_model, (str, os.PathLike))
        config = GradiendConfig(
            input_dim=param_map.size, latent_dim=latent_dim, activation_encoder=activation_encoder,
            bias_decoder=bias_decoder, torch_dtype=torch_dtype if from_path else base.dtype_name,
            gradiend_dtype=gradiend_dtype, base_model=base.name, base_model_resolved=resolve_base_model(base.name),
            base_model_fingerprint=base_model_fingerprint(base.name) if from_path else base.fingerprint(),
            param_map=param_map.to_json(), feature_classes=list(feature_classes),
            feature_class_encoding_direction=direction, source=source, target=target, objective=kind,
            objective_options=dict(objective_options or {}) if kind != "mlm" else {})
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        logger.info("GRADIEND over %d parameters of %s (%d tensors) on %s", param_map.size, base.name,
                    len(param_map.specs), base.device)
        gradiend = GradiendModel(config, generator, shape_only=shape_only, device=base.device)
        gradiend.param_index = param_map.index_tensors()
        return cls(base.model, base.tokenizer, gradiend, max_length=max_length)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *,
                        base_model: str | os.PathLike | PreTrainedModel | LoadedBase | None = None,
                        tokenizer: Any = None, device: torch.device | str | None = None,
                        trust_remote_code: bool = False, max_length: int = 256, revision: str | None = None,
                        token: str | bool | None = None) -> ModelWithGradiend:
        """Load a GRADIEND checkpoint with the base model it names, or with `base_model` (an id/path, or a loaded
        model + `tokenizer`, used as it is: no second copy).

        `directory` is a local checkpoint directory or a Hugging Face Hub repo id (`org/name`, at
        `revision`), read from the local Hub cache or downloaded into it (`gradiend.hub.resolve_pretrained`;
        with `HF_HUB_OFFLINE=1` only the cache is searched). Base model and GRADIEND are read straight onto
        `device` (None: a loaded model's own device, else cuda when available, else cpu).
        """
        from gradiend.hub import resolve_pretrained

        directory = resolve_pretrained(directory, revision=revision, token=token)
        loaded = not isinstance(base_model, (str, os.PathLike, type(None)))
        if not is_checkpoint(directory):
            from gradiend.reference_format import is_reference_checkpoint, load_reference_checkpoint

            if is_reference_checkpoint(directory):  # a gradiend 0.2.x checkpoint
                if loaded:
                    raise ValueError(f"{directory} is a gradiend 0.2.x checkpoint: pass its base model as an id/path, "
                                     f"or convert it first (gradiend.reference_format.convert_reference_checkpoint)")
                return load_reference_checkpoint(directory, base_model=base_model, device=device,
                                                 trust_remote_code=trust_remote_code, max_length=max_length)
        config = read_checkpoint_config(directory)  # the weights' header too: a broken checkpoint fails first
        name = base_model if base_model is not None else recorded_base_model(config)
        if name is None:
            raise ValueError(f"Checkpoint {directory} does not name its base model; pass base_model=")
        if isinstance(name, str) and name.startswith(IN_MEMORY):
            raise ValueError(f"Checkpoint {directory} was trained on a model passed in memory ({name}, no path "
                             f"recorded); pass that model as base_model= with its tokenizer=")
        base, _ = open_base(name, tokenizer, config.torch_dtype, trust_remote_code, device, config.objective)
        gradiend = GradiendModel.from_pretrained(directory, device=base.device)  # straight onto the base's device
        warn_if_other_weights(gradiend.config, base, directory, from_path=not loaded)
        return cls(base.model, base.tokenizer, gradiend, max_length=max_length)

    def save_pretrained(self, directory: str | os.PathLike, extra_json: dict[str, Any] | None = None) -> None:
        self.gradiend.save_pretrained(directory, extra_json)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    revision: str | None = None, commit_message: str = "Upload GRADIEND checkpoint") -> str:
        """Upload this GRADIEND (weights, config and a model card) to the Hub model repo `repo_id`.

        To include the training record and the encoder/decoder results, push the experiment
        directory instead: `gradiend.hub.push_to_hub(experiment_dir, repo_id)`. Returns the commit URL.
        """
        import tempfile

        from gradiend.hub import push_to_hub

        with tempfile.TemporaryDirectory(prefix="gradiend-save-") as tmp:
            self.save_pretrained(tmp)
            return push_to_hub(tmp, repo_id, private=private, token=token, revision=revision,
                               commit_message=commit_message)

    def with_new_gradiend(self, seed: int | None) -> ModelWithGradiend:
        """A model sharing this one's base model, tokenizer and objective, with a freshly initialised
        GRADIEND of the same configuration (parameter map included) seeded by `seed`."""
        clone = copy.copy(self)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        gradiend = GradiendModel(copy.deepcopy(self.gradiend.config), generator, device=self.device)
        gradiend.param_index = dict(self.gradiend.param_index)
        gradiend.objective_tensors = dict(self.gradiend.objective_tensors)
        clone.gradiend = gradiend
        clone.engine = GradientEngine(self.base_model, self.objective, self.param_map)  # re-asserts requires_grad
        return clone

    def fit_objective(self, rows: pd.DataFrame, pair: Sequence[str], args: TrainingArguments) -> None:
        """Train what the objective learns before the GRADIEND does: for `clm_mlm_head` its slot head, on the
        pair's training rows (`decoder_mlm_head_*` settings); the head's weights and settings become part of this
        GRADIEND's checkpoint. Nothing to learn for `mlm` and `clm`."""
        if not isinstance(self.objective, CausalMLMHeadObjective):
            return
        from gradiend.mlm_head import head_settings, head_training_rows

        settings = head_settings(args)
        texts, words = head_training_rows(rows, pair, self.objective, settings)
        self.objective.fit(self.base_model, texts, words, settings, batch_size=args.eval_batch_size)
        self.gradiend.config.objective_options = self.objective.options_json()
        self.gradiend.objective_tensors = self.objective.head_tensors()

    def prune(self, keep: torch.Tensor) -> ModelWithGradiend:
        """Keep only the input coordinates where `keep` is True (in place); rewriting afterwards
        changes only the kept coordinates of the base model."""
        param_map = self.param_map.restrict(keep)
        self.gradiend.prune(keep)
        self.gradiend.config.param_map = param_map.to_json()
        self.gradiend.param_index = param_map.index_tensors()
        self.param_map = param_map
        self.engine = GradientEngine(self.base_model, self.objective, self.param_map)
        return self

    def to(self, device: torch.device | str) -> ModelWithGradiend:
        """Move the base model and the GRADIEND (in place; a shape-only template has no weights to move)."""
        self.base_model.to(device)
        if not self.gradiend.shape_only:
            self.gradiend.to(device)
        self.engine = GradientEngine(self.base_model, self.objective, self.param_map)
        return self

    def update_vector(self, feature_factor: float | Sequence[float]) -> torch.Tensor:
        """dec(feature_factor) in raw parameter units (flat over the parameter map)."""
        with torch.no_grad():
            return self.gradiend.decode(feature_factor)

    def lazy_update(self, feature_factor: float | Sequence[float]) -> Callable[[slice], torch.Tensor]:
        """dec(feature_factor) decoded slice by slice on demand (never the whole vector at once)."""

        def part(rows: slice) -> torch.Tensor:
            with torch.no_grad():
                return self.gradiend.decode(feature_factor, rows)

        return part

    def apply(self, feature_factor: float | Sequence[float], learning_rate: float) -> contextlib.AbstractContextManager:
        """Context manager: the base model rewritten by learning_rate · dec(feature_factor) inside
        the block, restored bitwise on exit (exceptions included)."""
        return applied(self.base_model, self.param_map, self.lazy_update(feature_factor), learning_rate)

    def rewrite_base_model(self, learning_rate: float, feature_factor: float | Sequence[float]) -> PreTrainedModel:
        """A rewritten deep copy of the base model (the loaded base model stays unchanged)."""
        return rewritten_copy(self.base_model, self.param_map, self.lazy_update(feature_factor), learning_rate)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], factual: Sequence[str], alternative: Sequence[str] | None = None,
               kind: str | None = None, batch_size: int = 32) -> np.ndarray:
        """Feature values h (rows × latent_dim) of single-row gradients.

        `kind` defaults to the source the GRADIEND was trained on; the alternative token is only
        needed for the `alternative` and `diff` kinds.
        """
        kind = kind or self.config.source
        texts, factual = list(texts), list(factual)
        alternative = list(alternative) if alternative is not None else None
        if alternative is None:
            if kind != "factual":
                raise ValueError(f"Encoding with kind={kind!r} needs the alternative tokens")
            alternative = factual
        if not len(texts) == len(factual) == len(alternative):
            raise ValueError(f"encode needs one factual and one alternative token per text: got {len(texts)} texts, "
                             f"{len(factual)} factual and {len(alternative)} alternative tokens")
        directions = self.gradiend.encoder_directions().detach()
        out = np.zeros((len(texts), self.config.latent_dim), dtype=np.float32)
        with reuse_large_blocks():  # forward-mode tangents are parameter-sized
            for rows in length_batches(self.objective.token_lengths(texts), batch_size):
                proj = self.engine.directional([texts[i] for i in rows], [factual[i] for i in rows],
                                               [alternative[i] for i in rows], kind, directions)
                out[rows] = self.gradiend.activate(proj).cpu().numpy()
        return out
