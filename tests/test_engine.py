"""Gradient engine and GRADIEND model on a tiny random BERT: exactness against naive computations; the
gradient source's cache policy and finiteness check on a stand-in engine."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForMaskedLM, AutoTokenizer

from gradiend.data import DataError
from gradiend.gradient_cache import GradientStore
from gradiend.gradient_source import GradientSource, check_finite
from gradiend.gradients import GradientEngine
from gradiend.model import GradiendConfig, GradiendModel
from gradiend.objectives import MaskedLMObjective
from gradiend.params import ParamMap

TEXTS = ["[MASK] walked to the house and was very tired .", "then [MASK] said that the sea was good .",
         "so [MASK] looked at the letter again ."]
FACTUAL = ["he", "she", "it"]
ALTERNATIVE = ["they", "they", "they"]


@pytest.fixture()
def engine(tiny_mlm_dir: str) -> GradientEngine:
    model = AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm_dir)
    return GradientEngine(model, MaskedLMObjective(tokenizer), ParamMap.select(model))


def _naive_gradient(engine: GradientEngine, text: str, token: str) -> torch.Tensor:
    """HF's own masked-LM loss, one example, plain .backward()."""
    tok = engine.objective.tokenizer
    model = engine.model
    enc = tok(text.replace("[MASK]", tok.mask_token), return_tensors="pt")
    labels = torch.full_like(enc["input_ids"], -100)
    labels[enc["input_ids"] == tok.mask_token_id] = tok.convert_tokens_to_ids(token)
    model.zero_grad(set_to_none=True)
    model(**enc, labels=labels).loss.backward()
    named = dict(model.named_parameters())
    return torch.cat([named[n].grad.reshape(-1) for n in engine.param_map.names])


def test_default_selection_is_backbone_without_heads(engine: GradientEngine) -> None:
    names = engine.param_map.names
    assert all(n.startswith("bert.") for n in names)
    assert "bert.embeddings.word_embeddings.weight" in names
    assert not any(n.startswith("cls.") for n in names)
    total = sum(p.numel() for n, p in engine.model.named_parameters() if n.startswith("bert."))
    assert engine.param_map.size == total


def test_wildcard_selection_and_unknown_pattern(engine: GradientEngine) -> None:
    pm = ParamMap.select(engine.model, ["encoder.layer.1.*"])
    assert pm.names and all(n.startswith("bert.encoder.layer.1.") for n in pm.names)
    with pytest.raises(ValueError, match="matches no parameter"):
        ParamMap.select(engine.model, ["decoder.layer.*"])


def test_batched_gradients_equal_naive_per_example_mean(engine: GradientEngine) -> None:
    got = engine.gradients(TEXTS, FACTUAL, ALTERNATIVE, ["factual", "alternative", "diff"])
    naive_f = torch.stack([_naive_gradient(engine, t, f) for t, f in zip(TEXTS, FACTUAL, strict=False)]).mean(0)
    naive_a = torch.stack([_naive_gradient(engine, t, a) for t, a in zip(TEXTS, ALTERNATIVE, strict=False)]).mean(0)
    torch.testing.assert_close(got["factual"], naive_f, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["alternative"], naive_a, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["diff"], naive_f - naive_a, rtol=1e-4, atol=1e-6)


def test_multi_piece_target_gets_one_mask_per_piece(engine: GradientEngine) -> None:
    tok = engine.objective.tokenizer
    inputs = engine.objective.encode(["[MASK] went home ."], ["he"])
    assert inputs.labels.tolist() == [tok.convert_tokens_to_ids("he")]
    two = engine.objective.encode(["[MASK] went home ."], ["the man"])
    assert two.labels.tolist() == tok("the man", add_special_tokens=False)["input_ids"]


def test_unknown_token_is_a_clear_error(engine: GradientEngine) -> None:
    with pytest.raises(DataError, match="not in the vocabulary"):
        engine.gradients(TEXTS[:1], ["zebra"], ["they"], ["diff"])


def test_forward_mode_encodings_equal_backward(engine: GradientEngine) -> None:
    directions = torch.randn(2, engine.param_map.size, generator=torch.Generator().manual_seed(0))
    for kind in ("factual", "alternative", "diff"):
        fwd = engine.directional(TEXTS, FACTUAL, ALTERNATIVE, kind, directions)
        bwd = engine.directional_backward(TEXTS, FACTUAL, ALTERNATIVE, kind, directions)
        torch.testing.assert_close(fwd, bwd, rtol=1e-4, atol=1e-5)


def _gradiend(n: int = 50, k: int = 1) -> GradiendModel:
    config = GradiendConfig(input_dim=n, latent_dim=k, param_map=[{"name": "w", "shape": [n]}],
                            feature_classes=["A", "B"], base_model="x")
    return GradiendModel(config, torch.Generator().manual_seed(0))


def test_init_scales_follow_input_dim() -> None:
    model = _gradiend(400)
    bound = 1 / 20
    assert model.encoder_weight.abs().max() <= bound
    assert model.decoder_weight.abs().max() <= model.encoder_weight.abs().max()


