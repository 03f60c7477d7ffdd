"""GRADIEND checkpoints on the Hugging Face Hub (gradiend.hub, gradiend.cards).

Everything runs for real up to the network: cards are rendered and parsed back by huggingface_hub,
the upload folder is staged; only `HfApi.create_repo` / `create_branch` / `upload_folder` are
replaced. Reading a Hub id is tested on a Hub-cache layout (`models--org--name/snapshots/...`)
under a temporary HF_HOME with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import validate_repo_id

from gradiend import ModelWithGradiend
from gradiend.cards import CheckpointResults, gradiend_card, hub_model_id, rewrite_card
from gradiend.experiment import ExperimentDir
from gradiend.hub import push_to_hub, resolve_pretrained, stage_for_hub
from gradiend.model import GradiendConfig, GradiendModel
from gradiend.results import load_decoder, load_encoder_metrics

REPO = "someone/gradiend-3sg-3pl"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
BASE_MODEL_RELATIONS = {"adapter", "merge", "quantized", "finetune"}


@pytest.fixture(scope="module")
def experiment(tiny_mlm_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_experiment import build

    root = tmp_path_factory.mktemp("hub") / "exp"
    trainer = build(tiny_mlm_dir, root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        trainer.rewrite_base_model(target_class="3SG", output_dir=str(root / "3SG"))
    return root


def _front_matter(card: ModelCard) -> dict[str, Any]:
    """The card's metadata, checked the way huggingface_hub reads a README: it parses back to the same data."""
    again = ModelCard(str(card))
    assert again.data.to_dict() == card.data.to_dict()
    ModelCardData(**again.data.to_dict())  # re-validated (model-index, eval results) by huggingface_hub
    data = again.data.to_dict()
    if "base_model" in data:
        validate_repo_id(data["base_model"])
        assert data["base_model_relation"] in BASE_MODEL_RELATIONS
    else:
        assert "base_model_relation" not in data
    return data


def _code_block(text: str) -> str:
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


# -- cards ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "resolved", "expected"), [
    ("bert-base-cased", None, "bert-base-cased"),
    ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M"),
    ("org/name", "/home/me/org/name", None),  # was a local directory at training time
    ("./org/name", None, None),
    ("/models/bert", None, None),
    ("a/b/c", None, None),
    ("not a repo!", None, None),
    ("", None, None),
])
def test_hub_model_id_tells_hub_ids_from_local_paths(name: str, resolved: str | None, expected: str | None) -> None:
    assert hub_model_id(name, resolved) == expected


def test_existing_local_directory_is_never_a_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert hub_model_id("org/name") is None


def test_gradiend_card_reports_the_experiment_and_its_example_runs(experiment: Path, tmp_path: Path) -> None:
    staged = stage_for_hub(experiment, tmp_path / "staged", REPO)
    card = ModelCard.load(staged / "README.md")
    data = _front_matter(card)
    assert data["library_name"] == "gradiend" and "gradiend" in data["tags"]
    assert "base_model" not in data  # the tiny model is a local directory
    text = card.text
    metrics = load_encoder_metrics(experiment)
    selection = load_decoder(experiment)["3SG"]
    assert "# GRADIEND: 3SG vs 3PL" in text and "`3SG` (encoded as +1)" in text and "`3PL` (encoded as -1)" in text
    assert f"| test | {metrics.n_samples} | {metrics.correlation:.4g} | {metrics.accuracy:.4g} |" in text
    for value in metrics.neutral_mean_by_type.values():
        assert f"{value:.4g}" in text
    assert "mean neutral_dataset" in text and "mean neutral_training_masked" in text
    assert f"| 3SG | {selection.feature_factor:.4g} | {selection.learning_rate:.4g} |" in text
    config = GradiendConfig.from_json(json.loads((staged / "gradiend_config.json").read_text()))
    assert f"{config.input_dim:,} entries in {len(config.param_map)} tensors" in text
    assert config.param_map[0]["name"] in text and "gradiend 0.1" in text
    assert f"weights in `{config.gradiend_dtype}` (base model in `{config.torch_dtype}`)" in text
    code = _code_block(text)
    assert len(code.strip().splitlines()) == 3 and f'from_pretrained("{REPO}")' in code
    # the three lines work: load the staged checkpoint and apply the selected rewrite
    namespace: dict[str, Any] = {}
    exec(code.replace(REPO, str(staged)), namespace)  # the card's own example
    base = namespace["model"].base_model.state_dict()
    changed = [n for n, t in namespace["rewritten"].state_dict().items() if not torch.equal(t, base[n])]
    assert changed and all(n.startswith("bert.encoder.layer.1.") for n in changed)


