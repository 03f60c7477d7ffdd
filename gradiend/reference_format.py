"""Read GRADIEND checkpoints written by the reference package (gradiend 0.2.x).

That format is a directory with `config.json` (`format_version` 0, an `architecture` section, a
`mapping` section listing the selected base parameters, `metadata` naming the base model), the
weights in `model.safetensors` (keys `encoder.0.linear.weight`, `encoder.0.linear.bias`,
`decoder.0.linear.weight`, `decoder.0.linear.bias`), optional `mapping_indices.safetensors` /
`mapping_masks.safetensors` with the kept coordinates of partly selected parameters, and an optional
`gradiend_context.json` (`source`, `target`, `feature_class_encoding_direction`).

The reference has no gradient scales, so the converted GRADIEND gets input and target scale 1: it
computes exactly the reference's `tanh(W_e x + b_e)` and `W_d h + b_d`. Coordinates listed out of
order are re-sorted (with the weights) because our parameter map keeps them increasing.

Only safetensors files are read: a `pytorch_model.bin` or `.pth` file is a pickle, which can run
code when loaded, so it is refused with instructions to convert it yourself.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from gradiend.experiment import read_json

if TYPE_CHECKING:
    from gradiend.model import GradiendModel
    from gradiend.model_with_gradiend import ModelWithGradiend
    from gradiend.params import ParamMap

logger = logging.getLogger(__name__)

REFERENCE_CONFIG = "config.json"
REFERENCE_WEIGHTS = "model.safetensors"
REFERENCE_PICKLE_WEIGHTS = "pytorch_model.bin"
REFERENCE_CONTEXT = "gradiend_context.json"
REFERENCE_FORMAT_VERSION = 0
#: reference activation name → ours
ENCODER_ACTIVATIONS = {"tanh": "tanh", "smht": "hardtanh", "hardtanh": "hardtanh"}
IDENTITY_ACTIVATIONS = ("id", "identity", None)
#: key prefixes of the weights: wrapped Linear layers (".linear") and plain ones
_WEIGHT_PREFIXES = ("encoder.0.linear.", "encoder.0.", "decoder.0.linear.", "decoder.0.")
_PICKLE_HINT = ("gradiend never unpickles files (a pickle can run code when loaded). If you trust the file, "
                "convert it once yourself: `import torch; from safetensors.torch import save_file; "
                "state = torch.load('{path}', weights_only=True); "
                "save_file({{k: v.contiguous() for k, v in state.items()}}, '{target}')`")


class ReferenceFormatError(ValueError):
    """A directory that claims to be a reference GRADIEND checkpoint but cannot be read."""


def _read_config(directory: Path) -> dict[str, Any] | None:
    path = directory / REFERENCE_CONFIG
    if not path.is_file():
        return None
    data = read_json(path, "reference GRADIEND config")
    return data if isinstance(data, dict) else None


def is_reference_checkpoint(directory: str | os.PathLike) -> bool:
    """True when `directory` holds a reference-format GRADIEND (`config.json` with an `architecture` key).

    A Hugging Face model directory also has a `config.json`, but without that key.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return False
    try:
        config = _read_config(directory)
    except ValueError:
        return False
    return config is not None and isinstance(config.get("architecture"), dict)


@dataclass
class _Architecture:
    input_dim: int
    latent_dim: int
    activation_encoder: str
    bias_decoder: bool
    torch_dtype: str


