"""Training loop and Trainer facade: determinism, caching, failures, errors (tiny random BERT), and the
loop on its own with an injected synthetic gradient source."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import count_gradient_passes

from gradiend import DataError, TextPredictionTrainer, TrainingArguments, TrainingCallback
from gradiend.data import unify
from gradiend.gradients import GradientEngine
from gradiend.memory import memory_estimate
from gradiend.metrics import pearson
from gradiend.model import GradiendConfig, GradiendModel
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.training import TrainingLoop, train_gradiend


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
        # training never draws (matplotlib stays off its path, issue 17): the plot comes from training.json on demand
        assert not (Path(trainer.experiment_dir) / "training_convergence.png").exists()
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
    assert sorted(p.name for p in model_dir.iterdir()) == [".gradiend-output.json", "gradiend_config.json",
                                                           "model.safetensors", "training.json"]
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
    import subprocess
    import sys

    trainer = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path))
    exp = Path(trainer.experiment_dir)
    code = ("import sys, time\nfrom gradiend.experiment import ExperimentDir\n"
            "with ExperimentDir(sys.argv[1]).lock():\n    print('held', flush=True)\n    time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(exp)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match="in use"):
            trainer.train()
        assert (exp / ".gradiend.lock").exists()
        assert not (exp / "model").exists()  # nothing written while another process holds the directory
    finally:
        holder.kill()
        holder.wait()


class _Holder:
    """Just enough of a ModelWithGradiend for the loop: the GRADIEND."""

    def __init__(self, gradiend: GradiendModel) -> None:
        self.gradiend = gradiend


class _SyntheticGradients:
    """A fake gradient source (a `GradientProvider`, no language model): class A rows get source
    gradients +u and targets +v, class B rows −u and −v, plus noise. The class signal sits in 30 of
    the 300 source coordinates and is as large as the noise there, so a random encoder barely
    separates the classes: the loop has to find those coordinates."""

    def __init__(self, n: int = 300, seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.u = torch.zeros(n)
        self.u[:30] = 1e-3
        self.v = torch.randn(n, generator=self.gen) * 1e-3
        self.base_passes = 0.0
        self.calls: list[tuple[int, bool]] = []

    def sample(self, sign: float, rows: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(2, rows, self.u.numel(), generator=self.gen)
        return sign * self.u + noise[0] * 1e-3, sign * self.v + noise[1] * 1e-4

    def gradients(self, step: int, texts, factual, alternative, out: dict[str, torch.Tensor],
                  keep: bool) -> dict[str, torch.Tensor]:
        self.calls.append((step, keep))
        x, y = self.sample(1.0 if factual[0] == "A" else -1.0)
        out["alternative"].copy_(x[0])
        out["diff"].copy_(y[0])
        return out


def test_training_loop_learns_from_an_injected_gradient_source() -> None:
    source = _SyntheticGradients()
    gradiend = GradiendModel(GradiendConfig(input_dim=300, feature_classes=["A", "B"]),
                             torch.Generator().manual_seed(1))
    gradiend.input_scale.fill_(0.008)  # fixed scales (standardize_gradients=False): inputs L1 ≈ 30, targets RMS ≈ 0.01
    gradiend.target_scale.fill_(0.1)
    eval_x = torch.cat([source.sample(1.0, 20)[0], source.sample(-1.0, 20)[0]])
    eval_labels = [1] * 20 + [-1] * 20

    def evaluate() -> dict:
        with torch.no_grad():
            h = gradiend.encode(eval_x)[:, 0]
        return {"correlation": pearson(h, eval_labels), "n": len(eval_labels),
                "mean_by_class": {"A": float(h[:20].mean()), "B": float(h[20:].mean())}}

    rows = pd.DataFrame({"masked": [f"row {i} [MASK]" for i in range(16)], "factual": ["A", "B"] * 8,
                         "alternative": ["B", "A"] * 8, "label": [1, -1] * 8})
    args = TrainingArguments(train_batch_size=2, max_steps=200, eval_steps=50, learning_rate=1e-3, seed=0,
                             show_progress=False, standardize_gradients=False, convergent_mean_by_class_threshold=None)
    steps: list[int] = []

    class Steps(TrainingCallback):
        def on_step_end(self, step: int, loss: float) -> None:
            steps.append(step)

    outcome = TrainingLoop(_Holder(gradiend), args, source, evaluate, [Steps()]).fit(rows)
    stats = outcome.stats["training_stats"]
    assert steps == list(range(1, 201)) and list(stats["scores"]) == ["0", "50", "100", "150", "200"]
    assert stats["scores"]["0"] < 0.5, "the random initial encoder should not separate the classes yet"
    assert outcome.converged and outcome.stats["best_score_checkpoint"]["correlation"] > 0.9
    assert all(c >= 0 for c in stats["scores"].values()), "sign-normalised"
    means = stats["mean_by_class"]["200"]
    assert means["A"] > 0 > means["B"]
    # 200 steps over an epoch of 8 batches: every batch repeats, so the source is told to keep each one
    assert source.calls[0] == (1, True) and all(keep for _, keep in source.calls)
    assert stats["n_train_rows"] == 16 and stats["n_eval_rows"] == 40 and stats["epochs"] == 25
    gradiend.load_state_dict(outcome.state)
    assert abs(evaluate()["correlation"]) > 0.9


def _global_random_state() -> tuple:
    return torch.initial_seed(), torch.get_rng_state(), random.getstate(), np.random.get_state()


def _same_random_state(a: tuple, b: tuple) -> bool:
    return (a[0] == b[0] and torch.equal(a[1], b[1]) and a[2] == b[2]
            and all(np.array_equal(x, y) for x, y in zip(a[3], b[3], strict=True)))


@pytest.mark.filterwarnings("ignore:GRADIEND training did not converge")
def test_training_leaves_global_random_state_alone_and_is_seeded_locally(tiny_mlm_dir, tiny_rows) -> None:
    rows, pair = unify(tiny_rows, target_classes=["3SG", "3PL"], seed=0)
    train, val = rows[rows["split"] == "train"], rows[rows["split"] == "validation"]
    template = ModelWithGradiend.create(tiny_mlm_dir, feature_classes=pair, seed=0)
    args = TrainingArguments(train_batch_size=4, max_steps=4, eval_steps=2, seed=5, show_progress=False,
                             scale_estimation_batches=2)
    outcomes = []
    for global_seed in (1, 2):  # a different global state before each run must not matter
        torch.manual_seed(global_seed)
        random.seed(global_seed)
        np.random.seed(global_seed)
        before = _global_random_state()
        outcomes.append(train_gradiend(template.with_new_gradiend(args.seed), train, val, pair, args))
        assert _same_random_state(before, _global_random_state()), "training touched the global random state"
    first, second = outcomes
    assert first.state.keys() == second.state.keys()
    assert all(torch.equal(first.state[k], second.state[k]) for k in first.state)
    assert first.stats["losses"] == second.stats["losses"]
    # training.json keeps its structure (key order included: the files stay byte-compatible)
    stats = first.stats
    assert list(stats) == ["training_stats", "best_score_checkpoint", "losses", "gradient_scales",
                           "convergence_info", "time", "memory_estimate_bytes", "diagnostics", "decoder_fit",
                           "calibration"]
    assert list(stats["training_stats"]) == ["global_step", "steps_per_epoch", "epochs", "correlation", "scores",
                                             "mean_by_class", "encoder_norms", "sign_flips_at_steps",
                                             "n_train_rows", "n_eval_rows"]
    assert list(stats["best_score_checkpoint"]) == ["correlation", "global_step", "epoch", "mean_by_class", "loss"]
    assert list(stats["gradient_scales"]) == ["input", "target", "input_l1_norm", "target_rms"]
    assert list(stats["convergence_info"]) == ["converged", "reason", "convergent_score_threshold",
                                               "convergent_mean_by_class_threshold"]
    assert list(stats["time"]) == ["gradients", "gradiend", "eval", "scale", "base_passes", "total",
                                   "seconds_per_step", "calibration"]  # the encoder calibration after the loop
    assert list(first.timings) == list(stats["time"])[:-2]
    n = template.param_map.size
    assert stats["memory_estimate_bytes"] == memory_estimate(n, 1, True, 2, 1, gradient_buffer_sets=2,
                                                             class_target_sums=True)
    assert stats["training_stats"]["n_train_rows"] == len(train) and stats["training_stats"]["n_eval_rows"] == len(val)


@pytest.mark.parametrize("mode", ["encoder", "decoder"])
def test_supervised_baselines_train_one_half_through_the_loop(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    source = _SyntheticGradients()
    gradiend = GradiendModel(GradiendConfig(input_dim=300, feature_classes=["A", "B"]),
                             torch.Generator().manual_seed(1))
    gradiend.input_scale.fill_(0.008)
    gradiend.target_scale.fill_(0.1)
    initial = {k: v.clone() for k, v in gradiend.state_dict().items()}
    eval_x = torch.cat([source.sample(1.0, 20)[0], source.sample(-1.0, 20)[0]])

    def evaluate() -> dict:
        with torch.no_grad():
            h = gradiend.encode(eval_x)[:, 0]
        return {"correlation": pearson(h, [1] * 20 + [-1] * 20), "n": 40,
                "mean_by_class": {"A": float(h[:20].mean()), "B": float(h[20:].mean())}}

    rows = pd.DataFrame({"masked": [f"row {i} [MASK]" for i in range(16)], "factual": ["A", "B"] * 8,
                         "alternative": ["B", "A"] * 8, "label": [1, -1] * 8})
    extra = {"supervised_encoder": True} if mode == "encoder" else {"supervised_decoder": True,
                                                                     "convergent_metric": "loss"}
    args = TrainingArguments(train_batch_size=2, max_steps=120, eval_steps=40, learning_rate=1e-2, seed=0,
                             show_progress=False, standardize_gradients=False, convergent_mean_by_class_threshold=None,
                             **extra)
    outcome = TrainingLoop(_Holder(gradiend), args, source, evaluate).fit(rows)
    gradiend.load_state_dict(outcome.state)
    frozen, trained = ("decoder_weight", "encoder_weight") if mode == "encoder" else ("encoder_weight",
                                                                                     "decoder_weight")
    assert torch.equal(gradiend.state_dict()[frozen], initial[frozen]), "the other half stays as initialised"
    assert not torch.equal(gradiend.state_dict()[trained], initial[trained])
    if mode == "encoder":
        assert evaluate()["correlation"] > 0.9
    else:  # decode(+1) points along class A's target direction
        update = gradiend.decode_normalized(torch.ones(1, 1))[0] * gradiend.target_scale
        assert torch.nn.functional.cosine_similarity(update, source.v, dim=0) > 0.9
        assert "not learning" not in caplog.text, "the untrained encoder of a decoder baseline is no warning"


def test_supervised_decoder_needs_the_loss_metric() -> None:
    with pytest.raises(ValueError, match="convergent_metric='loss'"):
        from gradiend.supervised import supervised_mode
        supervised_mode(TrainingArguments(supervised_decoder=True))


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_training_loop_trains_in_the_gradiend_dtype(dtype: str) -> None:
    """Gradient buffers are allocated in the GRADIEND's dtype, so a float64 or bf16 GRADIEND trains."""
    source = _SyntheticGradients()
    gradiend = GradiendModel(GradiendConfig(input_dim=300, feature_classes=["A", "B"], gradiend_dtype=dtype),
                             torch.Generator().manual_seed(1))
    gradiend.input_scale.fill_(0.008)
    gradiend.target_scale.fill_(0.1)
    eval_x = torch.cat([source.sample(1.0, 20)[0], source.sample(-1.0, 20)[0]]).to(getattr(torch, dtype))
    eval_labels = [1] * 20 + [-1] * 20

    def evaluate() -> dict:
        with torch.no_grad():
            h = gradiend.encode(eval_x)[:, 0].float()
        return {"correlation": pearson(h, eval_labels), "n": len(eval_labels),
                "mean_by_class": {"A": float(h[:20].mean()), "B": float(h[20:].mean())}}

    rows = pd.DataFrame({"masked": [f"row {i} [MASK]" for i in range(16)], "factual": ["A", "B"] * 8,
                         "alternative": ["B", "A"] * 8, "label": [1, -1] * 8})
    args = TrainingArguments(train_batch_size=2, max_steps=200, eval_steps=100, learning_rate=1e-3, seed=0,
                             show_progress=False, standardize_gradients=False, convergent_mean_by_class_threshold=None)
    loop = TrainingLoop(_Holder(gradiend), args, source, evaluate)
    outcome = loop.fit(rows)
    assert all(buf.dtype == getattr(torch, dtype) for buf in loop._buffers.values())
    assert all(v.dtype == getattr(torch, dtype) for k, v in outcome.state.items() if k.startswith(("enc", "dec")))
    assert math.isfinite(outcome.stats["losses"][-1])
    assert outcome.stats["best_score_checkpoint"]["correlation"] > 0.8  # 0.2 after 100 steps
