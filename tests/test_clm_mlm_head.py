"""The clm_mlm_head objective: a slot head on a frozen causal LM, for features decided right of the slot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from gradiend import TrainingArguments
from gradiend.data import DataError, unify
from gradiend.decoder_eval import DecoderRequest, evaluate_decoder
from gradiend.mlm_head import HEAD_FILE, HeadSettings, head_training_rows
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.objectives import UNIFORM_TARGET, CausalMLMHeadObjective
from gradiend.training import train_gradiend

EOS = "<|endoftext|>"
FILLER = "the a of and to in was were is are had said that not be at for with on as so but very".split()
CUES = {"M": ["man", "father", "brother", "boy"], "F": ["woman", "mother", "sister", "girl"]}
TARGETS = {"M": "he", "F": "she"}
SHARED_ALTERNATIVE = "it"
WORDS = FILLER + [w for ws in CUES.values() for w in ws] + ["he", "she", "it", "they", "went", "home", "."]
PAIR = ("M", "F")
FAST_HEAD = HeadSettings(epochs=30, batch_size=16, learning_rate=1e-2, seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tiny models run fastest on one thread (many threads on a busy machine cost 20x); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tiny random GPT-2 whose byte-level BPE has every test word (after a space) as one token."""
    directory = tmp_path_factory.mktemp("tiny_gpt2_head")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(WORDS + [f"x {w}" for w in WORDS], vocab_size=600, min_frequency=1,
                            special_tokens=[EOS], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS, bos_token=EOS, unk_token=EOS)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                       bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


def right_context_rows(n_per_class: int = 48, seed: int = 0) -> pd.DataFrame:
    """`raw_right_context_rows` as unified rows."""
    return unify(raw_right_context_rows(n_per_class, seed), PAIR)[0]


def raw_right_context_rows(n_per_class: int = 48, seed: int = 0) -> pd.DataFrame:
    """Rows whose class is decided only by the word right after the slot: random left context shared by both
    classes, the cue noun, more filler. Both classes have the same alternative word ("it"), so the source
    gradient (alternative) differs between the classes only through what the objective sees of the context."""
    rng = np.random.default_rng(seed)
    rows = []
    for cls in PAIR:
        for i in range(n_per_class):
            left = " ".join(rng.choice(FILLER, size=4))
            right = " ".join(rng.choice(FILLER, size=3))
            split = "train" if i % 4 < 2 else ("validation" if i % 4 == 2 else "test")
            rows.append({"masked": f"{left} [MASK] {rng.choice(CUES[cls])} {right} .", "split": split,
                         "label_class": cls, "label": TARGETS[cls], "alternative": SHARED_ALTERNATIVE,
                         "alternative_class": PAIR[1] if cls == PAIR[0] else PAIR[0]})
    return pd.DataFrame(rows)


def args(**overrides) -> TrainingArguments:
    base = dict(max_steps=16, train_batch_size=8, eval_steps=4, learning_rate=1e-4, seed=0, show_progress=False,
                max_seeds=1, source="alternative", target="diff")
    return TrainingArguments(**{**base, **overrides})


def head_model(gpt2_dir: str, rows: pd.DataFrame, settings: HeadSettings = FAST_HEAD) -> ModelWithGradiend:
    model = ModelWithGradiend.create(gpt2_dir, objective="clm_mlm_head", feature_classes=PAIR, device="cpu",
                                     objective_options={"min_left_context_tokens": 3})
    texts = rows.loc[rows["split"] == "train", "masked"].tolist()
    words = rows.loc[rows["split"] == "train", "factual"].tolist()
    model.objective.fit(model.base_model, texts, words, settings)
    model.gradiend.config.objective_options = model.objective.options_json()
    model.gradiend.objective_tensors = model.objective.head_tensors()
    return model


def trained(model: ModelWithGradiend, rows: pd.DataFrame, training: TrainingArguments) -> ModelWithGradiend:
    outcome = train_gradiend(model, rows[rows["split"] == "train"], rows[rows["split"] == "validation"], PAIR,
                             training)
    model.gradiend.load_state_dict(outcome.state)
    return model