def _architecture(config: dict[str, Any], where: Path) -> _Architecture:
    version = config.get("format_version", REFERENCE_FORMAT_VERSION)
    if version != REFERENCE_FORMAT_VERSION:
        raise ReferenceFormatError(f"{where} has format_version {version!r}; the reference format this gradiend "
                                   f"reads is version {REFERENCE_FORMAT_VERSION}")
    arch = config["architecture"]
    try:
        input_dim, latent_dim = int(arch["input_dim"]), int(arch.get("latent_dim", 1))
    except (KeyError, TypeError, ValueError) as err:
        raise ReferenceFormatError(f"{where}: architecture needs integer input_dim and latent_dim ({err})") from err
    if input_dim <= 0 or latent_dim <= 0:
        raise ReferenceFormatError(f"{where}: input_dim and latent_dim must be positive, got {input_dim}, {latent_dim}")
    encoder_act = arch.get("activation_encoder", "tanh")
    if encoder_act not in ENCODER_ACTIVATIONS:
        raise ReferenceFormatError(f"{where}: activation_encoder {encoder_act!r} is not supported; gradiend reads "
                                   f"{sorted(ENCODER_ACTIVATIONS)} (the paper's GRADIEND uses tanh)")
    decoder_act = arch.get("activation_decoder", "id")
    if decoder_act not in IDENTITY_ACTIVATIONS:
        raise ReferenceFormatError(f"{where}: activation_decoder {decoder_act!r} is not supported; gradiend's "
                                   f"decoder is linear (activation_decoder 'id')")
    from gradiend.arguments import DTYPE_NAMES

    dtype = str(arch.get("torch_dtype", "float32")).removeprefix("torch.")
    return _Architecture(input_dim, latent_dim, ENCODER_ACTIVATIONS[encoder_act],
                         bool(arch.get("bias_decoder", True)), dtype if dtype in DTYPE_NAMES else "float32")


def _load_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ReferenceFormatError(f"{path} ({what}) is corrupt ({err}); restore the file") from err


def _refuse_pickle(pickle_path: Path, target: Path) -> ReferenceFormatError:
    return ReferenceFormatError(f"{pickle_path.parent} stores its {pickle_path.name.split('.')[0]} only as a pickle "
                                f"({pickle_path.name}). " + _PICKLE_HINT.format(path=pickle_path, target=target))


def _weights(directory: Path, arch: _Architecture) -> dict[str, torch.Tensor]:
    """encoder_weight (k, n), encoder_bias (k), decoder_weight (n, k) and decoder_bias (n) if present."""
    path = directory / REFERENCE_WEIGHTS
    if not path.is_file():
        pickle_path = directory / REFERENCE_PICKLE_WEIGHTS
        if pickle_path.is_file():
            raise _refuse_pickle(pickle_path, path)
        raise ReferenceFormatError(f"Reference GRADIEND weights not found: {path}")
    state = _load_safetensors(path, "reference GRADIEND weights")
    out: dict[str, torch.Tensor] = {}
    for part in ("encoder", "decoder"):
        for kind in ("weight", "bias"):
            key = next((p + kind for p in _WEIGHT_PREFIXES if p.startswith(part) and p + kind in state), None)
            if key is not None:
                out[f"{part}_{kind}"] = state[key].to(torch.float32)
    n, k = arch.input_dim, arch.latent_dim
    expected = {"encoder_weight": (k, n), "encoder_bias": (k,), "decoder_weight": (n, k)}
    if arch.bias_decoder:
        expected["decoder_bias"] = (n,)
    found = {name: tuple(t.shape) for name, t in out.items() if name in expected}
    if found != expected:
        raise ReferenceFormatError(f"{path} does not match {REFERENCE_CONFIG} (input_dim {n}, latent_dim {k}): "
                                   f"expected tensors {expected}, found {found} among keys {sorted(state)}")
    return out


def _mapping_tensors(directory: Path, mapping: dict[str, Any], file_key: str, stem: str) -> dict[str, torch.Tensor]:
    name = mapping.get(file_key)
    if name is None:
        return {}
    path = directory / name
    if path.suffix != ".safetensors":
        raise _refuse_pickle(path, directory / f"{stem}.safetensors")
    if not path.is_file():
        raise ReferenceFormatError(f"{path} (named by {REFERENCE_CONFIG}) is missing; the checkpoint is incomplete")
    return _load_safetensors(path, "reference parameter mapping")


