"""Decoder grid (issue 17): consecutive candidates overwrite each other from the saved weights, so a candidate's
rewrite is undone only when the search ends; records stay bitwise the same and the base weights come back."""

from __future__ import annotations

import contextlib

import pytest
import torch

from gradiend import TextPredictionTrainer, TrainingArguments
from gradiend.decoder_eval import GridRun, run_grid
from gradiend.rewrite import ParameterSnapshot
from gradiend.scoring import class_piece_sets, prepare_lms

pytestmark = pytest.mark.filterwarnings("ignore:GRADIEND training did not converge")
NEUTRAL = ["the man walked home and was happy .", "the sea was very old and the ship was little .",
           "the woman saw the house at night ."]


@pytest.fixture(scope="module")
def model(tiny_mlm_dir, tmp_path_factory):
    from conftest import make_rows

    args = TrainingArguments(experiment_dir=str(tmp_path_factory.mktemp("restores")), train_batch_size=4,
                             max_steps=4, eval_steps=2, seed=0, show_progress=False, scale_estimation_batches=2)
    trainer = TextPredictionTrainer(model=tiny_mlm_dir, data=make_rows(), args=args, target_classes=["3SG", "3PL"],
                                    eval_neutral_data=NEUTRAL)
    trainer.train()
    mwg = trainer.get_model()
    rows, pair = trainer.unified_data()
    like = rows[rows["split"] == "test"].reset_index(drop=True)
    tokens = {c: set(like.loc[like["factual_class"] == c, "factual"]) for c in pair}
    return mwg, like, class_piece_sets(mwg.objective, tokens), prepare_lms(mwg.objective, NEUTRAL, seed=42)


def _weights(mwg) -> dict[str, torch.Tensor]:
    named = dict(mwg.base_model.named_parameters())
    return {n: named[n].detach().clone() for n in mwg.param_map.names}


def _grid(mwg, like, pieces, lms, **kw):
    return run_grid(mwg, like, pieces, lms, [-1.0, 1.0], [10.0, 1.0, 0.1], show_progress=False, **kw)


def test_deferred_restores_keep_the_records_and_the_base_weights(model, monkeypatch) -> None:
    mwg, like, pieces, lms = model
    before = _weights(mwg)
    restores = []
    original = ParameterSnapshot.restore
    monkeypatch.setattr(ParameterSnapshot, "restore", lambda self: (restores.append(1), original(self)))
    deferred = _grid(mwg, like, pieces, lms)
    assert len(restores) == 1, "six candidates, one restore when the search ends"
    assert all(torch.equal(v, _weights(mwg)[k]) for k, v in before.items()), "base weights back bitwise"
    monkeypatch.setattr(GridRun, "deferred_restores", lambda self: contextlib.nullcontext())
    restores.clear()
    each = _grid(mwg, like, pieces, lms)
    assert len(restores) == 6
    assert deferred == each and len(each) == 7, "bitwise the same records as undoing every candidate"


def test_an_error_inside_a_deferred_search_restores_the_weights(model) -> None:
    mwg, like, pieces, lms = model
    before = _weights(mwg)
    run = GridRun(mwg, like, pieces, lms)
    with pytest.raises(KeyboardInterrupt), run.deferred_restores():
        with run.rewritten(-1.0, 10.0):
            pass
        assert not all(torch.equal(v, _weights(mwg)[k]) for k, v in before.items()), "left rewritten in the block"
        with run.rewritten(None, None):  # the base model's scores see the base weights
            assert all(torch.equal(v, _weights(mwg)[k]) for k, v in before.items())
        with run.rewritten(1.0, 1.0):
            raise KeyboardInterrupt
    assert all(torch.equal(v, _weights(mwg)[k]) for k, v in before.items())
