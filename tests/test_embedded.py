"""Tests of the embedded default masked LM (gradiend.embedded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gradiend.embedded import embedded_model_path

PRONOUNS = ("he", "she", "it", "they")

# (sentence with one [MASK], the pronoun that should win among he/she/it/they)
PROBES = [
    ("the children said that [MASK] were tired.", "they"),
    ("mary told her sister that [MASK] would come tomorrow.", "she"),
    ("the old man said that [MASK] was too tired to walk.", "he"),
    ("the box was heavy, so [MASK] stayed on the floor.", "it"),
]


def test_unknown_kind_lists_known_kinds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Unknown embedded model kind 'gpt'.*'mlm'"):
        embedded_model_path("gpt", cache_dir=tmp_path)
    assert not (tmp_path / "embedded").exists()


@pytest.fixture(scope="module")
def mlm_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    cache = tmp_path_factory.mktemp("gradiend-cache")
    return embedded_model_path("mlm", cache_dir=cache)


@pytest.mark.integration
def test_embedded_mlm_loads_and_predicts(mlm_path: str) -> None:
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
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
    before = os.stat(model_file).st_mtime_ns
    again = embedded_model_path("mlm", cache_dir=Path(mlm_path).parents[1])
    assert again == mlm_path
    assert os.stat(model_file).st_mtime_ns == before
    leftovers = [p.name for p in Path(mlm_path).parent.iterdir() if p.name.startswith(".")]
    assert not leftovers
