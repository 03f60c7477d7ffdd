"""The Trainer facade: reattaching to a finished run without retraining or hashing its data."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_rows
from tiny_experiment import NEUTRAL, build

from gradiend import TextPredictionTrainer, Trainer
from gradiend.runs import finished_run, run_fingerprint


def test_from_experiment_attaches_without_training_or_hashing(tiny_mlm_dir, tmp_path, monkeypatch) -> None:
    trained = build(tiny_mlm_dir, tmp_path / "exp")
    before = trained.evaluate_encoder(use_cache=False)

    def no_hashing(*args, **kwargs):
        raise AssertionError("reattaching must not hash the data")

    monkeypatch.setattr("gradiend.runs.rows_hash", no_hashing)
    monkeypatch.setattr("gradiend.runs.train_run", no_hashing)
    # Trainer is abstract: from_experiment builds the text trainer; the model/ directory is accepted too
    again = Trainer.from_experiment(tmp_path / "exp" / "model", data=make_rows(), eval_neutral_data=NEUTRAL,
                                    show_progress=False)
    assert isinstance(again, TextPredictionTrainer)
    assert again.model_path == str(tmp_path / "exp" / "model")
    assert again.pair == ("3SG", "3PL") and again.training_args.max_steps == 6
    assert again.training_args.show_progress is False
    for name, tensor in again.get_model().gradiend.state_dict().items():
        torch.testing.assert_close(tensor, trained.get_model().gradiend.state_dict()[name], rtol=0, atol=0)
    after = again.evaluate_encoder(use_cache=False)
    assert after["correlation"] == pytest.approx(before["correlation"], abs=1e-6)
    # the saved decoder selection of the first trainer belongs to this model too
    assert again.rewrite_base_model(target_class="3SG") is not None


def test_from_experiment_needs_the_data_when_no_run_config(tiny_mlm_dir, tmp_path) -> None:
    build(tiny_mlm_dir, tmp_path / "exp", encoder=False, decoder=False)
    with pytest.raises(ValueError, match=r"run_config.json.*data="):
        Trainer.from_experiment(tmp_path / "exp")


def test_run_fingerprint_ignores_settings_that_do_not_change_learning(tiny_mlm_dir, tmp_path) -> None:
    trained = build(tiny_mlm_dir, tmp_path / "exp", encoder=False, decoder=False)
    rows, _ = trained.unified_data()
    args = trained.training_args
    key = run_fingerprint(args, tiny_mlm_dir, rows, None)
    assert run_fingerprint(args.replace(show_progress=True, eval_batch_size=3, decoder_eval_lrs=[2.0]),
                           tiny_mlm_dir, rows, None) == key
    assert run_fingerprint(args.replace(learning_rate=0.5), tiny_mlm_dir, rows, None) != key
    assert run_fingerprint(args, tiny_mlm_dir, rows.iloc[1:], None) != key
    model_dir = tmp_path / "exp" / "model"
    stored = json.loads((model_dir / "gradiend_config.json").read_text())["fingerprint"]
    assert stored == key
    assert finished_run(model_dir, key, True) and finished_run(model_dir, "other", "always")
    assert not finished_run(model_dir, "other", True) and not finished_run(model_dir, key, False)


def test_from_experiment_reads_the_run_config(tiny_mlm_dir, tmp_path) -> None:
    from gradiend.experiment import ExperimentDir, atomic_write_json

    trained = build(tiny_mlm_dir, tmp_path / "exp", encoder=False, decoder=False)
    data_path = tmp_path / "training.csv"
    make_rows().to_csv(data_path, index=False)
    run_config = {"model": tiny_mlm_dir, "data": str(data_path), "target_classes": ["3SG", "3PL"], "run_id": None,
                  "eval_neutral_data": NEUTRAL, "training_args": trained.training_args.to_dict()}
    experiment = ExperimentDir(tmp_path / "exp")
    atomic_write_json(experiment.run_config, run_config)
    record = experiment.load_run_config()
    assert record.to_json() == run_config and record.data == str(data_path)
    again = Trainer.from_experiment(tmp_path / "exp")
    assert again.neutral_texts() == NEUTRAL and again.base_model_path == tiny_mlm_dir
    assert len(again.unified_data()[0]) == len(trained.unified_data()[0])


def test_training_stats_is_a_plain_dict_and_the_record_is_typed(tiny_mlm_dir, tmp_path) -> None:
    trained = build(tiny_mlm_dir, tmp_path / "exp", encoder=False, decoder=False)
    stats = trained.get_training_stats()
    assert isinstance(stats, dict) and json.loads(json.dumps(stats)) == stats
    stats["note"] = "mine"  # a copy the caller may change
    assert "note" not in trained.get_training_stats()
    record = trained.get_training_record()
    assert record.best_correlation == stats["best_score_checkpoint"]["correlation"]
    assert record.converged == stats["convergence_info"]["converged"]


def test_from_experiment_takes_a_neutral_frame_and_nested_overrides(tiny_mlm_dir, tmp_path) -> None:
    import pandas as pd

    build(tiny_mlm_dir, tmp_path / "exp", encoder=False, decoder=False)
    neutral = pd.DataFrame({"text": NEUTRAL})
    again = Trainer.from_experiment(tmp_path / "exp", data=make_rows(), eval_neutral_data=neutral,
                                    evaluation={"eval_batch_size": 3})
    assert again.neutral_texts() == NEUTRAL and again.training_args.eval_batch_size == 3