def _selected(entry: dict[str, Any], tensors: dict[str, dict[str, torch.Tensor]], where: Path) -> torch.Tensor | None:
    """Flat coordinates of one parameter in the reference's input order (None: the whole parameter)."""
    name, rep = entry["name"], entry.get("repr", "all")
    numel = 1
    for d in entry["shape"]:
        numel *= int(d)
    if rep == "all":
        return None
    store = {"indices": tensors["indices"], "mask": tensors["masks"]}.get(rep)
    if store is None:
        raise ReferenceFormatError(f"{where}: parameter {name!r} has unknown repr {rep!r} "
                                   f"(expected all, mask, indices)")
    key = entry.get("key", name)
    if key not in store:
        raise ReferenceFormatError(f"{where}: the {rep} of parameter {name!r} (key {key!r}) is missing from the "
                                   f"mapping file")
    if rep == "mask":
        mask = store[key].reshape(-1)
        if mask.numel() != numel:
            raise ReferenceFormatError(f"{where}: the mask of {name!r} has {mask.numel()} entries, "
                                       f"the parameter {numel}")
        return torch.nonzero(mask.to(torch.bool)).reshape(-1)
    index = store[key].reshape(-1).to(torch.int64)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= numel):
        raise ReferenceFormatError(f"{where}: indices of {name!r} fall outside its {numel} entries")
    if index.unique().numel() != index.numel():
        raise ReferenceFormatError(f"{where}: indices of {name!r} repeat a coordinate; the mapping is corrupt")
    return index


def _param_map(directory: Path, config: dict[str, Any], input_dim: int) -> tuple[ParamMap, torch.Tensor | None]:
    """Our parameter map and the permutation of the reference's inputs into its order (None: same order)."""
    from gradiend.params import ParamMap, ParamSpec

    where = directory / REFERENCE_CONFIG
    mapping = config.get("mapping")
    if not isinstance(mapping, dict) or not mapping.get("param_map"):
        raise ReferenceFormatError(f"{where} has no mapping.param_map: it does not say which base-model parameters "
                                   f"the GRADIEND reads, so it cannot be attached to a model")
    tensors = {"indices": _mapping_tensors(directory, mapping, "indices_file", "mapping_indices"),
               "masks": _mapping_tensors(directory, mapping, "masks_file", "mapping_masks")}
    specs: list[ParamSpec] = []
    order: list[torch.Tensor] = []
    offset = start = 0
    for entry in mapping["param_map"]:
        shape = tuple(int(d) for d in entry["shape"])
        index = _selected(entry, tensors, where)
        count = int(torch.tensor(shape).prod()) if index is None else int(index.numel())
        if count:
            sort = torch.arange(count) if index is None else torch.argsort(index)
            specs.append(ParamSpec(entry["name"], shape, offset, None if index is None else index[sort]))
            order.append(sort + start)
            offset += count
        start += count
    if start != input_dim:
        raise ReferenceFormatError(f"{where}: the mapping selects {start} coordinates but input_dim is {input_dim}")
    permutation = torch.cat(order)
    same = bool((permutation == torch.arange(input_dim)).all())
    return ParamMap(specs), None if same else permutation


def _context(directory: Path, config: dict[str, Any]) -> dict[str, Any]:
    path = directory / REFERENCE_CONTEXT
    context = read_json(path, "reference GRADIEND context") if path.is_file() else {}
    metadata = config.get("metadata") or {}
    source = context.get("source") or metadata.get("source") or "factual"  # the reference model's default
    target = context.get("target") or metadata.get("target") or "diff"
    direction = {str(c): int(v) for c, v in (context.get("feature_class_encoding_direction") or {}).items()}
    classes = sorted((c for c, v in direction.items() if v != 0), key=lambda c: -direction[c])
    return {"source": source, "target": target, "direction": direction, "classes": classes,
            "base_model": metadata.get("base_model"), "metadata": metadata}


