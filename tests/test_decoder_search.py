"""Adaptive decoder search: same selection as the full grid, with fewer candidates and early-stopped LMS passes."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from test_causal import _rows as causal_rows
from test_causal import gpt2_dir  # noqa: F401  (fixture)

from gradiend import TextPredictionTrainer, TrainingArguments
from gradiend.decoder_eval import (
    DEFAULT_LRS,
    DecoderCache,
    DecoderRequest,
    _select_verified,
    evaluate_decoder,
    lms_threshold_selector,
    search_grid,
)
from gradiend.scoring import LMSOutcome, lm_score, lm_score_bounded, prepare_lms

pytestmark = pytest.mark.filterwarnings("ignore:GRADIEND training did not converge")
NEUTRAL = ["the man walked home and was happy .", "the sea was very old and the ship was little .",
           "the woman saw the house at night .", "then the children talked of the letter again .",
           "a dog ran over the hill and the farmer laughed .", "the rain fell on the town all day ."]
LRS = [1e6, 1e5, 1e4, 1e3, 100.0, 10.0, 1.0, 0.1, 0.01]
# the tiny random GPT-2's LMS falls monotonically with |lr| only up to 100 (measured; beyond, it wanders by ±3e-4)
CLM_LRS = [100.0, 10.0, 1.0, 0.1, 0.01, 0.001]


@pytest.fixture(scope="module")
def trained(tiny_mlm_dir, tmp_path_factory) -> TextPredictionTrainer:
    """Masked LM: random weights score LMS 0, so every candidate keeps the bound (LMS only bisected)."""
    from conftest import make_rows

    args = TrainingArguments(experiment_dir=str(tmp_path_factory.mktemp("search_exp")), train_batch_size=4,
                             max_steps=6, eval_steps=3, seed=0, show_progress=False, scale_estimation_batches=2)
    trainer = TextPredictionTrainer(model=tiny_mlm_dir, data=make_rows(), args=args, target_classes=["3SG", "3PL"],
                                    eval_neutral_data=NEUTRAL)
    return trainer.train()


@pytest.fixture(scope="module")
def trained_clm(gpt2_dir, tmp_path_factory) -> TextPredictionTrainer:  # noqa: F811
    """Causal LM: LMS 1 / (1 + NLL) > 0, and large steps break the bound."""
    args = TrainingArguments(experiment_dir=str(tmp_path_factory.mktemp("search_clm")), train_batch_size=2,
                             max_steps=4, eval_steps=2, seed=0, show_progress=False, scale_estimation_batches=2,
                             params=["h.1.*"], min_left_context_tokens=2)
    trainer = TextPredictionTrainer(model=gpt2_dir, data=causal_rows(), args=args, target_classes=["3SG", "3PL"],
                                    eval_neutral_data=NEUTRAL)
    return trainer.train()


def _decode(trainer: TextPredictionTrainer, search: str, tmp_path: Path, **request) -> tuple[dict, dict]:
    """Selections and the search statistics of one evaluation (its own cache files)."""
    cache = DecoderCache(tmp_path / f"{search}_grid.json", tmp_path / f"{search}_summaries.json", {"weights": "w"})
    result = evaluate_decoder(trainer.get_model(), *trainer.unified_data(),
                              DecoderRequest(neutral_texts=NEUTRAL, show_progress=False, search=search, **request),
                              cache)
    return result, json.loads(cache.grid.read_text())["search"]


@pytest.mark.parametrize("kind", ["mlm", "clm"])
@pytest.mark.parametrize("strengthen", [True, False])
def test_adaptive_selects_what_the_full_grid_selects(request, tmp_path, kind, strengthen) -> None:
    trainer = request.getfixturevalue("trained" if kind == "mlm" else "trained_clm")
    # the tiny GPT-2's LMS moves little (final layer norm): a tight bound makes large steps break it
    ratio = 0.99 if kind == "mlm" else 0.9995
    lrs = LRS if kind == "mlm" else CLM_LRS
    asked = {"classes": ["3SG", "3PL"], "strengthen": strengthen, "learning_rates": lrs, "feature_factors": [-1.0, 1.0],
             "selector": lms_threshold_selector(ratio)}
    full, full_stats = _decode(trainer, "grid", tmp_path, **asked)
    adaptive, stats = _decode(trainer, "adaptive", tmp_path, **asked)
    keys = [k for k in full if k != "grid"]
    assert len(keys) == 2
    for key in keys:
        assert adaptive[key] == full[key], key
    assert full_stats["candidates_scored"] == 1 + 2 * len(lrs) == full_stats["lms_passes"]
    assert stats["lms_passes"] < full_stats["lms_passes"] and stats["forwards"] < full_stats["forwards"]
    by_id = {r["id"]: r for r in full["grid"]}
    bound = ratio * full["grid"][0]["lms"]
    for record in adaptive["grid"]:  # identical where measured, and right where inferred
        reference = by_id[record["id"]]
        assert record["probs"] == reference["probs"]
        if record["lms"] is None:
            assert record["lms_at_least"] == bound <= reference["lms"]
        else:
            assert record["lms"] == reference["lms"]
    skipped = {s["id"] for s in stats["skipped"]}
    assert all(by_id[i]["lms"] < bound for i in skipped)
    if kind == "clm":  # large steps break the bound: never scored in full
        assert skipped and stats["candidates_scored"] < full_stats["candidates_scored"]


def test_full_grid_is_used_for_custom_selectors(trained, tmp_path) -> None:
    smallest = DecoderRequest(["3SG"], learning_rates=LRS, neutral_texts=NEUTRAL, show_progress=False,
                              selector=lambda cands, base: min(cands, key=lambda c: c["learning_rate"]))
    result = evaluate_decoder(trained.get_model(), *trained.unified_data(), smallest)
    assert len(result["grid"]) == 1 + len(LRS) and result["3SG"]["learning_rate"] == min(LRS)
    with pytest.raises(ValueError, match="search must be one of"):
        DecoderRequest(["3SG"], search="bisect")


def test_lms_pass_stops_once_the_bound_is_out_of_reach(trained) -> None:
    mwg = trained.get_model()
    data = prepare_lms(mwg.objective, NEUTRAL * 4, batch_size=2)
    assert len(data.batches) > 3
    full = lm_score_bounded(mwg.base_model, mwg.objective, data)
    assert full.complete and full.forwards == len(data.batches) and full.value == lm_score(mwg.base_model,
                                                                                           mwg.objective, data)
    unreachable = lm_score_bounded(mwg.base_model, mwg.objective, data, stop_below=1.5)  # accuracy is at most 1
    assert not unreachable.complete and unreachable.forwards == 1 and unreachable.value <= 1.0
    reachable = lm_score_bounded(mwg.base_model, mwg.objective, data, stop_below=full.value)
    assert reachable == full  # a pass that keeps the bound is complete and bitwise the same


class ScriptedRun:
    """A grid run over a table lr → (LMS, P(3SG) on 3PL rows) of one feature factor; counts evaluations."""

    def __init__(self, table: dict[float, tuple[float, float]], base: tuple[float, float] = (0.5, 0.1)) -> None:
        self.table, self.base, self.current = table, base, base
        self.stats = {"candidates_scored": 0, "lms_passes": 0, "skipped": [], "full_grid_factors": []}

    @contextlib.contextmanager
    def rewritten(self, ff: float | None, lr: float | None) -> Iterator[None]:
        self.current = self.base if ff is None else self.table[lr]
        yield
        self.current = self.base

    def lms(self, stop_below: float | None = None) -> LMSOutcome:
        self.stats["lms_passes"] += 1
        return LMSOutcome(self.current[0], True, 1)

    def probabilities(self) -> dict[str, dict[str, float]]:
        return {"3PL": {"3SG": self.current[1], "3PL": 1 - self.current[1]},
                "3SG": {"3SG": 0.5, "3PL": 0.5}}

    def score(self, ff: float | None, lr: float | None) -> dict:
        with self.rewritten(ff, lr):
            self.stats["candidates_scored"] += 1
            return {"id": "base" if ff is None else f"ff={ff:g},lr={lr:g}", "feature_factor": ff,
                    "learning_rate": lr, "lms": self.lms().value, "probs": self.probabilities()}


def _select(table: dict[float, tuple[float, float]], search: str) -> tuple[dict, ScriptedRun]:
    run = ScriptedRun(table)
    lrs = list(table)
    records = search_grid(run, [-1.0], lrs, search, 0.99, show_progress=False)
    request = DecoderRequest(["3SG"], learning_rates=lrs, selector=lms_threshold_selector(), show_progress=False)
    result, _ = _select_verified(records, request, ("3SG", "3PL"), {"3SG": -1.0}, lrs, 0.99, lambda: run)
    return result["3SG"], run


@pytest.mark.parametrize("seed", range(40))
def test_adaptive_equals_grid_on_scripted_curves(seed) -> None:
    """LMS falling with |lr| (plateaus included), values in any order: the same choice as the full
    grid with fewer LMS passes. LMS in any order: the choice's LMS is still measured, never inferred."""
    rng = np.random.default_rng(seed)
    lrs = sorted(DEFAULT_LRS[: int(rng.integers(1, len(DEFAULT_LRS) + 1))], reverse=bool(seed % 2))
    monotone = seed < 30
    lms = np.round(rng.uniform(0.3, 0.52, len(lrs)), 2)
    lms = np.sort(lms)[::-1] if monotone else lms
    steps = sorted(lrs)
    table = {lr: (float(lms[steps.index(lr)]), float(rng.uniform())) for lr in lrs}
    full, full_run = _select(table, "grid")
    adaptive, run = _select(table, "adaptive")
    if monotone:
        assert adaptive == full
        assert run.stats["lms_passes"] <= full_run.stats["lms_passes"]
        if len(lrs) >= 8:
            assert run.stats["lms_passes"] < full_run.stats["lms_passes"]
    else:
        assert adaptive["lms"] == table[adaptive["learning_rate"]][0]


