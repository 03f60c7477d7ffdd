"""`overlap_step` (issue 17): the GRADIEND step runs on a worker while the next batch's gradients are computed,
and training stays bitwise the sequential loop's: weights, losses, evaluations, checkpoints and resume."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from synthetic_source import Holder, SyntheticSource

from gradiend import TextPredictionTrainer, TrainingArguments, TrainingCallback
from gradiend.model import GradiendConfig, GradiendModel
from gradiend.overlap import StepWorker
from gradiend.resume import STATE_FILE, ResumeCheckpoint
from gradiend.training import TrainingLoop


class _Record(TrainingCallback):
    """Which thread ran each optimizer step, the steps ended and evaluated; raises after step `crash_at`."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.crash_at, self.threads, self.ended, self.evaluated = crash_at, [], [], []

    def on_train_begin(self, optimizer, **kwargs) -> None:
        optimizer.register_step_pre_hook(lambda *_: self.threads.append(threading.current_thread().name))

    def on_step_end(self, step: int, loss: float) -> None:
        self.ended.append(step)
        if step == self.crash_at:
            raise KeyboardInterrupt(f"crash at step {step}")

    def on_evaluate(self, step: int, metrics: dict) -> None:
        self.evaluated.append(step)


class _BeginToo(_Record):
    def on_step_begin(self, step: int) -> None:
        pass


def _run(overlap: bool, callbacks=(), checkpoint=None, source=None, **kw):
    gradiend = GradiendModel(GradiendConfig(input_dim=64, feature_classes=["A", "B"]), torch.Generator().manual_seed(1))
    rows = pd.DataFrame({"masked": [f"row {i} [MASK]" for i in range(12)], "factual": ["A", "B"] * 6,
                         "alternative": ["B", "A"] * 6, "label": [1, -1] * 6})
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))

    calls = iter(range(100))

    def evaluate() -> dict:  # every other evaluation reads negative: the loop flips the sign mid-run
        h = gradiend.encode(x)[:, 0].detach()
        sign = -1.0 if next(calls) % 2 else 1.0
        return {"correlation": sign * abs(float(h[:4].mean() - h[4:].mean())), "n": 8,
                "mean_by_class": {"A": float(h[:4].mean()), "B": float(h[4:].mean())}}

    args = TrainingArguments(**{**dict(train_batch_size=2, max_steps=20, eval_steps=5, seed=0, show_progress=False,
                                       scale_estimation_batches=2, overlap_step=overlap), **kw})
    source = source or SyntheticSource()
    outcome = TrainingLoop(Holder(gradiend), args, source, evaluate, callbacks, checkpoint).fit(rows)
    return outcome, gradiend


def _assert_same(a, b) -> None:
    for key, value in a.state.items():
        assert torch.equal(value, b.state[key]), key
    for part in ("training_stats", "best_score_checkpoint", "losses", "gradient_scales", "convergence_info",
                 "memory_estimate_bytes"):
        if part == "memory_estimate_bytes":
            continue  # differs by design: the second buffer set
        assert a.stats[part] == b.stats[part], part


@pytest.mark.parametrize("gradiend_batch_size", [1, 2])
def test_overlapped_training_is_bitwise_the_sequential_one(gradiend_batch_size: int) -> None:
    on, off = _Record(), _Record()
    overlapped, g_on = _run(True, [on], gradiend_batch_size=gradiend_batch_size, eval_steps=3)
    sequential, g_off = _run(False, [off], gradiend_batch_size=gradiend_batch_size, eval_steps=3)
    _assert_same(overlapped, sequential)
    for key, value in g_on.state_dict().items():
        assert torch.equal(value, g_off.state_dict()[key]), f"final {key}"
    assert overlapped.stats["training_stats"]["sign_flips_at_steps"], "the run should exercise a sign flip"
    assert on.ended == off.ended == list(range(1, 21)) and on.evaluated == off.evaluated
    assert all(name.startswith("gradiend-step") for name in on.threads) and len(on.threads) == 20
    assert all(name == threading.main_thread().name for name in off.threads)
    n = g_on.config.input_dim
    extra = overlapped.stats["memory_estimate_bytes"]["gradient_buffers"] - \
        sequential.stats["memory_estimate_bytes"]["gradient_buffers"]
    assert extra == 2 * gradiend_batch_size * n * 4, "the plan counts the second buffer set (two kinds, float32)"


