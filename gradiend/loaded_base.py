"""A base model that is already in memory (PEFT style): checked, named and keyed by its content.

`Trainer(model=<PreTrainedModel>, tokenizer=...)` and `ModelWithGradiend.create(<PreTrainedModel>, tokenizer=...)`
use the object as it is: nothing is reloaded from a path, so no second copy sits in memory.

A loaded model has no files to key the run cache by, and its weights may have been changed in memory, so
it is keyed by content: `weights_fingerprint` = a BLAKE2b digest of the model class, its config and every
parameter and buffer (names, dtypes, shapes and bytes). That costs one read of the weights per `train()`
(about 0.3 s for BERT-base on a CPU; tensors on an accelerator are copied to the host in 64 MB pieces).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

FINGERPRINT_PREFIX = "weights:"
IN_MEMORY = "in-memory "  # the name of a loaded model without a path (e.g. built with from_config)
HASH_CHUNK = 64 * 1024 * 1024  # bytes copied to the host at a time when hashing accelerator tensors
# a tokenizer smaller than the embedding matrix by more than this share is another model's (padding to a
# multiple of 64/128 rows, as GPT-2-like and Qwen-like checkpoints do, stays far below it)
VOCAB_SLACK = 0.02


@dataclass
class LoadedBase:
    """A loaded base model with its tokenizer; `name` is what checkpoints record as `base_model`."""

    model: PreTrainedModel
    tokenizer: Any
    name: str
    digest: str | None = field(default=None, repr=False, compare=False)  # see `pinned`

    @classmethod
    def of(cls, model: Any, tokenizer: Any) -> LoadedBase:
        """Check a loaded model and tokenizer (clear errors naming the fix) and name them."""
        check_loaded_model(model)
        check_tokenizer(model, tokenizer)
        name = model.name_or_path or f"{IN_MEMORY}{type(model).__name__}"
        return cls(model, tokenizer, str(name))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype_name(self) -> str:
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    def fingerprint(self) -> str:
        return self.digest if self.digest is not None else weights_fingerprint(self.model)

    def pinned(self) -> LoadedBase:
        """This base with its digest computed once now: one read of the weights serves a whole `train()` call
        (run cache key and checkpoint record), during which they do not change."""
        return replace(self, digest=self.fingerprint())


def check_loaded_model(model: Any) -> None:
    """TypeError unless `model` is a Hugging Face language model object (a `PreTrainedModel`)."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"model must be a model id/path, a ModelWithGradiend or a loaded Hugging Face model "
                        f"(transformers.PreTrainedModel, e.g. AutoModelForMaskedLM.from_pretrained(...)), got "
                        f"{type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise ValueError(f"The loaded {type(model).__name__} has no parameters")
    if any(p.is_meta for p in model.parameters()):
        raise ValueError(f"The loaded {type(model).__name__} has weights on the meta device (not materialised); "
                         f"load it with real weights, e.g. from_pretrained(..., device_map=None)")


def check_tokenizer(model: PreTrainedModel, tokenizer: Any) -> None:
    """The tokenizer must be there and fit the model's embedding matrix (a wrong one gives wrong gradients)."""
    name = type(model).__name__
    if tokenizer is None:
        raise ValueError(f"A loaded {name} needs its tokenizer: pass tokenizer=AutoTokenizer.from_pretrained(...) "
                         f"(the one the model was trained with), or pass the model's path instead of the object")
    if not callable(tokenizer) or not hasattr(tokenizer, "convert_tokens_to_ids"):
        raise TypeError(f"tokenizer must be a Hugging Face tokenizer (e.g. AutoTokenizer.from_pretrained(...)), "
                        f"got {type(tokenizer).__name__}")
    rows = model.get_input_embeddings().num_embeddings
    size = len(tokenizer)
    if size > rows or size < rows * (1 - VOCAB_SLACK):
        raise ValueError(f"The tokenizer has {size} tokens but the {name}'s embedding matrix has {rows} rows: it is "
                         f"another model's tokenizer. Pass the tokenizer the model was trained with "
                         f"(AutoTokenizer.from_pretrained of the same checkpoint)")


def weights_fingerprint(model: PreTrainedModel) -> str:
    """Content key of a loaded model: class, config (without its load path) and every tensor's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    config = {k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    digest.update(type(model).__name__.encode())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        key = (tensor.data_ptr(), tuple(tensor.shape))
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        if key in seen:  # a tied tensor: named, not hashed twice
            continue
        seen.add(key)
        _hash_bytes(digest, tensor.detach())
    return FINGERPRINT_PREFIX + digest.hexdigest()


def _hash_bytes(digest: Any, tensor: torch.Tensor) -> None:
    flat = tensor.contiguous().reshape(-1).view(torch.uint8)
    if flat.device.type == "cpu":
        digest.update(flat.numpy().data)
        return
    for start in range(0, flat.numel(), HASH_CHUNK):
        digest.update(flat[start:start + HASH_CHUNK].cpu().numpy().data)
