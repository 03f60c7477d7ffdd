"""The pieces wired into the facade and loaders: trainer top-k and Hub methods, reference checkpoints through
`ModelWithGradiend.from_pretrained`, `gradiend push` in the CLI, the memory plan before training, and the
training loop's memory hygiene (no `.grad` kept, best checkpoint on the host)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import make_rows
from huggingface_hub import HfApi
from test_reference_format import _reference_selection, write_reference_checkpoint
from tiny_experiment import build

from gradiend import GradiendModel, ModelWithGradiend, TrainingArguments
from gradiend.cli import build_parser
from gradiend.experiment import MODEL_CONFIG, MODEL_WEIGHTS
from gradiend.memory import InsufficientMemoryError, MemoryPlan
from gradiend.topk import get_topk_weights, get_weight_importance
from gradiend.training import TrainingLoop


@pytest.fixture(scope="module")
def trainer(tiny_mlm_dir: str, tmp_path_factory: pytest.TempPathFactory):
    return build(tiny_mlm_dir, tmp_path_factory.mktemp("wired") / "exp", encoder=False, decoder=False)


def test_trainer_topk_methods_are_the_topk_functions_on_its_model(trainer) -> None:
    model = trainer.get_model()
    assert trainer.get_topk_weights(topk=25) == get_topk_weights(model, "decoder-weight", 25)
    importance = trainer.get_weight_importance()
    assert importance.shape == (model.param_map.size,)
    assert torch.equal(importance, get_weight_importance(model, "decoder-weight"))
    assert torch.equal(trainer.get_weight_importance("encoder-weight"), get_weight_importance(model, "encoder-weight"))
    rows = trainer.get_topk_feature_metadata(topk=5)
    assert len(rows) == 5


def test_trainer_push_to_hub_uploads_its_experiment(trainer, monkeypatch: pytest.MonkeyPatch) -> None:
    uploads: list[dict[str, Any]] = []

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        uploads.append({p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()})
        return SimpleNamespace(commit_url="https://huggingface.co/me/g/commit/1")

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert trainer.push_to_hub("me/g", token="hf_x") == "https://huggingface.co/me/g/commit/1"
    assert {"README.md", "training.json", MODEL_WEIGHTS, MODEL_CONFIG} <= uploads[0]


def test_reference_checkpoint_loads_through_from_pretrained(tmp_path: Path, tiny_mlm_dir: str) -> None:
    weights = write_reference_checkpoint(tmp_path / "ref", tiny_mlm_dir, _reference_selection(tiny_mlm_dir))
    model = ModelWithGradiend.from_pretrained(tmp_path / "ref")
    assert model.param_map.size == weights["encoder.0.linear.weight"].shape[1]
    # the encoder weights are the reference's, in our coordinate order: the same multiset of values
    ours = model.gradiend.encoder_weight.detach().reshape(-1).sort().values
    assert torch.equal(ours, weights["encoder.0.linear.weight"].reshape(-1).sort().values)
    bare = GradiendModel.from_pretrained(tmp_path / "ref")
    assert torch.equal(bare.encoder_weight, model.gradiend.encoder_weight.cpu())


def test_push_is_a_cli_command() -> None:
    ns = build_parser().parse_args(["push", "some/dir", "me/repo", "--private"])
    assert ns.command == "push" and ns.private is True and ns.repo_id == "me/repo"


def test_training_stops_before_allocating_when_the_plan_does_not_fit(tiny_mlm_dir: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from gradiend import TextPredictionTrainer

    checked: list[MemoryPlan] = []
    original = MemoryPlan.check

    def tight_check(self, device, free_device=None, free_host=None):
        checked.append(self)
        return original(self, device, free_device=free_device, free_host=1000)  # 1 kB of host memory

    monkeypatch.setattr(MemoryPlan, "check", tight_check)
    args = TrainingArguments(experiment_dir=str(tmp_path / "exp"), train_batch_size=4, max_steps=2, seed=0,
                             show_progress=False, params=["encoder.layer.1.*"])
    trainer = TextPredictionTrainer(model=tiny_mlm_dir, data=make_rows(), args=args, target_classes=["3SG", "3PL"])
    with pytest.raises(InsufficientMemoryError, match="bias_decoder"):
        trainer.train()
    assert len(checked) == 1
    assert not (tmp_path / "exp" / "model").exists()


def test_training_keeps_no_grad_buffers_and_the_best_checkpoint_on_the_host(tiny_mlm_dir: str, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[list[bool], set[str]]] = []
    original = TrainingLoop._outcome

    def outcome(self, *a, **kw):
        best = self.history.best_state or {}
        seen.append(([p.grad is None for p in self.gradiend.parameters()], {t.device.type for t in best.values()}))
        return original(self, *a, **kw)

    monkeypatch.setattr(TrainingLoop, "_outcome", outcome)
    build(tiny_mlm_dir, tmp_path / "exp", encoder=False, decoder=False)
    (grads_freed, best_devices), = seen
    assert grads_freed and all(grads_freed)
    assert best_devices == {"cpu"}


def test_max_length_beyond_the_model_positions_is_capped_and_long_rows_get_the_clear_error(
        tiny_mlm_dir: str, tmp_path: Path) -> None:
    from gradiend import TextPredictionTrainer
    from gradiend.data import DataError

    rows = make_rows()
    rows.loc[0, "masked"] = " ".join(["the sea was very old and"] * 15) + " [MASK] walked home ."
    args = TrainingArguments(experiment_dir=str(tmp_path / "exp"), train_batch_size=4, max_steps=2,
                             show_progress=False, params=["encoder.layer.1.*"])  # max_length 256 > 64 positions
    trainer = TextPredictionTrainer(model=tiny_mlm_dir, data=rows, args=args, target_classes=["3SG", "3PL"])
    with pytest.raises(DataError, match="beyond max_length=64"):
        trainer.train()
