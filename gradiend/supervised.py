"""Supervised baselines (the reference's `supervised_encoder` / `supervised_decoder`): one half of a GRADIEND
trained alone against the class labels, the other half left exactly as initialised.

- encoder: MSE between `encode(source gradients)` and the labels (+1 / -1): a linear probe on gradients;
- decoder: MSE between `decode(labels)` and the (normalised) target gradients: the mean update per class.

They measure what each half achieves without the other. The frozen half gets no gradient (`.grad` is None),
so the optimiser, weight decay included, never touches it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from gradiend.arguments import TrainingArguments
    from gradiend.model import GradiendModel

SUPERVISED_MODES = ("encoder", "decoder")


def supervised_mode(args: TrainingArguments) -> str | None:
    """'encoder', 'decoder' or None (a normal GRADIEND) from the two `TrainingArguments` switches."""
    if args.supervised_encoder and args.supervised_decoder:
        raise ValueError("supervised_encoder and supervised_decoder train one half each; pass one of them (two "
                         "train() calls give both baselines)")
    if (args.supervised_encoder or args.supervised_decoder) and args.shard_gradiend:
        raise ValueError("the supervised baselines train on one process's full GRADIEND; set shard_gradiend=False")
    if args.supervised_encoder:
        return "encoder"
    if args.supervised_decoder and args.convergent_metric != "loss":
        raise ValueError("supervised_decoder leaves the encoder untrained, so its correlation means nothing; set "
                         "convergent_metric='loss'")
    return "decoder" if args.supervised_decoder else None


class SupervisedLoss:
    """`loss_and_grad(x, y, labels)` for one supervised baseline: the loss, gradients on the trained half only."""

    def __init__(self, gradiend: GradiendModel, mode: str) -> None:
        if mode not in SUPERVISED_MODES:
            raise ValueError(f"supervised mode must be one of {SUPERVISED_MODES}, got {mode!r}")
        if gradiend.config.latent_dim != 1:
            raise ValueError(f"the supervised baselines learn one feature (latent_dim=1), got latent_dim="
                             f"{gradiend.config.latent_dim}")
        self.gradiend, self.mode = gradiend, mode
        encoder = [gradiend.encoder_weight, gradiend.encoder_bias]
        decoder = [p for p in (gradiend.decoder_weight, gradiend.decoder_bias) if p is not None]
        self.trained, self.frozen = (encoder, decoder) if mode == "encoder" else (decoder, encoder)

    def loss_and_grad(self, x: torch.Tensor, y: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
        """MSE of the trained half on rows x (source) / y (target) with class `labels`; sets the `.grad`s."""
        if len(labels) != x.shape[0]:
            raise ValueError(f"{len(labels)} labels for {x.shape[0]} gradient rows")
        for param in (*self.trained, *self.frozen):
            param.grad = None
        weight = self.gradiend.decoder_weight
        target = torch.tensor([float(v) for v in labels], dtype=weight.dtype, device=weight.device).reshape(-1, 1)
        with torch.enable_grad():
            if self.mode == "encoder":
                loss = nn.functional.mse_loss(self.gradiend.encode(x), target)
            else:
                loss = nn.functional.mse_loss(self.gradiend.decode_normalized(target),
                                              y / self.gradiend.target_scale)
            loss.backward()
        return loss.detach()
