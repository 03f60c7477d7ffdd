"""Multi-seed training: seed report, early stop, best-seed selection, retention, gradient cache."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import count_gradient_passes
from safetensors.torch import load_file

from gradiend import TextPredictionTrainer, TrainingArguments, TrainingCallback
from gradiend.gradient_cache import GradientStore
from gradiend.model_with_gradiend import ModelWithGradiend

RUN_FIELDS = {"seed", "output_dir", "trained", "used_cache", "training_score", "eval_correlation",
              "selection_score", "convergence_metric", "convergence_metric_value", "best_checkpoint_global_step",
              "threshold", "converged"}
REPORT_FIELDS = {"convergence_metric", "threshold", "convergent_mean_by_class_threshold", "min_convergent_seeds",
                 "max_seeds", "seeds_tried", "convergent_count", "convergent_seeds", "best_seed",
                 "best_selection_score", "best_seed_selection_strategy", "early_stop_reason", "runs"}


class FreezeSeeds(TrainingCallback):
    """Makes the given seeds unable to learn: encoder zeroed, learning rate 0 (h is constant, ρ = 0)."""

    def __init__(self, seeds: set[int]) -> None:
        self.seeds = seeds

    def on_train_begin(self, model: ModelWithGradiend, optimizer: torch.optim.Optimizer,
                       args: TrainingArguments) -> None:
        if args.seed in self.seeds:
            with torch.no_grad():
                model.gradiend.encoder_weight.zero_()
            for group in optimizer.param_groups:
                group["lr"] = 0.0


def _args(tmp_path: Path, **kw) -> TrainingArguments:
    base = dict(experiment_dir=str(tmp_path / "exp"), train_batch_size=4, max_steps=6, eval_steps=3,
                learning_rate=1e-3, seed=0, show_progress=False, scale_estimation_batches=2, max_seeds=3,
                convergent_score_threshold=0.3, convergent_mean_by_class_threshold=None)
    base.update(kw)
    return TrainingArguments(**base)


def _trainer(model_dir: str, rows: pd.DataFrame, args: TrainingArguments) -> TextPredictionTrainer:
    return TextPredictionTrainer(model=model_dir, data=rows, args=args, target_classes=["3SG", "3PL"])


def _report(trainer: TextPredictionTrainer) -> dict:
    return json.loads((Path(trainer.experiment_dir) / "seeds" / "seed_report.json").read_text())


def test_seed_report_early_stop_and_best_seed(tiny_mlm_dir, tiny_rows, tmp_path) -> None:
    trainer = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path, min_convergent_seeds=1))
    trainer.train(callbacks=[FreezeSeeds({0})])
    report = _report(trainer)
    assert REPORT_FIELDS <= set(report)
    assert report["seeds_tried"] == [0, 1], "seed 0 cannot converge; seed 1 does, so seed 2 is never run"
    assert [r["converged"] for r in report["runs"]] == [False, True]
    assert report["runs"][0]["training_score"] == 0.0
    assert report["best_seed"] == 1 and report["convergent_count"] == 1 and report["convergent_seeds"] == [1]
    assert "min_convergent_seeds reached" in report["early_stop_reason"]
    for run in report["runs"]:
        assert RUN_FIELDS <= set(run)
    # the best seed is the trainer's model, convergence info merged into its training.json
    model_dir = Path(trainer.model_path)
    stats = json.loads((model_dir / "training.json").read_text())
    assert stats["training_args"]["seed"] == 1
    assert stats["convergence_info"]["convergent_count"] == 1 and stats["convergence_info"]["best_seed"] == 1
    a = load_file(str(model_dir / "model.safetensors"))
    assert a["encoder_weight"].abs().sum() > 0
    # default retention (best_only): seed checkpoints removed, their training.json kept
    for seed in (0, 1):
        seed_dir = Path(trainer.experiment_dir) / "seeds" / f"seed_{seed}"
        assert (seed_dir / "training.json").is_file() and not (seed_dir / "model.safetensors").exists()
    assert trainer.get_model().param_map.size > 0


def test_best_seed_trained_last_is_kept_in_memory_not_reloaded(tiny_mlm_dir, tiny_rows, tmp_path,
                                                               monkeypatch) -> None:
    loads = []
    original = ModelWithGradiend.from_pretrained.__func__

    def counting(cls, *a, **kw):
        loads.append(a)
        return original(cls, *a, **kw)

    monkeypatch.setattr(ModelWithGradiend, "from_pretrained", classmethod(counting))
    trainer = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path, min_convergent_seeds=1))
    trainer.train(callbacks=[FreezeSeeds({0})])  # seed 1, the last one trained, is the best
    assert _report(trainer)["best_seed"] == 1
    model = trainer.get_model()
    assert loads == [], "the best seed's model came from memory"
    saved = load_file(str(Path(trainer.model_path) / "model.safetensors"))
    for name, value in model.gradiend.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_no_convergent_seed_warns_or_raises(tiny_mlm_dir, tiny_rows, tmp_path) -> None:
    trainer = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path, max_seeds=2))
    with pytest.warns(RuntimeWarning, match="none of the seeds"):
        trainer.train(callbacks=[FreezeSeeds({0, 1})])
    report = _report(trainer)
    assert report["convergent_count"] == 0 and report["seeds_tried"] == [0, 1]
    assert "none converged" in report["best_seed_selection_strategy"]
    strict = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path / "b", max_seeds=2, fail_on_non_convergence=True))
    with pytest.raises(RuntimeError, match="did not converge"):
        strict.train(callbacks=[FreezeSeeds({0, 1})])


def test_keep_seed_runs_returns_models_per_seed(tiny_mlm_dir, tiny_rows, tmp_path) -> None:
    trainer = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path, max_seeds=2, min_convergent_seeds=2))
    models = trainer.train(keep_seed_runs=True)
    assert set(models) == {0, 1}
    assert all(isinstance(m, ModelWithGradiend) for m in models.values())
    w0, w1 = (models[s].gradiend.encoder_weight for s in (0, 1))
    assert not torch.equal(w0, w1), "different seeds start from different weights"
    # one base model in memory for all of them (the best seed's), not one copy per seed
    assert models[0].base_model is models[1].base_model is trainer.get_model().base_model
    for seed in (0, 1):
        assert (Path(trainer.experiment_dir) / "seeds" / f"seed_{seed}" / "model.safetensors").is_file()
    # the best seed's weights are written once: model/ hard-links the kept seed file
    best = _report(trainer)["best_seed"]
    kept = Path(trainer.experiment_dir) / "seeds" / f"seed_{best}" / "model.safetensors"
    assert (Path(trainer.model_path) / "model.safetensors").stat().st_ino == kept.stat().st_ino
    # a later (atomic) re-save of model/ replaces its file and leaves the seed's copy intact
    before = load_file(str(kept))["encoder_weight"].clone()
    gradiend = trainer.get_model().gradiend
    with torch.no_grad():
        gradiend.encoder_weight.add_(1.0)
    gradiend.save_pretrained(trainer.model_path)
    assert torch.equal(load_file(str(kept))["encoder_weight"], before)
    assert not torch.equal(load_file(str(Path(trainer.model_path) / "model.safetensors"))["encoder_weight"], before)


def test_gradient_cache_reuses_base_passes_and_matches_uncached(tiny_mlm_dir, tiny_rows, tmp_path,
                                                                monkeypatch) -> None:
    calls = count_gradient_passes(monkeypatch)
    results = {}
    for mode in ("off", "memory", "disk"):
        calls.clear()
        args = _args(tmp_path / mode, min_convergent_seeds=3, gradient_cache=mode, keep_seed_runs=True)
        trainer = _trainer(tiny_mlm_dir, tiny_rows, args)
        models = trainer.train()
        results[mode] = ({s: m.gradiend.encoder_weight.detach().clone() for s, m in models.items()}, len(calls),
                         _report(trainer))
        assert not (Path(trainer.experiment_dir) / "cache" / "gradients").exists(), "disk cache is removed"
    weights_off, calls_off, report_off = results["off"]
    for mode in ("memory", "disk"):
        weights, n_calls, report = results[mode]
        assert n_calls <= calls_off / 3, f"{mode}: seeds 1 and 2 reuse every batch gradient of seed 0"
        for seed in weights_off:
            assert torch.equal(weights[seed], weights_off[seed]), f"{mode} cache changed seed {seed}'s result"
        assert [r["training_score"] for r in report["runs"]] == [r["training_score"] for r in report_off["runs"]]


def test_later_seeds_are_cached_for_only_once_one_is_certain_to_run(tiny_mlm_dir, tiny_rows, tmp_path) -> None:
    def cached_entries(trainer: TextPredictionTrainer, seed: int) -> int:
        stats = json.loads((Path(trainer.experiment_dir) / "seeds" / f"seed_{seed}" / "training.json").read_text())
        return stats["gradient_cache"]["entries"]

    # min_convergent_seeds=1 and seed 0 converges: only its 2 scale-estimation batches were kept,
    # and dropped once training used them (6 steps < 1 epoch of 12 batches: nothing repeats)
    lucky = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path / "a", min_convergent_seeds=1))
    lucky.train()
    assert _report(lucky)["seeds_tried"] == [0]
    stats = json.loads((Path(lucky.experiment_dir) / "seeds" / "seed_0" / "training.json").read_text())
    assert stats["gradient_cache"]["hits"] == 2 and stats["gradient_cache"]["misses"] == 6
    assert cached_entries(lucky, 0) == 0 and stats["gradient_cache"]["megabytes"] == 0
    # seed 0 fails: seed 1 runs and, as seed 2 may follow, keeps all 6 batches (the first 2 are the
    # scale-estimation batches)
    unlucky = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path / "b", min_convergent_seeds=1))
    unlucky.train(callbacks=[FreezeSeeds({0})])
    assert _report(unlucky)["seeds_tried"] == [0, 1]
    assert cached_entries(unlucky, 0) == 0 and cached_entries(unlucky, 1) == 6
    # two seeds must converge: seed 0 already keeps everything
    certain = _trainer(tiny_mlm_dir, tiny_rows, _args(tmp_path / "c", min_convergent_seeds=2))
    certain.train()
    assert cached_entries(certain, 0) == 6


def test_gradient_store_limit_and_bf16(tmp_path) -> None:
    store = GradientStore("memory", max_bytes=100, dtype="float32")
    grads = {"diff": torch.arange(10.0)}
    store.put("a", grads)
    grads["diff"].add_(100.0)  # the caller reuses its buffer: the store must hold a copy
    grads = {"diff": torch.arange(10.0)}
    store.put("b", {"diff": torch.ones(10), "alternative": torch.ones(10)})  # over the limit: not kept
    out = {"diff": torch.empty(10)}
    assert store.get("a", out) and torch.equal(out["diff"], grads["diff"])
    assert not store.get("b", out) and store.full
    half = GradientStore("memory", dtype="bfloat16")
    half.put("x", {"diff": torch.tensor([1.0 + 2**-10])})
    got = {"diff": torch.empty(1)}
    assert half.get("x", got) and got["diff"].item() == 1.0  # rounded to bf16
    with pytest.raises(ValueError, match="mode"):
        GradientStore("gpu")
    with pytest.raises(ValueError, match="directory"):
        GradientStore("disk")


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_gradient_store_is_block_sparse_and_lossless(tmp_path, mode: str) -> None:
    """Mostly-zero gradients (embedding rows a batch never touched) cost only their non-zero blocks."""
    n = 64 * 1000 + 37  # a tail shorter than one block
    gen = torch.Generator().manual_seed(0)
    sparse = torch.zeros(n)
    rows = torch.randperm(1000, generator=gen)[:20]
    for r in rows.tolist():
        sparse[r * 64 + 3: r * 64 + 50] = torch.randn(47, generator=gen)
    sparse[-5:] = torch.randn(5, generator=gen)
    sparse[7] = -0.0  # a negative zero in an otherwise empty block
    dense = torch.randn(n, generator=gen)
    empty = torch.zeros(n)
    store = GradientStore(mode, directory=tmp_path / "cache")
    store.put("k", {"diff": sparse, "alternative": dense, "factual": empty})
    out = {kind: torch.full((n,), 7.0) for kind in ("diff", "alternative", "factual")}
    assert store.get("k", out)
    assert torch.equal(out["diff"], sparse) and torch.equal(out["alternative"], dense)
    assert torch.equal(out["factual"], empty)
    dense_bytes = 3 * n * 4
    assert store.dense_bytes == dense_bytes
    expected = (20 + 1000) * 64 * 4 + 3 * 37 * 4 + (20 + 1000) * 4  # kept blocks, three tails, block indices
    assert store.bytes == expected < 0.4 * dense_bytes
    assert store.summary()["dense_megabytes"] == dense_bytes / 1e6
    # a batch that will not come again is dropped once served (memory and file)
    assert store.get("k", out, keep=False) and torch.equal(out["diff"], sparse)
    assert store.bytes == 0 and not store.get("k", out)
    assert not list((tmp_path / "cache").glob("*.safetensors"))


def test_multi_seed_argument_errors() -> None:
    with pytest.raises(ValueError, match="min_convergent_seeds"):
        TrainingArguments(max_seeds=2, min_convergent_seeds=3)
    with pytest.raises(ValueError, match="convergent_metric"):
        TrainingArguments(convergent_metric="accuracy")
    with pytest.raises(ValueError, match="gradient_cache"):
        TrainingArguments(gradient_cache="gpu")


def test_best_seed_prefers_converged_then_score_then_first() -> None:
    from gradiend.records import SeedRun
    from gradiend.seeds import _best_run

    failed_high = SeedRun(seed=0, converged=False, selection_score=0.9)
    converged_low = SeedRun(seed=1, converged=True, selection_score=0.4)
    converged_high = SeedRun(seed=2, converged=True, selection_score=0.6)
    assert _best_run([failed_high, converged_low, converged_high]).seed == 2  # converged beats a higher score
    assert _best_run([failed_high, SeedRun(seed=1, converged=False, selection_score=0.2)]).seed == 0  # none converged
    unscored = [SeedRun(seed=5, converged=True), SeedRun(seed=6, converged=True)]
    assert _best_run(unscored).seed == 5  # nothing scored: the first candidate
