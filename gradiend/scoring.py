"""Scores of a (possibly rewritten) masked LM: class probabilities at the slot, and LMS.

Both are computed for many candidate models in the decoder grid, so everything that does not
depend on the weights (tokenisation, which positions LMS masks) is prepared once.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gradiend.data import DataError
from gradiend.objectives import MaskedLMObjective


def case_variants(token: str) -> set[str]:
    """The lower, Title and UPPER forms of a word (one of them is usually what the vocabulary holds)."""
    return {token.lower(), token[:1].upper() + token[1:].lower(), token.upper()}


def class_piece_sets(objective: MaskedLMObjective, tokens_by_class: Mapping[str, Iterable[str]]
                     ) -> dict[str, set[tuple[int, ...]]]:
    """Per class, the distinct piece-id tuples of its tokens and their case variants.

    A case variant that maps to the same ids (uncased vocabularies) is counted once; variants the
    vocabulary does not know are skipped, but every class keeps at least one known token.
    """
    out: dict[str, set[tuple[int, ...]]] = {}
    for cls, tokens in tokens_by_class.items():
        pieces = {tuple(objective.pieces(v)) for t in tokens for v in case_variants(t) if objective.is_known(v)}
        if not pieces:
            raise DataError(f"No token of class {cls!r} is in the vocabulary: {sorted(set(tokens))}")
        out[cls] = pieces
    return out


@torch.no_grad()
def class_probabilities(model: nn.Module, objective: MaskedLMObjective, texts: Sequence[str],
                        pieces_by_class: Mapping[str, set[tuple[int, ...]]], batch_size: int = 32) -> np.ndarray:
    """(rows, classes) probability that the slot is filled by a token of each class.

    A k-piece token is scored on the text with k masks as the product of its pieces'
    probabilities; a class's probability is the sum over its tokens.
    """
    classes = list(pieces_by_class)
    by_length: dict[int, list[tuple[int, tuple[int, ...]]]] = defaultdict(list)
    for ci, cls in enumerate(classes):
        for ids in pieces_by_class[cls]:
            by_length[len(ids)].append((ci, ids))
    out = np.zeros((len(texts), len(classes)), dtype=np.float64)
    device = next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        for k, entries in by_length.items():
            placeholder = [list(range(k))] * len(chunk)
            inputs = objective.encode_pieces(chunk, placeholder).to(device)
            probs = torch.softmax(objective.logits_at(model, inputs), dim=-1)
            # positions are row-major: row r owns k × slots consecutive entries
            per_row = torch.bincount(inputs.rows, minlength=len(chunk))
            if not bool((per_row == per_row[0]).all()):
                raise DataError("Rows scored together must have the same number of [MASK] slots")
            probs = probs.view(len(chunk), int(per_row[0]) // k, k, -1)
            for ci, ids in entries:
                index = torch.tensor(ids, device=device)
                picked = probs[:, :, torch.arange(k, device=device), index]  # (rows, slots, k)
                out[start:start + len(chunk), ci] += picked.prod(dim=-1).prod(dim=-1).double().cpu().numpy()
    return out


@dataclass
class LMSData:
    """Neutral texts with fixed masked positions, tokenised once for every candidate model."""

    batches: list[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]]
    n_masked: int


def prepare_lms(objective: MaskedLMObjective, texts: Sequence[str], ignore_tokens: Iterable[str] = (),
                seed: int = 42, batch_size: int = 32, fraction: float = 0.15) -> LMSData:
    """Mask max(1, ⌊fraction·L⌋) random non-special, non-ignored positions per text (seeded).

    Special tokens ([CLS], [SEP], padding) are excluded via the tokenizer's special-tokens mask,
    and so are the ids of `ignore_tokens` (e.g. the feature's target words).
    """
    tok = objective.tokenizer
    ignore_ids = {i for t in ignore_tokens for v in case_variants(t) if objective.is_known(v)
                  for i in objective.pieces(v)}
    rng = np.random.default_rng(seed)
    batches, total = [], 0
    for start in range(0, len(texts), batch_size):
        enc = tok(list(texts[start:start + batch_size]), padding=True, truncation=True,
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


@torch.no_grad()
def masked_lm_lms(model: nn.Module, objective: MaskedLMObjective, data: LMSData) -> float:
    """Language-modelling score: top-1 accuracy at the prepared masked positions."""
    device = next(model.parameters()).device
    correct = 0
    for tensors, positions, originals in data.batches:
        tensors = {k: v.to(device) for k, v in tensors.items()}
        logits = objective.logits_at_positions(model, tensors, positions.to(device))
        correct += int((logits.argmax(-1).cpu() == originals).sum())
    return correct / data.n_masked
