"""The GRADIEND encoder–decoder and its checkpoint format (safetensors + one JSON file).

    h = act(W_e · (x / s_in) + b_e)          encoder, k = latent_dim feature neurons
    y_hat = W_d · h + b_d                     decoder, in target units of s_out

`s_in` and `s_out` are scalar gradient scales estimated from the first training batches
(see `estimate_scale`): raw gradients are tiny and their size varies by model and layer, so
without them one learning rate either saturates tanh or crawls. They are stored with the
weights, and `decode` returns parameter-space vectors (`s_out · y_hat`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from gradiend.experiment import MODEL_CONFIG, MODEL_WEIGHTS, atomic_write_json, atomic_write_with, read_json
from gradiend.mlm_head import HEAD_FILE

logger = logging.getLogger(__name__)

FORMAT_NAME = "gradiend"
FORMAT_VERSION = 1
CONFIG_FILE = MODEL_CONFIG
WEIGHTS_FILE = MODEL_WEIGHTS
PARAM_MAP_FILE = "param_map.safetensors"
ACTIVATIONS = {"tanh": torch.tanh, "hardtanh": nn.functional.hardtanh}


@dataclass
class GradiendConfig:
    """Architecture plus everything needed to reattach the GRADIEND to its base model."""

    input_dim: int
    latent_dim: int = 1
    activation_encoder: str = "tanh"
    bias_decoder: bool = True
    torch_dtype: str = "float32"
    base_model: str | None = None
    param_map: list[dict[str, Any]] = field(default_factory=list)
    feature_classes: list[str] = field(default_factory=list)
    feature_class_encoding_direction: dict[str, int] = field(default_factory=dict)
    source: str = "alternative"
    target: str = "diff"
    objective: str = "mlm"
    objective_options: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    # the base model's absolute path (local models) and content key (`gradiend.base_identity`); None in
    # checkpoints written before these were recorded
    base_model_resolved: str | None = None
    base_model_fingerprint: str | None = None
    # dtype of the GRADIEND's own weights (`torch_dtype` is the base model's); float32 in older checkpoints
    gradiend_dtype: str = "float32"

    def __post_init__(self) -> None:
        from gradiend.arguments import field_problems

        problems = field_problems(self)
        if problems:
            raise ValueError("GradiendConfig: " + "; ".join(problems))
        if self.input_dim <= 0 or self.latent_dim <= 0:
            raise ValueError(f"input_dim and latent_dim must be positive, got {self.input_dim}, {self.latent_dim}")
        from gradiend.arguments import DTYPE_NAMES

        if self.gradiend_dtype not in DTYPE_NAMES:
            raise ValueError(f"gradiend_dtype must be one of {list(DTYPE_NAMES)}, got {self.gradiend_dtype!r}")
        if self.activation_encoder not in ACTIVATIONS:
            raise ValueError(f"activation_encoder must be one of {sorted(ACTIVATIONS)}, "
                             f"got {self.activation_encoder!r}")

    def to_json(self) -> dict[str, Any]:
        from gradiend._version import __version__

        return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "library_version": __version__,
                **{k: getattr(self, k) for k in self.__dataclass_fields__}}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "config") -> GradiendConfig:
        if data.get("format") != FORMAT_NAME:
            raise ValueError(f"{where} is not a gradiend checkpoint config (format={data.get('format')!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{where} has format_version {data.get('format_version')}; this gradiend reads "
                             f"version {FORMAT_VERSION}. Upgrade gradiend or re-train.")
        known = set(cls.__dataclass_fields__)
        if "input_dim" not in data:
            raise ValueError(f"{where} lacks the required field 'input_dim'; the file is damaged or was edited. "
                             f"Restore it from a copy or re-train.")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except ValueError as err:
            raise ValueError(f"{where} has invalid fields ({err}); the file is damaged or was edited. Restore it "
                             f"from a copy or re-train.") from err


class GradiendModel(nn.Module):
    """One-hidden-layer encoder–decoder on gradient space (k feature neurons)."""

    def __init__(self, config: GradiendConfig, generator: torch.Generator | None = None,
                 shape_only: bool = False, device: torch.device | str | None = None) -> None:
        """Weights in `config.gradiend_dtype`, allocated on `device` (default: the CPU) and initialised there.

        `shape_only=True`: weights on the meta device (no memory, no values): a template whose
        configuration other GRADIENDs are built from (`ModelWithGradiend.with_new_gradiend`).
        """
        super().__init__()
        self.config = config
        n, k = config.input_dim, config.latent_dim
        device = torch.device("meta") if shape_only else torch.device(device or "cpu")
        dtype = getattr(torch, config.gradiend_dtype)  # one of DTYPE_NAMES, checked by the config
        self.encoder_weight = nn.Parameter(torch.empty(k, n, device=device, dtype=dtype))
        self.encoder_bias = nn.Parameter(torch.empty(k, device=device, dtype=dtype))
        self.decoder_weight = nn.Parameter(torch.empty(n, k, device=device, dtype=dtype))
        self.decoder_bias = nn.Parameter(torch.empty(n, device=device, dtype=dtype)) if config.bias_decoder else None
        # the gradient scales stay float32 whatever the weights' dtype (they are two numbers)
        scale_device = torch.device("cpu") if shape_only else device
        self.register_buffer("input_scale", torch.ones((), device=scale_device))
        self.register_buffer("target_scale", torch.ones((), device=scale_device))
        # kept coordinates of pruned parameters (ParamMap.index_tensors), saved to PARAM_MAP_FILE
        self.param_index: dict[str, torch.Tensor] = {}
        # weights the objective learnt before training (the clm_mlm_head's head), saved to HEAD_FILE; its
        # settings are in config.objective_options["head"]
        self.objective_tensors: dict[str, torch.Tensor] = {}
        if not shape_only:
            self.reset_parameters(generator)

    @property
    def shape_only(self) -> bool:
        return self.encoder_weight.is_meta

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Encoder ~ U(±1/√n) (PyTorch Linear default); decoder ~ U(±max|W_e|), same scale.

        The values are drawn in float32 from a CPU generator on every device and dtype, so one seed gives the
        same GRADIEND on the CPU and on a GPU (rounded once to a lower `gradiend_dtype`).
        """
        bound = 1.0 / math.sqrt(self.config.input_dim)
        scale = _uniform_(self.encoder_weight, bound, generator)
        _uniform_(self.encoder_bias, bound, generator)
        _uniform_(self.decoder_weight, scale, generator)
        if self.decoder_bias is not None:
            _uniform_(self.decoder_bias, scale, generator)

    @torch.no_grad()
    def scale_initial_weights(self, bound: float, input_dim: int | None = None) -> None:
        """Rescale freshly initialised weights (`reset_parameters`) so the encoder's lie in ±`bound`.

        Every weight is multiplied by `bound·√n`, n = `input_dim` (default: this GRADIEND's; a slice of
        a sharded GRADIEND passes the full one); the decoder keeps its ratio to the encoder. With
        `bound` = the learning rate, the initial weights are one Adam step in size whatever the
        learning rate, so together with `gradiend.step.scale_norms` a run is the same at every
        learning rate (issue 15); with the default U(±1/√n) the initial weights would outweigh
        100 steps at lr 1e-5 on a pruned or small GRADIEND.
        """
        if not (bound > 0 and math.isfinite(bound)):
            raise ValueError(f"bound must be a positive finite number, got {bound!r}")
        factor = bound * math.sqrt(self.config.input_dim if input_dim is None else input_dim)
        for param in self.parameters():
            param.mul_(factor)

    @property
    def activation(self):
        return ACTIVATIONS[self.config.activation_encoder]

    def encoder_directions(self) -> torch.Tensor:
        """Rows w_j / s_in: `encode(x) = act(directions · x + b_e)` for raw gradients x."""
        return self.encoder_weight / self.input_scale

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature values h (…, k) of raw gradient vectors x (…, n)."""
        return self.activation(x @ self.encoder_directions().T + self.encoder_bias)

    def activate(self, projections: torch.Tensor) -> torch.Tensor:
        """h from precomputed `encoder_directions() · x` values (forward-mode encodings)."""
        return self.activation(projections + self.encoder_bias)

    def decode_normalized(self, h: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        out = h @ self.decoder_weight[rows].T
        return out + self.decoder_bias[rows] if self.decoder_bias is not None else out

    def decode(self, h: torch.Tensor | float | list[float], rows: slice = slice(None)) -> torch.Tensor:
        """Parameter-space update direction for feature value(s) h (in raw gradient units).

        `rows` restricts the output to a slice of the flat parameter vector, so an update can be
        decoded tensor by tensor without materialising all of it (memory on big models).
        """
        h = torch.as_tensor(h, dtype=self.decoder_weight.dtype, device=self.decoder_weight.device)
        if h.dim() == 0:
            h = h.reshape(1).expand(self.config.latent_dim)
        if h.dim() == 1 and self.config.latent_dim == 1:
            # one feature neuron: s_out·(b_d + h·w_d) as two vector passes (a k=1 matrix product and
            # separate scaling each cost a pass and a temporary more)
            weight = self.decoder_weight[rows, 0]
            if self.decoder_bias is None:
                return weight * (h * self.target_scale)
            return torch.addcmul(self.decoder_bias[rows], weight, h).mul_(self.target_scale)
        return self.decode_normalized(h, rows) * self.target_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, reconstruction in normalised target units) for raw source gradients x."""
        h = self.encode(x)
        return h, self.decode_normalized(h)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MSE between the reconstruction and the normalised target y / s_out; also returns h."""
        h, y_hat = self(x)
        return nn.functional.mse_loss(y_hat, y / self.target_scale), h

    @torch.no_grad()
    def flip_sign(self) -> None:
        """Negate the feature: h → −h with an unchanged reconstruction (W_e, b_e, W_d negated)."""
        self.encoder_weight.neg_()
        self.encoder_bias.neg_()
        self.decoder_weight.neg_()

    @torch.no_grad()
    def prune(self, keep: torch.Tensor) -> None:
        """Keep only the input coordinates where the boolean vector `keep` is True (in place):
        encoder columns, decoder rows and decoder-bias entries are sliced; the rest is unchanged."""
        device = torch.device("cpu") if self.shape_only else self.encoder_weight.device
        keep = torch.as_tensor(keep, dtype=torch.bool, device=device).reshape(-1)
        if keep.numel() != self.config.input_dim:
            raise ValueError(f"keep mask has {keep.numel()} entries, the GRADIEND {self.config.input_dim} inputs")
        n_kept = int(keep.sum())
        if n_kept == 0:
            raise ValueError("Pruning would keep no input coordinate; lower the threshold or raise topk")
        self.encoder_weight = nn.Parameter(self.encoder_weight[:, keep].contiguous())
        self.decoder_weight = nn.Parameter(self.decoder_weight[keep].contiguous())
        if self.decoder_bias is not None:
            self.decoder_bias = nn.Parameter(self.decoder_bias[keep].contiguous())
        self.config.input_dim = n_kept

    def n_bytes(self) -> int:
        """Bytes of the trainable weights."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    # -- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, extra_json: dict[str, Any] | None = None) -> None:
        """Write `model.safetensors` and `gradiend_config.json` (each atomically) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write_with(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={
            "format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)}))
        if self.param_index:
            index = {k: v.contiguous().cpu() for k, v in self.param_index.items()}
            atomic_write_with(directory / PARAM_MAP_FILE, lambda tmp: save_file(index, tmp))
        elif (directory / PARAM_MAP_FILE).exists():
            (directory / PARAM_MAP_FILE).unlink()
        if self.objective_tensors:
            head = {k: v.detach().contiguous().cpu() for k, v in self.objective_tensors.items()}
            atomic_write_with(directory / HEAD_FILE, lambda tmp: save_file(head, tmp))
        elif (directory / HEAD_FILE).exists():
            (directory / HEAD_FILE).unlink()
        atomic_write_json(directory / CONFIG_FILE, {**self.config.to_json(), **(extra_json or {})})

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: torch.device | str | None = None) -> GradiendModel:
        """Load a checkpoint (never unpickles) straight onto `device` (default: the CPU); errors name the
        missing or corrupt file."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"GRADIEND checkpoint directory not found: {directory}")
        if not (directory / CONFIG_FILE).is_file():
            from gradiend.reference_format import is_reference_checkpoint, read_reference_gradiend

            if is_reference_checkpoint(directory):  # a gradiend 0.2.x checkpoint
                model = read_reference_gradiend(directory)
                return model.to(device) if device is not None else model
        config = read_checkpoint_config(directory)
        weights = directory / WEIGHTS_FILE
        target = torch.device(device or "cpu")
        try:  # safetensors reads straight onto CPU and CUDA devices; others go through the host
            state = load_file(str(weights), device=str(target) if target.type in ("cpu", "cuda") else "cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"GRADIEND weights {weights} are corrupt ({err}); re-train or restore the file") from err
        model = cls(config, shape_only=True)  # no memory and no initialisation: the weights are assigned
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if expected != found:
            raise ValueError(f"GRADIEND weights {weights} do not match {CONFIG_FILE}: expected tensors "
                             f"{expected}, found {found}")
        dtype = getattr(torch, config.gradiend_dtype)
        state = {k: v.to(target, torch.float32 if k.endswith("_scale") else dtype) for k, v in state.items()}
        model.load_state_dict(state, assign=True)
        if any("kept" in entry for entry in config.param_map):
            model.param_index = _load_tensors(directory / PARAM_MAP_FILE, "kept coordinates of the pruned GRADIEND")
        if "head" in config.objective_options:
            model.objective_tensors = _load_tensors(directory / HEAD_FILE, "the clm_mlm_head objective's head")
        return model


INIT_CHUNK = 1 << 20  # entries drawn on the host at a time when a GRADIEND is initialised on another device


def _uniform_(param: torch.Tensor, bound: float, generator: torch.Generator | None) -> float:
    """Fill `param` with U(±bound) drawn in float32 on the CPU; returns max |value| (before any rounding).

    A float32 CPU tensor is filled in place (one draw); on another device or dtype the values are drawn
    `INIT_CHUNK` at a time and copied over, which gives the same numbers (the CPU generator draws serially)
    while the host holds one chunk, not the whole GRADIEND.
    """
    if param.device.type == "cpu" and param.dtype == torch.float32:
        param.uniform_(-bound, bound, generator=generator)
        return float(param.abs().max()) if param.numel() else 0.0
    flat, peak = param.view(-1), 0.0
    for start in range(0, flat.numel(), INIT_CHUNK):
        part = torch.empty(min(INIT_CHUNK, flat.numel() - start)).uniform_(-bound, bound, generator=generator)
        peak = max(peak, float(part.abs().max()))
        flat[start:start + part.numel()].copy_(part)
    return peak


def read_checkpoint_config(directory: str | os.PathLike) -> GradiendConfig:
    """The config of a checkpoint in our format, after checking its weights file is there and its header intact
    (cheap: no tensor is read), so a broken checkpoint fails before anything big is loaded."""
    from gradiend.base_identity import check_safetensors

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"GRADIEND checkpoint directory not found: {directory}")
    config = GradiendConfig.from_json(read_json(directory / CONFIG_FILE, "GRADIEND config"),
                                      str(directory / CONFIG_FILE))
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"GRADIEND weights not found: {weights}; the checkpoint is incomplete, "
                                f"re-train or copy the file back")
    try:
        check_safetensors(weights)
    except ValueError as err:
        raise ValueError(f"GRADIEND weights {weights} are corrupt ({err}); re-train or restore the file") from err
    return config


def _load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} ({what}) is missing; the checkpoint is incomplete, re-save or re-train it")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} ({what}) is corrupt ({err}); re-save or re-train the checkpoint") from err


def is_checkpoint(directory: str | os.PathLike) -> bool:
    """True when `directory` holds a gradiend config file."""
    return (Path(directory) / CONFIG_FILE).is_file()
