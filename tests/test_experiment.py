"""The experiment directory: atomic writes, the run lock, the layout and the typed records of its JSON files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tiny_experiment

from gradiend.experiment import (
    ExperimentDir,
    MissingResultError,
    atomic_directory,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_with,
)
from gradiend.records import (
    FORMAT_VERSION,
    DecoderSelection,
    DecoderSummaries,
    EncoderMeta,
    Record,
    SeedReport,
    TrainingRecord,
)
from gradiend.results import encoder_results, load_encoder_metrics, load_seed_report, load_training


def test_atomic_files_and_directories_get_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "f.txt").write_text("hi")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_writes_never_touch_the_process_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(mask: int) -> int:
        raise AssertionError("os.umask is process-wide; writes must not call it")

    monkeypatch.setattr(os, "umask", forbidden)
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_with(tmp_path / "b.txt", lambda tmp: Path(tmp).write_text("y"))
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "f").write_text("z")
    assert (tmp_path / "a.bin").read_bytes() == b"x" and (tmp_path / "d" / "f").read_text() == "z"


def test_failed_writes_leave_no_trace(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("old")

    def broken(path: str) -> None:
        Path(path).write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_with(tmp_path / "keep.txt", broken)
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "dir") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("interrupted")
    assert (tmp_path / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


# -- the lock ---------------------------------------------------------------------------------------------
_HOLD = textwrap.dedent("""
    import sys, time
    from gradiend.experiment import ExperimentDir
    with ExperimentDir(sys.argv[1]).lock():
        print("held", flush=True)
        time.sleep(60)
""")


def test_lock_refuses_a_second_holder_in_another_process_and_frees_when_it_dies(tmp_path: Path) -> None:
    exp = ExperimentDir(tmp_path / "exp")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(exp.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=r"in use by another run.*another experiment_dir"), exp.lock():
            pass
    finally:
        holder.kill()  # no cleanup code runs: the kernel drops the lock, nothing stale is left to remove
        holder.wait()
    with exp.lock():
        assert exp.lock_file.exists()
    assert not exp.lock_file.exists()  # a finished run leaves no lock file


_CONTEND = textwrap.dedent("""
    import os, sys
    from gradiend.experiment import ExperimentDir
    exp, held = ExperimentDir(sys.argv[1]), 0
    for _ in range(300):
        try:
            with exp.lock():
                fd = os.open(os.path.join(sys.argv[1], "inside"), os.O_CREAT | os.O_EXCL)  # fails on overlap
                os.close(fd)
                os.unlink(os.path.join(sys.argv[1], "inside"))
                held += 1
        except RuntimeError:
            pass
    print(held)
