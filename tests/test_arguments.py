"""TrainingArguments: validation and lossless round-trips."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from gradiend import PostPruneConfig, PrePruneConfig, TrainingArguments


def _non_default_args() -> TrainingArguments:
    """Every field set to a value different from its default."""
    return TrainingArguments(
        experiment_dir="runs/x", output_dir="runs/x/out", use_cache="only_convergent", source="factual",
        target="alternative", params=["bert.encoder.layer.0.*"], latent_dim=2, activation_encoder="hardtanh",
        bias_decoder=False, torch_dtype=torch.bfloat16, normalize_gradiend=False, standardize_gradients=False,
        scale_estimation_batches=2, add_identity_for_other_classes=True, train_batch_size=4,
        gradiend_batch_size=2, train_max_size=50, learning_rate=5e-4, weight_decay=0.0, adam_epsilon=1e-6,
        optim="adam", num_train_epochs=7, max_steps=11, seed=3, max_length=64, objective="clm",
        min_left_context_tokens=5, do_eval=False, eval_steps=3,
        eval_batch_size=8, encoder_eval_train_max_size=9, encoder_eval_max_size=10, save_only_best=False,
        convergent_score_threshold=0.7, convergent_mean_by_class_threshold=0.4, fail_on_non_convergence=True,
        max_seeds=4, min_convergent_seeds=2, seed_selection_eval_max_size=12, saved_seed_runs="all_tried",
        convergent_metric="loss", seed_runs_dir="runs/seeds", keep_seed_runs=True, data_seed=5,
        gradient_cache="disk", gradient_cache_max_gb=1.0, gradient_cache_dtype="bfloat16",
        pre_prune_config=PrePruneConfig(n_samples=4, topk=0.2),
        post_prune_config=PostPruneConfig(topk=100, inplace=False),
        decoder_eval_lrs=[1.0, 0.1], decoder_eval_feature_factors=[-1.0], decoder_eval_max_size_training_like=13,
        decoder_eval_max_size_neutral=14, trust_remote_code=True, show_progress=False, metadata={"a": [1, 2]})


def test_every_field_differs_from_default_in_fixture() -> None:
    args, default = _non_default_args(), TrainingArguments()
    same = [f.name for f in dataclasses.fields(args)
            if f.name != "num_epochs" and getattr(args, f.name) == getattr(default, f.name)]
    assert same == []


def test_round_trip_every_field_through_json() -> None:
    args = _non_default_args()
    restored = TrainingArguments.from_dict(json.loads(json.dumps(args.to_dict())))
    for f in dataclasses.fields(args):
        assert getattr(restored, f.name) == getattr(args, f.name), f.name
    assert restored.dtype is torch.bfloat16
    assert isinstance(restored.pre_prune_config, PrePruneConfig)
    assert restored == args


def test_num_epochs_alias_and_max_steps_stored() -> None:
    args = TrainingArguments(num_epochs=10)
    assert args.num_train_epochs == 10 and args.num_epochs is None
    assert TrainingArguments(max_steps=5).max_steps == 5


@pytest.mark.parametrize("kwargs, message", [
    ({"train_batch_size": 0}, "train_batch_size"),
    ({"max_steps": 0}, "max_steps"),
    ({"max_steps": -5}, "max_steps"),
    ({"learning_rate": -1.0}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"source": "counterfactual"}, "source"),
    ({"eval_steps": 0}, "eval_steps"),
    ({"encoder_eval_max_size": -3}, "encoder_eval_max_size"),
    ({"torch_dtype": "int8"}, "torch_dtype"),
    ({"use_cache": "sometimes"}, "use_cache"),
    ({"min_convergent_seeds": 3, "max_seeds": 2}, "min_convergent_seeds"),
    ({"params": []}, "params"),
    ({"seed": 1.5}, "seed"),
    ({"objective": "seq2seq"}, "objective"),
    ({"min_left_context_tokens": 0}, "min_left_context_tokens"),
])
def test_invalid_values_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingArguments(**kwargs)


def test_unknown_keys_are_errors_not_silently_dropped() -> None:
    with pytest.raises(ValueError, match="num_epoch"):
        TrainingArguments.from_dict({"num_epoch": 3})
    with pytest.raises(ValueError, match="bogus"):
        TrainingArguments().replace(bogus=1)


def test_replace_validates() -> None:
    with pytest.raises(ValueError, match="train_batch_size"):
        TrainingArguments().replace(train_batch_size=-1)
    assert TrainingArguments().replace(max_steps=3).max_steps == 3


def test_prune_config_validation() -> None:
    with pytest.raises(ValueError, match="topk"):
        PrePruneConfig(topk=1.5)
    with pytest.raises(ValueError, match="part"):
        PostPruneConfig(part="everything")
