"""`scoring.forward_batches` (issue 17): the scoring forwards' batches at the least padded tokens plus per-forward
cost, within the row and token limits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gradiend.data import TOKENS_PER_ROW, length_batches
from gradiend.scoring import FORWARD_OVERHEAD_TOKENS, forward_batches


def _cost(lengths: list[int], batches: list[np.ndarray]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) + FORWARD_OVERHEAD_TOKENS for b in batches)


def _brute_force(lengths: list[int], batch_size: int) -> int:
    """The least cost over every way of cutting the length order into runs (small inputs only)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    best = None
    for mask in itertools.product([False, True], repeat=len(lengths) - 1):
        cuts = [0] + [i + 1 for i, c in enumerate(mask) if c] + [len(lengths)]
        batches = [order[a:b] for a, b in itertools.pairwise(cuts)]
        if any(len(b) > batch_size or (len(b) > 1 and len(b) * max(lengths[i] for i in b)
                                       > TOKENS_PER_ROW * batch_size) for b in batches):
            continue
        cost = _cost(lengths, batches)
        best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_batches_are_a_least_cost_partition_within_the_limits(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 90, size=11).tolist()
    batch_size = int(rng.integers(2, 6))
    batches = forward_batches(lengths, batch_size)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths))), "every row exactly once"
    assert flat.tolist() == np.argsort(np.asarray(lengths), kind="stable").tolist(), "runs of the length order"
    for b in batches:
        assert len(b) <= batch_size
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= TOKENS_PER_ROW * batch_size
    assert _cost(lengths, batches) == _brute_force(lengths, batch_size)
    assert _cost(lengths, batches) <= _cost(lengths, length_batches(lengths, batch_size))


def test_one_long_row_does_not_pad_a_batch_of_short_ones() -> None:
    lengths = [9, 10, 10, 10, 13, 14, 16, 19, 22, 31, 34, 62]  # the MiniLM workload's 12 neutral texts
    batches = forward_batches(lengths, 32)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    greedy = sum(len(b) * max(lengths[i] for i in b) for b in length_batches(lengths, 32))
    assert padded < 0.75 * greedy
    assert forward_batches([], 4) == [] and [b.tolist() for b in forward_batches([5], 4)] == [[0]]
    with pytest.raises(ValueError, match="batch_size"):
        forward_batches([3], 0)


@pytest.mark.parametrize("head_chunk", [2, 1024])
def test_class_probabilities_are_the_full_models_softmax_at_the_slot(tiny_mlm_dir, monkeypatch, head_chunk) -> None:
    """The head runs once per HEAD_CHUNK slot states across batches: the result is the model's own softmax."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from gradiend import scoring
    from gradiend.objectives import MaskedLMObjective
    from gradiend.scoring import class_piece_sets, class_probabilities

    monkeypatch.setattr(scoring, "HEAD_CHUNK", head_chunk)
    model = AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_mlm_dir)
    objective = MaskedLMObjective(tok)
    texts = ["[MASK] went home .", "the children said that [MASK] were tired after the long walk home .",
             "yesterday [MASK] was here .", "in the morning [MASK] saw the old ship in the harbour ."]
    pieces = class_piece_sets(objective, {"3SG": {"he", "she"}, "3PL": {"they"}})
    got = class_probabilities(model, objective, texts, pieces, batch_size=2)
    ids = {c: [i for (i,) in p] for c, p in pieces.items()}
    with torch.no_grad():
        for r, text in enumerate(texts):
            enc = tok(text.replace("[MASK]", tok.mask_token), return_tensors="pt")
            slot = int((enc["input_ids"][0] == tok.mask_token_id).nonzero()[0, 0])
            probs = torch.softmax(model(**enc).logits[0, slot].float(), dim=-1)
            for c, cls in enumerate(pieces):
                assert got[r, c] == pytest.approx(float(probs[ids[cls]].sum()), rel=1e-5, abs=1e-9)
