"""`ShardedModelWithGradiend` in one process (the whole slice on the only rank) and the settings around it; the
two-process behaviour is in `tests/test_distributed.py` (`trainer_host`, `cli_shard`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_rows

from gradiend import TrainingArguments, distributed
from gradiend.arguments import PostPruneConfig
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.sharded_model import ShardedModelWithGradiend, holds_slices, load_shard, load_sharded
from gradiend.sharding import Shard

TEXTS = ["the man said [MASK] was happy .", "the girls said [MASK] were happy ."]
FACTUAL, ALTERNATIVE = ["he", "they"], ["they", "he"]


@pytest.fixture()
def trained(tiny_mlm_dir: str) -> ModelWithGradiend:
    model = ModelWithGradiend.create(tiny_mlm_dir, feature_classes=["3SG", "3PL"], seed=0,
                                     params=["encoder.layer.1.*"])
    with torch.no_grad():
        model.gradiend.decoder_weight.normal_(generator=torch.Generator().manual_seed(1))
    return model


def test_sharded_final_weights_needs_shard_gradiend() -> None:
    assert TrainingArguments().sharded_final_weights == "rank0_host"
    assert TrainingArguments(shard_gradiend=True, sharded_final_weights="every_rank").shard_gradiend
    with pytest.raises(ValueError, match="shard_gradiend is off; set shard_gradiend=True"):
        TrainingArguments(sharded_final_weights="every_rank")
    with pytest.raises(ValueError, match="sharded_final_weights must be one of"):
        TrainingArguments(shard_gradiend=True, sharded_final_weights="everywhere")


def test_one_process_never_holds_slices() -> None:
    assert not holds_slices(TrainingArguments(shard_gradiend=True))


def test_in_one_process_the_sharded_model_encodes_decodes_and_saves_as_the_whole(trained, tmp_path) -> None:
    """One rank holds the one slice: encodings, decoded updates, rewrites and the saved checkpoint equal the
    whole model's, and a checkpoint read slice-wise gives the same model back."""
    reference = {k: v.clone() for k, v in trained.gradiend.state_dict().items()}
    expected = trained.encode(TEXTS, FACTUAL, ALTERNATIVE)
    factual = trained.encode(TEXTS, FACTUAL, kind="factual")
    update = trained.update_vector(-1.0)
    name = trained.param_map.names[0]
    rewritten = dict(trained.rewrite_base_model(0.5, -1.0).named_parameters())[name]
    sharded = ShardedModelWithGradiend(trained, Shard(trained.gradiend))  # the shard releases the whole weights
    assert sharded.config is trained.config and sharded.gradiend is sharded.shard.full
    assert trained.gradiend.encoder_weight.numel() == 0  # released by the shard (one rank: its slice is all)
    np.testing.assert_allclose(sharded.encode(TEXTS, FACTUAL, ALTERNATIVE), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sharded.encode(TEXTS, FACTUAL, kind="factual"), factual, rtol=1e-5, atol=1e-7)
    assert torch.equal(sharded.update_vector(-1.0), update)
    assert torch.equal(dict(sharded.rewrite_base_model(0.5, -1.0).named_parameters())[name], rewritten)
    sharded.shard.restore(reference, device=torch.device("cpu"))  # rank 0's host copy, as `Shard.finish` leaves it
    sharded.save_pretrained(tmp_path / "saved")
    shard = load_shard(tmp_path / "saved", "cpu")
    for key, value in reference.items():
        assert torch.equal(shard.module.state_dict()[key], value), key
        assert torch.equal(shard.full.state_dict()[key], value), key
    again = load_sharded(tmp_path / "saved", trained.base_model, trained.tokenizer)
    np.testing.assert_allclose(again.encode(TEXTS, FACTUAL, ALTERNATIVE), expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="cannot be pruned in place"):
        sharded.prune(torch.ones(sharded.param_map.size, dtype=torch.bool))


def test_another_rank_has_no_whole_gradiend(trained, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(distributed, "_current", distributed.Context(rank=1, world_size=2))
    sharded = ShardedModelWithGradiend(trained, Shard.__new__(Shard))  # only the rank is read when built
    sharded.shard.full = trained.gradiend
    with pytest.raises(RuntimeError, match=r"rank 1 of 2 holds only its slice .* read the whole weights on rank 0"):
        _ = sharded.gradiend
    assert sharded.config is trained.config
    with pytest.raises(RuntimeError, match="push from rank 0"):
        sharded.push_to_hub("someone/gradiend")
    sharded.save_pretrained(tmp_path / "never-written")  # nothing to write on this rank
    assert not (tmp_path / "never-written").exists()


def test_post_pruning_is_refused_where_the_ranks_keep_slices(trained, monkeypatch) -> None:
    from gradiend.runs import prepare_run

    args = TrainingArguments(shard_gradiend=True, post_prune_config=PostPruneConfig(topk=10))
    monkeypatch.setattr(distributed, "_current", distributed.Context(rank=0, world_size=2))
    with pytest.raises(ValueError, match="post_prune_config needs the whole trained GRADIEND on every rank"):
        prepare_run(trained, args, make_rows(), ("3SG", "3PL"), "tiny", "key")
