"""A base language model paired with a GRADIEND: load, encode, save."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, PreTrainedModel

from gradiend.arguments import DTYPES
from gradiend.gradients import GradientEngine
from gradiend.model import GradiendConfig, GradiendModel
from gradiend.objectives import MaskedLMObjective
from gradiend.params import ParamMap
from gradiend.rewrite import applied, rewritten_copy

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def load_base_model(name_or_path: str, torch_dtype: str = "float32", trust_remote_code: bool = False,
                    device: torch.device | str | None = None) -> tuple[PreTrainedModel, Any]:
    """Load an HF masked LM and its tokenizer, with errors that name the fix."""
    path = Path(name_or_path).expanduser()
    if _looks_like_path(name_or_path) and not path.exists():
        raise FileNotFoundError(f"Model path {name_or_path!r} does not exist; pass an existing local "
                                f"checkpoint directory or a Hugging Face model id")
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise FileNotFoundError(f"Could not load a model config from {name_or_path!r} ({err}). Offline? "
                                f"Pass a local checkpoint directory (e.g. gradiend.embedded_model_path()).") from err
    if config.is_decoder or any("CausalLM" in a for a in (config.architectures or [])):
        raise NotImplementedError(f"{name_or_path!r} is a causal LM; this version of gradiend trains "
                                  f"masked LMs (BERT family). Causal-LM support is on the roadmap.")
    fix = "save the tokenizer next to the model with tokenizer.save_pretrained(path)"
    if path.is_dir() and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"No tokenizer files in {name_or_path!r} (looked for {list(TOKENIZER_FILES)}); {fix}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as err:
        raise FileNotFoundError(f"No usable tokenizer found for {name_or_path!r} ({err}); {fix}") from err
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise FileNotFoundError(f"The tokenizer of {name_or_path!r} has an empty vocabulary; {fix}")
    model = AutoModelForMaskedLM.from_pretrained(name_or_path, dtype=DTYPES[torch_dtype],
                                                 trust_remote_code=trust_remote_code)
    model.eval()
    if device is not None:
        model.to(device)
    return model, tokenizer


class ModelWithGradiend:
    """Base model + tokenizer + objective + gradient engine + GRADIEND weights."""

    def __init__(self, base_model: PreTrainedModel, tokenizer: Any, gradiend: GradiendModel,
                 max_length: int = 256) -> None:
        self.base_model = base_model
        self.tokenizer = tokenizer
        self.gradiend = gradiend.to(next(base_model.parameters()).device)
        self.param_map = ParamMap.from_json(gradiend.config.param_map)
        self.objective = MaskedLMObjective(tokenizer, max_length=max_length)
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
    def create(cls, base_model: str, *, params: Sequence[str] | None = None, latent_dim: int = 1,
               activation_encoder: str = "tanh", bias_decoder: bool = True, torch_dtype: str = "float32",
               feature_classes: Sequence[str] = (), source: str = "alternative", target: str = "diff",
               seed: int | None = 0, max_length: int = 256, trust_remote_code: bool = False,
               device: torch.device | str | None = None) -> ModelWithGradiend:
        """A fresh, untrained GRADIEND over `base_model` (HF id or local path)."""
        model, tokenizer = load_base_model(base_model, torch_dtype, trust_remote_code, device)
        param_map = ParamMap.select(model, params)
        direction = {cls_: sign for cls_, sign in zip(feature_classes, (1, -1), strict=False)}
        config = GradiendConfig(
            input_dim=param_map.size, latent_dim=latent_dim, activation_encoder=activation_encoder,
            bias_decoder=bias_decoder, torch_dtype=torch_dtype, base_model=str(base_model),
            param_map=param_map.to_json(), feature_classes=list(feature_classes),
            feature_class_encoding_direction=direction, source=source, target=target)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        logger.info("GRADIEND over %d parameters of %s (%d tensors)", param_map.size, base_model,
                    len(param_map.specs))
        return cls(model, tokenizer, GradiendModel(config, generator), max_length=max_length)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, base_model: str | None = None,
                        device: torch.device | str | None = None, trust_remote_code: bool = False,
                        max_length: int = 256) -> ModelWithGradiend:
        """Load a GRADIEND checkpoint and the base model it names (or `base_model`)."""
        gradiend = GradiendModel.from_pretrained(directory)
        base = base_model or gradiend.config.base_model
        if base is None:
            raise ValueError(f"Checkpoint {directory} does not name its base model; pass base_model=")
        model, tokenizer = load_base_model(base, gradiend.config.torch_dtype, trust_remote_code, device)
        return cls(model, tokenizer, gradiend, max_length=max_length)

    def save_pretrained(self, directory: str | os.PathLike, extra_json: dict[str, Any] | None = None) -> None:
        self.gradiend.save_pretrained(directory, extra_json)

    def to(self, device: torch.device | str) -> ModelWithGradiend:
        self.base_model.to(device)
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
        if alternative is None:
            if kind != "factual":
                raise ValueError(f"Encoding with kind={kind!r} needs the alternative tokens")
            alternative = factual
        directions = self.gradiend.encoder_directions().detach()
        out = []
        for start in range(0, len(texts), batch_size):
            end = start + batch_size
            proj = self.engine.directional(texts[start:end], factual[start:end], alternative[start:end],
                                           kind, directions)
            out.append(self.gradiend.activate(proj).cpu())
        if not out:
            return np.zeros((0, self.config.latent_dim), dtype=np.float32)
        return torch.cat(out).numpy()
