"""Resume checkpoints: round trip, interrupted and kill -9'd runs continue to the same weights bitwise,
checkpoints of other runs or damaged ones are ignored, leftovers are cleaned, multi-seed runs resume."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_rows
from safetensors.torch import load_file
from synthetic_source import Holder, SyntheticSource

from gradiend import TextPredictionTrainer, TrainingArguments, TrainingCallback
from gradiend.model import GradiendConfig, GradiendModel
from gradiend.resume import STATE_FILE, TENSORS_FILE, ResumeCheckpoint, TrainingState, clean_resume_root, resume_root
from gradiend.training import TrainingLoop, make_optimizer

pytestmark = pytest.mark.filterwarnings("ignore:GRADIEND training did not converge")

TESTS = Path(__file__).parent
STEPS = 8  # evaluations at 0, 3, 6, 8; checkpoints after 2, 4, 6 (none after the last step)


def _args(experiment: Path, **kw) -> TrainingArguments:
    base = dict(experiment_dir=str(experiment), train_batch_size=4, max_steps=STEPS, eval_steps=3, seed=0,
                show_progress=False, scale_estimation_batches=2, params=["encoder.layer.1.*"], save_steps=2,
                learning_rate=1e-3)
    base.update(kw)
    return TrainingArguments(**base)


def _train(model_dir: str, args: TrainingArguments, callbacks=()) -> TextPredictionTrainer:
    trainer = TextPredictionTrainer(model=model_dir, data=make_rows(), args=args, target_classes=["3SG", "3PL"])
    trainer._autosave_training_convergence = lambda: None  # the plot is not what these tests check
    trainer.train(callbacks=callbacks)
    return trainer


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def _learning_record(model_dir: Path) -> dict:
    """Everything of training.json a resumed run must reproduce exactly (not the timings)."""
    stats = json.loads((model_dir / "training.json").read_text())
    return {"training_stats": stats["training_stats"], "best": stats["best_score_checkpoint"],
            "losses": stats["losses"], "scales": stats["gradient_scales"], "converged": stats["convergence_info"]}


def _assert_same_run(model_dir: Path, reference: Path) -> None:
    ours, ref = _weights(model_dir), _weights(reference)
    assert ours.keys() == ref.keys()
    for key in ref:
        assert torch.equal(ours[key], ref[key]), f"{key} differs from the uninterrupted run"
    assert _learning_record(model_dir) == _learning_record(reference)


class Steps(TrainingCallback):
    """Records steps and evaluations; raises after step `crash_at` (a crash mid-run)."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.crash_at, self.steps, self.evaluations = crash_at, [], []

    def on_step_end(self, step: int, loss: float) -> None:
        self.steps.append(step)
        if step == self.crash_at:
            raise KeyboardInterrupt(f"crash at step {step}")

    def on_evaluate(self, step: int, metrics: dict) -> None:
        self.evaluations.append(step)


@pytest.fixture(scope="module")
def reference(tiny_mlm_dir, tmp_path_factory) -> Path:
    """The model directory of an uninterrupted run (checkpoints written along the way, then removed)."""
    experiment = tmp_path_factory.mktemp("reference")
    _train(tiny_mlm_dir, _args(experiment))
    assert not (resume_root(experiment) / "model").exists(), "the checkpoint is removed once the model is saved"
    return experiment / "model"


# ------------------------------------------------------------------ the state and its file

def _tiny_state(key: str = "run-a", step: int = 3) -> tuple[TrainingState, GradiendModel, torch.optim.Optimizer]:
    gradiend = GradiendModel(GradiendConfig(input_dim=50, feature_classes=["A", "B"]), torch.Generator().manual_seed(0))
    gradiend.input_scale.fill_(0.25)
    optimizer = make_optimizer(gradiend.parameters(), _args(Path("unused")))
    for _ in range(step):
        gradiend.loss(torch.randn(2, 50), torch.randn(2, 50))[0].backward()
        optimizer.step()
    history = {"scores": {"0": 0.1, "2": float("nan")}, "mean_by_class": {"0": {"A": 0.5, "B": -0.5}},
               "encoder_norms": {"0": np.float32(1.5)}, "losses": [0.3, 0.2, 0.1], "flips": [0], "epoch": 1,
               "n_eval_rows": 12,
               "best": {"correlation": 0.1, "global_step": 2, "epoch": 0, "mean_by_class": {"A": 1.0}, "loss": 0.2}}
    best = {k: v.clone() + 1 for k, v in gradiend.state_dict().items()}
    state = TrainingState(key, step, 10, 1, gradiend.state_dict(), optimizer.state_dict(), history, best, False,
                          {"gradients": 1.0, "total": 2.0})
    return state, gradiend, optimizer


