"""Supervised baselines: one half of a GRADIEND learns against the labels, the other stays as initialised."""

from __future__ import annotations

import pytest
import torch

from gradiend import TrainingArguments
from gradiend.model import GradiendConfig, GradiendModel
from gradiend.supervised import SupervisedLoss, supervised_mode


def _model(n: int = 16, latent_dim: int = 1) -> GradiendModel:
    config = GradiendConfig(input_dim=n, latent_dim=latent_dim, param_map=[{"name": "w", "shape": [n]}])
    return GradiendModel(config, torch.Generator().manual_seed(0))


def _data(n: int = 16) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(1)
    direction = torch.randn(n, generator=g)
    labels = [1, -1, 1, -1, 1, -1]
    x = torch.stack([lab * direction + 0.1 * torch.randn(n, generator=g) for lab in labels])
    return x, 2.0 * x, labels


def _train(mode: str, steps: int = 300) -> tuple[GradiendModel, dict[str, torch.Tensor], list[float]]:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = SupervisedLoss(model, mode)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x, y, labels = _data()
    losses = []
    for _ in range(steps):
        losses.append(float(loss_fn.loss_and_grad(x, y, labels)))
        optimizer.step()
    return model, before, losses


def test_encoder_baseline_learns_the_labels_and_leaves_the_decoder() -> None:
    model, before, losses = _train("encoder")
    x, _, labels = _data()
    assert losses[-1] < 0.05 < losses[0]
    assert torch.corrcoef(torch.stack([model.encode(x)[:, 0].detach(), torch.tensor(labels, dtype=torch.float32)])
                          )[0, 1] > 0.99
    assert torch.equal(model.decoder_weight, before["decoder_weight"])  # weight decay did not touch it either
    assert torch.equal(model.decoder_bias, before["decoder_bias"])


def test_decoder_baseline_reconstructs_the_class_update_and_leaves_the_encoder() -> None:
    model, before, losses = _train("decoder")
    _, y, _ = _data()
    assert losses[-1] < 0.5 * losses[0]
    reconstruction = model.decode_normalized(torch.tensor([[1.0], [-1.0]])).detach()
    for row, like in ((0, y[0]), (1, y[1])):  # the +1 and -1 classes' updates
        assert torch.nn.functional.cosine_similarity(reconstruction[row], like, dim=0) > 0.9
    assert torch.equal(model.encoder_weight, before["encoder_weight"])
    assert torch.equal(model.encoder_bias, before["encoder_bias"])


def test_loss_matches_the_stated_objective() -> None:
    model = _model()
    x, y, labels = _data()
    target = torch.tensor(labels, dtype=torch.float32).reshape(-1, 1)
    loss = SupervisedLoss(model, "encoder").loss_and_grad(x, y, labels)
    assert torch.isclose(loss, torch.nn.functional.mse_loss(model.encode(x), target))
    assert model.decoder_weight.grad is None and model.encoder_weight.grad is not None


def test_modes_and_errors() -> None:
    assert supervised_mode(TrainingArguments()) is None
    with pytest.raises(ValueError, match="latent_dim=1"):
        SupervisedLoss(_model(latent_dim=2), "encoder")
    with pytest.raises(ValueError, match="one of"):
        SupervisedLoss(_model(), "both")
    with pytest.raises(ValueError, match="3 labels for 6"):
        SupervisedLoss(_model(), "encoder").loss_and_grad(*_data()[:2], [1, -1, 1])