""")


def test_lock_never_has_two_holders_while_runs_come_and_go(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _CONTEND, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    assert sum(int(out) for out, _ in results) > 0


def test_lock_refuses_a_second_holder_in_the_same_process(tmp_path: Path) -> None:
    exp = ExperimentDir(tmp_path)
    with exp.lock():
        with pytest.raises(RuntimeError, match=str(tmp_path)), ExperimentDir(tmp_path).lock():
            pass
    with exp.lock():  # released on exit, also after the refused attempt
        pass


# -- layout -----------------------------------------------------------------------------------------------
def test_layout_and_overrides(tmp_path: Path) -> None:
    exp = ExperimentDir(tmp_path)
    assert exp.model == tmp_path / "model" and exp.training_stats == tmp_path / "model" / "training.json"
    assert exp.seed_report == tmp_path / "seeds" / "seed_report.json"
    assert exp.seed_run(3) == tmp_path / "seeds" / "seed_3"
    assert exp.encoder_csv("test", None).name == "encoded_values_split_test.csv"
    assert exp.encoder_meta("validation", 5).name == "encoded_values_split_validation_max_size_5.json"
    assert exp.gradient_cache == tmp_path / "cache" / "gradients" and exp.rewritten("3SG") == tmp_path / "3SG"
    moved = ExperimentDir(tmp_path, model_dir=tmp_path / "m", seeds_dir=tmp_path / "s")
    assert moved.training_stats == tmp_path / "m" / "training.json" and moved.seed_report == tmp_path / "s" / (
        "seed_report.json")
    with pytest.raises(MissingResultError, match="gradiend train"):
        ExperimentDir.find(tmp_path / "nothing")


# -- records of a real run ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def experiment(tiny_mlm_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    exp = tmp_path_factory.mktemp("records_exp")
    trainer = tiny_experiment.build(tiny_mlm_dir, exp, max_seeds=2)
    trainer.evaluate_encoder(split="validation", max_size=5)
    return exp


def _record_type(path: Path) -> type[Record]:
    if path.name == "training.json":
        return TrainingRecord
    if path.name == "seed_report.json":
        return SeedReport
    if path.name == "decoder_summaries.json":
        return DecoderSummaries
    return EncoderMeta


def test_records_reproduce_every_saved_json_file(experiment: Path, tmp_path: Path) -> None:
    files = [p for p in experiment.rglob("*.json") if p.name in ("training.json", "seed_report.json",
                                                                 "decoder_summaries.json")
             or p.name.startswith("encoded_values_split_")]
    assert {p.name for p in files} >= {"training.json", "seed_report.json", "decoder_summaries.json",
                                       "encoded_values_split_test.json",
                                       "encoded_values_split_validation_max_size_5.json"}
    assert len([p for p in files if p.name == "training.json"]) == 3  # model/ and both seeds
    for path in files:
        text = path.read_text(encoding="utf-8")
        record = _record_type(path).from_json(json.loads(text))
        assert record.format_version == 1 and not record.extra, path
        assert json.dumps(record.to_json(), indent=2) == text, path
        atomic_write_json(tmp_path / "copy.json", record)  # the writers take records as they are
        assert (tmp_path / "copy.json").read_text(encoding="utf-8") == text, path


def test_records_read_like_the_dicts_they_replace(experiment: Path) -> None:
    raw = json.loads((experiment / "model" / "training.json").read_text())
    training = load_training(experiment / "model")
    assert isinstance(training, TrainingRecord)
    assert list(training) == list(raw) and dict(training)["pair"] == raw["pair"]
    assert training["best_score_checkpoint"]["correlation"] == raw["best_score_checkpoint"]["correlation"]
    assert training.best_score_checkpoint == raw["best_score_checkpoint"]
    assert training.get("no_such_key", "default") == "default" and "post_prune" not in training
    assert training.convergence_info.best_seed == raw["convergence_info"]["best_seed"]
    with pytest.raises(KeyError):
        training["no_such_key"]
    report = load_seed_report(experiment)
    assert isinstance(report, SeedReport) and report["seeds_tried"] == [0, 1] == [r.seed for r in report.runs]
    assert report.runs[0]["output_dir"] == str(experiment / "seeds" / "seed_0")
    metrics = load_encoder_metrics(experiment, "validation")
    assert metrics["correlation"] == metrics.correlation is not None
    selection = ExperimentDir(experiment).load_decoder()["3SG"]
    assert isinstance(selection, DecoderSelection) and selection.id == selection["id"]


def test_unknown_keys_and_newer_versions_survive_a_round_trip(experiment: Path) -> None:
    raw = json.loads((experiment / "seeds" / "seed_report.json").read_text())
    newer = {"format_version": FORMAT_VERSION + 1, **raw, "added_later": {"x": [1, 2]}}
    newer["runs"][0]["per_run_extra"] = 7
    record = SeedReport.from_json(newer)
    assert record.format_version == FORMAT_VERSION + 1 and record["added_later"] == {"x": [1, 2]}
    assert record.to_json() == newer and list(record.to_json()) == list(newer)
    partial = SeedReport.from_json({"best_seed": 1, "runs": [{"seed": 1}]})  # absent keys are not invented
    assert partial.to_json() == {"best_seed": 1, "runs": [{"seed": 1}]} and partial.max_seeds is None


def test_encoder_metadata_names_split_and_cap_and_older_files_fall_back_to_the_name(experiment: Path,
                                                                                    tmp_path: Path) -> None:
    found = {(r.split, r.max_size) for r in encoder_results(experiment)}
    assert found == {("test", None), ("validation", 5)}
    assert all(not r.load().absent & {"split", "max_size"} for r in encoder_results(experiment))
    legacy = tmp_path / "legacy"
    shutil.copytree(experiment, legacy, ignore=shutil.ignore_patterns("*.safetensors", "seeds"))
    for result in encoder_results(legacy):  # as written before the metadata stored split and cap
        meta = json.loads(result.meta.read_text())
        result.meta.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("split", "max_size")}))
    assert {(r.split, r.max_size) for r in encoder_results(legacy)} == found
    assert load_encoder_metrics(legacy, "validation") == load_encoder_metrics(experiment, "validation")