def test_state_round_trips_exactly(tmp_path, caplog) -> None:
    state, gradiend, optimizer = _tiny_state()
    checkpoint = ResumeCheckpoint(tmp_path / "resume" / "model", "run-a", save_steps=3)
    checkpoint.save(state)
    assert sorted(p.name for p in checkpoint.directory.iterdir()) == [".gradiend-output.json", STATE_FILE,
                                                                       TENSORS_FILE]
    with caplog.at_level(logging.INFO, logger="gradiend.resume"):
        loaded = checkpoint.load(10, gradiend.state_dict(), optimizer)
    assert "Resuming from step 3 of 10" in caplog.text
    assert (loaded.key, loaded.step, loaded.total_steps, loaded.epoch) == ("run-a", 3, 10, 1)
    for ours, theirs in ((loaded.gradiend, state.gradiend), (loaded.best_state, state.best_state)):
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert str(loaded.history) == str(state.history).replace("np.float32(1.5)", "1.5"), "NaN included"
    assert loaded.timings == state.timings
    saved_optim = state.optimizer
    assert loaded.optimizer["param_groups"] == saved_optim["param_groups"]
    assert loaded.optimizer["state"].keys() == saved_optim["state"].keys()
    for index, entry in saved_optim["state"].items():
        assert entry.keys() == loaded.optimizer["state"][index].keys() == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(entry[k], loaded.optimizer["state"][index][k]) for k in entry)
    fresh = make_optimizer(gradiend.parameters(), _args(Path("unused")))
    fresh.load_state_dict(loaded.optimizer)  # what the loop does: torch accepts it as its own
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], saved_optim["state"][0]["exp_avg"])
    checkpoint.remove()
    assert not checkpoint.directory.exists() and list(checkpoint.directory.parent.iterdir()) == []


def test_checkpoint_of_other_settings_is_ignored(tmp_path, caplog) -> None:
    state, gradiend, optimizer = _tiny_state(key="run-a")
    ResumeCheckpoint(tmp_path / "model", "run-a", 3).save(state)
    other = ResumeCheckpoint(tmp_path / "model", "run-b", 3)
    with caplog.at_level(logging.INFO, logger="gradiend.resume"):
        assert other.load(10, gradiend.state_dict(), optimizer) is None
    assert "belongs to other settings" in caplog.text and "Resuming" not in caplog.text
    assert ResumeCheckpoint(tmp_path / "model", "run-a", 3, resume=False).load(10, gradiend.state_dict(),
                                                                               optimizer) is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gradiend.resume"):  # same key, another step count
        assert ResumeCheckpoint(tmp_path / "model", "run-a", 3).load(20, gradiend.state_dict(), optimizer) is None
    assert "does not fit this run's 20 steps" in caplog.text


@pytest.mark.parametrize("damage", ["truncated", "garbage_json", "missing_tensors", "other_shape"])
def test_damaged_checkpoint_is_ignored_with_a_warning(tmp_path, caplog, damage) -> None:
    state, gradiend, optimizer = _tiny_state()
    checkpoint = ResumeCheckpoint(tmp_path / "model", "run-a", 3)
    checkpoint.save(state)
    tensors, meta = checkpoint.directory / TENSORS_FILE, checkpoint.directory / STATE_FILE
    expected = {"truncated": "truncated", "garbage_json": "unreadable", "missing_tensors": "No such file",
                "other_shape": "the model's"}[damage]
    if damage == "truncated":
        tensors.write_bytes(tensors.read_bytes()[:-100])
    elif damage == "garbage_json":
        meta.write_text('{"format": "gradiend-resume", "key": ')
    elif damage == "missing_tensors":
        tensors.unlink()
    else:  # a model of another size
        gradiend = GradiendModel(GradiendConfig(input_dim=40, feature_classes=["A", "B"]))
        optimizer = make_optimizer(gradiend.parameters(), _args(Path("unused")))
    with caplog.at_level(logging.WARNING, logger="gradiend.resume"):
        assert checkpoint.load(10, gradiend.state_dict(), optimizer) is None
    assert f"Ignoring the resume checkpoint in {checkpoint.directory}" in caplog.text and expected in caplog.text


