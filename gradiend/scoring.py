"""Scores of a (possibly rewritten) language model: class probabilities at the slot, and LMS.

Both are computed for many candidate models in the decoder grid, so everything that does not
depend on the weights (tokenisation, which positions LMS masks or predicts) is prepared once.
Masked LMs: probabilities at the mask(s), LMS = top-1 accuracy on randomly masked tokens. Causal
LMs: probabilities of the next token after the slot's prefix, LMS = 1 / (1 + NLL) of the
neutral texts, each token predicted from the logits of the token before it.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradiend.data import TOKENS_PER_ROW, DataError
from gradiend.objectives import CausalLMObjective, LMObjective

logger = logging.getLogger(__name__)

#: Rows of hidden states sent through the LM head at once when scoring causal LMs (bounds memory).
HEAD_CHUNK = 1024
#: The fixed cost of one model forward in padded tokens: Python and kernel launches (a few ms on a small
#: model) plus, for a masked LM's LMS batch, one read of the vocabulary-sized head weight (47 MB on MiniLM);
#: `forward_batches` starts a new batch when that saves more padding than this.
FORWARD_OVERHEAD_TOKENS = 64


def forward_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices grouped for the scoring forwards, at the least cost: padded tokens plus
    `FORWARD_OVERHEAD_TOKENS` per batch, each batch at most `batch_size` rows and (unless it is one row)
    `TOKENS_PER_ROW · batch_size` padded tokens.

    Rows are taken in order of token length (stable), so batches are runs of that order and a batch pads
    to its longest row; the best cut points come from dynamic programming over that order. Greedy filling
    (`data.length_batches`) pads 12 neutral texts of 9 to 62 tokens to 1.7x their tokens; cut here, 1.2x.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = np.argsort(np.asarray(lengths), kind="stable")
    sizes = [int(lengths[i]) for i in order]
    budget = TOKENS_PER_ROW * batch_size
    best = [0.0] + [math.inf] * len(sizes)  # best[j]: the cost of the first j rows of `order`
    cut = [0] * (len(sizes) + 1)
    for j in range(1, len(sizes) + 1):
        longest = sizes[j - 1]
        for i in range(j - 1, max(0, j - batch_size) - 1, -1):  # batch order[i:j]
            if j - i > 1 and (j - i) * longest > budget:
                break
            cost = best[i] + (j - i) * longest + FORWARD_OVERHEAD_TOKENS
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches, j = [], len(sizes)
    while j > 0:
        batches.append(order[cut[j]:j])
        j = cut[j]
    return batches[::-1]


def case_variants(token: str) -> set[str]:
    """The lower, Title and UPPER forms of a word (one of them is usually what the vocabulary holds)."""
    return {token.lower(), token[:1].upper() + token[1:].lower(), token.upper()}


def class_piece_sets(objective: LMObjective, tokens_by_class: Mapping[str, Iterable[str]]
                     ) -> dict[str, set[tuple[int, ...]]]:
    """Per class, the distinct piece-id tuples of its tokens and their case variants.

    A case variant that maps to the same ids (uncased vocabularies) is counted once; variants the
    vocabulary does not know are skipped, but every class keeps at least one known token.
    Causal objectives: each entry is (form, id), see :func:`causal_scoring_ids`.
    """
    if isinstance(objective, CausalLMObjective):
        return _causal_class_ids(objective, tokens_by_class)
    out: dict[str, set[tuple[int, ...]]] = {}
    for cls, tokens in tokens_by_class.items():
        pieces = {tuple(objective.pieces(v)) for t in tokens for v in case_variants(t) if objective.is_known(v)}
        if not pieces:
            raise DataError(f"No token of class {cls!r} is in the vocabulary: {sorted(set(tokens))}")
        out[cls] = pieces
    return out


AFTER_SPACE, GLUED = 0, 1


def causal_scoring_ids(objective: CausalLMObjective, token: str) -> set[tuple[int, int]]:
    """(form, id) pairs that score `token` as the next token, form AFTER_SPACE or GLUED (slot
    directly after the prefix): the ids of the token's case variants that are one piece; a token
    without any single-piece form is scored by its own first piece."""
    out: set[tuple[int, int]] = set()
    for form, spaced in ((AFTER_SPACE, True), (GLUED, False)):
        singles = set()
        for variant in case_variants(token) | {token}:
            try:
                pieces = objective.target_pieces(variant, spaced)
            except DataError:
                continue
            if len(pieces) == 1:
                singles.add(pieces[0])
        if not singles:
            try:
                singles = {objective.target_id(token, spaced)}
            except DataError:
                continue
        out |= {(form, i) for i in singles}
    return out


def _causal_class_ids(objective: CausalLMObjective, tokens_by_class: Mapping[str, Iterable[str]]
                      ) -> dict[str, set[tuple[int, ...]]]:
    out: dict[str, set[tuple[int, ...]]] = {}
    for cls, tokens in tokens_by_class.items():
        entries = {e for t in set(tokens) for e in causal_scoring_ids(objective, t)}
        if not any(form == AFTER_SPACE for form, _ in entries):
            raise DataError(f"No token of class {cls!r} is in the vocabulary: {sorted(set(tokens))}")
        out[cls] = entries
    return out


@dataclass(frozen=True)
class RowTargets:
    """Row-wise scoring targets: per row and class, the piece-id tuples of that row's own word of the class.

    `pieces[r][c]` scores row r for `classes[c]` (the row's factual word for its own class, its counterfactual
    for the other one, or a class's whole word set where the row has no word of its own); the entries are
    those of :func:`class_piece_sets` (causal objectives: (form, id) pairs).
    """

    classes: tuple[str, ...]
    pieces: list[list[frozenset[tuple[int, ...]]]] = field(repr=False)

    def __post_init__(self) -> None:
        bad = [r for r, row in enumerate(self.pieces) if len(row) != len(self.classes) or not all(row)]
        if bad:
            raise ValueError(f"RowTargets needs a non-empty target set per class in every row; row {bad[0]} has "
                             f"{[len(cell) for cell in self.pieces[bad[0]]]} for classes {list(self.classes)}")


def row_piece_sets(objective: LMObjective, classes: Sequence[str], words: Sequence[Sequence[Iterable[str]]]
                   ) -> RowTargets:
    """`RowTargets` of `words[r][c]` (the words scoring row r for `classes[c]`), with their case variants as in
    :func:`class_piece_sets`; a word the vocabulary does not know at all is an error naming it."""
    cache: dict[str, frozenset[tuple[int, ...]]] = {}

    def pieces(word: str) -> frozenset[tuple[int, ...]]:
        if word not in cache:
            found = class_piece_sets(objective, {word: [word]})[word]  # raises for an unknown word
            cache[word] = frozenset(found)
        return cache[word]

    rows = [[frozenset().union(*(pieces(w) for w in cell)) for cell in row] for row in words]
    return RowTargets(tuple(classes), rows)


@torch.no_grad()
def row_probabilities(model: nn.Module, objective: LMObjective, texts: Sequence[str], targets: RowTargets,
                      batch_size: int = 32) -> np.ndarray:
    """(rows, classes) probability that row r's slot is filled by its own word of each class (`targets`).

    Scored as in :func:`class_probabilities` (products of piece probabilities, sums over a cell's entries,
    causal: the next-token probability), but each row with its own targets.
    """
    texts = list(texts)
    if len(texts) != len(targets.pieces):
        raise ValueError(f"{len(texts)} texts but row targets for {len(targets.pieces)} rows")
    if isinstance(objective, CausalLMObjective):
        return _causal_row_probabilities(model, objective, texts, targets, batch_size)
    out = np.zeros((len(texts), len(targets.classes)), dtype=np.float64)
    lengths = sorted({len(ids) for row in targets.pieces for cell in row for ids in cell})
    device = next(model.parameters()).device
    slots = _slot_states(model, objective, texts, lengths, batch_size)
    for group in _head_groups(slots):
        hidden = torch.cat([s.hidden for s in group])
        probs = torch.softmax(objective.head(model)(hidden).float(), dim=-1).split([len(s.hidden) for s in group])
        for s, p in zip(group, probs, strict=True):
            entries = [(local, ci, ids) for local, r in enumerate(s.rows) for ci, cell in enumerate(targets.pieces[r])
                       for ids in cell if len(ids) == s.k]
            if not entries:
                continue
            local, ci, ids = zip(*entries, strict=True)
            p = p.view(len(s.rows), s.slots, s.k, -1)
            rows = torch.tensor(local, device=device)[:, None, None]
            picked = p[rows, torch.arange(s.slots, device=device)[None, :, None],
                       torch.arange(s.k, device=device)[None, None, :], torch.tensor(ids, device=device)[:, None, :]]
            np.add.at(out, (s.rows[list(local)], list(ci)), picked.prod(dim=-1).prod(dim=-1).cpu().double().numpy())
    return out


def _causal_row_probabilities(model: nn.Module, objective: CausalLMObjective, texts: Sequence[str],
                              targets: RowTargets, batch_size: int) -> np.ndarray:
    device = next(model.parameters()).device
    out = np.zeros((len(texts), len(targets.classes)), dtype=np.float64)
    for rows in forward_batches(objective.token_lengths(texts), batch_size):
        tensors, positions, spaced = objective.encode_prefixes([texts[i] for i in rows])
        tensors = {k: v.to(device) for k, v in tensors.items()}
        probs = torch.softmax(objective.logits_at_positions(model, tensors, positions.to(device)), dim=-1)
        entries = [(local, ci, i) for local, r in enumerate(rows) for ci, cell in enumerate(targets.pieces[r])
                   for form, i in cell if form == (AFTER_SPACE if spaced[local] else GLUED)]
        if not entries:
            continue
        local, ci, ids = zip(*entries, strict=True)
        picked = probs[torch.tensor(local, device=device), torch.tensor(ids, device=device)]
        np.add.at(out, (rows[list(local)], list(ci)), picked.cpu().double().numpy())
    return out


@torch.no_grad()
def class_probabilities(model: nn.Module, objective: LMObjective, texts: Sequence[str],
                        pieces_by_class: Mapping[str, set[tuple[int, ...]]], batch_size: int = 32) -> np.ndarray:
    """(rows, classes) probability that the slot is filled by a token of each class.

    A k-piece token is scored on the text with k masks as the product of its pieces'
    probabilities; a class's probability is the sum over its tokens. Causal objectives: the
    next-token probability after the slot's prefix, summed over the class's ids.
    """
    texts = list(texts)  # positional indexing below (a Series would index by label)
    if isinstance(objective, CausalLMObjective):
        return _causal_class_probabilities(model, objective, texts, pieces_by_class, batch_size)
    classes = list(pieces_by_class)
    by_length: dict[int, list[tuple[int, tuple[int, ...]]]] = defaultdict(list)
    for ci, cls in enumerate(classes):
        for ids in pieces_by_class[cls]:
            by_length[len(ids)].append((ci, ids))
    out = np.zeros((len(texts), len(classes)), dtype=np.float64)
    slots = _slot_states(model, objective, texts, list(by_length), batch_size)
    device = next(model.parameters()).device
    for group in _head_groups(slots):  # the head once per HEAD_CHUNK slots: its vocabulary-sized weight is
        hidden = torch.cat([s.hidden for s in group])  # read once per group, not once per batch
        probs = torch.softmax(objective.head(model)(hidden).float(), dim=-1).split([len(s.hidden) for s in group])
        for s, p in zip(group, probs, strict=True):
            p = p.view(len(s.rows), s.slots, s.k, -1)
            for ci, ids in by_length[s.k]:
                index = torch.tensor(ids, device=device)
                picked = p[:, :, torch.arange(s.k, device=device), index]  # (rows, slots, k)
                out[s.rows, ci] += picked.prod(dim=-1).prod(dim=-1).cpu().double().numpy()
    return out


@dataclass
class _Slots:
    """The last hidden states at the masks of one batch of rows, each slot filled with k masks."""

    rows: np.ndarray
    k: int
    slots: int  # slots per row
    hidden: torch.Tensor  # (rows · slots · k, hidden size), row-major


def _slot_states(model: nn.Module, objective: LMObjective, texts: Sequence[str], piece_counts: Sequence[int],
                 batch_size: int) -> list[_Slots]:
    """One backbone forward per batch and piece count; the hidden states at the masks (no head yet)."""
    device = next(model.parameters()).device
    out = []
    for rows in forward_batches(objective.token_lengths(texts), batch_size):
        chunk = [texts[i] for i in rows]
        for k in piece_counts:
            inputs = objective.encode_pieces(chunk, [list(range(k))] * len(chunk)).to(device)
            per_row = torch.bincount(inputs.rows, minlength=len(chunk))  # positions are row-major
            if not bool((per_row == per_row[0]).all()):
                raise DataError("Rows scored together must have the same number of [MASK] slots")
            hidden = model.base_model(**inputs.tensors).last_hidden_state
            picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, inputs.positions)
            out.append(_Slots(rows, k, int(per_row[0]) // k, picked))
    return out


def _head_groups(slots: Sequence[_Slots]) -> Iterator[list[_Slots]]:
    """Consecutive batches with at most HEAD_CHUNK slot states together (a single larger batch alone)."""
    group: list[_Slots] = []
    size = 0
    for item in slots:
        if group and size + len(item.hidden) > HEAD_CHUNK:
            yield group
            group, size = [], 0
        group.append(item)
        size += len(item.hidden)
    if group:
        yield group


def _causal_class_probabilities(model: nn.Module, objective: CausalLMObjective, texts: Sequence[str],
                                 ids_by_class: Mapping[str, set[tuple[int, ...]]], batch_size: int) -> np.ndarray:
    device = next(model.parameters()).device
    index = {cls: [torch.tensor(sorted({i for f, i in entries if f == form}), dtype=torch.long, device=device)
                   for form in (AFTER_SPACE, GLUED)] for cls, entries in ids_by_class.items()}
    out = np.zeros((len(texts), len(ids_by_class)), dtype=np.float64)
    for rows in forward_batches(objective.token_lengths(texts), batch_size):
        tensors, positions, spaced = objective.encode_prefixes([texts[i] for i in rows])
        tensors = {k: v.to(device) for k, v in tensors.items()}
        probs = torch.softmax(objective.logits_at_positions(model, tensors, positions.to(device)), dim=-1)
        after_space = torch.tensor(spaced, device=device)
        for ci, (after, glued) in enumerate(index.values()):
            p = torch.where(after_space, probs[:, after].sum(-1), probs[:, glued].sum(-1))
            out[rows, ci] = p.cpu().double().numpy()
    return out


@dataclass
class LMSData:
    """Neutral texts with fixed scored positions, tokenised once for every candidate model.

    Each batch: (tensors, flat positions whose logits are read, the token each position must
    predict). Masked LMs: the masked positions and their original tokens; causal LMs: every
    position and the token after it.
    """

    batches: list[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]]
    n_masked: int
    causal: bool = False


def _ignored_ids(objective: LMObjective, ignore_tokens: Iterable[str]) -> set[int]:
    if isinstance(objective, CausalLMObjective):
        return {i for t in ignore_tokens for _, i in causal_scoring_ids(objective, t)}
    return {i for t in ignore_tokens for v in case_variants(t) if objective.is_known(v) for i in objective.pieces(v)}


def prepare_lms(objective: LMObjective, texts: Sequence[str], ignore_tokens: Iterable[str] = (),
                seed: int = 42, batch_size: int = 32, fraction: float = 0.15) -> LMSData:
    """Mask max(1, ⌊fraction·L⌋) random non-special, non-ignored positions per text (seeded).

    Special tokens ([CLS], [SEP], padding) are excluded via the tokenizer's special-tokens mask,
    and so are the ids of `ignore_tokens` (e.g. the feature's target words). Causal objectives:
    every token after the first is predicted from its left context (no masking, `seed` and
    `fraction` unused); ignored ids are not scored.
    """
    texts = list(texts)
    if isinstance(objective, CausalLMObjective):
        return _prepare_causal_lms(objective, texts, _ignored_ids(objective, ignore_tokens), batch_size)
    tok = objective.tokenizer
    ignore_ids = _ignored_ids(objective, ignore_tokens)
    rng = np.random.default_rng(seed)
    batches, total = [], 0
    for rows in forward_batches(objective.token_lengths(texts), batch_size):
        enc = tok([texts[i] for i in rows], padding=True, truncation=True,
                  max_length=objective.max_length, return_tensors="pt", return_special_tokens_mask=True)
        input_ids = enc["input_ids"].clone()
        special = enc.pop("special_tokens_mask").bool() | (enc["attention_mask"] == 0)
        flat_positions, originals = [], []
        for r in range(input_ids.shape[0]):
            candidates = [c for c in (~special[r]).nonzero(as_tuple=True)[0].tolist()
                          if int(input_ids[r, c]) not in ignore_ids]
            if not candidates:
                continue
            n_real = int((~special[r]).sum())
            chosen = sorted(rng.choice(candidates, size=min(len(candidates), max(1, math.floor(fraction * n_real))),
                                       replace=False).tolist())
            for c in chosen:
                flat_positions.append(r * input_ids.shape[1] + c)
                originals.append(int(input_ids[r, c]))
                input_ids[r, c] = tok.mask_token_id
        if not flat_positions:
            continue
        enc["input_ids"] = input_ids
        tensors = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        batches.append((tensors, torch.tensor(flat_positions), torch.tensor(originals)))
        total += len(originals)
    if total == 0:
        raise DataError("No maskable tokens in the neutral texts for LMS; pass longer or more texts")
    return LMSData(batches, total)


def _prepare_causal_lms(objective: CausalLMObjective, texts: Sequence[str], ignore_ids: set[int],
                        batch_size: int) -> LMSData:
    lead = objective.lead_ids
    batches, total = [], 0
    for rows in forward_batches(objective.token_lengths(texts), batch_size):
        sequences, positions, targets = [], [], []
        for text in (texts[i] for i in rows):
            ids = lead + objective.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids = ids[:objective.max_length]
            pairs = [(t, ids[t + 1]) for t in range(len(ids) - 1) if ids[t + 1] not in ignore_ids]
            if not pairs:
                continue
            sequences.append(ids)
            positions.append([t for t, _ in pairs])
            targets.extend(target for _, target in pairs)
        if not sequences:
            continue
        tensors, last = objective.pad(sequences)
        width = tensors["input_ids"].shape[1]
        flat = []
        for row, (seq, cols) in enumerate(zip(sequences, positions, strict=True)):
            start_col = int(last[row]) - row * width - (len(seq) - 1)  # > 0 with left padding
            flat.extend(row * width + start_col + c for c in cols)
        batches.append((tensors, torch.tensor(flat), torch.tensor(targets)))
        total += len(targets)
    if total == 0:
        raise DataError("No scorable tokens in the neutral texts for LMS; pass longer or more texts")
    return LMSData(batches, total, causal=True)


@dataclass(frozen=True)
class LMSOutcome:
    """An LMS pass: the score when `complete`, else an upper bound below `stop_below` (the pass stopped
    early because the remaining texts could no longer lift the score to it); `forwards`: model calls."""

    value: float
    complete: bool
    forwards: int


def lm_score(model: nn.Module, objective: LMObjective, data: LMSData) -> float:
    """LMS of `model` on prepared neutral data: masked-LM accuracy or causal-LM 1 / (1 + NLL)."""
    return lm_score_bounded(model, objective, data).value


def lm_score_bounded(model: nn.Module, objective: LMObjective, data: LMSData,
                     stop_below: float | None = None) -> LMSOutcome:
    """LMS, stopping as soon as it is certain to end below `stop_below` (None: never stops early).

    LMS is a mean over the prepared positions, so after each batch the best reachable score is known
    (masked: every remaining position correct; causal: zero loss on the rest). Batches run in the
    same order and accumulate the same way as a complete pass, so a complete result is bitwise the
    same whatever `stop_below` is.
    """
    if data.causal != objective.is_causal:
        raise ValueError("LMS data was prepared for another kind of objective; call prepare_lms with this one")
    if stop_below is not None and not math.isfinite(stop_below):
        raise ValueError(f"stop_below must be finite or None, got {stop_below}")
    run = _causal_lms_steps if data.causal else _masked_lms_steps
    forwards, best = 0, math.inf
    for best in run(model, objective, data):
        forwards += 1
        if stop_below is not None and best < stop_below and forwards < len(data.batches):
            return LMSOutcome(best, False, forwards)
    return LMSOutcome(best, True, forwards)


@torch.no_grad()
def causal_lm_lms(model: nn.Module, objective: LMObjective, data: LMSData) -> float:
    """1 / (1 + NLL): NLL = mean next-token cross-entropy over the prepared positions (0 if not finite)."""
    return lm_score(model, objective, data)


@torch.no_grad()
def masked_lm_lms(model: nn.Module, objective: LMObjective, data: LMSData) -> float:
    """Language-modelling score: top-1 accuracy at the prepared masked positions."""
    return lm_score(model, objective, data)


def _causal_value(nll: float, n: int) -> float:
    mean = nll / n
    return 1.0 / (1.0 + mean) if math.isfinite(mean) else 0.0


@torch.no_grad()
def _causal_lms_steps(model: nn.Module, objective: LMObjective, data: LMSData) -> Iterator[float]:
    """After each batch: the best reachable 1 / (1 + NLL) (the rest at zero loss); the last is the LMS."""
    device = next(model.parameters()).device
    head = objective.head(model)
    nll = 0.0
    for tensors, positions, targets in data.batches:
        tensors = {k: v.to(device) for k, v in tensors.items()}
        hidden = model.base_model(**tensors).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1])
        for start in range(0, len(positions), HEAD_CHUNK):
            picked = hidden.index_select(0, positions[start:start + HEAD_CHUNK].to(device))
            logits = head(picked).float()
            nll += float(F.cross_entropy(logits, targets[start:start + HEAD_CHUNK].to(device), reduction="sum"))
        yield _causal_value(nll, data.n_masked)  # nll only grows (a sum of non-negative terms)


@torch.no_grad()
def _masked_lms_steps(model: nn.Module, objective: LMObjective, data: LMSData) -> Iterator[float]:
    """After each batch: the best reachable accuracy (every remaining position correct); the last is the LMS."""
    device = next(model.parameters()).device
    correct, seen = 0, 0
    for tensors, positions, originals in data.batches:
        tensors = {k: v.to(device) for k, v in tensors.items()}
        logits = objective.logits_at_positions(model, tensors, positions.to(device))
        correct += int((logits.argmax(-1).cpu() == originals).sum())
        seen += len(originals)
        yield (correct + data.n_masked - seen) / data.n_masked