def test_correlation(model: ModelWithGradiend, rows: pd.DataFrame) -> float:
    part = rows[rows["split"] == "test"]
    h = model.encode(part["masked"].tolist(), part["factual"].tolist(), part["alternative"].tolist())[:, 0]
    if np.ptp(h) == 0:
        return 0.0  # one value for every row separates nothing
    return float(np.corrcoef(h, np.where(part["factual_class"] == PAIR[0], 1.0, -1.0))[0, 1])


test_correlation.__test__ = False  # a helper, not a test


# -- the objective ---------------------------------------------------------------------------------------------
def test_a_masked_lm_is_refused_with_the_fix(tiny_mlm_dir: str) -> None:
    with pytest.raises(ValueError, match=r"objective='clm_mlm_head' needs a causal LM.*use objective='mlm'"):
        ModelWithGradiend.create(tiny_mlm_dir, objective="clm_mlm_head", device="cpu")


def test_slot_inputs_hold_the_placeholder_and_the_pooling_window(gpt2_dir: str) -> None:
    rows = right_context_rows(8)
    model = head_model(gpt2_dir, rows, HeadSettings(epochs=1, pooling_length=3))
    obj = model.objective
    assert isinstance(obj, CausalMLMHeadObjective) and obj.head_config.placeholder == EOS  # GPT-2: no mask token
    assert obj.head_config.classes == ["he", "she"]
    tok = obj.tokenizer
    inputs = obj.encode(["the a of [MASK] man and to in . [MASK] so"], ["she"])
    ids = inputs.tensors["input_ids"][0].tolist()
    # left context, the placeholder, then the two tokens the window needs (the rest cannot change it)
    assert ids == tok("the a of", add_special_tokens=False)["input_ids"] + [tok.eos_token_id] + tok(
        " man and", add_special_tokens=False)["input_ids"]
    assert inputs.positions.tolist() == [3, 4, 5] and inputs.rows.tolist() == [0, 0, 0]
    assert inputs.labels.tolist() == [1, 1, 1]
    assert obj.encode(["the a of [MASK] man"], ["they"]).labels.tolist() == [UNIFORM_TARGET] * 2
    short = obj.slot_inputs(["the a of [MASK] man", "the a of and to [MASK] boy ."])
    # row 0: slot 3 and the one token after it; row 1 (padded width 8) starts at 8: slot 5 and two more
    assert short.positions.tolist() == [3, 4, 13, 14, 15] and short.rows.tolist() == [0, 0, 1, 1, 1]
    with pytest.raises(DataError, match="min_left_context_tokens"):
        obj.encode(["the [MASK] man"], ["he"])


def test_placeholder_must_be_one_token_and_the_head_must_be_trained(gpt2_dir: str) -> None:
    model = ModelWithGradiend.create(gpt2_dir, objective="clm_mlm_head", device="cpu")
    with pytest.raises(ValueError, match=r"head is not trained yet.*fit_objective"):
        model.objective.encode(["the a of [MASK] man"], ["he"])
    with pytest.raises(ValueError, match="placeholder 'he she' is 2 tokens"):
        model.objective.fit(model.base_model, ["the a of [MASK] man"] * 2, ["he", "she"],
                            HeadSettings(placeholder="he she"))
    with pytest.raises(DataError, match="at least two distinct target words"):
        model.objective.fit(model.base_model, ["the a of [MASK] man"] * 2, ["he", "he"], HeadSettings())
    with pytest.raises(ValueError, match="learning_rate must be a positive finite"):
        HeadSettings(learning_rate=float("nan"))


