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
