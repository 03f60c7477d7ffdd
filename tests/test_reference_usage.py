"""The "Basic Usage" example of the reference docs runs as written (model id → local path)."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import make_rows


@pytest.mark.filterwarnings("ignore:GRADIEND training did not converge")
def test_basic_usage_as_written(tiny_mlm_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    your_dataframe = make_rows().replace({"label_class": {"3SG": "class1", "3PL": "class2"}})
    assert isinstance(your_dataframe, pd.DataFrame)

    # --- the example, verbatim except for the model string -----------------------------------
    from gradiend.trainer.core.arguments import TrainingArguments
    from gradiend.trainer.text.prediction.trainer import TextPredictionTrainer

    args = TrainingArguments(
        experiment_dir="./results",
        train_batch_size=32,
        num_epochs=10,
        learning_rate=1e-3,
    )
    trainer = TextPredictionTrainer(
        model=tiny_mlm_dir,
        args=args,
        run_id="runs/experiment_gpt2",
        data=your_dataframe,
        target_classes=["class1", "class2"],
    )
    trainer.train()
    enc_results = trainer.evaluate_encoder()
    dec_results = trainer.evaluate_decoder()
    trainer.plot_encoder_distributions()
    trainer.plot_training_convergence()
    # ---------------------------------------------------------------------------------------------

    exp = tmp_path / "results" / "runs" / "experiment_gpt2"
    assert trainer.model_path.endswith("runs/experiment_gpt2/model")
    assert (exp / "model" / "model.safetensors").is_file()
    assert (exp / "training_convergence.png").is_file() and (exp / "encoder_analysis_split_test.png").is_file()
    assert trainer.get_training_stats()["training_stats"]["global_step"] == 20  # 10 epochs × 2 batches
    assert set(enc_results["mean_by_class"]) == {"class1", "class2"}
    assert {"class1", "class2", "grid"} <= set(dec_results)
