"""The GRADIEND training loss with hand-derived gradients, written into persistent buffers.

For x (B, n) and y (B, n), with P = x·W_eᵀ/s_in + b_e, h = act(P), r = h·W_dᵀ + b_d − y/s_out:

    L        = Σ r² / (B·n)                      (the MSE of `GradiendModel.loss`)
    G        = 2 r / (B·n)
    ∂L/∂b_d  = Σ_b G          ∂L/∂W_d = Gᵀ·h
    ∂L/∂P    = (G·W_d) ⊙ act'(P)
    ∂L/∂W_e  = (∂L/∂P)ᵀ·x / s_in      ∂L/∂b_e = Σ_b ∂L/∂P

`coordinate_sum=True` returns the gradients of the per-row *sum* over coordinates (n × those of
the mean; the reported loss stays the MSE). Why it matters: with the mean over n ≈ 10⁷ inputs
every gradient is 1e-13…1e-10, far below Adam's ε = 1e-8, so Adam degenerates into plain SGD with
step lr/ε, and how far a step moves the encoder then depends on n, the scales and the learning
rate together (the learning-rate cliff of issue 15). With the sum, gradients are ≥ ε by orders
of magnitude and Adam moves each weight by about the learning rate, as designed.

Why not autograd: each step would allocate about ten fresh n-sized temporaries (fresh pages,
zero-filled by the kernel) and read the inputs several times; on a 22.6M-input GRADIEND that
doubled the step. Here the only n-sized work buffer (r, reused as G) and the gradients are
allocated once per training run, and each n-sized array is read or written a few times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from gradiend.reductions import dot
from gradiend.supervised import supervised_mode

if TYPE_CHECKING:
    from gradiend.arguments import TrainingArguments
    from gradiend.model import GradiendModel


# The scale rule (issue 15). One Adam step moves each weight by about the learning rate, so it moves
# the encoder pre-activation w·x/s_in of an input by at most lr·‖x/s_in‖₁, and the decoder output by
# about lr per coordinate. Scaling the inputs to ‖x‖₁ = ENCODER_STEP / lr caps that move at
# ENCODER_STEP, and the targets to an RMS of DECODER_UNITS · lr makes fitting them take the same
# number of steps, whatever the learning rate: with `coordinate_sum` (Adam out of its ε regime) the
# run is then the same for every learning rate, up to weight decay and ε (the learning rate sets the
# unit of the GRADIEND's weights, not the speed). ENCODER_STEP = 0.1 keeps tanh out of saturation:
# class means reach ±0.9 within ~100 steps while neutral texts stay lower (bench/validity.py).
ENCODER_STEP = 0.1
DECODER_UNITS = 1e3


def scale_norms(learning_rate: float) -> tuple[float, float]:
    """(input L1 norm, target RMS) that `estimate_scales` scales the gradients to for `learning_rate`."""
    if not (learning_rate > 0 and learning_rate < float("inf")):
        raise ValueError(f"learning_rate must be a positive finite number, got {learning_rate!r}")
    return ENCODER_STEP / learning_rate, DECODER_UNITS * learning_rate


class FusedLoss:
    """`loss_and_grad(x, y)` = `GradiendModel.loss(x, y)` plus `.backward()`, into reused `.grad` tensors.

    The input and target scales are read once here: they are fixed during training.
    `coordinate_sum`: gradients of Σ r² / B instead of Σ r² / (B·n) (see the module doc).
    Sharded GRADIEND (several processes): `gradiend` holds this rank's slice of the coordinates, x and y
    the same slice, `n_total` the full input count, and `reduce` sums a small tensor over the ranks in
    place; the encoder projections and the two reductions of r (Σ r², G·W_d) are then the only values
    exchanged, k·B + 1 + k·B numbers per step whatever n is.
    """

    def __init__(self, gradiend: GradiendModel, batch_size: int, coordinate_sum: bool = False,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, n_total: int | None = None) -> None:
        self.gradiend = gradiend
        self.batch_size = batch_size
        self.coordinate_sum = coordinate_sum
        self.reduce = reduce
        n_local = gradiend.encoder_weight.shape[1]
        self.n_total = n_local if n_total is None else n_total
        self.grads = [(param, torch.zeros_like(param)) for param in gradiend.parameters()]
        for param, buffer in self.grads:
            param.grad = buffer
        self.inv_target_scale = 1.0 / float(gradiend.target_scale)
        # one feature neuron and one row: matrix products degenerate to dot products and scaled
        # copies, which run 2-5x faster as vector ops; r then lives in ∂L/∂b_d's buffer, or without a
        # decoder bias in ∂L/∂W_d's (scaled by h in place once it is used): no n-sized work buffer either way
        self.vector_path = gradiend.config.latent_dim == 1 and batch_size == 1
        if self.vector_path:
            owner = gradiend.decoder_bias if gradiend.decoder_bias is not None else gradiend.decoder_weight
            self.residual = owner.grad.view(1, -1)
        else:
            weight = gradiend.decoder_weight
            self.residual = torch.empty(batch_size, n_local, dtype=weight.dtype, device=weight.device)

    def _sum(self, *parts: torch.Tensor) -> list[torch.Tensor]:
        """`parts` summed over the coordinate slices (one all-reduce); unchanged without `reduce`."""
        if self.reduce is None:
            return list(parts)
        flat = self.reduce(torch.cat([p.reshape(-1) for p in parts]))
        return [chunk.view(p.shape) for chunk, p in zip(flat.split([p.numel() for p in parts]), parts, strict=True)]

    @torch.no_grad()
    def loss_and_grad(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (loss, h) for source x and target y (both (B, n)) and set every parameter's gradient."""
        if x.shape[0] != self.batch_size or y.shape[0] != self.batch_size:
            raise ValueError(f"FusedLoss was built for batches of {self.batch_size} rows, got {x.shape[0]}")
        for param, buffer in self.grads:  # re-attach if a callback zeroed the gradients to None
            if param.grad is not buffer:
                param.grad = buffer
        if self.vector_path:
            return self._vector(x[0], y[0])
        return self._matrix(x, y)

    def _vector(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.gradiend
        n = self.n_total
        w_e, w_d = g.encoder_weight.view(-1), g.decoder_weight.view(-1)
        (projection,) = self._sum(dot(x, w_e))
        pre = (projection / g.input_scale + g.encoder_bias).view(1)
        h = g.activation(pre)
        r = self.residual.view(-1)
        if g.decoder_bias is not None:
            torch.addcmul(g.decoder_bias, w_d, h, out=r)
        else:
            torch.mul(w_d, h, out=r)
        r.sub_(y, alpha=self.inv_target_scale)
        squares = dot(r, r)
        r.mul_(2.0 if self.coordinate_sum else 2.0 / n)  # r is now G = ∂L/∂ŷ (with a decoder bias: ∂L/∂b_d)
        back = dot(r, w_d)
        if g.decoder_bias is not None:
            torch.mul(r, h, out=g.decoder_weight.grad.view(-1))
        else:
            r.mul_(h)  # r is ∂L/∂W_d's buffer: now ∂L/∂W_d
        squares, back = self._sum(squares, back)
        loss = squares / n
        d_pre = back * _activation_slope(g.config.activation_encoder, pre, h)
        torch.mul(x, d_pre / g.input_scale, out=g.encoder_weight.grad.view(-1))
        g.encoder_bias.grad.copy_(d_pre)
        return loss, h.view(1, 1)

    def _matrix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.gradiend
        batch, n = x.shape[0], self.n_total
        s_in = g.input_scale
        (pre,) = self._sum(torch.mm(x, g.encoder_weight.T))
        pre = pre.div_(s_in).add_(g.encoder_bias)  # (B, k)
        h = g.activation(pre)
        r = self.residual
        if g.decoder_bias is not None:
            torch.addmm(g.decoder_bias, h, g.decoder_weight.T, out=r)
        else:
            torch.mm(h, g.decoder_weight.T, out=r)
        r.sub_(y, alpha=self.inv_target_scale)
        flat = r.view(-1)
        squares = dot(flat, flat)
        r.mul_(2.0 / batch if self.coordinate_sum else 2.0 / (batch * n))  # r is now G = ∂L/∂ŷ
        if g.decoder_bias is not None:
            torch.sum(r, dim=0, out=g.decoder_bias.grad)
        torch.mm(r.T, h, out=g.decoder_weight.grad)
        squares, back = self._sum(squares, torch.mm(r, g.decoder_weight))
        loss = squares / (batch * n)
        d_pre = back * _activation_slope(g.config.activation_encoder, pre, h)
        torch.mm(d_pre.T, x, out=g.encoder_weight.grad).div_(s_in)
        torch.sum(d_pre, dim=0, out=g.encoder_bias.grad)
        return loss, h


def _activation_slope(name: str, pre: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    if name == "tanh":
        return 1.0 - h * h
    if name == "hardtanh":
        return ((pre > -1.0) & (pre < 1.0)).to(pre.dtype)
    raise ValueError(f"no derivative for activation {name!r}")


class ClassTargetMeans:
    """Running sums of the target rows of each class seen in training, for `class_mean_decoder`.

    The targets are base-model gradients, so their class means do not depend on the GRADIEND: any
    training step's rows count, whichever checkpoint is kept. Two n-sized sums (8 B per input in float32;
    `dtype` float64 for a float64 GRADIEND). A resume checkpoint carries `sums` and `counts`.
    """

    def __init__(self, n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.sums = torch.zeros(2, n, dtype=dtype, device=device)
        self.counts = [0, 0]

    def add(self, y: torch.Tensor, labels: Sequence[int]) -> None:
        """Add target rows `y` (B, n) with labels +1 (class A) / −1 (class B); other labels are skipped."""
        if y.shape[0] != len(labels):
            raise ValueError(f"{y.shape[0]} target rows but {len(labels)} labels")
        for row, label in enumerate(labels):
            if label in (1, -1):
                slot = 0 if label == 1 else 1
                self.sums[slot].add_(y[row])
                self.counts[slot] += 1

    def load(self, sums: torch.Tensor, counts: Sequence[int]) -> None:
        """Continue from saved `sums` (2, n) and `counts` (a resume checkpoint's)."""
        if tuple(sums.shape) != tuple(self.sums.shape) or len(counts) != 2:
            raise ValueError(f"class target sums of shape {tuple(sums.shape)} with {len(counts)} counts do not fit "
                             f"{tuple(self.sums.shape)} with 2")
        self.sums.copy_(sums)
        self.counts = [int(c) for c in counts]

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(class A mean, class B mean) of the raw targets; an error while a class has no row."""
        if min(self.counts) == 0:
            raise ValueError(f"class-mean targets need rows of both classes, got {self.counts} (A, B)")
        return self.sums[0] / self.counts[0], self.sums[1] / self.counts[1]


@torch.no_grad()
def class_mean_decoder(gradiend: GradiendModel, targets: ClassTargetMeans,
                       state: dict[str, torch.Tensor] | None = None, class_a_sign: float = 1.0) -> None:
    """Set the decoder so that dec(±1) are the class-mean targets (in raw gradient units): dec(class_a_sign)
    is class A's mean and dec(−class_a_sign) class B's (`class_a_sign` −1: class A encodes negatively, i.e.
    a run without sign normalisation that ended negative).

    Why: the trained decoder is kept slow on purpose (`DECODER_UNITS`: it must lag the encoder, or the
    encoder stops at |h| ≈ 0.05, measured), so after 100 steps it holds only a few % of its target, and
    Adam's per-coordinate steps make it a dense, sign-like vector (cosine 0.37 with the class-mean
    difference on MiniLM). The decoded update is then the line through the two class means, the
    least-squares decoder for encodings ±1. `state` (a state dict, e.g. the best checkpoint) is set
    instead of the live weights when given. Without a decoder bias: dec(±1) = ±(mean A − mean B)/2.
    """
    if gradiend.config.latent_dim != 1:
        raise ValueError(f"class_mean_decoder needs one feature neuron, got latent_dim={gradiend.config.latent_dim}")
    if class_a_sign not in (1.0, -1.0):
        raise ValueError(f"class_a_sign must be +1 or -1, got {class_a_sign!r}")
    mean_a, mean_b = targets.means()
    scale = float(gradiend.target_scale if state is None else state["target_scale"])
    weight = gradiend.decoder_weight if state is None else state["decoder_weight"]
    weight[:, 0].copy_((mean_a - mean_b) * (class_a_sign / (2.0 * scale)))
    bias = gradiend.decoder_bias if state is None else state.get("decoder_bias")
    if bias is not None:
        bias.copy_((mean_a + mean_b) / (2.0 * scale))


def decoder_refit_skipped(args: TrainingArguments, latent_dim: int) -> str | None:
    """Why a run keeps its trained decoder (None: it is refitted to the class-mean targets, `decoder_fit`)."""
    if args.decoder_fit == "trained":
        return "decoder_fit='trained'"
    if latent_dim != 1:
        return f"latent_dim={latent_dim}: the class-mean decoder needs one feature neuron"
    mode = supervised_mode(args)
    if mode is not None:
        return f"supervised_{mode} baseline: its decoder is the baseline's own"
    return None


def class_sums_dtype(gradiend_dtype: torch.dtype) -> torch.dtype:
    """The class target sums' dtype: float32, or float64 for a float64 GRADIEND (never narrower than float32)."""
    return torch.promote_types(gradiend_dtype, torch.float32)