def test_forward_mode_encodings_match_backward_gradients(gpt2_dir: str) -> None:
    rows = right_context_rows(8)
    model = head_model(gpt2_dir, rows)
    texts, factual = rows["masked"].tolist()[:6], rows["factual"].tolist()[:6]
    alternative = ["they"] * 3 + rows["alternative"].tolist()[3:6]  # "they": none of the head's words
    directions = torch.randn(2, model.param_map.size, generator=torch.Generator().manual_seed(1))
    for kind in ("factual", "alternative", "diff"):
        forward = model.engine.directional(texts, factual, alternative, kind, directions)
        backward = model.engine.directional_backward(texts, factual, alternative, kind, directions)
        torch.testing.assert_close(forward, backward, rtol=1e-4, atol=1e-6)


# -- what the head is for --------------------------------------------------------------------------------------
def test_the_head_learns_a_feature_that_only_the_right_context_decides(gpt2_dir: str) -> None:
    rows = right_context_rows()
    head = trained(head_model(gpt2_dir, rows), rows, args())
    assert head.objective.head_config.training["train_accuracy"] == 1.0
    clm = trained(ModelWithGradiend.create(gpt2_dir, objective="clm", feature_classes=PAIR, device="cpu"), rows,
                  args())
    head_corr, clm_corr = test_correlation(head, rows), test_correlation(clm, rows)
    # the causal LM sees only the shared left context and the shared alternative word: nothing to separate
    # (measured: head 0.80, clm -0.02 on the 24 test rows)
    assert head_corr > 0.6 and head_corr - abs(clm_corr) > 0.4, (head_corr, clm_corr)


def test_end_to_end_and_the_head_reloads_bitwise(gpt2_dir: str, tmp_path) -> None:
    rows = right_context_rows()
    training = args(decoder_mlm_head_pooling_length=2)
    model = ModelWithGradiend.create(gpt2_dir, objective="clm_mlm_head", feature_classes=PAIR, device="cpu",
                                     objective_options={"min_left_context_tokens": 3})
    model.fit_objective(rows, PAIR, training.replace(decoder_mlm_head_epochs=30, decoder_mlm_head_lr=1e-2,
                                                     decoder_mlm_head_batch_size=16, decoder_mlm_head_max_size=20))
    record = model.objective.head_config.training
    assert model.objective.head_config.pooling_length == 2
    assert (record["epochs"], record["learning_rate"], record["batch_size"]) == (30, 1e-2, 16)
    assert record["n_rows"] == 40 and record["train_accuracy"] == 1.0  # 24 training rows per word, capped at 20
    model = trained(model, rows, training)
    model.save_pretrained(tmp_path / "model")
    saved = load_file(str(tmp_path / "model" / HEAD_FILE))
    assert set(saved) == {"weight", "bias"}

    loaded = ModelWithGradiend.from_pretrained(tmp_path / "model", device="cpu")
    assert loaded.config.objective == "clm_mlm_head"
    assert loaded.objective.head_config == model.objective.head_config
    for name, value in model.objective.head_tensors().items():
        assert torch.equal(loaded.objective.head_tensors()[name], value)
    part = rows[rows["split"] == "test"]
    encode = (part["masked"].tolist(), part["factual"].tolist(), part["alternative"].tolist())
    np.testing.assert_array_equal(loaded.encode(*encode), model.encode(*encode))
    seed_copy = model.with_new_gradiend(1)
    assert torch.equal(seed_copy.gradiend.objective_tensors["weight"], model.gradiend.objective_tensors["weight"])

    # decoder grid: scored by the causal LM's own next-token head (probabilities of "he"/"she" after the prefix)
    result = evaluate_decoder(loaded, rows, PAIR, DecoderRequest(["M"], learning_rates=[1e-1, 1e-2], search="grid",
                                                                 show_progress=False))
    grid = result["grid"]
    assert len(grid) == 3 and all(np.isfinite(r["lms"]) for r in grid)  # the base model plus two candidates
    assert len({round(r["lms"], 9) for r in grid}) > 1  # the rewrites change the causal LM's predictions
    rewritten = loaded.rewrite_base_model(learning_rate=1e-1, feature_factor=1.0)
    name = loaded.param_map.names[0]
    before = dict(loaded.base_model.named_parameters())[name]
    assert not torch.equal(dict(rewritten.named_parameters())[name], before)


