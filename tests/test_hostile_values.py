"""Hostile and careless values (issue 18, part B): non-finite is never success, strict types, results bound
to the base model's weights, and clear errors for the cases that used to fail raw or silently."""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import count_gradient_passes, make_rows
from hostile_cases import case
from transformers import BertConfig, BertForMaskedLM

from gradiend import TextPredictionTrainer, TrainingArguments
from gradiend.base_identity import base_model_fingerprint, resolve_base_model
from gradiend.data import DataError, unify
from gradiend.decoder_eval import DecoderRequest, lms_threshold_selector
from gradiend.model import GradiendConfig, GradiendModel
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.params import NonFiniteUpdateError, ParamMap
from gradiend.runs import run_fingerprint
from gradiend.training import TrainingLoop, check_convergence, check_trainable_dtype

NAN, INF = float("nan"), float("inf")
PARAMS = ["encoder.layer.1.*"]


def _args(tmp_path: Path, **overrides: object) -> TrainingArguments:
    settings = {"experiment_dir": str(tmp_path / "exp"), "train_batch_size": 4, "max_steps": 2, "eval_steps": 1,
                "seed": 0, "show_progress": False, "scale_estimation_batches": 1, "params": PARAMS}
    return TrainingArguments(**{**settings, **overrides})


def _trainer(model: str, tmp_path: Path, rows: pd.DataFrame | None = None,
             target_classes: list[str] | None = None, **overrides: object) -> TextPredictionTrainer:
    return TextPredictionTrainer(model=model, data=make_rows() if rows is None else rows,
                                 args=_args(tmp_path, **overrides), target_classes=target_classes or ["3SG", "3PL"])


def _train(trainer: TextPredictionTrainer) -> TextPredictionTrainer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 2 steps on a random model do not converge
        trainer.train()
    return trainer


def _copy_model(src: str, dst: Path) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def _resave_other_weights(directory: str) -> None:
    """New random weights of the same architecture saved at the same path."""
    config = BertConfig.from_pretrained(directory)
    torch.manual_seed(123)
    BertForMaskedLM(config).save_pretrained(directory)


# -- 1. non-finite is never success ------------------------------------------------------------------------
@pytest.mark.parametrize("best", [
    {"correlation": NAN, "mean_by_class": {"A": 0.9, "B": -0.9}},
    {"correlation": 0.9, "mean_by_class": {"A": NAN, "B": -0.9}},
    {"correlation": INF, "mean_by_class": {"A": 0.9, "B": -0.9}},
    {"correlation": 0.9, "mean_by_class": {"A": NAN, "B": NAN}},
])
@case("safe")
def test_non_finite_correlation_or_class_mean_is_not_converged(best: dict) -> None:
    for threshold in (0.5, None):
        converged, reason = check_convergence(best, TrainingArguments(convergent_mean_by_class_threshold=threshold))
        assert not converged and "finite" in reason


@case("safe")
def test_non_finite_loss_is_not_converged() -> None:
    args = TrainingArguments(convergent_metric="loss", convergent_score_threshold=0.5)
    converged, reason = check_convergence({"loss": NAN, "correlation": 0.9, "mean_by_class": {}}, args)
    assert not converged and "not finite" in reason
    assert check_convergence(None, args, final_loss=INF) == (False, "training loss is inf (not finite)")


class _Holder:
    def __init__(self) -> None:
        self.gradiend = GradiendModel(GradiendConfig(input_dim=4), torch.Generator().manual_seed(0))


@case("safe")
def test_best_checkpoint_ignores_nan_scores() -> None:
    loop = TrainingLoop(_Holder(), TrainingArguments(), source=None)  # type: ignore[arg-type]
    loop._record(1, 0, {"correlation": NAN, "mean_by_class": {"A": NAN, "B": NAN}, "n": 4})
    assert loop.history.best is None  # a NaN step is recorded, never kept as best
    loop._record(2, 0, {"correlation": 0.3, "mean_by_class": {"A": 0.2, "B": -0.2}, "n": 4})
    loop._record(3, 0, {"correlation": NAN, "mean_by_class": {"A": 0.9, "B": -0.9}, "n": 4})
    loop._record(4, 0, {"correlation": 0.2, "mean_by_class": {"A": NAN, "B": -0.9}, "n": 4})
    assert loop.history.best["global_step"] == 2
    assert math.isnan(loop.history.scores["3"])


