"""Data options are saved with the run, so `Trainer.from_experiment` rebuilds the same drawn splits (issue 19)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_rows

from gradiend import TextPredictionTrainer, TrainingArguments
from gradiend.trainer.trainer import Trainer


def _args(directory: Path) -> TrainingArguments:
    return TrainingArguments(experiment_dir=str(directory), train_batch_size=4, max_steps=2, eval_steps=2, seed=0,
                             show_progress=False, scale_estimation_batches=2, params=["encoder.layer.1.*"])


def _train(trainer: TextPredictionTrainer) -> TextPredictionTrainer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # two steps on a random model do not converge
        trainer.train()
    return trainer


def _renamed(rows: pd.DataFrame) -> pd.DataFrame:
    """The test rows without a split column and with the reference's other column names."""
    return rows.drop(columns=["split"]).rename(columns={"masked": "text_masked", "label": "token"})


def test_from_experiment_rebuilds_the_drawn_split_and_column_names(tiny_mlm_dir, tmp_path) -> None:
    data = _renamed(make_rows(repeat=3))
    trainer = _train(TextPredictionTrainer(
        model=tiny_mlm_dir, data=data, args=_args(tmp_path / "exp"), target_classes=["3SG", "3PL"], split_col=None,
        split_ratios=(0.5, 0.25, 0.25), random_state=7, masked_col="text_masked", label_col="token",
        max_counterfactuals_per_sentence=2))
    saved = json.loads((tmp_path / "exp" / "run_config.json").read_text())
    options = saved["data_options"]
    assert options["split_col"] is None and options["random_state"] == 7
    assert (options["split_train_ratio"], options["split_val_ratio"], options["split_test_ratio"]) == (0.5, 0.25, 0.25)
    assert options["masked_col"] == "text_masked" and options["max_counterfactuals_per_sentence"] == 2
    assert saved["data"] is None and saved["target_classes"] == ["3SG", "3PL"]  # in-memory data: data= on reattach

    # another seed for the reattached arguments must not redraw the split: random_state was resolved and saved
    again = Trainer.from_experiment(tmp_path / "exp", data=data, seed=3)
    rows, fresh = trainer.unified_data()[0], again.unified_data()[0]
    pd.testing.assert_frame_equal(rows.reset_index(drop=True), fresh.reset_index(drop=True))
    assert rows["split"].value_counts().to_dict() != {"train": len(rows)}  # the split was drawn
    # without the saved options (a run_config.json of an older version) the same data does not even read
    old = {k: v for k, v in saved.items() if k != "data_options"}
    (tmp_path / "exp" / "run_config.json").write_text(json.dumps(old))
    with pytest.raises(Exception, match="no 'split' column"):
        Trainer.from_experiment(tmp_path / "exp", data=data)


def test_held_out_split_needs_its_group_key_again(tiny_mlm_dir, tmp_path) -> None:
    data = make_rows(repeat=3).drop(columns=["split"])
    key = [str.lower]
    trainer = _train(TextPredictionTrainer(model=tiny_mlm_dir, data=data, args=_args(tmp_path / "h"),
                                           target_classes=["3SG", "3PL"], split_col="heldout", split_group_col="masked",
                                           split_group_key=key, split_ratios=(0.34, 0.33, 0.33)))
    options = json.loads((tmp_path / "h" / "run_config.json").read_text())["data_options"]
    assert options["split_col"] == "heldout" and options["split_group_key"] == ["str.lower"]
    with pytest.raises(ValueError, match="pass the same split_group_key="):
        Trainer.from_experiment(tmp_path / "h", data=data)
    again = Trainer.from_experiment(tmp_path / "h", data=data, split_group_key=key)
    pd.testing.assert_frame_equal(trainer.unified_data()[0].reset_index(drop=True),
                                  again.unified_data()[0].reset_index(drop=True))


def test_data_given_as_a_file_is_recorded_and_not_needed_again(tiny_mlm_dir, tmp_path) -> None:
    path = tmp_path / "rows.csv"
    make_rows(repeat=2).to_csv(path, index=False)
    trainer = _train(TextPredictionTrainer(model=tiny_mlm_dir, data=str(path), args=_args(tmp_path / "f")))
    assert json.loads((tmp_path / "f" / "run_config.json").read_text())["data"] == str(path.resolve())
    again = Trainer.from_experiment(tmp_path / "f")
    assert again.pair == trainer.pair and len(again.unified_data()[0]) == len(trainer.unified_data()[0])
