"""Prediction objectives: turn (masked text, token) rows into model inputs and per-row losses.

Each objective owns its tokenizer quirks and evaluates the LM head only at the labelled
positions. The masked-LM objective fills the slot with one mask per target piece; the causal-LM
objective predicts the target as the next token after the text left of the slot; `clm_mlm_head`
scores the target with a small head trained on the frozen causal LM that also reads the tokens
after the slot (`gradiend.mlm_head`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradiend.data import MASK, DataError, length_batches
from gradiend.mlm_head import HEAD_FILE, HeadConfig, HeadSettings, SlotHead, train_head

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


UNIFORM_TARGET = -1
"""Head label of a word that is none of the head's target words: its loss is the mean over all of them."""


class CausalMLMHeadObjective(CausalLMObjective):
    """`clm_mlm_head`: GRADIEND gradients of a slot head that reads the right context of a frozen causal LM.

    The slot (its first placeholder; later ones too) is filled with a one-token placeholder and the mean
    hidden state of the slot and the `pooling_length - 1` tokens after it goes through a linear head over
    the target words (`gradiend.mlm_head`). A row's loss is the head's cross-entropy for its word; a word
    that is none of the head's words (a neutral row's masked word) gets the mean cross-entropy over all of
    them, i.e. "none of the feature's words". Tokens after the pooling window cannot change the pooled
    states of a causal model and are dropped.

    Everything that scores the model's own predictions — class probabilities and LMS of the decoder
    evaluation (`gradiend.scoring`) — is inherited from `CausalLMObjective` and uses the causal LM's
    next-token head, so a rewrite is judged by what the rewritten model itself predicts. Rows need the
    same left context as for `clm` (`min_left_context_tokens`), so that both uses see the same rows.
    """

    name = "clm_mlm_head"

    def __init__(self, tokenizer: Any, max_length: int = 256, mask: str = MASK, *,
                 head: dict[str, Any] | None = None, head_tensors: dict[str, torch.Tensor] | None = None,
                 **causal_options: Any) -> None:
        super().__init__(tokenizer, max_length, mask, **causal_options)
        self.causal_options = dict(causal_options)
        self._pooling_length = HeadSettings.pooling_length
        self.head_config: HeadConfig | None = None
        self.slot_head: SlotHead | None = None
        self.placeholder_id: int | None = None
        self._class_index: dict[str, int] = {}
        if head is not None:
            if head_tensors is None:
                raise ValueError("The clm_mlm_head objective's config names a trained head but its weights are "
                                 f"missing ({HEAD_FILE}); the checkpoint is incomplete, re-train it")
            config = HeadConfig.from_json(head)
            self._install(config, SlotHead.from_tensors(config, head_tensors))

    # -- the head ---------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.slot_head is not None

    def default_placeholder(self) -> str:
        """The tokenizer's mask token when it has one, else its EOS token."""
        for token in (self.tokenizer.mask_token, self.tokenizer.eos_token):
            if token is not None:
                return str(token)
        raise ValueError(f"Tokenizer {type(self.tokenizer).__name__} has neither a mask nor an EOS token; pass a "
                         f"one-token placeholder for the clm_mlm_head slot")

    def _placeholder_id(self, placeholder: str) -> int:
        ids = self.tokenizer(placeholder, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"The clm_mlm_head placeholder {placeholder!r} is {len(ids)} tokens for this tokenizer; "
                             f"it must be exactly one (e.g. the EOS token {self.tokenizer.eos_token!r})")
        return int(ids[0])

    def _install(self, config: HeadConfig, head: SlotHead) -> None:
        self.placeholder_id = self._placeholder_id(config.placeholder)
        self.head_config, self.slot_head = config, head
        self._class_index = {word: i for i, word in enumerate(config.classes)}

    def options_json(self) -> dict[str, Any]:
        """The constructor options (causal ones and the head's config) as stored in the GRADIEND config."""
        head = self.head_config.to_json() if self.head_config is not None else None
        return {**self.causal_options, **({"head": head} if head is not None else {})}

    def head_tensors(self) -> dict[str, torch.Tensor]:
        """The trained head's weights (CPU), for `mlm_head.safetensors`."""
        return self._require_head().tensors()

    def _require_head(self) -> SlotHead:
        if self.slot_head is None:
            raise ValueError("The clm_mlm_head objective's head is not trained yet: train it on the training rows "
                             "first with ModelWithGradiend.fit_objective(rows, pair, args)")
        return self.slot_head

    def class_index(self, token: str) -> int:
        """The head output that scores `token`, or `UNIFORM_TARGET` for a word that is none of its words."""
        return self._class_index.get(token, UNIFORM_TARGET)

    @torch.no_grad()
    def fit(self, model: nn.Module, texts: Sequence[str], tokens: Sequence[str], settings: HeadSettings,
            batch_size: int = 32) -> HeadConfig:
        """Train the head on (text, word) rows: one pass of the frozen model, then `settings.epochs` on the
        pooled states. Output i of the head scores the i-th of the sorted distinct words."""
        if len(texts) != len(tokens) or not len(texts):
            raise DataError(f"The clm_mlm_head needs training rows with one word each, got {len(texts)} texts and "
                            f"{len(tokens)} words")
        classes = sorted(set(tokens))
        if len(classes) < 2:
            raise DataError(f"The clm_mlm_head needs at least two distinct target words, got {classes}")
        placeholder = settings.placeholder or self.default_placeholder()
        self.placeholder_id = self._placeholder_id(placeholder)
        self.pooling_length = settings.pooling_length
        device = next(model.parameters()).device
        batches = length_batches(self.token_lengths(texts), batch_size)
        features = torch.cat([self._pooled_hidden(model, self.slot_inputs([texts[i] for i in rows]).to(device))
                              for rows in batches]).float()
        order = [i for rows in batches for i in rows]
        index = {word: i for i, word in enumerate(classes)}
        labels = torch.tensor([index[tokens[i]] for i in order], dtype=torch.long, device=device)
        with torch.enable_grad():
            head, record = train_head(features, labels, len(classes), settings)
        config = HeadConfig(classes=classes, hidden_size=features.shape[1], pooling_length=settings.pooling_length,
                            placeholder=placeholder, training={**asdict(settings), **record})
        self._install(config, head)
        return config

    # -- inputs and losses ------------------------------------------------------------------------
    @property
    def pooling_length(self) -> int:
        return self.head_config.pooling_length if self.head_config is not None else self._pooling_length

    @pooling_length.setter
    def pooling_length(self, value: int) -> None:
        self._pooling_length = value

    def _slot_ids(self, text: str) -> tuple[list[int], int]:
        """(ids of the row, index of its slot): left context as for `clm`, the placeholder, then the first
        `pooling_length - 1` tokens of the right context (later placeholders become the placeholder too)."""
        if self.placeholder_id is None:
            self._require_head()
        prefix, _ = self.prefix_ids(text)  # checks the left context
        window = self.pooling_length
        lead = len(self.lead_ids)
        prefix = prefix[:lead] + prefix[lead:][-max(1, self.max_length - lead - window):]
        suffix: list[int] = []
        for i, part in enumerate(text[text.find(self.mask) + len(self.mask):].split(self.mask)):
            if i:
                suffix.append(int(self.placeholder_id))
            if part.strip():
                suffix.extend(self.tokenizer(part.rstrip(), add_special_tokens=False)["input_ids"])
        return [*prefix, int(self.placeholder_id), *suffix[:window - 1]], len(prefix)

    def slot_inputs(self, texts: Sequence[str]) -> ModelInputs:
        """Padded rows with their pooling windows: `positions` (flat) and `rows` per window entry; no labels."""
        encoded = [self._slot_ids(t) for t in texts]
        tensors, _ = self.pad([ids for ids, _ in encoded])
        width = tensors["input_ids"].shape[1]
        positions, rows = [], []
        for r, (ids, slot) in enumerate(encoded):
            start = width - len(ids) if self.padding_side == "left" else 0
            end = min(len(ids), slot + self.pooling_length)
            positions.extend(r * width + start + c for c in range(slot, end))
            rows.extend([r] * (end - slot))
        rows_t = torch.tensor(rows, dtype=torch.long)
        return ModelInputs(tensors, torch.tensor(positions, dtype=torch.long), rows_t,
                           torch.full_like(rows_t, UNIFORM_TARGET), len(texts))

    def encode(self, texts: Sequence[str], tokens: Sequence[str]) -> ModelInputs:
        """`slot_inputs` labelled with the head output of tokens[i] (repeated over row i's window)."""
        self._require_head()
        inputs = self.slot_inputs(texts)
        per_row = torch.tensor([self.class_index(t) for t in tokens], dtype=torch.long)
        inputs.labels = per_row[inputs.rows]
        return inputs

    def _pooled_hidden(self, model: nn.Module, inputs: ModelInputs) -> torch.Tensor:
        """Mean hidden state over each row's pooling window (rows × hidden)."""
        hidden = model.base_model(**inputs.tensors).last_hidden_state
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, inputs.positions)
        counts = torch.zeros(inputs.n_rows, device=picked.device, dtype=picked.dtype).index_add(
            0, inputs.rows, torch.ones_like(inputs.rows, dtype=picked.dtype))
        sums = torch.zeros(inputs.n_rows, picked.shape[-1], device=picked.device, dtype=picked.dtype).index_add(
            0, inputs.rows, picked)
        return sums / counts.unsqueeze(1)

    def logits_at(self, model: nn.Module, inputs: ModelInputs) -> torch.Tensor:
        """Head logits (float32), one row per text (not per window entry)."""
        head = self._require_head()
        pooled = self._pooled_hidden(model, inputs)
        if head.linear.weight.device != pooled.device:
            head.to(pooled.device)
        return head(pooled.float()).float()

    def row_losses(self, model: nn.Module, inputs: ModelInputs,
                   label_sets: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-row head cross-entropy, one vector per label set; `UNIFORM_TARGET` rows: the mean over all words."""
        log_probs = F.log_softmax(self.logits_at(model, inputs), dim=-1)
        rows = inputs.rows.to(log_probs.device)
        uniform = -log_probs.mean(dim=-1)
        out = []
        for labels in label_sets:  # equal within a row, so the scatter is exact
            per_row = torch.zeros(inputs.n_rows, dtype=torch.long, device=rows.device).scatter_(
                0, rows, labels.to(rows.device))
            picked = -log_probs.gather(1, per_row.clamp(min=0).unsqueeze(1)).squeeze(1)
            out.append(torch.where(per_row >= 0, picked, uniform))
        return out