def test_flip_sign_negates_feature_and_keeps_reconstruction() -> None:
    model = _gradiend()
    x = torch.randn(3, 50)
    h, y = model(x)
    model.flip_sign()
    h2, y2 = model(x)
    torch.testing.assert_close(h2, -h)
    torch.testing.assert_close(y2, y)


def test_decode_is_in_raw_gradient_units() -> None:
    model = _gradiend()
    model.target_scale.fill_(1e-4)
    expected = (model.decoder_weight[:, 0] * 0.5 + model.decoder_bias) * 1e-4
    torch.testing.assert_close(model.decode(0.5), expected)


def test_save_load_is_bitwise_identical(tmp_path) -> None:
    model = _gradiend(k=2)
    model.input_scale.fill_(3.5)
    model.save_pretrained(tmp_path)
    loaded = GradiendModel.from_pretrained(tmp_path)
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=False):
        assert k1 == k2 and torch.equal(v1, v2)
    assert loaded.config == model.config
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_and_corrupt_checkpoint_files(tmp_path) -> None:
    model = _gradiend()
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        GradiendModel.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        GradiendModel.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    (tmp_path / "gradiend_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        GradiendModel.from_pretrained(tmp_path)
    (tmp_path / "gradiend_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"gradiend_config\.json"):
        GradiendModel.from_pretrained(tmp_path)


def test_weights_that_do_not_match_config(tmp_path) -> None:
    model = _gradiend()
    model.save_pretrained(tmp_path)
    save_file({"encoder_weight": torch.zeros(1, 7)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="do not match"):
        GradiendModel.from_pretrained(tmp_path)


class _CountingEngine:
    """Stands in for GradientEngine: one pass per call, gradients that depend on the texts."""

    def __init__(self) -> None:
        self.passes = 0

    def gradients(self, texts, factual, alternative, kinds, out):
        self.passes += 1
        for kind in kinds:
            out[kind].copy_(torch.arange(out[kind].numel(), dtype=torch.float32) * len(texts[0]))
        return out


def test_gradient_source_keep_serve_once_and_shared_policy() -> None:
    engine, store = _CountingEngine(), GradientStore("memory")
    source = GradientSource(engine, store)

    def fetch(text: str, keep: bool) -> torch.Tensor:
        out = {"diff": torch.empty(130)}
        return source.gradients(1, [text], ["he"], ["they"], out, keep=keep)["diff"].clone()

    first = fetch("a b", keep=False)
    assert engine.passes == 1 and store.summary()["entries"] == 0, "a batch that will not repeat is not stored"
    assert source.base_passes > 0
    torch.testing.assert_close(fetch("a b", keep=True), first)
    assert engine.passes == 2 and store.summary()["entries"] == 1
    torch.testing.assert_close(fetch("a b", keep=True), first)
    assert engine.passes == 2, "a kept batch is served from the store"
    torch.testing.assert_close(fetch("a b", keep=False), first)
    assert engine.passes == 2 and store.summary()["entries"] == 0, "served once, then dropped"
    store.shared = True  # a later run will use the store: keep every batch
    fetch("c d", keep=False)
    assert store.summary()["entries"] == 1
    uncached = GradientSource(engine)
    passes = engine.passes
    uncached.gradients(1, ["a b"], ["he"], ["they"], {"diff": torch.empty(130)}, keep=True)
    assert engine.passes == passes + 1


def test_gradient_source_rejects_non_finite_gradients_with_the_step() -> None:
    class Poisoned(_CountingEngine):
        def gradients(self, texts, factual, alternative, kinds, out):
            super().gradients(texts, factual, alternative, kinds, out)
            out[kinds[-1]][5] = float("inf")
            return out

    store = GradientStore("memory")
    source = GradientSource(Poisoned(), store)
    out = {"alternative": torch.empty(70), "diff": torch.empty(70)}
    with pytest.raises(FloatingPointError, match=r"Non-finite diff gradient at step 7 \(batch starting 'x y'\)"):
        source.gradients(7, ["x y"], ["he"], ["they"], out, keep=True)
    assert store.summary()["entries"] == 0, "a non-finite batch is never cached"
    check_finite(1, {"diff": torch.full((4,), 3e38)}, ["t"])  # a finite vector whose float sum overflows passes


def test_engines_sharing_one_base_model_each_get_their_own_gradients(engine: GradientEngine) -> None:
    """A second engine (another parameter map) on the same loaded model switches the flags; the first one's
    next call sets its own again instead of returning zeros for parameters that no longer require grad."""
    before = engine.gradients(TEXTS, FACTUAL, ALTERNATIVE, ["diff"])["diff"].clone()
    other = GradientEngine(engine.model, engine.objective, ParamMap.select(engine.model, ["encoder.layer.1.*"]))
    assert not engine.params[0].requires_grad  # the embeddings are not in the other map
    other.gradients(TEXTS, FACTUAL, ALTERNATIVE, ["diff"])
    again = engine.gradients(TEXTS, FACTUAL, ALTERNATIVE, ["diff"])["diff"]
    assert bool(before.abs().sum() > 0)
    torch.testing.assert_close(again, before, rtol=1e-5, atol=1e-7)