def test_leftovers_among_checkpoints_are_cleaned(tmp_path) -> None:
    root = resume_root(tmp_path)
    state, gradiend, optimizer = _tiny_state()
    ResumeCheckpoint(root / "seed_1", "run-a", 3).save(state)
    (root / ".seed_0.0badc0de.tmp").mkdir()  # a checkpoint write killed before its swap
    (root / ".seed_0.0badc0de.tmp" / TENSORS_FILE).write_bytes(b"x" * 100)
    (root / ".seeds.json.12345678.tmp").write_text("{")  # a killed marker write
    os.replace(root / "seed_1", root / ".seed_1.999999999-abcdef12.old")  # a swap killed between its renames
    clean_resume_root(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["seed_1"], "temps removed, the moved-aside checkpoint restored"
    assert ResumeCheckpoint(root / "seed_1", "run-a", 3).load(10, gradiend.state_dict(), optimizer) is not None


# ------------------------------------------------------------------ the loop



def _loop_run(checkpoint: ResumeCheckpoint | None, callbacks=(), **kw):
    gradiend = GradiendModel(GradiendConfig(input_dim=64, feature_classes=["A", "B"]), torch.Generator().manual_seed(1))
    rows = pd.DataFrame({"masked": [f"row {i} [MASK]" for i in range(12)], "factual": ["A", "B"] * 6,
                         "alternative": ["B", "A"] * 6, "label": [1, -1] * 6})
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))

    def evaluate() -> dict:
        h = gradiend.encode(x)[:, 0].detach()
        return {"correlation": float(h[:4].mean() - h[4:].mean()), "n": 8,
                "mean_by_class": {"A": float(h[:4].mean()), "B": float(h[4:].mean())}}

    args = TrainingArguments(**{**dict(train_batch_size=2, max_steps=20, eval_steps=5, seed=0, show_progress=False,
                                       scale_estimation_batches=2), **kw})
    outcome = TrainingLoop(Holder(gradiend), args, SyntheticSource(), evaluate, callbacks, checkpoint).fit(rows)
    return outcome, gradiend


@pytest.mark.parametrize("eval_steps", [5, 8])  # 8: the best checkpoint is the saved weights themselves
def test_loop_resumes_after_a_crash_to_the_same_outcome(tmp_path, eval_steps) -> None:
    uninterrupted, final = _loop_run(None, eval_steps=eval_steps)
    checkpoint = ResumeCheckpoint(tmp_path / "model", "run", save_steps=4)
    with pytest.raises(KeyboardInterrupt):  # checkpoints after steps 4, 8; crash in step 11
        _loop_run(checkpoint, [Steps(crash_at=11)], eval_steps=eval_steps)
    meta = json.loads((checkpoint.directory / STATE_FILE).read_text())
    assert meta["step"] == 8 and meta["history"]["best"]["global_step"] == 8 - (8 % eval_steps)
    assert meta["best_is_current"] == (eval_steps == 8)
    resumed_steps = Steps()
    resumed, gradiend = _loop_run(checkpoint, [resumed_steps], eval_steps=eval_steps)
    assert resumed_steps.steps == list(range(9, 21))
    assert resumed_steps.evaluations == [s for s in range(9, 21) if s % eval_steps == 0 or s == 20]
    assert json.loads((checkpoint.directory / STATE_FILE).read_text())["step"] == 16, "never after the last step"
    for key, value in uninterrupted.state.items():
        assert torch.equal(value, resumed.state[key]), key
    for key, value in final.state_dict().items():
        assert torch.equal(value, gradiend.state_dict()[key]), f"final {key}"
    for part in ("training_stats", "best_score_checkpoint", "losses", "gradient_scales", "convergence_info"):
        assert resumed.stats[part] == uninterrupted.stats[part], part


def test_failed_checkpoint_write_warns_and_training_goes_on(tmp_path, caplog, monkeypatch) -> None:
    import gradiend.resume

    def disk_full(tensors, path, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gradiend.resume, "save_file", disk_full)
    checkpoint = ResumeCheckpoint(tmp_path / "model", "run", save_steps=4)
    with caplog.at_level(logging.WARNING, logger="gradiend.resume"):
        outcome, _ = _loop_run(checkpoint)
    assert len(outcome.stats["losses"]) == 20 and list(tmp_path.iterdir()) == []
    assert caplog.text.count("Could not save the training state") == 4 and "No space left" in caplog.text