def test_card_names_a_hub_base_model_with_its_relation(experiment: Path) -> None:
    config = GradiendConfig.from_json(json.loads((experiment / "model" / "gradiend_config.json").read_text()))
    config.base_model, config.base_model_resolved = "google-bert/bert-base-uncased", "google-bert/bert-base-uncased"
    card = gradiend_card(CheckpointResults(config))
    data = _front_matter(card)
    assert data["base_model"] == "google-bert/bert-base-uncased" and data["base_model_relation"] == "adapter"
    assert "Not evaluated when this card was written." in card.text
    assert 'from_pretrained("path/to/this/checkpoint")' in card.text


def test_rewritten_model_card_has_valid_metadata_and_the_edit(experiment: Path) -> None:
    card = ModelCard.load(experiment / "3SG" / "README.md")
    data = _front_matter(card)
    selection = load_decoder(experiment)["3SG"]
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "fill-mask"
    assert "gradiend" in data["tags"] and "3SG" in data["tags"]
    assert "base_model" not in data  # a local path would be invalid metadata
    assert f"| learning_rate | {selection.learning_rate:g} |" in card.text
    assert f"| feature_factor | {selection.feature_factor:g} |" in card.text
    assert "strengthening `3SG`" in card.text
    assert ExperimentDir(experiment).rewritten_models() == [experiment / "3SG"]


def test_rewrite_card_of_a_hub_model_states_base_model_and_relation() -> None:
    info = {"base_model": "openai-community/gpt2", "key": "F_weaken", "target_class": "F", "strengthen": False,
            "feature_classes": ["M", "F"], "feature_factor": 1.0, "learning_rate": 1e-3, "value": 0.9,
            "base_value": 0.7, "lms": 0.3, "base_lms": 0.31, "n_parameters": 1000, "n_tensors": 2,
            "objective": "clm", "library_version": "0.1.0"}
    card = rewrite_card(info)
    data = _front_matter(card)
    assert data["base_model"] == "openai-community/gpt2" and data["base_model_relation"] == "finetune"
    assert data["pipeline_tag"] == "text-generation" and "weakening `F`" in card.text
    assert "AutoModelForCausalLM" in _code_block(card.text)


# -- push ----------------------------------------------------------------------------------------
@pytest.fixture()
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Replace the network calls of HfApi; record them with the uploaded folder's files (path → bytes)."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        calls.append(("upload_folder", {**kwargs, "files": files}))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/{COMMIT}")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_uploads_checkpoint_results_and_card(experiment: Path, fake_hub: list) -> None:
    url = push_to_hub(experiment, REPO, private=True, token="hf_test", revision="v1")
    assert url == f"https://huggingface.co/{REPO}/commit/{COMMIT}"
    assert [name for name, _ in fake_hub] == ["create_repo", "create_branch", "upload_folder"]
    assert fake_hub[0][1] == {"repo_id": REPO, "private": True, "repo_type": "model", "exist_ok": True}
    assert fake_hub[1][1]["branch"] == "v1"
    upload = fake_hub[2][1]
    assert upload["repo_id"] == REPO and upload["revision"] == "v1" and upload["repo_type"] == "model"
    files = upload["files"]
    assert set(files) == {"README.md", "gradiend_config.json", "model.safetensors", "training.json",
                          "results/encoded_values_split_test.json", "results/decoder_summaries.json",
                          "results/decoder_grid.json"}
    for name in ("model.safetensors", "gradiend_config.json", "training.json"):
        assert files[name] == (experiment / "model" / name).read_bytes()
    assert files["results/decoder_summaries.json"] == (experiment / "decoder_summaries.json").read_bytes()
    assert f'from_pretrained("{REPO}")' in files["README.md"].decode()


def test_push_leaves_out_results_of_earlier_weights(experiment: Path, tmp_path: Path, fake_hub: list) -> None:
    copy = tmp_path / "exp"
    shutil.copytree(experiment, copy)  # copy2 keeps mtimes, so the weights stamp stays the same
    summaries = json.loads((copy / "decoder_summaries.json").read_text())
    summaries["model"] = "1-1"  # made by other weights
    (copy / "decoder_summaries.json").write_text(json.dumps(summaries))
    push_to_hub(copy, REPO)
    files = fake_hub[-1][1]["files"]
    assert "results/encoded_values_split_test.json" in files
    assert not any(name.startswith("results/decoder") for name in files)
    assert "Not evaluated when this card was written." in files["README.md"].decode()