def test_a_non_monotone_lms_falls_back_to_the_full_grid() -> None:
    # bisection: 1.0 keeps the bound, 10 does not; 0.1 (the best value below) secretly breaks it
    table = {100.0: (0.1, 0.95), 10.0: (0.1, 0.9), 1.0: (0.5, 0.5), 0.1: (0.2, 0.99), 0.01: (0.5, 0.2)}
    full, _ = _select(table, "grid")
    adaptive, run = _select(table, "adaptive")
    assert adaptive == full and adaptive["learning_rate"] == 1.0
    assert run.stats["full_grid_factors"] == [-1.0]
    assert math.isclose(adaptive["lms"], 0.5)


def test_grid_rewrites_equal_the_saved_rewrite_bitwise(trained) -> None:
    """The grid's fused rewrite (decoded once per factor) is the same as `rewrite_base_model`, and undone."""
    from gradiend.decoder_eval import GridRun

    mwg = trained.get_model()
    rows = trained.unified_data()[0].head(4)
    run = GridRun(mwg, rows, {"3SG": {(1,)}}, prepare_lms(mwg.objective, NEUTRAL))
    before = {k: v.clone() for k, v in mwg.base_model.state_dict().items()}
    for ff, lr in ((-1.0, 0.5), (-1.0, 30.0), (1.0, 0.01)):
        expected = mwg.rewrite_base_model(learning_rate=lr, feature_factor=ff).state_dict()
        with run.rewritten(ff, lr):
            got = mwg.base_model.state_dict()
            changed = [k for k in got if not torch.equal(got[k], before[k])]
            assert changed and all(torch.equal(got[k], expected[k]) for k in got)
    assert all(torch.equal(v, before[k]) for k, v in mwg.base_model.state_dict().items())
