"""Trainer method signatures users of gradiend 0.2.x write (issue 19): train, evaluate_encoder/decoder,
selection policies, pre_prune, evaluate_base_model, unload_model."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import tiny_experiment
import torch

from gradiend import PrePruneConfig
from gradiend.selection import Candidate, LMSThresholdPolicy, LMSTimesMetricPolicy, candidate_metrics


@pytest.fixture(scope="module")
def trained(tiny_mlm_dir, tmp_path_factory):
    return tiny_experiment.build(tiny_mlm_dir, tmp_path_factory.mktemp("sig_exp"), encoder=False, decoder=False)


def test_train_overrides_apply_to_one_call(tiny_mlm_dir, trained, tmp_path) -> None:
    out = tmp_path / "other_model"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = trained.train(str(out), model=tiny_mlm_dir, callbacks=None, max_steps=3, eval_steps=3)
    assert result is trained
    stats = json.loads((out / "training.json").read_text())
    assert len(stats["losses"]) == 3, "the override max_steps=3 reached this run"
    assert trained.training_args.max_steps == 6, "overrides must not stick to the trainer"
    assert trained.model_path == str(out)
    # the next call without overrides trains with the trainer's own arguments again
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        trained.train(output_dir=tmp_path / "again")
    assert len(json.loads((tmp_path / "again" / "training.json").read_text())["losses"]) == 6
    with pytest.raises(TypeError, match="model must be"):
        trained.train(tmp_path / "bad", model=3)


def test_results_follow_the_model_a_train_call_moved(tiny_mlm_dir, tmp_path) -> None:
    trainer = tiny_experiment.build(tiny_mlm_dir, tmp_path / "a", encoder=False, decoder=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        trainer.train(experiment_dir=str(tmp_path / "b"))
    assert trainer.training_args.experiment_dir == str(tmp_path / "a")
    assert trainer.model_path == str(tmp_path / "b" / "model") and trainer.experiment_dir == str(tmp_path / "b")
    assert trainer.experiment.model == tmp_path / "b" / "model"
    trainer.evaluate_encoder()
    assert (tmp_path / "b" / "encoded_values_split_test.csv").is_file(), "the moved model's results go beside it"
    assert not (tmp_path / "a" / "encoded_values_split_test.csv").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        trainer.train()  # the trainer's own layout again
    assert trainer.experiment_dir == str(tmp_path / "a") and trainer.model_path == str(tmp_path / "a" / "model")


def test_evaluate_encoder_split_names_lists_and_all(trained) -> None:
    val = trained.evaluate_encoder(split="val", return_df=True)
    validation = trained.evaluate_encoder(split="validation")
    assert val["correlation"] == pytest.approx(validation["correlation"], abs=1e-9)
    assert set(val["encoder_df"].loc[val["encoder_df"]["type"] == "training", "data_split"]) == {"validation"}
    both = trained.evaluate_encoder(split=["test", "val"], return_df=True)
    frame = both["encoder_df"]
    assert list(dict.fromkeys(frame["eval_split"])) == ["test", "validation"]
    assert set(both["by_split"]) == {"test", "validation"}
    assert both["by_split"]["validation"]["correlation"] == pytest.approx(val["correlation"], abs=1e-6)
    n_neutral_once = (frame["type"] == "neutral_dataset").sum() // 2
    assert both["sample_counts"]["neutral_dataset"] == n_neutral_once, "neutral texts counted once"
    every = trained.evaluate_encoder(split="all")
    assert set(every["by_split"]) == {"train", "validation", "test"}
    with pytest.raises(ValueError, match="Unknown split 'tests'"):
        trained.evaluate_encoder(split="tests")
    with pytest.raises(ValueError, match="empty list"):
        trained.evaluate_encoder(split=[])


def test_evaluate_encoder_takes_its_own_return_df_output_and_a_source(trained) -> None:
    first = trained.evaluate_encoder(return_df=True)
    again = trained.evaluate_encoder(encoder_df=first)
    assert again["correlation"] == first["correlation"] and again["mean_by_class"] == first["mean_by_class"]
    with pytest.raises(TypeError, match="without an 'encoder_df' entry"):
        trained.evaluate_encoder(encoder_df={"correlation": 1.0})
    factual = trained.evaluate_encoder(source="factual", return_df=True, use_cache=False)["encoder_df"]
    pairs = factual["type"] == "training"
    assert set(factual.loc[pairs, "source"]) == {"factual"}
    assert trained.get_model().config.source != "factual"
    assert not torch.allclose(torch.tensor(factual.loc[pairs, "encoded"].to_numpy()),
                              torch.tensor(first["encoder_df"].loc[pairs, "encoded"].to_numpy()))
    # neutral rows are encoded from factual gradients either way
    neutral = ~pairs
    assert factual.loc[neutral, "encoded"].to_numpy() == pytest.approx(
        first["encoder_df"].loc[neutral, "encoded"].to_numpy(), abs=1e-6)
    with pytest.raises(ValueError, match="source must be one of"):
        trained.evaluate_encoder(source="counterfactual")


def test_evaluate_decoder_class_lists_metrics_and_policies(trained) -> None:
    both = trained.evaluate_decoder(target_class=["3SG", "3PL"], search="grid")
    assert {"3SG", "3PL", "grid"} <= set(both)
    grid = both["grid"]
    base = next(r for r in grid if r["feature_factor"] is None)
    candidates = [r for r in grid if r["feature_factor"] is not None]

    by_metric = trained.evaluate_decoder(summary_metrics=["3SG", "3PL_weaken"])
    assert set(by_metric) == {"3SG", "3PL_weaken", "grid"}
    expected = max((r for r in candidates if r["lms"] >= 0.99 * base["lms"]),
                   key=lambda r: r["probs"]["3PL"]["3SG"], default=None)
    if expected is not None:  # the default policy: best metric within the LMS bound
        assert by_metric["3SG"]["value"] == pytest.approx(expected["probs"]["3PL"]["3SG"])

    policy = trained.evaluate_decoder(summary_metrics=["3SG"], selector=LMSTimesMetricPolicy())
    best = max(candidates, key=lambda r: r["probs"]["3PL"]["3SG"] * r["lms"])
    assert policy["3SG"]["id"] == best["id"]
    # the reference's LMSThresholdPolicy gives the same selection as the default selector
    assert trained.evaluate_decoder(target_class="3SG", selector=LMSThresholdPolicy(0.99))["3SG"]["id"] == \
        trained.evaluate_decoder(target_class="3SG")["3SG"]["id"]

    # within the LMS bound or not, the default policy picks the smallest |lr| for this metric
    bpi = trained.evaluate_decoder(summary_metrics=["bpi"], metrics_fn=lambda r: {"bpi": -abs(r["learning_rate"] or 0)})
    smallest = min(abs(r["learning_rate"]) for r in candidates)
    assert abs(bpi["bpi"]["learning_rate"]) == smallest and bpi["bpi"]["base_value"] == 0.0
    with pytest.raises(ValueError, match=r"Unknown summary metric 'bpi'.*metrics_fn"):
        trained.evaluate_decoder(summary_metrics=["bpi"])
    with pytest.raises(ValueError, match="Unknown target_class"):
        trained.evaluate_decoder(target_class=["3SG", "4SG"])

    class Nothing:
        def select(self, metric, candidates, ctx):
            return None

    with pytest.raises(ValueError, match="selected no candidate"):
        trained.evaluate_decoder(target_class="3SG", selector=Nothing())
    with pytest.raises(TypeError, match="selector must be"):
        trained.evaluate_decoder(target_class="3SG", selector=3)


def test_candidate_metrics_and_threshold_policy_fallback() -> None:
    record = {"id": "ff=1,lr=0.1", "feature_factor": 1.0, "learning_rate": 0.1, "lms": 0.5, "bpi": 0.25,
              "probs": {"A": {"A": 0.7, "B": 0.1}, "B": {"A": 0.2, "B": 0.6}}}
    assert candidate_metrics(record) == pytest.approx({"A": 0.2, "B": 0.1, "A_factual": 0.7, "B_factual": 0.6,
                                                       "A_weaken": 0.3, "B_weaken": 0.4, "bpi": 0.25})
    far = Candidate({"learning_rate": 1.0}, 0.1, {"m": 9.0})
    near = Candidate({"learning_rate": -0.01}, 0.2, {"m": 1.0})
    from gradiend.selection import BaseContext

    assert LMSThresholdPolicy(0.99).select("m", [far, near], BaseContext(1.0)) is near, "none passes: smallest |lr|"
    assert LMSThresholdPolicy(0.1).select("m", [far, near], BaseContext(1.0)) is far
    with pytest.raises(ValueError, match="ratio"):
        LMSThresholdPolicy(-1)


def test_evaluate_base_model_is_the_grid_base_record(trained) -> None:
    base = trained.evaluate_base_model()
    grid_base = next(r for r in trained.evaluate_decoder(target_class="3SG")["grid"] if r["feature_factor"] is None)
    assert base["id"] == "base" and base["lms"] == pytest.approx(grid_base["lms"], rel=1e-6)
    for dataset, probs in grid_base["probs"].items():
        assert base["probs"][dataset] == pytest.approx(probs, rel=1e-5)
    smaller = trained.evaluate_base_model(max_size_training_like=1)
    assert smaller["probs"] != base["probs"], "the data options reach the evaluation"


def test_unload_model_frees_and_reloads(trained) -> None:
    model = trained.get_model()
    weights = {k: v.clone() for k, v in model.gradiend.state_dict().items()}
    assert trained.unload_model() is trained
    assert trained._model_instance is None
    again = trained.get_model()
    assert again is not model
    for name, tensor in again.gradiend.state_dict().items():
        torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0)
    assert trained.unload_model().unload_model() is trained, "unloading twice is harmless"


def test_pre_prune_returns_the_trainer(tiny_mlm_dir, tmp_path) -> None:
    from conftest import make_rows

    from gradiend import TextPredictionTrainer, TrainingArguments

    args = TrainingArguments(experiment_dir=str(tmp_path), train_batch_size=4, max_steps=2, eval_steps=2, seed=0,
                             show_progress=False, scale_estimation_batches=1, params=["encoder.layer.1.*"])
    trainer = TextPredictionTrainer(model=tiny_mlm_dir, data=make_rows(), args=args, target_classes=["3SG", "3PL"])
    assert trainer.pre_prune(PrePruneConfig(topk=30)) is trainer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert trainer.pre_prune(PrePruneConfig(topk=30)).train() is trainer
    assert trainer.get_model().param_map.size == 30
    assert Path(trainer.model_path, "model.safetensors").is_file()


def test_callbacks_with_the_reference_hooks_and_ours(tiny_mlm_dir, tmp_path) -> None:
    from conftest import make_rows

    from gradiend import TextPredictionTrainer, TrainingArguments, TrainingCallback

    events: list[tuple] = []

    class Reference(TrainingCallback):  # gradiend 0.2.x signatures
        def on_train_begin(self, config, **kwargs):
            events.append(("train_begin", config["max_steps"], "optimizer" in kwargs))

        def on_epoch_begin(self, epoch, config, **kwargs):
            events.append(("epoch_begin", epoch))

        def on_step_begin(self, step, config, **kwargs):
            events.append(("step_begin", step))

        def on_step_end(self, step, loss, model, config, **kwargs):
            events.append(("step_end", step, len(kwargs["losses"]), model.gradiend is not None))

        def on_epoch_end(self, epoch, model, config, **kwargs):
            events.append(("epoch_end", epoch))

        def on_train_end(self, config, **kwargs):
            events.append(("train_end",))

    class Ours(TrainingCallback):
        def on_step_end(self, step, loss):
            events.append(("ours", step, isinstance(loss, float)))

        def on_evaluate(self, step, metrics):
            events.append(("evaluate", step, "correlation" in metrics))

    rows = make_rows(1)
    n_train = int((rows["split"] == "train").sum())  # 2 classes, batches of 4 rows per class
    args = TrainingArguments(experiment_dir=str(tmp_path), train_batch_size=4, num_train_epochs=2, eval_steps=100,
                             seed=0, show_progress=False, scale_estimation_batches=1, params=["encoder.layer.1.*"])
    trainer = TextPredictionTrainer(model=tiny_mlm_dir, data=rows, args=args, target_classes=["3SG", "3PL"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        trainer.train(callbacks=[Reference(), Ours()])
    total = len(json.loads((tmp_path / "model" / "training.json").read_text())["losses"])
    assert n_train > 0 and total >= 2
    assert events[0] == ("train_begin", args.max_steps, True) and events[-1] == ("train_end",)
    assert events[1:3] == [("evaluate", 0, True), ("epoch_begin", 0)], "the step-0 evaluation precedes epoch 0"
    kinds = [e[0] for e in events]
    assert kinds.count("step_begin") == kinds.count("step_end") == kinds.count("ours") == total
    assert [e for e in events if e[0] == "epoch_begin"] == [("epoch_begin", 0), ("epoch_begin", 1)]
    assert [e for e in events if e[0] == "epoch_end"] == [("epoch_end", 0), ("epoch_end", 1)]
    assert all(e[2] == e[1] and e[3] for e in events if e[0] == "step_end"), "losses so far, model passed"
    first_end = kinds.index("epoch_end")
    assert kinds[first_end + 1] == "epoch_begin", "an epoch ends right before the next begins"
    assert [e for e in events if e[0] == "evaluate"] == [("evaluate", 0, True), ("evaluate", total, True)]
    assert all(e[2] for e in events if e[0] == "ours")