def test_push_of_an_experiment_whose_model_lives_elsewhere(experiment: Path, tmp_path: Path, fake_hub: list) -> None:
    model_dir = tmp_path / "elsewhere" / "gradiend"
    shutil.copytree(experiment / "model", model_dir)  # copy2 keeps mtimes: the results stay current
    push_to_hub(ExperimentDir(experiment, model_dir=model_dir), REPO)
    files = fake_hub[-1][1]["files"]
    assert files["model.safetensors"] == (experiment / "model" / "model.safetensors").read_bytes()
    assert {"results/encoded_values_split_test.json", "results/decoder_summaries.json"} <= set(files)
    with pytest.raises(FileNotFoundError, match="holds no GRADIEND checkpoint"):
        push_to_hub(ExperimentDir(tmp_path / "exp2"), REPO)


def test_model_with_gradiend_push_to_hub(experiment: Path, fake_hub: list) -> None:
    model = ModelWithGradiend.from_pretrained(experiment / "model")
    model.push_to_hub(REPO)
    files = fake_hub[-1][1]["files"]
    assert {"README.md", "gradiend_config.json", "model.safetensors"} <= set(files)
    assert not any(name.startswith("results/") for name in files)
    assert fake_hub[0][1]["private"] is None


def test_push_refuses_bad_input_before_any_network_call(experiment: Path, tmp_path: Path, fake_hub: list) -> None:
    with pytest.raises(ValueError, match="not a valid Hugging Face repo id"):
        push_to_hub(experiment, "bad repo id")
    with pytest.raises(FileNotFoundError, match=r"gradiend_config\.json"):
        push_to_hub(tmp_path, REPO)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        push_to_hub(tmp_path / "missing", REPO)
    assert fake_hub == []


def test_push_command(experiment: Path, fake_hub: list, capsys: pytest.CaptureFixture[str]) -> None:
    from gradiend.cli import build_parser

    ns = build_parser().parse_args(["push", str(experiment), REPO, "--private", "--message", "first"])
    assert ns.func(ns) == 0
    assert capsys.readouterr().out.strip() == f"https://huggingface.co/{REPO}/commit/{COMMIT}"
    assert fake_hub[0][1]["private"] is True and fake_hub[-1][1]["commit_message"] == "first"


# -- from the Hub (cache layout, offline) -----------------------------------------------------------
def _fake_hub_cache(hf_home: Path, repo_id: str, source: Path) -> Path:
    """Lay `source` out as the Hub cache does: blobs, a snapshot of symlinks, refs/main → commit."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        blob = repo / "blobs" / f"{path.relative_to(source).as_posix().replace('/', '_')}-blob"
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.usefixtures("no_network")
def test_from_pretrained_reads_a_hub_cache_offline(experiment: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    staged = stage_for_hub(experiment, tmp_path / "staged", REPO)
    snapshot = _fake_hub_cache(tmp_path / "hf", REPO, staged)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_pretrained(REPO) == snapshot
    assert resolve_pretrained(REPO, revision=COMMIT) == snapshot
    model = ModelWithGradiend.from_pretrained(REPO, revision="main")
    local = GradiendModel.from_pretrained(experiment / "model")
    for name, tensor in local.state_dict().items():
        assert torch.equal(model.gradiend.state_dict()[name], tensor)
    assert model.config.feature_classes == ["3SG", "3PL"]


@pytest.mark.usefixtures("no_network")
def test_offline_unknown_repo_fails_at_once_with_the_local_copy_hint(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"HF_HUB_OFFLINE is set.*--local-dir DIR.*pass DIR"):
        ModelWithGradiend.from_pretrained("someone/unknown-gradiend")


@pytest.mark.usefixtures("no_network")
def test_unreachable_hub_fails_with_the_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("gradiend.data_sources.hub_reachable", lambda *a, **k: False)
    with pytest.raises(FileNotFoundError, match=r"cannot be reached.*--revision v2 --local-dir DIR"):
        resolve_pretrained("someone/unknown-gradiend", revision="v2")


def test_resolve_pretrained_refuses_bad_local_input(experiment: Path, tmp_path: Path) -> None:
    assert resolve_pretrained(experiment / "model") == experiment / "model"
    with pytest.raises(ValueError, match="revision='main' applies to Hub ids"):
        resolve_pretrained(experiment / "model", revision="main")
    with pytest.raises(NotADirectoryError, match="is a file"):
        resolve_pretrained(experiment / "model" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_pretrained(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a valid Hugging Face repo id"):
        resolve_pretrained("bad repo id")


def test_hub_module_imports_no_heavy_library() -> None:
    heavy = ("huggingface_hub", "transformers", "torch", "pandas", "gradiend.experiment")
    code = ("import json, sys, gradiend.hub, gradiend.cards\n"
            f"print(json.dumps([m for m in {heavy} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
