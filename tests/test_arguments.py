"""TrainingArguments: validation and lossless round-trips."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from gradiend import PostPruneConfig, PrePruneConfig, TrainingArguments, arguments
from gradiend.arguments import OptimizationArgs, SeedArgs


def _non_default_args() -> TrainingArguments:
    """Every field set to a value different from its default."""
    return TrainingArguments(
        experiment_dir="runs/x", output_dir="runs/x/out", use_cache="only_convergent", overwrite_output_dir=True,
        save_steps=7, resume_from_checkpoint=False, source="factual",
        target="alternative", params=["bert.encoder.layer.0.*"], latent_dim=2, activation_encoder="hardtanh",
        bias_decoder=False, torch_dtype=torch.bfloat16, normalize_gradiend=False, calibrate_encoder=False,
        decoder_fit="trained",
        standardize_gradients=False,
        scale_estimation_batches=2, train_batch_size=4,
        gradiend_batch_size=2, train_max_size=50, learning_rate=5e-4, weight_decay=0.0, adam_epsilon=1e-6,
        optim="adam", num_train_epochs=7, max_steps=11, seed=3, max_length=64, objective="clm",
        min_left_context_tokens=5, decoder_mlm_head_pooling_length=2, decoder_mlm_head_placeholder="<|endoftext|>",
        do_eval=False, eval_steps=3,
        eval_batch_size=8, encoder_eval_train_max_size=9, encoder_eval_max_size=10, include_other_classes=True,
        convergent_score_threshold=0.7, convergent_mean_by_class_threshold=0.4, fail_on_non_convergence=True,
        max_seeds=4, min_convergent_seeds=2, seed_selection_eval_max_size=12, saved_seed_runs="all_tried",
        convergent_metric="loss", seed_runs_dir="runs/seeds", keep_seed_runs=True, data_seed=5,
        gradient_cache="disk", gradient_cache_max_gb=1.0, gradient_cache_dtype="bfloat16",
        pre_prune_config=PrePruneConfig(n_samples=4, topk=0.2),
        post_prune_config=PostPruneConfig(topk=100, inplace=False),
        decoder_eval_lrs=[1.0, 0.1], decoder_eval_feature_factors=[-1.0], decoder_eval_max_size_training_like=13,
        decoder_eval_max_size_neutral=14, trust_remote_code=True, show_progress=False, metadata={"a": [1, 2]},
        gradiend_dtype="bfloat16", device="cpu", shard_gradiend=True, sharded_final_weights="every_rank",
        overlap_step=False, distributed_timeout=60.0,
        seed_stability_topk=128, seed_stability_part="decoder-weight", analyze_seed_stability=True,
        supervised_encoder=True, supervised_decoder=True,
        highlight_non_convergence=False, positive_class="3PL",
        base_gradient_batch_size=4, precompute_gradient_batches=False, base_model_device_map=False,
        eval_strategy="no", dataset_trust_remote_code=True, prediction_objective="clm_next_token",
        mask_placeholder="[PRONOUN]", activation_decoder="id", use_cached_gradients=True, decoder_mlm_head_epochs=2,
        decoder_mlm_head_batch_size=8, decoder_mlm_head_lr=1e-3, decoder_mlm_head_max_size=100)


def _refused_otherwise(f: dataclasses.Field) -> bool:
    """A reference-only field accepted at its default value alone."""
    return "instead" in f.metadata and f.metadata["only"] is None


def test_every_field_differs_from_default_in_fixture() -> None:
    args, default = _non_default_args(), TrainingArguments()
    # num_epochs moves into num_train_epochs; reuse_pre_prune=False is refused with the fixture's pre-pruning
    same = [f.name for f in dataclasses.fields(args) if f.name not in ("num_epochs", "reuse_pre_prune")
            and not _refused_otherwise(f)
            and getattr(args, f.name) == getattr(default, f.name)]
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


# -- sections, metadata and generic validation ------------------------------------------------------------------
FLAT_KEYS = [  # training.json stores `to_dict()`: these keys, in this order
    "experiment_dir", "output_dir", "use_cache", "overwrite_output_dir", "save_steps", "resume_from_checkpoint",
    "source", "target", "params", "latent_dim", "activation_encoder",
    "bias_decoder", "torch_dtype", "normalize_gradiend", "calibrate_encoder", "decoder_fit",
    "standardize_gradients",
    "scale_estimation_batches",
    "add_identity_for_other_classes", "train_batch_size", "gradiend_batch_size", "train_max_size", "learning_rate",
    "weight_decay", "adam_epsilon", "optim", "num_train_epochs", "num_epochs", "max_steps", "seed", "max_length",
    "objective", "min_left_context_tokens", "do_eval", "eval_steps", "eval_batch_size",
    "encoder_eval_train_max_size", "encoder_eval_max_size", "save_only_best", "convergent_score_threshold",
    "convergent_mean_by_class_threshold", "fail_on_non_convergence", "max_seeds", "min_convergent_seeds",
    "convergent_metric", "seed_selection_eval_max_size", "seed_runs_dir", "keep_seed_runs", "saved_seed_runs",
    "data_seed", "gradient_cache", "gradient_cache_max_gb", "gradient_cache_dtype", "pre_prune_config",
    "post_prune_config", "decoder_eval_lrs", "decoder_eval_feature_factors", "decoder_eval_max_size_training_like",
    "decoder_eval_max_size_neutral", "trust_remote_code", "show_progress", "metadata"]
REFERENCE_KEYS = [  # ReferenceArgs, the reference's names that were missing
    "base_gradient_batch_size", "precompute_gradient_batches", "precompute_gradient_buffer_size",
    "gradient_timing_steps", "runtime_monitor", "runtime_monitor_interval", "runtime_monitor_system_stats",
    "lr_search_config", "criterion", "eval_strategy", "encoder_eval_balance", "evaluate_fn", "save_strategy",
    "delete_models", "dataset_trust_remote_code", "model_use_cache", "prediction_objective", "mask_placeholder",
    "decoder_mlm_head_epochs", "decoder_mlm_head_batch_size", "decoder_mlm_head_lr", "decoder_mlm_head_max_size",
    "decoder_sequence_cloze_rhs_window", "activation_decoder", "base_model_device_map", "base_model_max_memory",
    "encoder_decoder_same_device", "split_resplit_per_seed", "split_resplit_strategy",
    "supervised_encoder", "supervised_decoder", "use_cached_gradients", "positive_class", "reuse_pre_prune"]


def test_flat_keys_and_sections_partition_the_fields() -> None:
    keys = list(TrainingArguments().to_dict())
    assert keys == TrainingArguments.field_names()
    assert [k for k in keys if k in FLAT_KEYS] == FLAT_KEYS  # the original keys keep their order
    assert keys[-len(REFERENCE_KEYS):] == REFERENCE_KEYS  # reference spellings come last
    sections = TrainingArguments.sections()
    in_sections = [name for section in sections.values() for name in section.field_names()]
    assert in_sections == keys  # every field in exactly one section, in field order
    assert all(section.__doc__ and section.__doc__.strip() for section in sections.values())


def test_every_field_has_help_and_known_rules() -> None:
    for cls in (TrainingArguments, PrePruneConfig, PostPruneConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help", "").strip(), f"{cls.__name__}.{f.name}"
            assert set(f.metadata) <= {"help", "unused", "instead", "only", *arguments.RULES}, f.name
            assert "instead" not in f.metadata or f.metadata["instead"].strip(), f.name
    unused = sorted(f.name for f in dataclasses.fields(TrainingArguments) if f.metadata["unused"])
    assert unused == ["add_identity_for_other_classes", "save_only_best"]


def test_section_views_are_typed_copies() -> None:
    args = TrainingArguments(learning_rate=5e-4, max_steps=7, max_seeds=3, decoder_eval_lrs=[1.0],
                             pre_prune_config={"topk": 0.2})
    opt = args.optimization
    assert isinstance(opt, OptimizationArgs) and opt.learning_rate == 5e-4 and opt.max_steps == 7
    assert isinstance(args.seeds, SeedArgs) and args.seeds.max_seeds == 3
    assert args.pruning.pre_prune_config == PrePruneConfig(topk=0.2)
    args.decoder_eval.decoder_eval_lrs.append(2.0)  # a copy: the arguments do not change
    assert args.decoder_eval_lrs == [1.0]
    assert OptimizationArgs(learning_rate=1e-2).to_dict()["learning_rate"] == 1e-2  # usable on its own
    with pytest.raises(ValueError, match="max_steps"):
        OptimizationArgs(max_steps=0)
    with pytest.raises(ValueError, match="min_convergent_seeds"):
        SeedArgs(max_seeds=2, min_convergent_seeds=3)


def test_from_dict_accepts_section_nested_dicts() -> None:
    nested = {"optimization": {"learning_rate": 1e-2, "max_steps": 3}, "seeds": {"max_seeds": 2}, "do_eval": False}
    args = TrainingArguments.from_dict(nested)
    assert (args.learning_rate, args.max_steps, args.max_seeds, args.do_eval) == (1e-2, 3, 2, False)
    assert args == TrainingArguments(learning_rate=1e-2, max_steps=3, max_seeds=2, do_eval=False)
    assert TrainingArguments().replace(optimization={"seed": 4}).seed == 4
    with pytest.raises(ValueError, match=r"Unknown OptimizationArgs field\(s\): \['max_seeds'\]"):
        TrainingArguments.from_dict({"optimization": {"max_seeds": 2}})
    with pytest.raises(ValueError, match="given twice"):
        TrainingArguments.from_dict({"optimization": {"seed": 1}, "seed": 2})


@pytest.mark.parametrize("kwargs, message", [
    ({"do_eval": "false"}, r"do_eval must be a bool \(true or false\), got 'false'"),
    ({"trust_remote_code": 1}, "trust_remote_code must be a bool"),
    ({"use_cache": "true"}, "use_cache must be a bool"),
    ({"learning_rate": float("inf")}, "learning_rate must be a finite number"),
    ({"adam_epsilon": float("nan")}, "adam_epsilon"),
    ({"weight_decay": float("nan")}, "weight_decay"),
    ({"convergent_score_threshold": float("nan")}, r"convergent_score_threshold must be in \[0, 1\]"),
    ({"learning_rate": "1e-3"}, "learning_rate must be a number"),
    ({"max_steps": 2.0}, "max_steps must be an integer"),
    ({"params": ["a", 3]}, "params must be a list of strings or None"),
    ({"params": [""]}, "params must be a non-empty list"),
    ({"decoder_eval_lrs": [1.0, float("nan")]}, "decoder_eval_lrs must be a finite number"),
    ({"decoder_eval_feature_factors": []}, "decoder_eval_feature_factors must be a non-empty list"),
    ({"activation_encoder": "relu"}, r"activation_encoder must be one of 'tanh', 'hardtanh'"),
    ({"metadata": []}, "metadata must be a mapping"),
    ({"pre_prune_config": 3}, "pre_prune_config must be a PrePruneConfig"),
    ({"num_epochs": 0}, "num_epochs must be a positive integer"),
])
def test_bad_types_bools_and_nan_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingArguments(**kwargs)


def test_all_problems_reported_together_and_paths_accepted(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"train_batch_size .*; .*learning_rate"):
        TrainingArguments(train_batch_size=0, learning_rate=-1.0)
    args = TrainingArguments(experiment_dir=tmp_path / "exp", params="encoder.*", decoder_eval_lrs=(1.0, 0.5))
    assert args.experiment_dir == str(tmp_path / "exp") and args.params == ["encoder.*"]
    assert args.decoder_eval_lrs == [1.0, 0.5]
    assert TrainingArguments(use_cache="always").use_cache == "always"
    assert TrainingArguments(torch_dtype="torch.float16").dtype is torch.float16
    assert TrainingArguments().get("learning_rate") == 1e-3 and TrainingArguments().get("nope", 5) == 5


def test_importing_the_configuration_does_not_import_torch() -> None:
    """The module itself stays torch-free (the package `__init__` is bypassed: only this module is judged)."""
    import subprocess
    import sys
    from pathlib import Path

    package_dir = str(Path(arguments.__file__).parent)
    probe = ("import sys, types\n"
             "package = types.ModuleType('gradiend'); package.__path__ = [sys.argv[1]]\n"
             "sys.modules['gradiend'] = package\n"
             "from gradiend.arguments import TrainingArguments as T\n"
             "a = T(max_steps=3).replace(seed=2); T.from_dict(a.to_dict()); a.optimization\n"
             "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe, package_dir], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# -- reference (gradiend 0.2.x) spellings -----------------------------------------------------------------------
REFUSED = {  # a value of each reference-only setting that gradiend cannot honour
    "add_identity_for_other_classes": True, "save_only_best": False, "precompute_gradient_batches": True,
    "precompute_gradient_buffer_size": 4, "gradient_timing_steps": 10, "runtime_monitor": True,
    "runtime_monitor_interval": 1.0, "runtime_monitor_system_stats": False, "lr_search_config": {"n_steps": 5},
    "criterion": torch.nn.L1Loss(), "encoder_eval_balance": False, "evaluate_fn": len, "save_strategy": "steps",
    "delete_models": True, "model_use_cache": True, "decoder_sequence_cloze_rhs_window": 5,
    "activation_decoder": "tanh", "base_model_device_map": "auto", "base_model_max_memory": {"0": "10GiB"},
    "encoder_decoder_same_device": True, "split_resplit_per_seed": True, "split_resplit_strategy": "balanced_cycle"}


def test_every_reference_only_setting_is_listed() -> None:
    refused = sorted(f.name for f in dataclasses.fields(TrainingArguments) if "instead" in f.metadata)
    assert refused == sorted(REFUSED)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_reference_only_settings_are_refused_with_what_to_use_instead(name: str) -> None:
    field = next(f for f in dataclasses.fields(TrainingArguments) if f.name == name)
    with pytest.raises(ValueError, match=rf"^{name}=.* is not supported by gradiend") as caught:
        TrainingArguments(**{name: REFUSED[name]})
    assert field.metadata["instead"] in str(caught.value)
    assert getattr(TrainingArguments(**{name: field.default}), name) == field.default  # the default is accepted


def test_torch_dtype_reports_a_torch_dtype_and_stays_a_string_in_json() -> None:
    args = TrainingArguments(torch_dtype=torch.float16)
    assert args.torch_dtype == torch.float16 and torch.float16 == args.torch_dtype
    assert args.torch_dtype != torch.float32 and args.torch_dtype == "float16"
    assert TrainingArguments().torch_dtype == torch.float32  # the reference resolves None to float32 too
    assert args.torch_dtype.dtype is torch.float16 and repr(args.torch_dtype) == "'float16'"  # messages quote it
    data = json.loads(json.dumps(args.to_dict()))
    assert data["torch_dtype"] == "float16" and type(args.to_dict()["torch_dtype"]) is str
    assert TrainingArguments.from_dict(data).torch_dtype == torch.float16
    assert arguments.DTYPES[args.torch_dtype] is torch.float16  # still a key of the name table
    assert TrainingArguments(gradiend_dtype=torch.bfloat16).gradiend_dtype == torch.bfloat16


def test_base_gradient_batch_size_is_train_batch_size() -> None:
    args = TrainingArguments(base_gradient_batch_size=4)
    assert args.train_batch_size == 4 and args.base_gradient_batch_size == 4
    assert TrainingArguments(train_batch_size=8, base_gradient_batch_size=8).train_batch_size == 8
    assert TrainingArguments(train_batch_size=8).base_gradient_batch_size == 8  # reports the batch size
    assert TrainingArguments(base_gradient_batch_size=4).replace(train_batch_size=16).base_gradient_batch_size == 16
    assert TrainingArguments(train_batch_size=8).replace(base_gradient_batch_size=2).train_batch_size == 2
    with pytest.raises(ValueError, match="name the same setting"):
        TrainingArguments(train_batch_size=8, base_gradient_batch_size=1)
    with pytest.raises(ValueError, match="base_gradient_batch_size must be a positive integer"):
        TrainingArguments(base_gradient_batch_size=0)
    assert TrainingArguments(gradiend_batch_size=None).gradiend_batch_size == 1  # the reference's None


def test_reference_aliases_set_our_settings() -> None:
    assert TrainingArguments(eval_strategy="no").do_eval is False
    assert TrainingArguments(eval_strategy="steps").do_eval is True
    assert TrainingArguments(prediction_objective="clm_next_token").objective == "clm"
    assert TrainingArguments(prediction_objective="mlm_mask_token").objective == "mlm"
    assert TrainingArguments(prediction_objective="auto").objective is None
    with pytest.raises(ValueError, match="objective='mlm' was given"):
        TrainingArguments(prediction_objective="clm_next_token", objective="mlm")
    assert TrainingArguments(prediction_objective="clm_mlm_head").objective == "clm_mlm_head"
    with pytest.raises(ValueError, match="'clm_sequence_cloze' is not available"):
        TrainingArguments(prediction_objective="clm_sequence_cloze")
    with pytest.raises(ValueError, match="prediction_objective must be one of"):
        TrainingArguments(prediction_objective="masked")
    assert TrainingArguments(use_cached_gradients=False).gradient_cache == "off"
    assert TrainingArguments(use_cached_gradients=True).gradient_cache == "memory"
    with pytest.raises(ValueError, match="gradient_cache='off'"):
        TrainingArguments(use_cached_gradients=True, gradient_cache="off")
    assert TrainingArguments(criterion=torch.nn.MSELoss()).criterion is None  # the loss it is anyway
    assert TrainingArguments(activation_decoder="id").activation_decoder == "id"
    assert TrainingArguments(min_convergent_seeds=2).max_seeds == 2  # asking for 2 convergent seeds tries 2
    with pytest.raises(ValueError, match="mask_placeholder must not be empty"):
        TrainingArguments(mask_placeholder="")


def test_reference_none_means_the_default() -> None:
    args = TrainingArguments(latent_dim=None, activation_encoder=None, convergent_metric=None,
                             convergent_score_threshold=None)
    assert (args.latent_dim, args.activation_encoder) == (1, "tanh")
    with pytest.raises(ValueError, match="bias_decoder must be a bool"):  # bools stay strict (test_hostile_values)
        TrainingArguments(bias_decoder=None)
    assert (args.convergent_metric, args.convergent_score_threshold) == ("correlation", 0.5)


def test_reuse_pre_prune_false_only_without_pre_pruning() -> None:
    assert TrainingArguments(reuse_pre_prune=False).reuse_pre_prune is False  # nothing is pre-pruned: no effect
    assert TrainingArguments(pre_prune_config={"topk": 0.5}).reuse_pre_prune is True
    with pytest.raises(ValueError, match=r"reuse_pre_prune=False .* is not supported"):
        TrainingArguments(reuse_pre_prune=False, pre_prune_config={"topk": 0.5})


def test_a_saved_reference_configuration_loads() -> None:
    """The keys and values gradiend 0.2.3 writes for `TrainingArguments().to_dict()` (those we know; its
    `bias_decoder: null` is refused, as every bool here must be a real bool)."""
    saved = {"experiment_dir": None, "output_dir": None, "use_cache": False, "add_identity_for_other_classes": False,
             "source": "alternative", "target": "diff", "train_batch_size": 32, "base_gradient_batch_size": 32,
             "gradiend_batch_size": 1, "precompute_gradient_batches": None, "precompute_gradient_buffer_size": 1,
             "gradient_timing_steps": 0, "runtime_monitor": False, "runtime_monitor_interval": 5.0,
             "runtime_monitor_system_stats": True, "train_max_size": None, "learning_rate": 1e-05,
             "lr_search_config": None, "num_train_epochs": 3, "max_steps": -1, "weight_decay": 0.01,
             "adam_epsilon": 1e-08, "optim": "adamw", "eval_strategy": "steps", "eval_steps": 250,
             "encoder_eval_train_max_size": None, "encoder_eval_max_size": None, "encoder_eval_balance": True,
             "include_other_classes": False, "seed_selection_eval_max_size": None,
             "decoder_eval_max_size_training_like": None, "decoder_eval_max_size_neutral": None,
             "decoder_eval_lrs": None, "decoder_eval_feature_factors": None, "eval_batch_size": 32, "do_eval": True,
             "save_strategy": "best", "save_steps": 5000, "save_only_best": True, "delete_models": False,
             "trust_remote_code": False, "dataset_trust_remote_code": None, "model_use_cache": False,
             "prediction_objective": "auto", "mask_placeholder": "[MASK]", "decoder_mlm_head_epochs": 5,
             "decoder_mlm_head_batch_size": 4, "decoder_mlm_head_lr": 0.0001, "decoder_mlm_head_max_size": None,
             "decoder_sequence_cloze_rhs_window": -1, "params": None, "activation_encoder": None,
             "activation_decoder": None, "latent_dim": None, "normalize_gradiend": True,
             "torch_dtype": "torch.float32", "base_model_device_map": None, "base_model_max_memory": None,
             "encoder_decoder_same_device": False, "max_seeds": 3, "min_convergent_seeds": 1,
             "convergent_metric": None, "convergent_score_threshold": 0.5, "convergent_mean_by_class_threshold": 0.5,
             "split_resplit_per_seed": False, "split_resplit_strategy": "random", "seed": 0, "seed_runs_dir": None,
             "saved_seed_runs": "all_convergent", "seed_stability_topk": 1000,
             "seed_stability_part": "decoder-weight", "supervised_encoder": False, "supervised_decoder": False,
             "use_cached_gradients": False, "pre_prune_config": None, "reuse_pre_prune": False,
             "fail_on_non_convergence": False, "post_prune_config": None, "metadata": {}}
    args = TrainingArguments.from_dict(saved)
    assert args.learning_rate == 1e-05 and args.max_seeds == 3 and args.torch_dtype == torch.float32
    assert args.gradient_cache == "off"  # use_cached_gradients=False, as the reference ran
    assert TrainingArguments.from_dict(json.loads(json.dumps(args.to_dict()))) == args


def test_analyze_seed_stability_keeps_the_convergent_seeds() -> None:
    assert TrainingArguments().saved_seed_runs == "best_only"
    assert TrainingArguments(analyze_seed_stability=True).saved_seed_runs == "all_convergent"
    assert TrainingArguments(analyze_seed_stability=True, saved_seed_runs="all_tried").saved_seed_runs == "all_tried"
    with pytest.raises(ValueError, match="analyze_seed_stability"):
        TrainingArguments(analyze_seed_stability="yes")
    with pytest.raises(ValueError, match="highlight_non_convergence"):
        TrainingArguments(highlight_non_convergence=1)