def test_a_checkpoint_without_its_head_weights_is_refused(gpt2_dir: str, tmp_path) -> None:
    rows = right_context_rows(8)
    model = head_model(gpt2_dir, rows, HeadSettings(epochs=1))
    model.gradiend = model.gradiend.__class__(model.gradiend.config, torch.Generator().manual_seed(0))
    model.gradiend.objective_tensors = model.objective.head_tensors()
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / HEAD_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"mlm_head\.safetensors.*clm_mlm_head"):
        ModelWithGradiend.from_pretrained(tmp_path / "model", device="cpu")


def test_head_rows_are_the_pairs_training_rows_capped_per_word(gpt2_dir: str) -> None:
    rows = right_context_rows(16)
    objective = ModelWithGradiend.create(gpt2_dir, objective="clm_mlm_head", device="cpu").objective
    texts, words = head_training_rows(rows, PAIR, objective, HeadSettings())
    train = rows[rows["split"] == "train"]
    assert sorted(texts) == sorted(train["masked"]) and sorted(words) == sorted(train["factual"])
    texts, words = head_training_rows(rows, PAIR, objective, HeadSettings(max_size=3, seed=1))
    assert sorted(words) == ["he"] * 3 + ["she"] * 3 and set(texts) <= set(train["masked"])
    assert head_training_rows(rows, PAIR, objective, HeadSettings(max_size=3, seed=1)) == (texts, words)


def test_left_padding_gives_the_same_losses(gpt2_dir: str) -> None:
    rows = right_context_rows(8)
    model = head_model(gpt2_dir, rows, HeadSettings(epochs=2))
    right = model.objective
    options = {**right.options_json(), "padding_side": "left"}
    left = CausalMLMHeadObjective(right.tokenizer, right.max_length, head_tensors=right.head_tensors(), **options)
    texts = ["the a of [MASK] man", "the a of and to in [MASK] girl so very ."]  # different lengths: padding
    words = ["he", "they"]
    with torch.no_grad():
        expected = right.row_losses(model.base_model, right.encode(texts, words), [right.encode(texts, words).labels])
        got = left.row_losses(model.base_model, left.encode(texts, words), [left.encode(texts, words).labels])
    assert left.encode(texts, words).tensors["attention_mask"][0, 0] == 0  # really padded on the left
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-6)


def test_the_trainer_trains_the_head_once_and_shares_it(gpt2_dir: str, tmp_path) -> None:
    """TextPredictionTrainer(objective='clm_mlm_head'): the head is fitted before training, saved with the
    GRADIEND, used by the encoder evaluation, and staged for the Hub."""
    from gradiend import TextPredictionTrainer
    from gradiend.hub import stage_for_hub

    training = args(objective="clm_mlm_head", experiment_dir=str(tmp_path / "exp"), min_left_context_tokens=3,
                    decoder_mlm_head_epochs=30, decoder_mlm_head_lr=1e-2, decoder_mlm_head_batch_size=16)
    trainer = TextPredictionTrainer(model=gpt2_dir, data=raw_right_context_rows(), target_classes=list(PAIR),
                                    args=training)
    trainer.train()
    head = load_file(str(tmp_path / "exp" / "model" / HEAD_FILE))
    assert head and all(torch.isfinite(t).all() for t in head.values())
    assert trainer.get_model().gradiend.config.objective_options["head"]["classes"] == ["he", "she"]
    assert trainer.evaluate_encoder()["correlation"] > 0.5
    decoder = trainer.evaluate_decoder(target_class="M", lrs=[1e-3, 1e-2])
    out = trainer.rewrite_base_model(decoder_results=decoder, target_class="M", output_dir=str(tmp_path / "rw"))
    card = (tmp_path / "rw" / "README.md").read_text()
    assert "AutoModelForCausalLM" in card and "pipeline_tag: text-generation" in card and out
    staged = stage_for_hub(tmp_path / "exp", tmp_path / "staged", "someone/head")
    assert (staged / HEAD_FILE).read_bytes() == (tmp_path / "exp" / "model" / HEAD_FILE).read_bytes()