def read_reference_gradiend(directory: str | os.PathLike, *, base_model: str | None = None) -> GradiendModel:
    """The GRADIEND of a reference checkpoint as our `GradiendModel` (no base model loaded)."""
    from gradiend.model import GradiendConfig, GradiendModel

    directory = Path(directory)
    config = _read_config(directory) if directory.is_dir() else None
    if config is None or not isinstance(config.get("architecture"), dict):
        raise ReferenceFormatError(f"{directory} is not a reference GRADIEND checkpoint (no {REFERENCE_CONFIG} with "
                                   f"an 'architecture' section)")
    arch = _architecture(config, directory / REFERENCE_CONFIG)
    weights = _weights(directory, arch)
    param_map, permutation = _param_map(directory, config, arch.input_dim)
    context = _context(directory, config)
    base = base_model or context["base_model"]
    ours = GradiendConfig(
        input_dim=arch.input_dim, latent_dim=arch.latent_dim, activation_encoder=arch.activation_encoder,
        bias_decoder=arch.bias_decoder, torch_dtype=arch.torch_dtype, base_model=base,
        param_map=param_map.to_json(), feature_classes=context["classes"],
        feature_class_encoding_direction=context["direction"], source=context["source"], target=context["target"],
        metadata={"converted_from": "gradiend 0.2.x reference format", "reference_metadata": context["metadata"]})
    model = GradiendModel(ours)
    if permutation is not None:
        weights["encoder_weight"] = weights["encoder_weight"][:, permutation]
        weights["decoder_weight"] = weights["decoder_weight"][permutation]
        if "decoder_bias" in weights:
            weights["decoder_bias"] = weights["decoder_bias"][permutation]
    with torch.no_grad():
        for name, value in weights.items():
            getattr(model, name).copy_(value)
    model.param_index = param_map.index_tensors()
    logger.info("Read reference GRADIEND %s: %d inputs over %d parameters, latent_dim %d", directory,
                arch.input_dim, len(param_map.specs), arch.latent_dim)
    return model


def load_reference_checkpoint(directory: str | os.PathLike, *, base_model: str | None = None,
                              device: torch.device | str | None = None, trust_remote_code: bool = False,
                              max_length: int = 256) -> ModelWithGradiend:
    """A reference checkpoint with its base model (`metadata.base_model`, or `base_model`) as our
    `ModelWithGradiend`; `save_pretrained` on it writes our format."""
    from gradiend.base_identity import base_model_fingerprint, resolve_base_model
    from gradiend.model_with_gradiend import ModelWithGradiend, load_model_for_objective
    from gradiend.params import ParamMap

    gradiend = read_reference_gradiend(directory, base_model=base_model)
    config = gradiend.config
    if config.base_model is None:
        raise ReferenceFormatError(f"Reference checkpoint {directory} does not name its base model "
                                   f"(metadata.base_model); pass base_model=")
    model, tokenizer, kind = load_model_for_objective(config.base_model, config.torch_dtype, trust_remote_code,
                                                      device, None)
    ParamMap.from_json(config.param_map, gradiend.param_index).check_against(model)
    config.objective = kind
    config.base_model_resolved = resolve_base_model(config.base_model)
    config.base_model_fingerprint = base_model_fingerprint(config.base_model)
    return ModelWithGradiend(model, tokenizer, gradiend, max_length=max_length)


def convert_reference_checkpoint(directory: str | os.PathLike, output_dir: str | os.PathLike, *,
                                 base_model: str | None = None, overwrite: bool = False) -> Path:
    """Write a reference checkpoint in our format (atomically) to `output_dir`; returns that path."""
    from gradiend.experiment import atomic_directory

    gradiend = read_reference_gradiend(directory, base_model=base_model)
    with atomic_directory(output_dir, overwrite=overwrite, kind="converted GRADIEND checkpoint") as tmp:
        gradiend.save_pretrained(tmp)
    return Path(output_dir)
