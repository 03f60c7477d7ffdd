"""GRADIEND checkpoints on the Hugging Face Hub: push one (with its results and a model card), resolve a Hub id.

An uploaded repo holds the checkpoint files at its root (`model.safetensors`, `gradiend_config.json`,
`param_map.safetensors` when pruned, `training.json`), the experiment's current encoder and decoder
results under `results/`, and a `README.md` model card (`gradiend.cards`). Only `huggingface_hub.HfApi`
talks to the network. `huggingface_hub` is imported inside the functions, so that `import gradiend`
(and the command line) stays cheap.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradiend.cards import CheckpointResults
    from gradiend.experiment import ExperimentDir

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
RESULTS_DIR = "results"
_TRUE = ("1", "true", "yes", "on")


class HubError(RuntimeError):
    """A Hub operation failed (unknown repo, no permission, no network); the message names the fix."""


def offline_mode() -> bool:
    """Whether `HF_HUB_OFFLINE` (or the older `TRANSFORMERS_OFFLINE`) asks for no network access, read now."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache as the environment names it now (`HF_HUB_CACHE`, else `HF_HOME/hub`)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a valid Hub model id (`name` or `org/name`), else a ValueError naming the rule."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"{repo_id!r} is not a valid Hugging Face repo id ({err}); use 'name' or 'org/name' "
                         f"with letters, digits, '-', '_' and '.'") from None
    return repo_id