@case("error")
def test_float16_training_is_refused_up_front(tiny_mlm_dir: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"float16.*loss scaling.*bfloat16.*float32"):
        check_trainable_dtype("float16")
    check_trainable_dtype("bfloat16")
    passes = count_gradient_passes(monkeypatch)
    with pytest.raises(ValueError, match="torch_dtype='float16' cannot train"):
        _trainer(tiny_mlm_dir, tmp_path, torch_dtype="float16").train()
    assert passes == [] and not (tmp_path / "exp" / "model").exists()


@pytest.mark.parametrize("overrides", [
    {"weight_decay": NAN}, {"weight_decay": INF}, {"learning_rate": NAN}, {"adam_epsilon": INF},
    {"decoder_eval_lrs": [NAN]}, {"decoder_eval_lrs": [1.0, INF]}, {"decoder_eval_feature_factors": [NAN]},
    {"convergent_score_threshold": NAN},
])
@case("error")
def test_non_finite_settings_are_rejected_at_construction(overrides: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(overrides))):
        TrainingArguments(**overrides)


@pytest.mark.parametrize("grid", [{"learning_rates": [NAN]}, {"learning_rates": [1.0, -INF]},
                                  {"feature_factors": [INF]}, {"learning_rates": []}])
@case("error")
def test_decoder_request_rejects_non_finite_grid(grid: dict) -> None:
    with pytest.raises(ValueError, match="finite numbers"):
        DecoderRequest(["A", "B"], **grid)


@case("safe")
def test_selector_never_picks_non_finite_lms_or_probability() -> None:
    select = lms_threshold_selector()
    base = {"lms": 0.5}
    nan_lms = {"id": "a", "lms": NAN, "value": 0.99, "learning_rate": 1.0}
    nan_value = {"id": "b", "lms": 0.6, "value": NAN, "learning_rate": 2.0}
    good = {"id": "c", "lms": 0.6, "value": 0.2, "learning_rate": 0.5}
    assert select([nan_lms, nan_value, good], base)["id"] == "c"
    low = {"id": "d", "lms": 0.1, "value": 0.3, "learning_rate": 0.1}  # fallback (smallest |lr|) is finite too
    assert select([nan_lms, {**nan_value, "learning_rate": 0.01}, low], base)["id"] == "d"
    with pytest.raises(ValueError, match="non-finite"):
        select([nan_lms, nan_value], base)
    with pytest.raises(ValueError, match="base model's LMS"):
        select([good], {"lms": NAN})


@case("error")
def test_adding_a_non_finite_update_is_refused() -> None:
    param_map = ParamMap.from_shapes([("w", (2, 3))])
    spec = param_map.specs[0]
    weights = torch.zeros(2, 3)
    for delta, alpha in ((torch.tensor([0, 1, NAN, 0, 0, 0.0]), 1.0), (torch.ones(6), NAN),
                         (torch.tensor([0, INF, 0, 0, 0, 0.0]), 0.1), (torch.full((6,), 1e38), 1e3)):
        with pytest.raises(NonFiniteUpdateError, match="w"):
            param_map.add_to(weights, spec, delta, alpha)
        assert torch.equal(weights, torch.zeros(2, 3))  # refused before anything was written
    param_map.add_to(weights, spec, torch.ones(6), 0.5)
    assert torch.equal(weights, torch.full((2, 3), 0.5))


