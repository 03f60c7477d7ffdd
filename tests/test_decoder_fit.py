"""The decoder refit after training (`TrainingArguments.decoder_fit`, issue 15): the saved decoder maps ±1 to the
class means of the target gradients the training steps used; the encoder is untouched; resume keeps the sums."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch
from synthetic_source import Holder, SyntheticSource

from gradiend import TrainingArguments, TrainingCallback
from gradiend.model import GradiendConfig, GradiendModel
from gradiend.resume import ResumeCheckpoint
from gradiend.step import decoder_refit_skipped
from gradiend.training import TrainingLoop

pytestmark = pytest.mark.filterwarnings("ignore:GRADIEND training did not converge")

N = 64


class RecordingSource(SyntheticSource):
    """The synthetic gradients, recording every training step's target rows by class (step 0: scale probes)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.rows: dict[str, list[torch.Tensor]] = {"A": [], "B": []}

    def gradients(self, step, texts, factual, alternative, out, keep):
        super().gradients(step, texts, factual, alternative, out, keep)
        if step > 0:
            self.rows[factual[0]].append(out[self.target].clone())
        return out

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack(self.rows["A"]).mean(0), torch.stack(self.rows["B"]).mean(0)


class CrashAt(TrainingCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, step: int, loss: float, **kwargs) -> None:
        if step == self.step:
            raise KeyboardInterrupt


def _run(checkpoint: ResumeCheckpoint | None = None, callbacks=(), evaluate: bool = True, sign: float = 1.0, **kw):
    gradiend = GradiendModel(GradiendConfig(input_dim=N, feature_classes=["A", "B"]), torch.Generator().manual_seed(1))
    rows = pd.DataFrame({"masked": [f"row {i} [MASK]" for i in range(12)], "factual": ["A", "B"] * 6,
                         "alternative": ["B", "A"] * 6, "label": [1, -1] * 6})
    x = torch.randn(8, N, generator=torch.Generator().manual_seed(2))

    def evaluator() -> dict:
        h = gradiend.encode(x)[:, 0].detach() * sign
        return {"correlation": float(h[:4].mean() - h[4:].mean()), "n": 8,
                "mean_by_class": {"A": float(h[:4].mean()), "B": float(h[4:].mean())}}

    args = TrainingArguments(**{**dict(train_batch_size=2, max_steps=20, eval_steps=5, seed=0, show_progress=False,
                                       scale_estimation_batches=2), **kw})
    source = RecordingSource(args.target)
    loop = TrainingLoop(Holder(gradiend), args, source, evaluator if evaluate else None, callbacks, checkpoint)
    return loop.fit(rows), source


def _decoder_of(state: dict[str, torch.Tensor]) -> GradiendModel:
    g = GradiendModel(GradiendConfig(input_dim=N, feature_classes=["A", "B"]), torch.Generator().manual_seed(0))
    g.load_state_dict(state)
    return g


def test_saved_decoder_maps_plus_and_minus_one_to_the_class_mean_targets() -> None:
    refit, source = _run()
    mean_a, mean_b = source.means()
    assert refit.stats["decoder_fit"] == {"mode": "class_means", "rows": [10, 10], "class_a_sign": 1}
    g = _decoder_of(refit.state)
    torch.testing.assert_close(g.decode(1.0), mean_a)
    torch.testing.assert_close(g.decode(-1.0), mean_b)
    trained, _ = _run(decoder_fit="trained")
    assert trained.stats["decoder_fit"] == {"mode": "trained", "reason": "decoder_fit='trained'"}
    for name in ("encoder_weight", "encoder_bias", "input_scale", "target_scale"):  # training is the same
        assert torch.equal(refit.state[name], trained.state[name]), name
    assert refit.stats["losses"] == trained.stats["losses"]
    fitted = (mean_a - mean_b) / 2
    kept = _decoder_of(trained.state)
    kept_half = (kept.decode(1.0) - kept.decode(-1.0)).detach() / 2
    assert kept_half.norm() < 0.5 * fitted.norm(), "the trained decoder holds only part of the class difference"


def test_class_a_encoding_negatively_gets_class_a_at_minus_one() -> None:
    """Without sign normalisation a run can end with class A negative: dec(−1) is then class A's mean."""
    outcome, source = _run(normalize_gradiend=False, sign=-1.0)
    assert outcome.stats["best_score_checkpoint"]["correlation"] < 0
    assert outcome.stats["decoder_fit"]["class_a_sign"] == -1
    mean_a, mean_b = source.means()
    g = _decoder_of(outcome.state)
    torch.testing.assert_close(g.decode(-1.0), mean_a)
    torch.testing.assert_close(g.decode(1.0), mean_b)


def test_without_evaluation_the_trained_decoder_gives_the_orientation() -> None:
    refit, source = _run(evaluate=False)
    trained, _ = _run(evaluate=False, decoder_fit="trained")
    mean_a, mean_b = source.means()
    along = float(torch.dot(trained.state["decoder_weight"][:, 0], mean_a - mean_b))
    assert refit.stats["decoder_fit"]["class_a_sign"] == (1 if along >= 0 else -1)
    g = _decoder_of(refit.state)
    torch.testing.assert_close(g.decode(float(refit.stats["decoder_fit"]["class_a_sign"])), mean_a)


def test_rows_of_one_class_only_keep_the_trained_decoder(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gradiend.training"):
        outcome, _ = _run(max_steps=1, eval_steps=1)
    assert outcome.stats["decoder_fit"] == {"mode": "trained", "reason": "rows of one class only: [1, 0]"}
    assert "target rows of one class only" in caplog.text


def test_runs_that_keep_their_decoder_say_why() -> None:
    assert decoder_refit_skipped(TrainingArguments(), 1) is None
    assert decoder_refit_skipped(TrainingArguments(), 2).startswith("latent_dim=2")
    baseline = TrainingArguments(supervised_decoder=True, convergent_metric="loss")
    assert decoder_refit_skipped(baseline, 1).startswith("supervised_decoder baseline")
    assert decoder_refit_skipped(TrainingArguments(supervised_encoder=True), 1).startswith("supervised_encoder")


def test_resumed_run_refits_from_every_step_and_a_checkpoint_without_sums_is_not_used(tmp_path, caplog) -> None:
    uninterrupted, _ = _run()
    checkpoint = ResumeCheckpoint(tmp_path / "model", "run", save_steps=4)
    with pytest.raises(KeyboardInterrupt):  # checkpoints after steps 4 and 8, crash in step 11
        _run(checkpoint, [CrashAt(11)])
    resumed, source = _run(checkpoint)
    assert sum(len(v) for v in source.rows.values()) == 12, "the resumed run computes steps 9-20 only"
    assert resumed.stats["decoder_fit"] == uninterrupted.stats["decoder_fit"]
    for key, value in uninterrupted.state.items():
        assert torch.equal(value, resumed.state[key]), key
    other = ResumeCheckpoint(tmp_path / "trained", "run", save_steps=4)
    with pytest.raises(KeyboardInterrupt):
        _run(other, [CrashAt(11)], decoder_fit="trained")
    with caplog.at_level(logging.WARNING, logger="gradiend.training"):
        fresh, source = _run(other)
    assert "it lacks the class target sums" in caplog.text
    assert sum(len(v) for v in source.rows.values()) == 20, "started from step 0"
    for key, value in uninterrupted.state.items():
        assert torch.equal(value, fresh.state[key]), key
