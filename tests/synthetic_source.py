"""A deterministic gradient source for training-loop tests (no language model), shared by several test files."""

from __future__ import annotations

from collections.abc import Callable

import torch

from gradiend.model import GradiendModel


class SyntheticSource:
    """Synthetic gradients per batch (a `GradientProvider`): ±1e-3 by class plus noise seeded by the batch's
    first text; `during(step)`, when given, is called inside every gradient computation."""

    base_passes = 0.0

    def __init__(self, during: Callable[[int], None] | None = None) -> None:
        self.during = during

    def gradients(self, step, texts, factual, alternative, out, keep):
        if self.during is not None:
            self.during(step)
        gen = torch.Generator().manual_seed(int(texts[0].split()[1]))
        sign = 1.0 if factual[0] == "A" else -1.0
        for kind in out:
            out[kind].copy_(sign * 1e-3 + torch.randn(out[kind].shape, generator=gen) * 1e-3)
        return out


class Holder:
    """What `TrainingLoop` needs of a model: its GRADIEND."""

    def __init__(self, gradiend: GradiendModel) -> None:
        self.gradiend = gradiend