# -- reading: a local directory or a Hub id --------------------------------------------------------
def _local_copy_hint(repo_id: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (f"Download it where you have network (`hf download {repo_id}{rev} --local-dir DIR`, or "
            f"huggingface_hub.snapshot_download) and pass DIR, or unset HF_HUB_OFFLINE to let gradiend fetch it "
            f"into the Hugging Face cache ({hub_cache_dir()}).")


def _from_cache(repo_id: str, revision: str | None) -> Path | None:
    """The snapshot of `repo_id` at `revision` in the local Hub cache, or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=hub_cache_dir(), local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        return None


def _download(repo_id: str, revision: str | None, token: str | bool | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=hub_cache_dir(), token=token))
    except RevisionNotFoundError:
        raise HubError(f"{repo_id!r} has no revision {revision!r} on the Hugging Face Hub; pass an existing "
                       f"branch, tag or commit") from None
    except RepositoryNotFoundError:
        raise HubError(f"No model repo {repo_id!r} on the Hugging Face Hub (or it is private: log in with "
                       f"`hf auth login` or pass token=)") from None
    except HfHubHTTPError as err:
        raise HubError(f"Downloading {repo_id!r} from the Hugging Face Hub failed ({err}). "
                       + _local_copy_hint(repo_id, revision)) from None


def resolve_pretrained(path_or_repo_id: str | os.PathLike, revision: str | None = None,
                       token: str | bool | None = None) -> Path:
    """The local directory of a GRADIEND checkpoint: `path_or_repo_id` itself when it exists, else the
    Hub repo of that id at `revision`, from the local Hugging Face cache or downloaded into it.

    With `HF_HUB_OFFLINE=1`, or when the Hub cannot be reached, only the cache is searched and a
    missing repo fails at once with a hint on making a local copy.
    """
    text = os.fspath(path_or_repo_id)
    path = Path(text).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub ids, but {text!r} is a local directory")
        return path
    if path.exists():
        raise NotADirectoryError(f"{text!r} is a file; pass the checkpoint directory (it holds gradiend_config.json)")
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1:
        raise FileNotFoundError(f"GRADIEND checkpoint directory {text!r} does not exist")
    repo_id = check_repo_id(text)
    if offline_mode():
        cached = _from_cache(repo_id, revision)
        if cached is None:
            raise FileNotFoundError(f"{repo_id!r} is not a local directory, and HF_HUB_OFFLINE is set while the Hub "
                                    f"repo is not in the Hugging Face cache. {_local_copy_hint(repo_id, revision)}")
        return cached
    from gradiend.data_sources import hub_reachable

    if not hub_reachable():
        cached = _from_cache(repo_id, revision)
        if cached is None:
            raise FileNotFoundError(f"{repo_id!r} is not a local directory, and the Hugging Face Hub cannot be "
                                    f"reached from this machine. {_local_copy_hint(repo_id, revision)}")
        logger.info("Hub unreachable; using the cached snapshot %s", cached)
        return cached
    return _download(repo_id, revision, token)


# -- writing: stage a checkpoint with its results and card, upload it ------------------------------
def locate_checkpoint(directory: str | os.PathLike | ExperimentDir) -> tuple[Path, ExperimentDir | None]:
    """(checkpoint directory, its experiment or None) for a checkpoint directory, an experiment directory, or
    an `ExperimentDir` (whose model directory may lie elsewhere, e.g. a trainer's `output_dir`)."""
    from gradiend.experiment import MODEL_CONFIG, MODEL_DIR, ExperimentDir

    if isinstance(directory, ExperimentDir):
        if not (directory.model / MODEL_CONFIG).is_file():
            raise FileNotFoundError(f"{directory.model} holds no GRADIEND checkpoint ({MODEL_CONFIG} is missing); "
                                    f"train it first")
        return directory.model, directory
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory; pass a GRADIEND checkpoint directory (holding "
                                f"{MODEL_CONFIG}) or an experiment directory (holding {MODEL_DIR}/{MODEL_CONFIG})")
    if (path / MODEL_DIR / MODEL_CONFIG).is_file():
        return path / MODEL_DIR, ExperimentDir(path)
    if (path / MODEL_CONFIG).is_file():
        experiment = ExperimentDir(path.parent) if path.name == MODEL_DIR else None
        return path, experiment
    raise FileNotFoundError(f"{directory} holds no GRADIEND checkpoint ({MODEL_CONFIG} is missing there and in "
                            f"{MODEL_DIR}/); train one first (`gradiend train CONFIG.yaml`) or pass its directory")


def _encoder_results(experiment: ExperimentDir, stamp: str | None) -> tuple[dict[str, Any], list[Path]]:
    """Current encoder metrics by split label, and their metadata files (results of earlier weights skipped)."""
    metrics: dict[str, Any] = {}
    files = []
    for result in experiment.encoder_results():
        if not result.meta.is_file():
            continue
        meta = result.load()
        if meta.model is not None and stamp is not None and meta.model != stamp:
            logger.info("Leaving out %s: it belongs to an earlier model in %s", result.meta.name, experiment.root)
            continue
        label = result.split if result.max_size is None else f"{result.split} (≤ {result.max_size} per class)"
        metrics[label] = meta.metrics
        files.append(result.meta)
    return metrics, files


def _decoder_results(experiment: ExperimentDir, stamp: str | None) -> tuple[dict[str, Any], list[Path]]:
    summaries = experiment.load_decoder_summaries()
    if not summaries.summaries or (summaries.model is not None and stamp is not None and summaries.model != stamp):
        return {}, []
    files = [p for p in (experiment.decoder_summaries, experiment.decoder_grid) if p.is_file()]
    return dict(summaries.summaries), files


def collect_results(checkpoint: Path, experiment: ExperimentDir | None) -> tuple[CheckpointResults, list[Path]]:
    """What the card reports, and the experiment's result files to upload under `results/`."""
    from gradiend.cards import CheckpointResults
    from gradiend.experiment import MODEL_CONFIG, TRAINING_STATS, read_json, weights_stamp
    from gradiend.model import GradiendConfig
    from gradiend.records import TrainingRecord

    raw = read_json(checkpoint / MODEL_CONFIG, "GRADIEND config")
    config = GradiendConfig.from_json(raw, str(checkpoint / MODEL_CONFIG))
    training_file = checkpoint / TRAINING_STATS
    training = TrainingRecord.from_json(read_json(training_file, "training stats")) if training_file.is_file() else None
    results = CheckpointResults(config, training, written_by=raw.get("library_version"))
    files: list[Path] = []
    if experiment is not None:
        stamp = weights_stamp(checkpoint)
        results.encoder, encoder_files = _encoder_results(experiment, stamp)
        results.decoder, decoder_files = _decoder_results(experiment, stamp)
        files = encoder_files + decoder_files
    return results, files


def stage_for_hub(directory: str | os.PathLike | ExperimentDir, target: str | os.PathLike,
                  repo_id: str | None = None) -> Path:
    """Copy a checkpoint, its current results and a fresh model card into the empty directory `target`."""
    from gradiend.cards import gradiend_card
    from gradiend.experiment import MODEL_CONFIG, MODEL_WEIGHTS, TRAINING_STATS
    from gradiend.mlm_head import HEAD_FILE
    from gradiend.model import PARAM_MAP_FILE

    checkpoint, experiment = locate_checkpoint(directory)
    if not (checkpoint / MODEL_WEIGHTS).is_file():
        raise FileNotFoundError(f"{checkpoint} has {MODEL_CONFIG} but no {MODEL_WEIGHTS}; the checkpoint is "
                                f"incomplete: save or train it again")
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    results, result_files = collect_results(checkpoint, experiment)
    for name in (MODEL_CONFIG, MODEL_WEIGHTS, PARAM_MAP_FILE, HEAD_FILE, TRAINING_STATS):
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, target / name)
    if result_files:
        (target / RESULTS_DIR).mkdir(exist_ok=True)
        for path in result_files:
            shutil.copy2(path, target / RESULTS_DIR / path.name)
    gradiend_card(results, repo_id).save(target / CARD_FILE)
    return target


def push_to_hub(directory: str | os.PathLike | ExperimentDir, repo_id: str, *, private: bool | None = None,
                token: str | None = None, revision: str | None = None,
                commit_message: str = "Upload GRADIEND checkpoint") -> str:
    """Upload a GRADIEND checkpoint (or an experiment's model) with the experiment's results and a model card.

    `directory`: a checkpoint directory, an experiment directory, or an `ExperimentDir` (a trainer's
    `experiment`, whose model may live in a separate `output_dir`).

    Creates the model repo `repo_id` if needed (`private` applies then) and, with `revision`, the
    branch. Returns the URL of the commit.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="gradiend-push-") as tmp:
        staged = stage_for_hub(directory, tmp, repo_id)
        try:
            api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
            if revision is not None:
                api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=staged, repo_type="model", revision=revision,
                                       commit_message=commit_message)
        except HfHubHTTPError as err:
            raise HubError(f"Uploading to {repo_id!r} failed ({err}); check that you are logged in "
                           f"(`hf auth login` or token=) and may write to that repo") from None
    url = str(commit.commit_url)
    logger.info("Pushed %s to %s", directory, url)
    return url


# -- command line: `gradiend push DIR REPO` ----------------------------------------------------------
def add_push_command(command: Callable[..., argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register `gradiend push` through the CLI's sub-command factory `command(name, help, description)`."""
    push = command("push", "upload a GRADIEND checkpoint with its results and a model card to the Hugging Face Hub",
                   "Upload a GRADIEND checkpoint (DIR: a checkpoint directory, or an experiment directory whose "
                   "model/ is pushed) with its current encoder/decoder results and a model card to the Hub model "
                   "repo REPO (created if missing). Needs a Hub token (`hf auth login`, HF_TOKEN or --token).")
    push.add_argument("directory", metavar="DIR")
    push.add_argument("repo_id", metavar="REPO", help="Hub model repo id, e.g. your-name/gradiend-he-she")
    push.add_argument("--private", action="store_true", default=None, help="create the repo as private")
    push.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    push.add_argument("--token", default=None, help="Hub token (default: the logged-in one or HF_TOKEN)")
    push.add_argument("--message", default="Upload GRADIEND checkpoint", help="commit message")
    return push