def test_save_steps_zero_writes_nothing_and_seed_none_cannot_resume(tmp_path, caplog) -> None:
    checkpoint = ResumeCheckpoint(tmp_path / "model", "run", save_steps=0)
    _loop_run(checkpoint)
    assert not tmp_path.joinpath("model").exists()
    checkpoint = ResumeCheckpoint(tmp_path / "model", "run", save_steps=4)
    with caplog.at_level(logging.INFO, logger="gradiend.training"):
        _loop_run(checkpoint, seed=None)
    assert not tmp_path.joinpath("model").exists() and "every run draws a new batch order" in caplog.text


# ------------------------------------------------------------------ whole runs on the tiny BERT

def test_interrupted_run_resumes_bitwise(tiny_mlm_dir, tmp_path, reference, caplog) -> None:
    experiment = tmp_path / "exp"
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_mlm_dir, _args(experiment), [Steps(crash_at=5)])
    checkpoint = resume_root(experiment) / "model"
    assert json.loads((checkpoint / STATE_FILE).read_text())["step"] == 4
    assert not (experiment / "model").exists()
    steps = Steps()
    with caplog.at_level(logging.INFO, logger="gradiend"):
        _train(tiny_mlm_dir, _args(experiment), [steps])
    assert f"Resuming from step 4 of {STEPS} in {checkpoint}" in caplog.text
    assert steps.steps == [5, 6, 7, 8] and steps.evaluations == [6, 8], "done steps and evaluations are not redone"
    assert not checkpoint.exists()
    _assert_same_run(experiment / "model", reference)


KILLED_RUN = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import make_rows
from gradiend import TextPredictionTrainer, TrainingArguments, TrainingCallback

class Hang(TrainingCallback):
    def on_step_end(self, step, loss):
        if step == 5:  # the checkpoint of step 4 is on disk: tell the test, then wait for SIGKILL
            Path({marker!r}).write_text("5")
            time.sleep(600)

args = TrainingArguments(**{args!r})
trainer = TextPredictionTrainer(model={model!r}, data=make_rows(), args=args, target_classes=["3SG", "3PL"])
trainer.train(callbacks=[Hang()])
"""


def test_kill_9_then_rerun_reaches_the_same_weights(tiny_mlm_dir, tmp_path, reference) -> None:
    experiment, marker = tmp_path / "exp", tmp_path / "at_step_5"
    args = {k: v for k, v in _args(experiment).to_dict().items() if v is not None}
    script = textwrap.dedent(KILLED_RUN).format(tests=str(TESTS), marker=str(marker), args=args, model=tiny_mlm_dir)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), f"the run did not reach step 5: {process.stderr.read().decode()[-2000:]}"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    checkpoint = resume_root(experiment) / "model"
    assert json.loads((checkpoint / STATE_FILE).read_text())["step"] == 4
    orphan = checkpoint.parent / ".model.0badc0de.tmp"  # as a kill during the next checkpoint write leaves it
    orphan.mkdir()
    steps = Steps()
    _train(tiny_mlm_dir, _args(experiment), [steps])
    assert steps.steps == [5, 6, 7, 8]
    assert not orphan.exists() and not checkpoint.exists()
    _assert_same_run(experiment / "model", reference)


def test_multi_seed_run_resumes_in_the_seed_it_crashed_in(tiny_mlm_dir, tmp_path) -> None:
    seeds = dict(max_seeds=2, min_convergent_seeds=2, max_steps=4, saved_seed_runs="all_tried")
    _train(tiny_mlm_dir, _args(tmp_path / "ref", **seeds))

    class CrashInSeed1(Steps):
        def on_train_begin(self, model, optimizer, args) -> None:
            self.crash_at = 3 if args.seed == 1 else None

    experiment = tmp_path / "exp"
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_mlm_dir, _args(experiment, **seeds), [CrashInSeed1()])
    assert json.loads((resume_root(experiment) / "seeds.json").read_text())["finished"] == [0]
    assert json.loads((resume_root(experiment) / "seed_1" / STATE_FILE).read_text())["step"] == 2
    steps = Steps()
    _train(tiny_mlm_dir, _args(experiment, **seeds), [steps])
    assert steps.steps == [3, 4], "seed 0 is reused, seed 1 continues after its checkpoint"
    report = json.loads((experiment / "seeds" / "seed_report.json").read_text())
    assert [(r["seed"], r["trained"]) for r in report["runs"]] == [(0, False), (1, True)]
    # the seed list is gone, so a later run without use_cache trains every seed again
    assert list(resume_root(experiment).iterdir()) == [], "checkpoints and the seed list are removed at the end"
    for seed in (0, 1):
        _assert_same_run(experiment / "seeds" / f"seed_{seed}", tmp_path / "ref" / "seeds" / f"seed_{seed}")
