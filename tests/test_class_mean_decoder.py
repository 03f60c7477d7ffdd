"""The class-mean decoder (gradiend.step.class_mean_decoder): dec(±1) are the class-mean targets."""

from __future__ import annotations

import pytest
import torch

from gradiend.model import GradiendConfig, GradiendModel
from gradiend.step import ClassTargetMeans, class_mean_decoder


def _targets(n: int = 50) -> tuple[ClassTargetMeans, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(6, n, generator=gen)
    acc = ClassTargetMeans(n)
    acc.add(rows[:3], [1, -1, 1])
    acc.add(rows[3:], [-1, 0, 1])  # a neutral row (label 0) is not a class row
    return acc, rows[[0, 2, 5]].mean(0), rows[[1, 3]].mean(0)


def test_decoded_updates_at_plus_and_minus_one_are_the_class_means_in_raw_units() -> None:
    acc, mean_a, mean_b = _targets()
    assert acc.counts == [3, 2]
    g = GradiendModel(GradiendConfig(input_dim=50), torch.Generator().manual_seed(0))
    g.target_scale.fill_(1e-3)  # the decoder works in scaled units; decode() returns raw ones
    class_mean_decoder(g, acc)
    torch.testing.assert_close(g.decode(1.0), mean_a)
    torch.testing.assert_close(g.decode(-1.0), mean_b)
    torch.testing.assert_close(g.decode(0.0), (mean_a + mean_b) / 2)


def test_a_state_dict_is_set_instead_of_the_live_weights_and_no_bias_keeps_the_difference() -> None:
    acc, mean_a, mean_b = _targets()
    g = GradiendModel(GradiendConfig(input_dim=50), torch.Generator().manual_seed(0))
    live = g.decoder_weight.detach().clone()
    state = {k: v.clone() for k, v in g.state_dict().items()}
    class_mean_decoder(g, acc, state)
    assert torch.equal(g.decoder_weight.detach(), live)
    g.load_state_dict(state)
    torch.testing.assert_close(g.decode(1.0) - g.decode(-1.0), mean_a - mean_b)
    plain = GradiendModel(GradiendConfig(input_dim=50, bias_decoder=False), torch.Generator().manual_seed(0))
    class_mean_decoder(plain, acc)
    torch.testing.assert_close(plain.decode(1.0), (mean_a - mean_b) / 2)


def test_errors_name_the_problem() -> None:
    acc = ClassTargetMeans(4)
    acc.add(torch.ones(1, 4), [1])
    with pytest.raises(ValueError, match=r"rows of both classes, got \[1, 0\]"):
        acc.means()
    with pytest.raises(ValueError, match="2 target rows but 1 labels"):
        acc.add(torch.ones(2, 4), [1])
    wide = GradiendModel(GradiendConfig(input_dim=4, latent_dim=2), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="one feature neuron"):
        class_mean_decoder(wide, acc)


def test_keep_top_decoder_fraction_zeroes_all_but_the_largest_decoder_weights() -> None:
    from gradiend.decoder_eval import keep_top_decoder_fraction

    g = GradiendModel(GradiendConfig(input_dim=200), torch.Generator().manual_seed(1))
    before = g.decode(1.0).detach().clone()
    order = g.decoder_weight.detach()[:, 0].abs().argsort(descending=True)
    assert keep_top_decoder_fraction(g, 0.05) == 10
    kept = torch.zeros(200, dtype=torch.bool)
    kept[order[:10]] = True
    after = g.decode(1.0).detach()
    torch.testing.assert_close(after[kept], before[kept])
    assert torch.count_nonzero(after[~kept]) == 0
    assert keep_top_decoder_fraction(g, 1.0) == 200 and torch.equal(g.decode(1.0).detach(), after)
    assert keep_top_decoder_fraction(g, 1e-9) == 1  # at least one coordinate
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        keep_top_decoder_fraction(g, 0.0)


def test_decoder_request_rejects_repeated_learning_rates() -> None:
    from gradiend.decoder_eval import DEFAULT_LRS, DecoderRequest

    assert len(set(DEFAULT_LRS)) == len(DEFAULT_LRS) and min(DEFAULT_LRS) == 1e-6
    with pytest.raises(ValueError, match="repeated values"):
        DecoderRequest(["A"], learning_rates=[1.0, 0.1, 1.0])
