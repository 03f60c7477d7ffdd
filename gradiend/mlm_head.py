"""The slot head of the `clm_mlm_head` objective: a linear classifier over target words on a frozen causal LM.

A causal LM predicts the slot from its left context only, so a feature decided by the words after the
slot (a German article by its noun) leaves no trace in its next-token gradient. The head reads the
hidden states of the slot (filled with a fixed one-token placeholder, so no embedding is added) and of
the `pooling_length - 1` tokens after it, which in a causal model have seen the placeholder and the
right context; their mean goes through `Linear(hidden, n_words)`, one output per target word. Only the
head is trained (the base model is frozen), so the pooled hidden states are computed once and every
epoch runs on them. GRADIEND gradients are then taken through this head (`objectives.CausalMLMHeadObjective`).

Stored beside the GRADIEND: the weights in `mlm_head.safetensors` (`weight`, `bias`), the settings
(`HeadConfig`) in the checkpoint's JSON config under `objective_options["head"]`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

HEAD_FILE = "mlm_head.safetensors"
HEAD_TENSORS = ("weight", "bias")
INIT_STD = 0.02


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class HeadSettings:
    """How the head is trained (the reference's `decoder_mlm_head_*` arguments and their defaults).

    `max_size`: at most this many training rows per target word (seeded), None: all. `placeholder`: the
    one-token string that fills the slot; None: the tokenizer's mask token, else its EOS token.
    """

    epochs: int = 5
    batch_size: int = 4
    learning_rate: float = 1e-4
    max_size: int | None = None
    pooling_length: int = 3
    placeholder: str | None = None
    seed: int = 0
    show_progress: bool = False

    def __post_init__(self) -> None:
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _positive_int("pooling_length", self.pooling_length)
        if self.max_size is not None:
            _positive_int("max_size", self.max_size)
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, (int, float)) \
                or not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a positive finite number, got {self.learning_rate!r}")
        if self.placeholder is not None and (not isinstance(self.placeholder, str) or not self.placeholder.strip()):
            raise ValueError(f"placeholder must be a non-empty string or None, got {self.placeholder!r}")


@dataclass
class HeadConfig:
    """What a trained head is: its target words (output i scores `classes[i]`), the pooling, the placeholder,
    and a record of its training (settings, rows, final loss and training accuracy)."""

    classes: list[str]
    hidden_size: int
    pooling_length: int
    placeholder: str
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes) \
                or not all(isinstance(c, str) and c for c in self.classes):
            raise ValueError(f"a head needs at least two distinct non-empty target words, got {self.classes!r}")
        _positive_int("hidden_size", self.hidden_size)
        _positive_int("pooling_length", self.pooling_length)
        if not isinstance(self.placeholder, str) or not self.placeholder:
            raise ValueError(f"placeholder must be a non-empty string, got {self.placeholder!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HeadConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"clm_mlm_head config has unknown keys {unknown}; the checkpoint was edited or comes "
                             f"from a newer gradiend")
        return cls(**data)


class SlotHead(nn.Module):
    """Linear(hidden, n_words), initialised N(0, 0.02) with zero bias (float32)."""

    def __init__(self, hidden_size: int, n_classes: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, n_classes)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(n_classes, hidden_size, generator=generator) * INIT_STD)
            self.linear.bias.zero_()
        self.requires_grad_(False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(pooled.to(self.linear.weight.dtype))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The weights as a flat CPU dict (`HEAD_TENSORS`), for safetensors."""
        return {"weight": self.linear.weight.detach().cpu().contiguous(),
                "bias": self.linear.bias.detach().cpu().contiguous()}

    @classmethod
    def from_tensors(cls, config: HeadConfig, tensors: dict[str, torch.Tensor]) -> SlotHead:
        """The head stored in `tensors`, checked against `config` (shapes and names)."""
        expected = {"weight": (len(config.classes), config.hidden_size), "bias": (len(config.classes),)}
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        if found != expected:
            raise ValueError(f"clm_mlm_head weights do not match its config: expected {expected}, found {found}; "
                             f"the checkpoint is damaged, re-train it")
        head = cls(config.hidden_size, len(config.classes))
        with torch.no_grad():
            head.linear.weight.copy_(tensors["weight"].float())
            head.linear.bias.copy_(tensors["bias"].float())
        return head


def train_head(features: torch.Tensor, labels: torch.Tensor, n_classes: int, settings: HeadSettings
               ) -> tuple[SlotHead, dict[str, Any]]:
    """Train a `SlotHead` with AdamW and cross-entropy on fixed pooled hidden states (rows × hidden).

    Returns the head (on the features' device, frozen) and a record: loss per epoch, final training
    accuracy and the chance level. A head at chance accuracy is logged as a warning: its gradients
    would carry no information about the target words.
    """
    if features.dim() != 2 or len(features) != len(labels) or len(features) == 0:
        raise ValueError(f"train_head needs (rows, hidden) features and one label per row, got "
                         f"{tuple(features.shape)} and {len(labels)} labels")
    generator = torch.Generator().manual_seed(settings.seed)
    head = SlotHead(features.shape[1], n_classes, generator).to(features.device)
    head.requires_grad_(True)
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.learning_rate)
    features = features.float()
    losses = []
    for _ in tqdm(range(settings.epochs), desc="clm_mlm_head", disable=not settings.show_progress):
        order = torch.randperm(len(features), generator=generator).to(features.device)
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            loss = nn.functional.cross_entropy(head(features[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(order))
    head.requires_grad_(False)
    with torch.no_grad():
        accuracy = float((head(features).argmax(-1) == labels).float().mean())
    chance = float(torch.bincount(labels, minlength=n_classes).max()) / len(labels)
    record = {"epoch_losses": losses, "train_accuracy": accuracy, "majority_baseline": chance, "n_rows": len(labels)}
    logger.info("clm_mlm_head: %d rows, %d words, loss %.4f -> %.4f, training accuracy %.3f (majority %.3f)",
                len(labels), n_classes, losses[0], losses[-1], accuracy, chance)
    if accuracy <= chance:
        logger.warning("clm_mlm_head predicts its training words no better than always guessing the most frequent "
                       "one (accuracy %.3f); its gradients carry little about the feature. Raise "
                       "decoder_mlm_head_epochs or decoder_mlm_head_lr, or give more training rows.", accuracy)
    return head, record


def head_settings(args: Any) -> HeadSettings:
    """The head's settings from `TrainingArguments` (`decoder_mlm_head_*`, `seed`, `show_progress`)."""
    return HeadSettings(epochs=args.decoder_mlm_head_epochs, batch_size=args.decoder_mlm_head_batch_size,
                        learning_rate=args.decoder_mlm_head_lr, max_size=args.decoder_mlm_head_max_size,
                        pooling_length=args.decoder_mlm_head_pooling_length,
                        placeholder=args.decoder_mlm_head_placeholder,
                        seed=args.seed if args.seed is not None else 0, show_progress=args.show_progress)


def head_training_rows(rows: pd.DataFrame, pair: Sequence[str], objective: Any, settings: HeadSettings
                       ) -> tuple[list[str], list[str]]:
    """(texts, words) the head learns from: the pair's training rows the objective can score, each labelled with
    its factual word, at most `settings.max_size` rows per word (seeded)."""
    from gradiend.data import prepare_rows

    part = prepare_rows(rows, "train", pair, objective, "clm_mlm_head training").reset_index(drop=True)
    if settings.max_size is not None:
        keep = [i for _, group in part.groupby("factual", sort=True)
                for i in group.sample(n=min(len(group), settings.max_size), random_state=settings.seed).index]
        part = part.loc[sorted(keep)].reset_index(drop=True)
    return [str(t) for t in part["masked"]], [str(t) for t in part["factual"]]
