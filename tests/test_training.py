"""Training loop and Trainer facade on a tiny random BERT: determinism, caching, failures, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import count_gradient_passes

from gradiend import DataError, TextPredictionTrainer, TrainingArguments, TrainingCallback
from gradiend.gradients import GradientEngine


def _args(tmp_path: Path, name: str = "exp", **kw) -> TrainingArguments:
    base = dict(experiment_dir=str(tmp_path / name), train_batch_size=4, max_steps=6, eval_steps=3,
                learning_rate=1e-3, seed=0, show_progress=False, scale_estimation_batches=2)
    base.update(kw)
    return TrainingArguments(**base)


def _trainer(model_dir: str, rows: pd.DataFrame, args: TrainingArguments, **kw) -> TextPredictionTrainer:
    return TextPredictionTrainer(model=model_dir, data=rows, args=args, target_classes=["3SG", "3PL"], **kw)


@pytest.mark.filterwarnings("ignore:GRADIEND training did not converge")
def test_same_seed_gives_identical_training_stats(tiny_mlm_dir, tiny_rows, tmp_path) -> None:
    stats = []
    for name in ("a", "b"):
        trainer = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path, name))
        trainer.train()
        stats.append(json.loads((Path(trainer.model_path) / "training.json").read_text()))
        assert (Path(trainer.experiment_dir) / "training_convergence.png").is_file(), "plot auto-saved by train()"
    a, b = stats
    assert a["losses"] == b["losses"] and len(a["losses"]) == 6
    assert a["training_stats"]["scores"] == b["training_stats"]["scores"]
    assert set(a["training_stats"]["scores"]) == {"0", "3", "6"}
    assert a["gradient_scales"] == b["gradient_scales"]
    other = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path, "c", seed=1))
    other.train()
    assert json.loads((Path(other.model_path) / "training.json").read_text())["losses"] != a["losses"]


@pytest.mark.filterwarnings("ignore:GRADIEND training did not converge")
def test_train_writes_checkpoint_and_reloads(tiny_mlm_dir, tiny_rows, tmp_path) -> None:
    trainer = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path))
    trainer.train()
    model_dir = Path(trainer.experiment_dir) / "model"
    assert trainer.model_path == str(model_dir)
    assert sorted(p.name for p in model_dir.iterdir()) == ["gradiend_config.json", "model.safetensors",
                                                           "training.json"]
    config = json.loads((model_dir / "gradiend_config.json").read_text())
    assert config["base_model"] == tiny_mlm_dir and config["feature_classes"] == ["3SG", "3PL"]
    assert config["feature_class_encoding_direction"] == {"3SG": 1, "3PL": -1}
    in_memory = trainer.get_model()
    loaded = trainer.load_model(model_dir)
    for key, value in in_memory.gradiend.state_dict().items():
        assert torch.equal(value.cpu(), loaded.gradiend.state_dict()[key].cpu()), key
    texts = list(tiny_rows["masked"][:4])
    tokens = list(tiny_rows["label"][:4])
    assert in_memory.encode(texts, tokens, ["they"] * 4).tolist() == loaded.encode(texts, tokens, ["they"] * 4).tolist()
    result = trainer.evaluate_encoder(return_df=True)
    df = result["encoder_df"]
    assert {"training", "neutral_training_masked"} <= set(df["type"])
    assert result["n_samples"] == len(df)
    assert set(result["mean_by_class"]) == {"3SG", "3PL"}
    assert -1.0 <= result["correlation"] <= 1.0
    assert trainer.get_training_stats()["training_args"]["max_steps"] == 6
    assert "3SG" in str(trainer)


@pytest.mark.filterwarnings("ignore:GRADIEND training did not converge")
def test_use_cache_skips_a_finished_run_and_retrains_on_change(tiny_mlm_dir, tiny_rows, tmp_path, monkeypatch):
    trainer = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path, use_cache=True))
    trainer.train()
    calls = count_gradient_passes(monkeypatch)
    again = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path, use_cache=True))
    again.train()
    assert calls == [] and again.model_path == trainer.model_path
    changed = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path, use_cache=True, learning_rate=5e-4))
    changed.train()
    assert calls, "a changed learning rate must not reuse the old run"


def test_nan_gradient_stops_with_step_and_saves_nothing(tiny_mlm_dir, tiny_rows, tmp_path, monkeypatch):
    original = GradientEngine.gradients
    calls = []

    def poisoned(self, *a, **kw):
        out = original(self, *a, **kw)
        calls.append(1)
        if len(calls) == 2 + 4:  # 2 scale batches, then training step 4
            next(iter(out.values()))[3] = float("nan")
        return out

    monkeypatch.setattr(GradientEngine, "gradients", poisoned)
    trainer = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path, gradient_cache="off"))
    with pytest.raises(FloatingPointError, match="step 4"):
        trainer.train()
    assert not (Path(trainer.experiment_dir) / "model").exists()
    assert not list(Path(trainer.experiment_dir).glob(".*lock"))


def test_fail_on_non_convergence_raises_but_keeps_model(tiny_mlm_dir, tiny_rows, tmp_path) -> None:
    args = _args(tmp_path, fail_on_non_convergence=True, convergent_score_threshold=1.0)
    trainer = _trainer(tiny_mlm_dir, tiny_rows, args)
    with pytest.raises(RuntimeError, match="did not converge"):
        trainer.train()
    assert (Path(trainer.experiment_dir) / "model" / "training.json").is_file()


@pytest.mark.filterwarnings("ignore:GRADIEND training did not converge")
def test_callbacks_and_overrides(tiny_mlm_dir, tiny_rows, tmp_path) -> None:
    class Recorder(TrainingCallback):
        def __init__(self) -> None:
            self.steps, self.evals = [], []

        def on_step_end(self, step: int, loss: float) -> None:
            self.steps.append(step)

        def on_evaluate(self, step: int, metrics: dict) -> None:
            self.evals.append((step, metrics["correlation"]))

    recorder = Recorder()
    trainer = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path))
    trainer.train(callbacks=[recorder], max_steps=4, eval_steps=2)
    assert recorder.steps == [1, 2, 3, 4]
    assert [s for s, _ in recorder.evals] == [0, 2, 4]
    assert all(c >= 0 for _, c in recorder.evals)  # sign-normalised
    with pytest.raises(ValueError, match="num_epoch"):
        trainer.train(num_epoch=3)


def test_bad_inputs_get_clear_errors(tiny_mlm_dir, tiny_rows, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _trainer("./no/such/model", tiny_rows, _args(tmp_path)).train()
    no_tokenizer = tmp_path / "no_tok"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((Path(tiny_mlm_dir) / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        _trainer(str(no_tokenizer), tiny_rows, _args(tmp_path)).train()
    unknown = tiny_rows.copy()
    unknown.loc[unknown["label_class"] == "3PL", "label"] = "zebras"
    with pytest.raises(DataError, match="zebras"):
        _trainer(tiny_mlm_dir, unknown, _args(tmp_path)).train()
    no_val = tiny_rows[tiny_rows["split"] != "validation"]
    with pytest.raises(DataError, match="validation"):
        _trainer(tiny_mlm_dir, no_val, _args(tmp_path)).train()
    with pytest.raises(DataError, match="target_classes"):
        TextPredictionTrainer(model=tiny_mlm_dir, data=tiny_rows, args=_args(tmp_path), target_classes=["3SG", "X"])
    with pytest.raises(DataError, match="text"):
        _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path), eval_neutral_data=pd.DataFrame({"sentence": ["a b"]}))
    with pytest.raises(RuntimeError, match="train"):
        _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path)).get_model()
    with pytest.raises(ValueError, match="max_size"):
        _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path)).evaluate_encoder(max_size=0)


def test_lock_refuses_a_second_live_writer(tiny_mlm_dir, tiny_rows, tmp_path) -> None:
    import os
    import subprocess
    import sys

    trainer = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path))
    exp = Path(trainer.experiment_dir)
    exp.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (exp / ".gradiend.lock").write_text(str(sleeper.pid))
        with pytest.raises(RuntimeError, match="in use"):
            trainer.train()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert os.path.exists(exp / ".gradiend.lock")
