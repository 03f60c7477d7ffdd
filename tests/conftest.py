"""Fixtures: tiny random-config BERT models with a locally built tokenizer (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

WORDS = ("he she it they him her them his their the a an of and to in was were is are had have "
         "said that not be at by for with on as so but very much more tired happy went home "
         "house man woman children people sea ship whale day night time little great good old "
         "young walked talked saw knew thought felt looked came left room door letter friend "
         "mother father sister brother quite never always again soon there here then when . , ;").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

SENTENCES_3SG = [
    "[MASK] walked to the house and was very tired .",
    "then [MASK] said that the sea was good .",
    "when [MASK] saw the ship , the day was old .",
    "so [MASK] looked at the letter again .",
    "[MASK] was happy when the night came .",
    "at home [MASK] thought of the little friend .",
]
SENTENCES_3PL = [
    "[MASK] walked to the house and were very tired .",
    "then [MASK] said that the sea was good .",
    "when [MASK] saw the ship , the people were old .",
    "so [MASK] looked at the letters again .",
    "[MASK] were happy when the night came .",
    "at home [MASK] thought of their little friend .",
]


def make_tokenizer(directory: Path) -> BertTokenizerFast:
    directory.mkdir(parents=True, exist_ok=True)
    tokens = SPECIAL + list(dict.fromkeys(WORDS))
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")  # transformers 4.56 and 5
    return BertTokenizerFast.from_pretrained(str(directory), do_lower_case=True)


@pytest.fixture(scope="session")
def tiny_mlm_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A saved random 2-layer BERT MLM (hidden 32) plus tokenizer."""
    directory = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = make_tokenizer(directory)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    model = BertForMaskedLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def make_rows(repeat: int = 4) -> pd.DataFrame:
    """Merged-format data (3SG/3PL) with all three splits."""
    rows = []
    tokens_sg = ["he", "she", "it"]
    for r in range(repeat):
        for split in ("train", "validation", "test"):
            for i, text in enumerate(SENTENCES_3SG):
                rows.append({"masked": text, "split": split, "label_class": "3SG",
                             "label": tokens_sg[(i + r) % 3]})
            for text in SENTENCES_3PL:
                rows.append({"masked": text, "split": split, "label_class": "3PL", "label": "they"})
    return pd.DataFrame(rows)


@pytest.fixture()
def tiny_rows() -> pd.DataFrame:
    return make_rows()


def count_gradient_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch `GradientEngine.gradients` to record each base-model gradient pass; returns the record."""
    from gradiend.gradients import GradientEngine

    calls: list[int] = []
    original = GradientEngine.gradients

    def counting(self, *a, **kw):
        calls.append(1)
        return original(self, *a, **kw)

    monkeypatch.setattr(GradientEngine, "gradients", counting)
    return calls
