"""Copies that belong in host memory: the decoder grid's parameter snapshot (`rewrite.ParameterSnapshot`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradiend.params import ParamMap
from gradiend.rewrite import ParameterSnapshot


def _model(device: str) -> tuple[nn.Module, ParamMap]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).to(device)
    return model, ParamMap.select(model, ["0.weight", "2.*"])


def _check_snapshot(model: nn.Module, param_map: ParamMap) -> ParameterSnapshot:
    before = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    snapshot = ParameterSnapshot(model, param_map)
    assert [p.device.type for p in snapshot.saved] == ["cpu"] * len(param_map.names)
    for param, saved in zip(snapshot.params, snapshot.saved, strict=True):
        assert saved.dtype == param.dtype and saved.data_ptr() != param.data_ptr()
    update = torch.randn(param_map.size, generator=torch.Generator().manual_seed(1)).to(snapshot.params[0].device)
    for _ in range(2):  # restorable any number of times
        snapshot.add(update, 0.5)
        changed = model.state_dict()
        assert not torch.equal(changed["0.weight"].cpu(), before["0.weight"])
        assert torch.equal(changed["0.bias"].cpu(), before["0.bias"])  # not selected: untouched
        snapshot.restore()
        for key, value in model.state_dict().items():
            assert torch.equal(value.cpu(), before[key]), key
    return snapshot


def test_the_snapshot_is_a_host_copy_restored_bitwise() -> None:
    _check_snapshot(*_model("cpu"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_models_snapshot_is_pinned_host_memory_not_device_memory() -> None:
    model, param_map = _model("cuda")
    torch.cuda.synchronize()
    allocated = torch.cuda.memory_allocated()
    snapshot = _check_snapshot(model, param_map)
    assert all(saved.is_pinned() for saved in snapshot.saved)
    del snapshot
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == allocated  # the snapshot itself took no device memory