def test_the_step_runs_while_the_next_gradients_are_computed() -> None:
    """Step t's optimizer step waits until batch t+1's gradients are being computed: it only gets there when
    both run at the same time (sequentially it would time out and record False)."""
    started: dict[int, threading.Event] = {s: threading.Event() for s in range(1, 40)}
    overlapped: list[bool] = []

    def during(step: int) -> None:
        if step > 0:
            started[step].set()

    class Wait(TrainingCallback):
        def on_train_begin(self, optimizer, **kwargs) -> None:
            steps = iter(range(1, 40))
            optimizer.register_step_pre_hook(lambda *_: overlapped.append(started[next(steps) + 1].wait(5.0)))

    _run(True, [Wait()], source=SyntheticSource(during), max_steps=6, eval_steps=100)
    # steps 1..5 have a successor whose gradients run alongside; the last step has none
    assert overlapped[:5] == [True] * 5


def test_a_callback_with_on_step_begin_keeps_the_loop_sequential() -> None:
    cb = _BeginToo()
    _run(True, [cb], max_steps=4)
    assert cb.threads and all(name == threading.main_thread().name for name in cb.threads)


def test_crash_and_resume_with_overlap_reaches_the_sequential_outcome(tmp_path: Path) -> None:
    sequential, _ = _run(False)
    checkpoint = ResumeCheckpoint(tmp_path / "model", "run", save_steps=4)
    crash = _Record(crash_at=11)
    with pytest.raises(KeyboardInterrupt):
        _run(True, [crash], checkpoint)
    assert json.loads((checkpoint.directory / STATE_FILE).read_text())["step"] == 8
    assert crash.ended == list(range(1, 12))
    resumed_cb = _Record()
    resumed, _ = _run(True, [resumed_cb], checkpoint)
    assert resumed_cb.ended == list(range(9, 21))
    _assert_same(resumed, sequential)


def test_a_failing_step_surfaces_with_its_step_number() -> None:
    class Nan(SyntheticSource):
        def gradients(self, step, texts, factual, alternative, out, keep):
            super().gradients(step, texts, factual, alternative, out, keep)
            if step == 3:
                next(iter(out.values())).fill_(float("inf"))
            return out

    with pytest.raises(FloatingPointError, match="at step 3"):
        _run(True, source=Nan(), standardize_gradients=False)


def test_step_worker_runs_one_job_at_a_time_and_reraises() -> None:
    worker: StepWorker[int] = StepWorker("cpu")
    try:
        worker.submit(lambda: torch.get_num_threads())
        with pytest.raises(RuntimeError, match="one job at a time"):
            worker.submit(lambda: 0)
        assert worker.join() == torch.get_num_threads(), "the worker uses the caller's intra-op thread count"
        with pytest.raises(RuntimeError, match="no job"):
            worker.join()
        worker.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            worker.join()
    finally:
        worker.close()


@pytest.mark.filterwarnings("ignore:GRADIEND training did not converge")
def test_real_model_training_is_the_same_with_and_without_overlap(tiny_mlm_dir, tiny_rows, tmp_path) -> None:
    records = []
    for overlap in (True, False):
        args = TrainingArguments(experiment_dir=str(tmp_path / str(overlap)), train_batch_size=4, max_steps=6,
                                 eval_steps=3, seed=0, show_progress=False, scale_estimation_batches=2,
                                 overlap_step=overlap)
        trainer = TextPredictionTrainer(model=tiny_mlm_dir, data=tiny_rows, args=args, target_classes=["3SG", "3PL"])
        trainer.train()
        model = Path(trainer.model_path)
        records.append((json.loads((model / "training.json").read_text()), load_file(model / "model.safetensors")))
    (a, weights_a), (b, weights_b) = records
    assert a["losses"] == b["losses"] and a["training_stats"]["scores"] == b["training_stats"]["scores"]
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
