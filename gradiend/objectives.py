"""Prediction objectives: turn (masked text, token) rows into model inputs and per-row losses.

Each objective owns its tokenizer quirks and evaluates the LM head only at the labelled
positions. The masked-LM objective fills the slot with one mask per target piece; the causal-LM
objective predicts the target as the next token after the text left of the slot.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


class LMObjective:
    """What masked- and causal-LM objectives share: target pieces, the isolated LM head, per-row losses.

    Subclasses implement `pieces` (the ids a target token is scored by), `encode` and `_probe`
    (a small input to check the isolated head against the model's own logits).
    """

    name = "lm"
    is_causal = False

    def __init__(self, tokenizer: Any, max_length: int = 256, mask: str = MASK) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.mask = mask
        self._pieces: dict[str, list[int]] = {}
        self._head: _HeadChain | None = None
        self._head_checked_for: int | None = None

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Approximate token counts (the texts as written), for grouping rows of similar length."""
        if not texts:
            return []
        ids = self.tokenizer(list(texts), add_special_tokens=False, truncation=True,
                             max_length=self.max_length)["input_ids"]
        return [len(row) for row in ids]

    def _tokenize_target(self, token: str) -> list[int]:
        return self.tokenizer(token, add_special_tokens=False)["input_ids"]

    def _check_known(self, token: str, ids: list[int], where: str = "") -> None:
        """Error unless `ids` is a non-empty tokenisation of `token` without the unknown token."""
        unk = self.tokenizer.unk_token_id
        if not ids or (unk is not None and unk in ids):
            raise DataError(f"Target token {token!r}{where} is not in the vocabulary of "
                            f"{self.tokenizer.name_or_path or type(self.tokenizer).__name__} "
                            f"(tokenizes to {ids}); use tokens the model knows")

    def pieces(self, token: str) -> list[int]:
        """Vocabulary ids of `token` (cached); error if it is empty or unknown to the tokenizer."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        special = [str(t) for t in self.tokenizer.all_special_tokens]
        if token.strip().lower() in {t.lower() for t in special} or self.mask.lower() in token.lower():
            raise DataError(f"Target token {token!r} is a special token of the tokenizer ({special}) or the "
                            f"{self.mask} placeholder; labels must be ordinary words. Fix the 'label' column.")
        ids = self._tokenize_target(token) if token.strip() else []
        self._check_known(token, ids)
        self._pieces[token] = ids
        return ids

    def check_rows_fit(self, texts: Sequence[str]) -> None:
        """Error (before any training) when a row's slot would be cut off at `max_length`; nothing by default."""

    def is_known(self, token: str) -> bool:
        """True when `token` tokenizes to known pieces (usable as a label)."""
        try:
            self.pieces(token)
        except DataError:
            return False
        return True

    def has_context(self, text: str) -> bool:
        """Whether a row can be scored at all (causal objectives need text left of the slot)."""
        return True

    @property
    def context_requirement(self) -> str:
        """What `has_context` demands, in words (for messages about dropped rows)."""
        return "none"

    def encode(self, texts: Sequence[str], tokens: Sequence[str]) -> ModelInputs:
        raise NotImplementedError

    def _probe(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

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
        loader = "AutoModelForCausalLM" if self.is_causal else "AutoModelForMaskedLM"
        if not parts:
            raise ValueError(f"{type(model).__name__} has no prediction head besides its backbone; load "
                             f"the model with {loader}")
        chain = _HeadChain(parts)
        device = next(model.parameters()).device
        probe = {k: v.to(device) for k, v in self._probe().items()}
        with torch.no_grad():
            full = model(**probe).logits
            hidden = backbone(**probe).last_hidden_state
            mine = chain(hidden)
        if full.shape != mine.shape or not torch.allclose(full, mine, atol=1e-4, rtol=1e-4):
            raise ValueError(f"Could not isolate the LM head of {type(model).__name__} (its children "
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


class MaskedLMObjective(LMObjective):
    """Masked-token prediction: the slot is filled with k mask tokens for a k-piece target."""

    name = "mlm"

    def __init__(self, tokenizer: Any, max_length: int = 256, mask: str = MASK) -> None:
        if tokenizer.mask_token is None:
            raise ValueError(f"Tokenizer {type(tokenizer).__name__} has no mask token; a masked-LM "
                             f"objective needs one (is this a causal LM? use objective='clm')")
        super().__init__(tokenizer, max_length, mask)

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

    def check_rows_fit(self, texts: Sequence[str]) -> None:
        """Error naming the rows whose (last) slot lies beyond `max_length` tokens (one tokenizer pass, no model)."""
        texts = list(dict.fromkeys(str(t) for t in texts))
        if not texts:
            return
        mask_token = self.tokenizer.mask_token
        filled = [text.replace(self.mask, mask_token) for text in texts]
        ids = self.tokenizer(filled, add_special_tokens=True, truncation=False)["input_ids"]
        mask_id = self.tokenizer.mask_token_id
        # the slot's last piece must fit, and truncation keeps the closing special token(s)
        plain = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        framed = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        tail = len(framed) - framed.index(plain[0]) - len(plain) if plain and plain[0] in framed else 0
        limit = self.max_length - tail
        needed = [max(i for i, t in enumerate(row) if t == mask_id) + 1 if mask_id in row else 0 for row in ids]
        bad = [i for i, n in enumerate(needed) if n > limit]
        if bad:
            longest = max(needed[i] for i in bad) + tail
            raise DataError(f"{len(bad)} row(s) have their {self.mask} slot beyond max_length={self.max_length} "
                            f"tokens, e.g. {texts[bad[0]][:80]!r}; they would be cut off. Raise max_length to at "
                            f"least {longest} (plus the target's extra pieces) or shorten those rows.")

    def _probe(self) -> dict[str, torch.Tensor]:
        return self.encode([f"a {self.mask} is here ."], ["the"]).tensors


PADDING_SIDES = ("right", "left")
MULTI_PIECE_POLICIES = ("first", "error")


class CausalLMObjective(LMObjective):
    """Next-token prediction: the target is scored by the logits of the last token left of the slot.

    * The prefix is the text before the first placeholder with trailing whitespace stripped;
      text after the slot is not seen (a causal LM only reads left context).
    * When whitespace separated prefix and slot, the target is scored in the form the tokenizer
      gives it after a space (" he" for GPT-2/Llama byte-level BPE, "he" for WordPiece); when the
      slot follows the prefix directly (`"[MASK]` after a quote) it is scored as written.
    * A target of several pieces is scored by its first piece only, i.e. P(first piece | prefix),
      an upper bound of the word's probability (`multi_piece="error"` rejects such targets).
    * Rows are right-padded and each row's last real token is gathered (`padding_side="left"`
      pads on the left and passes position ids from the attention mask; both give the same
      logits). The pad id is the tokenizer's pad token, else its EOS token.
    * Rows with fewer than `min_left_context_tokens` tokens left of the slot are rejected.
    """

    name = "clm"
    is_causal = True

    def __init__(self, tokenizer: Any, max_length: int = 256, mask: str = MASK, *,
                 min_left_context_tokens: int = 1, padding_side: str = "right", multi_piece: str = "first") -> None:
        super().__init__(tokenizer, max_length, mask)
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
        if multi_piece not in MULTI_PIECE_POLICIES:
            raise ValueError(f"multi_piece must be one of {MULTI_PIECE_POLICIES}, got {multi_piece!r}")
        if isinstance(min_left_context_tokens, bool) or not isinstance(min_left_context_tokens, int) \
                or min_left_context_tokens < 1:
            raise ValueError(f"min_left_context_tokens must be an int >= 1, got {min_left_context_tokens!r}")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError(f"Tokenizer {type(tokenizer).__name__} has neither a pad nor an EOS token; set "
                             f"tokenizer.pad_token before using it with the causal-LM objective")
        self.pad_id = int(pad)
        self.padding_side = padding_side
        self.multi_piece = multi_piece
        self.min_left_context_tokens = min_left_context_tokens
        self.lead_ids = self._leading_special_ids()
        self._variants: dict[tuple[str, bool], list[int]] = {}
        self._warned: set[str] = set()

    def _leading_special_ids(self) -> list[int]:
        """Special ids the tokenizer puts before a text (e.g. BOS); trailing ones (EOS) are dropped."""
        plain = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("a")["input_ids"]
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return list(full[:start])
        return []

    # -- targets ----------------------------------------------------------------------------------
    def _continuation(self, token: str, spaced: bool) -> list[int]:
        """Pieces of `token` as it continues a text: after a space, or glued to punctuation."""
        context = "a" if spaced else '"'
        text = context + (" " if spaced else "") + token
        head = self.tokenizer(context, add_special_tokens=False)["input_ids"]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids[:len(head)] == head and len(ids) > len(head):
            return ids[len(head):]
        return self.tokenizer((" " if spaced else "") + token, add_special_tokens=False)["input_ids"]

    def _tokenize_target(self, token: str) -> list[int]:
        return self._continuation(token, spaced=True)

    def target_pieces(self, token: str, spaced: bool = True) -> list[int]:
        """Pieces of `token` after a space (`spaced`) or directly after the prefix; error if unknown."""
        if spaced:
            return self.pieces(token)
        key = (token, False)
        if key not in self._variants:
            ids = self._continuation(token, spaced=False) if token.strip() else []
            self._check_known(token, ids, " (directly after the prefix)")
            self._variants[key] = ids
        return self._variants[key]

    def target_id(self, token: str, spaced: bool = True) -> int:
        """The id the target is scored by: its first piece (multi-piece targets: see the class doc)."""
        ids = self.target_pieces(token, spaced)
        if len(ids) > 1:
            shown = self.tokenizer.convert_ids_to_tokens(ids)
            if self.multi_piece == "error":
                raise DataError(f"Target token {token!r} is {len(ids)} pieces {shown} for this tokenizer; the "
                                f"causal-LM objective with multi_piece='error' needs single-token targets. Use "
                                f"single-token words or multi_piece='first' (scores the first piece only).")
            if token not in self._warned:
                self._warned.add(token)
                logger.info("Target %r is %d pieces %s for this tokenizer; the causal-LM objective scores its "
                            "first piece %r only", token, len(ids), shown, shown[0])
        return int(ids[0])

    # -- prefixes ---------------------------------------------------------------------------------
    def split(self, text: str) -> tuple[str, bool]:
        """(prefix, spaced): text left of the first placeholder without trailing whitespace, and
        whether whitespace separated it from the slot."""
        index = text.find(self.mask)
        if index < 0:
            raise DataError(f"Row {text[:80]!r} has no {self.mask} placeholder; mark the target slot with it")
        before = text[:index]
        prefix = before.rstrip()
        return prefix, len(prefix) < len(before)

    def _prefix_body(self, text: str) -> tuple[list[int], bool]:
        prefix, spaced = self.split(text)
        ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        return ids, spaced

    def left_context_tokens(self, text: str) -> int:
        """Number of tokens left of the slot (special tokens such as BOS not counted)."""
        return len(self._prefix_body(text)[0])

    @property
    def context_requirement(self) -> str:
        return (f"a causal LM predicts the slot from its left context, so rows need at least "
                f"{self.min_left_context_tokens} token(s) before it; TrainingArguments.min_left_context_tokens "
                f"sets the threshold")

    def has_context(self, text: str) -> bool:
        """True when the row has at least `min_left_context_tokens` tokens left of the slot."""
        try:
            return self.left_context_tokens(text) >= self.min_left_context_tokens
        except DataError:
            return False

    def prefix_ids(self, text: str) -> tuple[list[int], bool]:
        """Model input ids of the prefix (leading special tokens included; the last
        `max_length` tokens kept) and whether the slot followed whitespace."""
        body, spaced = self._prefix_body(text)
        if len(body) < self.min_left_context_tokens:
            what = "no text" if not body else f"only {len(body)} token(s)"
            raise DataError(f"Row {text[:80]!r} has {what} before {self.mask}, but the causal-LM objective "
                            f"predicts the slot from its left context and needs at least "
                            f"{self.min_left_context_tokens} token(s) (min_left_context_tokens). Drop such rows, "
                            f"put more text before the slot, or lower TrainingArguments.min_left_context_tokens.")
        keep = max(1, self.max_length - len(self.lead_ids))
        return self.lead_ids + body[-keep:], spaced

    def pad(self, sequences: Sequence[Sequence[int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Padded tensors and the flat (batch × time) position of each row's last real token."""
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(sequences), width), dtype=torch.long)
        last = torch.empty(len(sequences), dtype=torch.long)
        for i, seq in enumerate(sequences):
            start = width - len(seq) if self.padding_side == "left" else 0
            input_ids[i, start:start + len(seq)] = torch.tensor(list(seq), dtype=torch.long)
            attention[i, start:start + len(seq)] = 1
            last[i] = start + len(seq) - 1
        tensors = {"input_ids": input_ids, "attention_mask": attention}
        if self.padding_side == "left":
            tensors["position_ids"] = (attention.cumsum(1) - 1).clamp(min=0)
        return tensors, torch.arange(len(sequences)) * width + last

    def encode_prefixes(self, texts: Sequence[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[bool]]:
        """(tensors, flat positions of each row's last prefix token, spaced flags) of the rows' prefixes."""
        encoded = [self.prefix_ids(t) for t in texts]
        tensors, positions = self.pad([ids for ids, _ in encoded])
        return tensors, positions, [spaced for _, spaced in encoded]

    def encode(self, texts: Sequence[str], tokens: Sequence[str]) -> ModelInputs:
        """Prefix of each row, labelled at its last real token with the target id of tokens[i]."""
        tensors, positions, spaced = self.encode_prefixes(texts)
        labels = torch.tensor([self.target_id(t, s) for t, s in zip(tokens, spaced, strict=True)], dtype=torch.long)
        return ModelInputs(tensors, positions, torch.arange(len(texts)), labels, len(texts))

    def _probe(self) -> dict[str, torch.Tensor]:
        return self.pad([self.lead_ids + self.tokenizer("a b c", add_special_tokens=False)["input_ids"]])[0]

    def head(self, model: nn.Module) -> _HeadChain:
        if self.padding_side == "left" and "position_ids" not in inspect.signature(model.base_model.forward).parameters:
            raise ValueError(f"{type(model.base_model).__name__} takes no position_ids, so left padding would shift "
                             f"its positions; use padding_side='right'")
        return super().head(model)