@case("error")
def test_rewrite_with_nan_decoder_is_refused_and_base_untouched(tiny_mlm_dir: str) -> None:
    mwg = ModelWithGradiend.create(tiny_mlm_dir, params=PARAMS, feature_classes=["3SG", "3PL"])
    before = {k: v.clone() for k, v in mwg.base_model.state_dict().items()}
    with torch.no_grad():
        mwg.gradiend.decoder_weight[0, 0] = NAN
    with pytest.raises(NonFiniteUpdateError, match="non-finite update"):
        mwg.rewrite_base_model(learning_rate=1.0, feature_factor=1.0)
    with pytest.raises(NonFiniteUpdateError), mwg.apply(1.0, 1.0):
        pass
    after = mwg.base_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- 2. strict types ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("field_name", ["trust_remote_code", "do_eval", "bias_decoder", "normalize_gradiend"])
@pytest.mark.parametrize("value", ["false", "no", "False", 0, 1, None])
@case("error")
def test_booleans_accept_only_real_booleans(field_name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{field_name} must be a bool"):
        TrainingArguments(**{field_name: value})
    with pytest.raises(ValueError, match=f"{field_name} must be a bool"):
        TrainingArguments.from_dict({field_name: value})
    assert TrainingArguments(**{field_name: False}).get(field_name) is False


# -- 3. results bound to the model -------------------------------------------------------------------------
@case("safe")
def test_run_fingerprint_keys_base_model_by_content(tiny_mlm_dir: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model = _copy_model(tiny_mlm_dir, tmp_path / "m")
    args, rows = TrainingArguments(), make_rows()
    key = run_fingerprint(args, model, rows, None)
    monkeypatch.chdir(tmp_path)
    assert run_fingerprint(args, "m", rows, None) == key  # the same weights under another spelling
    assert run_fingerprint(args, "./m/", rows, None) == key
    _resave_other_weights(model)
    assert run_fingerprint(args, model, rows, None) != key  # new weights at the same path
    assert base_model_fingerprint("bert-base-uncased") == "hub:bert-base-uncased"
    assert resolve_base_model("m") == str((tmp_path / "m").resolve())
    assert resolve_base_model("bert-base-uncased") == "bert-base-uncased"


@case("safe")
def test_use_cache_retrains_when_weights_at_the_same_path_change(tiny_mlm_dir: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = _copy_model(tiny_mlm_dir, tmp_path / "m")
    _train(_trainer(model, tmp_path, use_cache=True))
    passes = count_gradient_passes(monkeypatch)
    _train(_trainer(model, tmp_path, use_cache=True))
    assert passes == []  # same weights: reused
    _resave_other_weights(model)
    _train(_trainer(model, tmp_path, use_cache=True))
    assert passes  # other weights at the same path: retrained


@case("safe")
def test_base_model_stored_resolved_next_to_its_spelling_and_checked_on_load(
        tiny_mlm_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _copy_model(tiny_mlm_dir, tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    _train(_trainer("m", tmp_path))
    model_dir = tmp_path / "exp" / "model"
    config = json.loads((model_dir / "gradiend_config.json").read_text())
    training = json.loads((model_dir / "training.json").read_text())
    resolved = str((tmp_path / "m").resolve())
    assert config["base_model"] == "m" and config["base_model_resolved"] == resolved
    assert training["base_model"] == "m" and training["base_model_resolved"] == resolved
    assert config["base_model_fingerprint"] == training["base_model_fingerprint"] == base_model_fingerprint(resolved)
    # from another directory the relative spelling would name nothing (or another model): the resolved path wins
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same weights: no warning
        loaded = ModelWithGradiend.from_pretrained(model_dir)
    assert loaded.config.base_model_resolved == resolved
    _resave_other_weights(resolved)
    with pytest.warns(UserWarning, match="trained on base-model weights other than"):
        ModelWithGradiend.from_pretrained(model_dir)
    # a checkpoint written before these fields existed still loads (by its original spelling)
    old = {k: v for k, v in config.items() if k not in ("base_model_resolved", "base_model_fingerprint")}
    assert GradiendConfig.from_json(old).base_model == "m"


# -- 4. clear errors ---------------------------------------------------------------------------------------
@case("error")
def test_truncated_base_weights_name_the_file(tiny_mlm_dir: str, tmp_path: Path) -> None:
    model = _copy_model(tiny_mlm_dir, tmp_path / "m")
    weights = Path(model) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"{weights} is truncated.*Save the model again"):
        ModelWithGradiend.create(model, params=PARAMS)
    weights.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match=f"{weights} is not a safetensors file"):
        ModelWithGradiend.create(model, params=PARAMS)


@case("error")
def test_model_path_that_is_a_file(tiny_mlm_dir: str) -> None:
    path = os.path.join(tiny_mlm_dir, "config.json")
    with pytest.raises(NotADirectoryError, match="is a file; pass the directory"):
        ModelWithGradiend.create(path, params=PARAMS)


@pytest.mark.parametrize("edit", [{"input_dim": "12"}, {"feature_classes": 5}, {"bias_decoder": "false"},
                                  {"param_map": {"a": 1}}, {"latent_dim": None}, {"input_dim": None}])
@case("error")
def test_wrong_typed_checkpoint_config_fields(tmp_path: Path, edit: dict) -> None:
    GradiendModel(GradiendConfig(input_dim=4), torch.Generator().manual_seed(0)).save_pretrained(tmp_path)
    path = tmp_path / "gradiend_config.json"
    data = json.loads(path.read_text())
    if edit.get("input_dim", 0) is None:
        del data["input_dim"]
    else:
        data.update(edit)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"{path}.*(invalid fields|lacks).*re-train") as info:
        GradiendModel.from_pretrained(tmp_path)
    assert not isinstance(info.value, (TypeError, KeyError))


@case("error")
def test_target_classes_not_in_the_data_and_three_classes() -> None:
    with pytest.raises(DataError, match=r"target_classes \['X', 'Y'\] not found.*\['3PL', '3SG'\]"):
        unify(make_rows(), ["X", "Y"])
    with pytest.raises(DataError, match=r"exactly two classes.*'Z'"):
        unify(make_rows(), ["3SG", "3PL", "Z"])
    with pytest.raises(DataError, match="exactly two classes"):
        unify(make_rows(), "3SG")


@pytest.mark.parametrize("label", ["[MASK]", "[CLS]", "[sep]", "[PAD]"])
@case("error")
def test_special_tokens_as_labels_are_refused(tiny_mlm_dir: str, tmp_path: Path, label: str) -> None:
    rows = make_rows()
    rows.loc[rows["label_class"] == "3PL", "label"] = label
    with pytest.raises(DataError, match=r"special token.*ordinary words"):
        _trainer(tiny_mlm_dir, tmp_path, rows=rows).train()


@pytest.mark.parametrize("max_length", [1, 2])
@case("error")
def test_tiny_max_length_is_refused(max_length: int) -> None:
    with pytest.raises(ValueError, match="max_length must be at least 3"):
        TrainingArguments(max_length=max_length)


@case("error")
def test_pre_prune_config_of_wrong_type() -> None:
    with pytest.raises(ValueError, match=r"pre_prune_config must be a PrePruneConfig .*got 5"):
        TrainingArguments(pre_prune_config=5)
    with pytest.raises(ValueError, match="post_prune_config must be"):
        TrainingArguments(post_prune_config="0.1")


@case("error")
def test_mask_beyond_max_length_is_found_before_training(tiny_mlm_dir: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    rows = make_rows()
    long_text = "the " * 40 + "[MASK] was happy ."
    rows.loc[rows.index[-1], "masked"] = long_text  # one test-split row only
    passes = count_gradient_passes(monkeypatch)
    with pytest.raises(DataError, match=r"1 row\(s\) have their \[MASK\] slot beyond max_length=32.*Raise "
                                        r"max_length to at least 43"):
        _trainer(tiny_mlm_dir, tmp_path, rows=rows, max_length=32).train()
    assert passes == []
    _train(_trainer(tiny_mlm_dir, tmp_path, rows=rows, max_length=64))  # fits: trains


@case("safe")
def test_reattach_from_another_directory_uses_the_resolved_base_model(tiny_mlm_dir: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from gradiend import Trainer

    _copy_model(tiny_mlm_dir, tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    _train(_trainer("m", tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = Trainer.from_experiment(tmp_path / "exp", data=make_rows(), show_progress=False)
    assert again.base_model_path == str((tmp_path / "m").resolve())
