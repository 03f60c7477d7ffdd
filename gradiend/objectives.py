"""Prediction objectives: turn (masked text, token) rows into model inputs and per-row losses.

The masked-LM objective owns the tokenizer quirks: multi-piece targets (one mask per piece),
dynamic padding to the longest row, and evaluating the LM head only at labelled positions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gradiend.data import MASK, DataError

logger = logging.getLogger(__name__)


@dataclass
class ModelInputs:
    """A padded batch plus the labelled positions (flattened over batch × time)."""

    tensors: dict[str, torch.Tensor]
    positions: torch.Tensor
    rows: torch.Tensor
    labels: torch.Tensor
    n_rows: int

    def to(self, device: torch.device | str) -> ModelInputs:
        return ModelInputs({k: v.to(device) for k, v in self.tensors.items()}, self.positions.to(device),
                           self.rows.to(device), self.labels.to(device), self.n_rows)

    def same_inputs(self, other: ModelInputs) -> bool:
        """True when both batches feed identical tokens at identical labelled positions."""
        return (self.tensors["input_ids"].shape == other.tensors["input_ids"].shape
                and torch.equal(self.tensors["input_ids"], other.tensors["input_ids"])
                and torch.equal(self.positions, other.positions))


def _is_loss_module(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.loss._Loss)


class _HeadChain(nn.Module):
    """The model's non-backbone children applied in order (the MLM prediction head)."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = list(modules)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            hidden = part(hidden)
        return hidden


class MaskedLMObjective:
    """Masked-token prediction: the slot is filled with k mask tokens for a k-piece target."""

    name = "mlm"

    def __init__(self, tokenizer, max_length: int = 256, mask: str = MASK) -> None:
        if tokenizer.mask_token is None:
            raise ValueError(f"Tokenizer {type(tokenizer).__name__} has no mask token; a masked-LM "
                             f"objective needs one (is this a causal LM?)")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.mask = mask
        self._pieces: dict[str, list[int]] = {}
        self._head: _HeadChain | None = None
        self._head_checked_for: int | None = None

    def pieces(self, token: str) -> list[int]:
        """Vocabulary ids of `token` (cached); error if it is empty or unknown to the tokenizer."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
        unk = self.tokenizer.unk_token_id
        if not ids or (unk is not None and unk in ids):
            raise DataError(f"Target token {token!r} is not in the vocabulary of "
                            f"{self.tokenizer.name_or_path or type(self.tokenizer).__name__} "
                            f"(tokenizes to {ids}); use tokens the model knows")
        self._pieces[token] = ids
        return ids

    def is_known(self, token: str) -> bool:
        """True when `token` tokenizes to known pieces (usable as a label)."""
        try:
            self.pieces(token)
        except DataError:
            return False
        return True

    def encode(self, texts: Sequence[str], tokens: Sequence[str]) -> ModelInputs:
        """Tokenise rows; every placeholder of row i gets the pieces of tokens[i] as labels."""
        return self.encode_pieces(texts, [self.pieces(t) for t in tokens])

    def encode_pieces(self, texts: Sequence[str], piece_lists: Sequence[Sequence[int]]) -> ModelInputs:
        """Tokenise rows; each placeholder of row i becomes len(piece_lists[i]) masks labelled with them."""
        filled = [text.replace(self.mask, " ".join([self.tokenizer.mask_token] * len(ids)))
                  for text, ids in zip(texts, piece_lists, strict=True)]
        enc = self.tokenizer(filled, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        input_ids = enc["input_ids"]
        is_mask = input_ids == self.tokenizer.mask_token_id
        rows, cols = is_mask.nonzero(as_tuple=True)
        labels = torch.empty_like(rows)
        for i, ids in enumerate(piece_lists):
            sel = (rows == i).nonzero(as_tuple=True)[0]
            expected = len(ids) * texts[i].count(self.mask)
            if len(sel) != expected:
                raise DataError(f"Row {texts[i][:80]!r}: expected {expected} mask token(s) after "
                                f"tokenisation but found {len(sel)} (text truncated at max_length="
                                f"{self.max_length}, or the text already contains mask tokens)")
            labels[sel] = torch.tensor(list(ids) * (len(sel) // len(ids)), dtype=labels.dtype)
        positions = rows * input_ids.shape[1] + cols
        tensors = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return ModelInputs(tensors, positions, rows, labels, len(texts))

    def logits_at(self, model: nn.Module, inputs: ModelInputs) -> torch.Tensor:
        """LM-head logits (float32) at the labelled positions only."""
        return self.logits_at_positions(model, inputs.tensors, inputs.positions)

    def logits_at_positions(self, model: nn.Module, tensors: dict[str, torch.Tensor],
                            positions: torch.Tensor) -> torch.Tensor:
        """LM-head logits (float32) at flat (batch × time) `positions`; the head runs nowhere else."""
        hidden = model.base_model(**tensors).last_hidden_state
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        return self.head(model)(picked).float()

    def head(self, model: nn.Module) -> _HeadChain:
        """The LM head as a module applied to hidden states (checked once against full logits)."""
        if self._head is not None and self._head_checked_for == id(model):
            return self._head
        backbone = model.base_model
        parts = [m for m in model.children() if m is not backbone and not _is_loss_module(m)]
        if not parts:
            raise ValueError(f"{type(model).__name__} has no prediction head besides its backbone; load "
                             f"the model with AutoModelForMaskedLM")
        chain = _HeadChain(parts)
        device = next(model.parameters()).device
        probe = self.encode([f"a {self.mask} is here ."], ["the"]).to(device)
        with torch.no_grad():
            full = model(**probe.tensors).logits
            hidden = backbone(**probe.tensors).last_hidden_state
            mine = chain(hidden)
        if full.shape != mine.shape or not torch.allclose(full, mine, atol=1e-4, rtol=1e-4):
            raise ValueError(f"Could not isolate the MLM head of {type(model).__name__} (its children "
                             f"applied in order do not reproduce the model's logits)")
        self._head, self._head_checked_for = chain, id(model)
        return chain

    def row_losses(self, model: nn.Module, inputs: ModelInputs,
                   label_sets: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-row mean cross-entropy over the labelled positions, one vector per label set.

        One forward pass serves every label set (factual and alternative share the input).
        """
        logits = self.logits_at(model, inputs)
        log_probs = F.log_softmax(logits, dim=-1)
        counts = torch.zeros(inputs.n_rows, device=logits.device).index_add_(
            0, inputs.rows, torch.ones_like(inputs.rows, dtype=logits.dtype))
        out = []
        for labels in label_sets:
            nll = -log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)
            sums = torch.zeros(inputs.n_rows, device=logits.device, dtype=nll.dtype).index_add(
                0, inputs.rows, nll)
            out.append(sums / counts)
        return out
