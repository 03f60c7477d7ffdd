"""Issue 18, faults: kill -9 at every write point, a full disk, readers beside a live writer, and the last raw errors.

The fault-injection test runs `gradiend train → evaluate → rewrite → report` on the tiny BERT over an earlier
finished run that holds a user's `thesis.tex`, kills it with SIGKILL at each of its write points (the test
hook in `gradiend.experiment`; the driver is `tests/write_faults.py`), and checks the killed state and a rerun
(which resumes training from its checkpoint where one was saved, and must still match an uninterrupted run).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch
from conftest import make_rows
from hostile_cases import case
from safetensors.torch import load_file

from gradiend import cli, experiment, results
from gradiend.experiment import LOCK_FILE, ExperimentDir, OutputNotWritableError, tree_digest
from gradiend.report import write_report

REPO = Path(__file__).resolve().parents[1]
TEMP_RE = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
ASIDE_RE = re.compile(r"^\.(?P<name>.+)\.[0-9]+-[0-9a-f]{8}\.old$")
THESIS = "\\chapter{Mine}\nNot written by gradiend.\n"
USER_FILES = {"thesis.tex": THESIS, "notes/ideas.md": "# ideas\n"}


# -- the fault-injection run ---------------------------------------------------------------------------------
def _plan(tmp_path: Path, model: str) -> dict:
    make_rows(1).to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "run.yaml").write_text(f"""model: {model}
data: data.csv
target_classes: [3SG, 3PL]
experiment_dir: unused
training_args:
  max_steps: 2
  eval_steps: 2
  train_batch_size: 4
  scale_estimation_batches: 1
  params: [encoder.layer.1.*]
  decoder_eval_lrs: [1.0, 0.01]
  save_steps: 1               # a resume checkpoint after step 1: killed there, the rerun resumes from it
""", encoding="utf-8")
    base = tmp_path / "work" / "base"
    for name, text in USER_FILES.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text(text, encoding="utf-8")
    steps = [["train", str(tmp_path / "run.yaml"), "--experiment-dir", "{exp}", "-q"],
             ["evaluate", "{exp}", "-q", "--target-class", "3SG", "--no-plots"],
             ["rewrite", "{exp}", "--target-class", "3SG", "-q"],
             ["report", "{exp}", "--no-plots", "-q"]]
    first = [[*steps[0], "--seed", "1"], *steps[1:]]  # the earlier run: other weights everywhere
    return {"work": str(tmp_path / "work"), "base": str(base), "base_steps": first, "steps": steps}


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory, tiny_mlm_dir: str) -> Path:
    """The driver's work directory: base, ref, killed_<k>, trial_<k> (rerun), logs and summary.json."""
    tmp_path = tmp_path_factory.mktemp("faults")
    plan = _plan(tmp_path, tiny_mlm_dir)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("GRADIEND_TEST_WRITE_KILL", None)
    done = subprocess.run([sys.executable, str(REPO / "tests" / "write_faults.py"), str(tmp_path / "plan.json")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(plan["work"])


def _log(path: Path, root: Path) -> list[tuple[int, str, str, str]]:
    """(n, kind, path relative to `root`, digest) of each write point; writes inside temp dirs are left out
    (their directory's own write point covers them)."""
    points = []
    for line in path.read_text().splitlines():
        _, number, kind, target, digest = line.split("\t")
        relative = Path(target).relative_to(root)
        points.append((int(number), kind, relative.as_posix(), digest))
    return points


def _inside_temp(relative: str) -> bool:
    return any(TEMP_RE.match(part) for part in relative.split("/"))


def _digest(path: Path) -> str | None:
    return tree_digest(path) if path.exists() else None


def _expected(base: Path, points: list[tuple[int, str, str, str]], k: int) -> dict[str, str | None]:
    """What every unit (user file, file or directory written) holds once the write points before k are done.

    A directory write point that is followed by a swap of the same target is done only by that swap."""
    units: dict[str, str | None] = {p.relative_to(base).as_posix(): _digest(p) for p in base.rglob("*")
                                    if p.is_file() and not any(p.relative_to(base).as_posix().startswith(f"{u}/")
                                                               for _, kind, u, _ in points if kind == "dir")}
    for _, _, unit, _ in points:
        if not _inside_temp(unit):
            units.setdefault(unit, _digest(base / unit))
    for index, (number, kind, unit, digest) in enumerate(points):
        if number >= k:
            break
        followed_by_swap = index + 1 < len(points) and points[index + 1][1:3] == ("swap", unit)
        if not _inside_temp(unit) and not (kind == "dir" and followed_by_swap):
            units[unit] = digest
    return units


def _unit_of(relative: str, units: dict[str, str | None]) -> str | None:
    return next((u for u in units if relative == u or relative.startswith(f"{u}/")), None)


def _check_killed(state: Path, base: Path, ref: Path, points: list[tuple[int, str, str, str]], k: int) -> list[str]:
    """Problems of the state a kill at write point k left (empty: nothing lost, nothing torn)."""
    units, problems = _expected(base, points, k), []
    _, kind, at, _ = next(p for p in points if p[0] == k)
    for unit, digest in units.items():
        actual = _digest(state / unit)
        if kind == "swap" and unit == at:  # killed between the renames: the old version waits aside
            asides = [p for p in (state / unit).parent.iterdir() if (m := ASIDE_RE.match(p.name))
                      and m["name"] == Path(unit).name]
            if actual is not None or [tree_digest(p) for p in asides] != [digest]:
                problems.append(f"{unit}: swap interrupted, but the old version is not (only) aside")
        elif actual != digest and not (actual is None and not (ref / unit).exists()):
            problems.append(f"{unit}: {'missing' if actual is None else 'not the last complete version'}")
    for path in state.rglob("*"):
        relative = path.relative_to(state).as_posix()
        leftover = _inside_temp(relative) or any(ASIDE_RE.match(part) for part in relative.split("/"))
        if path.is_file() and not leftover and relative != LOCK_FILE and _unit_of(relative, units) is None:
            problems.append(f"{relative}: unexpected file")
    return problems


def _leftovers(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if TEMP_RE.match(p.name) or ASIDE_RE.match(p.name)]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _results(root: Path) -> dict[str, object]:
    """The deterministic results of a pipeline run (no timings, file stamps or the directory's own path)."""
    def text(name: str) -> str:
        return (root / name).read_text(encoding="utf-8").replace(str(root), "{exp}")

    training = json.loads(text("model/training.json"))
    return {
        "weights": _tensors(root / "model" / "model.safetensors"),
        "rewritten": _tensors(root / "3SG" / "model.safetensors"),
        "training": {k: v for k, v in training.items() if k not in ("time", "gradient_cache")},
        "config": json.loads(text("model/gradiend_config.json")),
        "encodings": text("encoded_values_split_test.csv"),
        "encoder": json.loads(text("encoded_values_split_test.json"))["metrics"],
        "grid": json.loads(text("decoder_grid.json"))["records"],
        "selection": json.loads(text("decoder_summaries.json"))["summaries"],
        "run_config": json.loads(text("run_config.json")),
    }


def _same(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    return a == b


@case("fault")
def test_kill_at_every_write_point_loses_nothing_and_a_rerun_is_clean(faults: Path, record_property) -> None:
    summary = json.loads((faults / "summary.json").read_text())
    ref, base = faults / "ref", faults / "base"
    points = _log(faults / "ref.log", ref)
    kinds = {kind for _, kind, _, _ in points}
    assert summary["ref"] == "exit 0" and len(points) == summary["write_points"] >= 15
    assert kinds == {"file", "dir", "swap"}  # temp files, directory swaps and the moment between their renames
    assert {"model", "3SG", "run_config.json", "decoder_grid.json", "report.html"} <= {u for _, _, u, _ in points}
    record_property("cases", len(points))
    expected = _results(ref)
    failures = []
    for k in range(1, len(points) + 1):
        outcome = summary["trials"][str(k)]
        killed, rerun = faults / f"killed_{k}", faults / f"trial_{k}"
        trial_points = _log(faults / f"trial_{k}.log", rerun)
        if outcome["killed"] != "signal SIGKILL" or trial_points[-1][0] != k:
            failures.append(f"write point {k}: not killed there ({outcome['killed']}): "
                            f"{(faults / f'trial_{k}.out').read_text()[-500:]}")
            continue
        failures += [f"write point {k} ({trial_points[-1][1]} {trial_points[-1][2]}), after the kill: {p}"
                     for p in _check_killed(killed, base, ref, trial_points, k)]
        if outcome["rerun"] != "exit 0":
            failures.append(f"write point {k}: the rerun failed: {(faults / f'rerun_{k}.out').read_text()[-800:]}")
            continue
        if _leftovers(rerun):
            failures.append(f"write point {k}: the rerun left {_leftovers(rerun)}")
        if not _same(_results(rerun), expected):
            failures.append(f"write point {k}: the rerun's results differ from an uninterrupted run's")
        for name, text in USER_FILES.items():
            if (rerun / name).read_text(encoding="utf-8") != text:
                failures.append(f"write point {k}: {name} changed")
    assert not failures, "\n".join(failures)


# -- a full disk ---------------------------------------------------------------------------------------------
def _config(tmp_path: Path, model: str) -> Path:
    plan = _plan(tmp_path, model)
    return Path(plan["steps"][0][1])


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_mlm_dir: str) -> Path:
    """An experiment made through the CLI (trained, encoder and decoder evaluated, 3SG rewritten)."""
    tmp_path = tmp_path_factory.mktemp("finished")
    exp = tmp_path / "exp"
    config = _config(tmp_path, tiny_mlm_dir)
    for argv in (["train", str(config), "--experiment-dir", str(exp), "-q", "--no-plots"],
                 ["evaluate", str(exp), "-q", "--target-class", "3SG", "--no-plots"],
                 ["rewrite", str(exp), "--target-class", "3SG", "-q"]):
        assert cli.main(argv) == cli.EXIT_OK
    (exp / "thesis.tex").write_text(THESIS, encoding="utf-8")
    return exp


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


def _disk_full(*_: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@case("fault")
def test_a_full_disk_fails_every_command_with_the_path_and_exit_5(finished: Path, monkeypatch, capsys,
                                                                  record_property) -> None:
    exp = finished
    commands = [(["train", str(exp.parent / "run.yaml"), "--experiment-dir", str(exp), "--seed", "1", "-q"], "model"),
                (["evaluate", str(exp), "--encoder", "--no-cache", "-q"], "encoded_values_split_test.csv"),
                (["evaluate", str(exp), "--decoder", "--no-cache", "--target-class", "3SG", "-q"], "decoder_grid.json"),
                (["rewrite", str(exp), "--target-class", "3SG", "-q"], "3SG"),
                (["report", str(exp), "--no-plots", "-q"], "report.html")]
    record_property("cases", len(commands))
    before = _snapshot(exp)
    monkeypatch.setattr(experiment, "_create_temp_file", _disk_full)  # every library write runs out of space
    for argv, target in commands:
        code = cli.main(argv)
        err = capsys.readouterr().err
        assert code == cli.EXIT_UNWRITABLE, (argv, err)
        assert f"{exp / target}: No space left on device" in err and "free disk space" in err, err
        assert _snapshot(exp) == before and not _leftovers(exp)


@case("fault")
def test_a_disk_filling_up_mid_write_leaves_the_old_file(finished: Path, monkeypatch) -> None:
    target = finished / "run_config.json"
    before = target.read_bytes()
    monkeypatch.setattr(os, "fsync", _disk_full)  # the bytes went to the temp file, fsync reports the full disk
    with pytest.raises(OutputNotWritableError, match=f"Cannot write {target}: No space left on device") as info:
        experiment.atomic_write_json(target, {"x": 1})
    assert info.value.errno == errno.ENOSPC and target.read_bytes() == before and not _leftovers(finished)


@case("error")
def test_a_raw_disk_error_from_elsewhere_is_named_too(monkeypatch, capsys) -> None:
    import gradiend.embedded

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/cache/gradiend/model.safetensors")

    monkeypatch.setattr(gradiend.embedded, "embedded_model_path", full)
    assert cli.main(["embedded-model"]) == cli.EXIT_UNWRITABLE
    assert ("Cannot write /cache/gradiend/model.safetensors: No space left on device; free disk space"
            in capsys.readouterr().err)


# -- raw or misleading errors ------------------------------------------------------------------------------
@case("error")
@pytest.mark.parametrize("argv", [["--steps", "-1"], ["--steps", "0"], ["--batch-size", "0"], ["--eval-steps", "-5"],
                                  ["--learning-rate", "nan"], ["--learning-rate", "-1"]])
def test_demo_refuses_non_positive_settings(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", *argv])
    assert info.value.code == cli.EXIT_USAGE
    assert re.search(rf"argument {argv[0]}: must be (at least 1|greater than 0|a finite number)",
                     capsys.readouterr().err)


@case("error")
@pytest.mark.parametrize("steps", [-1, 0, 2.5, True])
def test_run_demo_refuses_steps_that_are_not_a_positive_count(steps: object, monkeypatch) -> None:
    import gradiend.demo

    monkeypatch.setattr(gradiend.demo, "embedded_model_path", _disk_full)  # never reached
    with pytest.raises(ValueError, match="max_steps must be a positive number of training steps"):
        gradiend.demo.run_demo(max_steps=steps)  # type: ignore[arg-type]


# -- readers beside a live writer ----------------------------------------------------------------------------
def _readings(exp: Path) -> dict[str, object]:
    return {"training": results.load_training(exp).to_json(), "config": results.load_model_config(exp),
            "run": results.load_run_config(exp).to_json(), "seeds": results.load_seed_report(exp),
            "encodings": results.load_encodings(exp).to_dict("list"),
            "encoder": results.load_encoder_metrics(exp).to_json(),
            "decoder": json.dumps(results.load_decoder(exp), default=str, sort_keys=True),
            "rewrites": [p.name for p in results.rewritten_models(exp)],
            "splits": [(r.split, r.max_size) for r in results.encoder_results(exp)]}


def _plant_leftovers(exp: Path) -> list[str]:
    """What a writer in the middle of its work has in the directory: torn temp files and dirs, a moved-aside copy."""
    torn = {".encoded_values_split_test.csv.0123abcd.tmp": (exp / "encoded_values_split_test.csv").read_bytes()[:99],
            ".decoder_grid.json.0123abcd.tmp": b'{"records": [',
            ".report.html.0123abcd.tmp": b"<html><body><h1>GRADI"}
    for name, data in torn.items():
        (exp / name).write_bytes(data)
    checkpoint = exp / ".model.0123abcd.tmp"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes((exp / "model" / "model.safetensors").read_bytes()[:64])
    (checkpoint / "training.json").write_text("{")
    rewrite = exp / ".3SG.0123abcd.tmp"
    shutil.copytree(exp / "3SG", rewrite)
    (rewrite / "model.safetensors").write_bytes(b"")
    shutil.copytree(exp / "3SG", exp / f".3SG.{os.getpid()}-0123abcd.old")  # a swap done, its old copy not yet gone
    return sorted(p.name for p in exp.iterdir() if p.name.endswith((".tmp", ".old")))


@case("safe")
def test_readers_work_beside_a_live_writer_and_its_leftovers(finished: Path, tmp_path: Path) -> None:
    from gradiend import Trainer

    exp = tmp_path / "exp"
    shutil.copytree(finished, exp)
    before = _readings(exp)
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with ExperimentDir(exp).lock():
            held.set()
            release.wait(120)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert held.wait(60)
        with pytest.raises(RuntimeError, match="in use by another run"), ExperimentDir(exp).lock():
            pass  # the lock is really held
        leftovers = _plant_leftovers(exp)
        assert _readings(exp) == before  # the last complete state, no lock needed, leftovers ignored
        report = Path(write_report(exp, plots=False)).read_text(encoding="utf-8")
        assert "Training convergence" in report and "3SG" in report and "0123abcd" not in report
        trainer = Trainer.from_experiment(exp, show_progress=False)
        assert trainer.get_training_record().to_json() == before["training"]
        assert trainer.get_model().param_map.size == before["config"]["input_dim"]
        # the writer now sits between the two renames of its model/ swap: the old model/ is aside
        aside = exp / f".model.{os.getpid()}-0123abcd.old"
        (exp / "model").rename(aside)
        assert _readings(exp) == before
        assert "Training convergence" in Path(write_report(exp, plots=False)).read_text(encoding="utf-8")
        attached = Trainer.from_experiment(exp, show_progress=False)
        aside.rename(exp / "model")  # the swap goes on; the reader holds what it read
        assert attached.get_model().param_map.size == before["config"]["input_dim"]
        assert sorted(p.name for p in exp.iterdir() if p.name.endswith((".tmp", ".old"))) == leftovers  # untouched
    finally:
        release.set()
        thread.join()


# -- the trainer's output_dir --------------------------------------------------------------------------------
def _trainer(model: str, tmp_path: Path, **overrides: object):
    from gradiend import TextPredictionTrainer, TrainingArguments

    args = TrainingArguments(**{"experiment_dir": str(tmp_path / "exp"), "train_batch_size": 4, "max_steps": 1,
                                "eval_steps": 1, "seed": 0, "show_progress": False, "scale_estimation_batches": 1,
                                "params": ["encoder.layer.1.*"], **overrides})
    return TextPredictionTrainer(model=model, data=make_rows(1), args=args, target_classes=["3SG", "3PL"])


@case("data")
@pytest.mark.parametrize("where", ["output_dir", "model"])
def test_training_refuses_a_users_output_dir_unless_overwrite_output_dir(tiny_mlm_dir: str, tmp_path: Path,
                                                                        monkeypatch, where: str) -> None:
    from conftest import count_gradient_passes

    from gradiend.experiment import OutputNotOursError

    out = tmp_path / "out" if where == "output_dir" else tmp_path / "exp" / "model"
    out.mkdir(parents=True)
    (out / "thesis.tex").write_text(THESIS, encoding="utf-8")
    overrides = {"output_dir": str(out)} if where == "output_dir" else {}
    passes = count_gradient_passes(monkeypatch)
    with pytest.raises(OutputNotOursError, match=rf"Refusing to train into {re.escape(str(out))}: .*thesis\.tex.*"
                                                 r"overwrite_output_dir=True \(CLI: --overwrite-output-dir\)"):
        _trainer(tiny_mlm_dir, tmp_path, **overrides).train()
    assert passes == [] and (out / "thesis.tex").read_text(encoding="utf-8") == THESIS  # refused before training
    trainer = _trainer(tiny_mlm_dir, tmp_path, overwrite_output_dir=True, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # one step does not converge
        trainer.train()
    assert Path(trainer.model_path) == out and (out / "model.safetensors").is_file()
    assert not (out / "thesis.tex").exists()  # the user asked for it
    assert json.loads((out / experiment.OUTPUT_MARKER).read_text())["written_by"] == "gradiend"


@case("error")
def test_overwrite_output_dir_never_replaces_an_experiment_or_a_file(tiny_mlm_dir: str, tmp_path: Path) -> None:
    from gradiend.experiment import OutputNotOursError, UnsafePathError

    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    with pytest.raises(OutputNotOursError, match="it is a file or a link"):
        _trainer(tiny_mlm_dir, tmp_path, output_dir=str(blocker), overwrite_output_dir=True).train()
    other = tmp_path / "other_experiment"
    (other / "model").mkdir(parents=True)
    (other / "run_config.json").write_text("{}")
    with pytest.raises(UnsafePathError, match="is an experiment directory"):
        _trainer(tiny_mlm_dir, tmp_path, output_dir=str(other), overwrite_output_dir=True).train()
    assert blocker.read_text() == "mine" and (other / "run_config.json").read_text() == "{}"


@case("safe")
def test_the_cli_passes_overwrite_output_dir(tmp_path: Path) -> None:
    ns = cli.parse_args(["train", "--model", "m", "--data", "d", "--experiment-dir", str(tmp_path),
                         "--overwrite-output-dir"])
    assert cli._make_training_arguments(cli._train_settings(ns)[1]).overwrite_output_dir is True
    ns = cli.parse_args(["train", "--model", "m", "--data", "d", "--experiment-dir", str(tmp_path)])
    assert cli._make_training_arguments(cli._train_settings(ns)[1]).overwrite_output_dir is False


# -- more raw or misleading errors ---------------------------------------------------------------------------
@case("error")
@pytest.mark.parametrize("run_id", ["../../escape", "/abs/run", "..", "a/../../b", " "])
def test_a_run_id_that_leaves_the_experiment_dir_is_refused(tiny_mlm_dir: str, tmp_path: Path, run_id: str) -> None:
    from gradiend import TextPredictionTrainer
    from gradiend.experiment import UnsafePathError

    with pytest.raises(UnsafePathError, match="must name a sub-directory of experiment_dir"):
        TextPredictionTrainer(model=tiny_mlm_dir, data=make_rows(1), run_id=run_id)
    assert list(tmp_path.iterdir()) == []


@case("safe")
def test_a_nested_run_id_stays_inside(tiny_mlm_dir: str, tmp_path: Path) -> None:
    trainer = _trainer(tiny_mlm_dir, tmp_path)
    trainer.run_id = "grid/run1"
    assert Path(trainer.experiment_dir) == tmp_path / "exp" / "grid" / "run1"


@case("error")
def test_an_experiment_dir_that_is_a_file(tiny_mlm_dir: str, tmp_path: Path) -> None:
    blocker = tmp_path / "exp"
    blocker.write_text("mine")
    with pytest.raises(NotADirectoryError, match=f"Experiment directory {blocker} is a file; pass a directory"):
        _trainer(tiny_mlm_dir, tmp_path).train()
    assert blocker.read_text() == "mine"


@case("error")
@pytest.mark.parametrize(("setting", "message"), [
    ("pre_prune_config: 5", r"pre_prune_config must be a PrePruneConfig \(or a mapping of its fields\) or None, got 5"),
    ("pre_prune_config: {n_samples: -3}", "PrePruneConfig.n_samples must be a positive integer, got -3"),
    ("pre_prune_config: {nonsense: 1}", r"Unknown PrePruneConfig field\(s\): \['nonsense'\]"),
    ("post_prune_config: '0.1'", "post_prune_config must be"),
    ("max_steps: ten", "max_steps: cannot read 'ten' as int"),
    ("run_id: ../../escape", "run_id '../../escape' must name a sub-directory"),
])
def test_bad_config_file_values_are_usage_errors(tiny_mlm_dir: str, tmp_path: Path, capsys, setting: str,
                                                 message: str) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_mlm_dir}\ndata: data.csv\ntarget_classes: [3SG, 3PL]\nexperiment_dir: exp\n"
                      f"{setting}\n", encoding="utf-8")
    make_rows(1).to_csv(tmp_path / "data.csv", index=False)
    assert cli.main(["train", str(config), "-q"]) == cli.EXIT_USAGE
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "exp").exists() and not (tmp_path.parent / "escape").exists()


@case("error")
@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda t: t.evaluate_decoder(target_class="3SG", lrs="0.1"), TypeError,
     r"lrs must be a list of numbers, got '0\.1'"),
    (lambda t: t.evaluate_decoder(target_class="3SG", feature_factors=1.0), TypeError,
     "feature_factors must be a list of numbers"),
    (lambda t: t.rewrite_base_model(target_class="ZZZ"), ValueError,
     r"Unknown target_class 'ZZZ'; available: \['3SG', '3PL'\]"),
    (lambda t: t.rewrite_base_model(decoder_results={}, target_class="3SG"), KeyError,
     r"No decoder selection for \['3SG'\] \(have \[\]\); run evaluate_decoder\(target_class='3SG', "
     r"increase_target_probabilities=True\) first"),
    (lambda t: t.rewrite_base_model(target_class="3PL", increase_target_probabilities=False), KeyError,
     r"No decoder selection for \['3PL_weaken'\] \(have \['3SG'\]\)"),
])
def test_decoder_and_rewrite_arguments_that_used_to_mislead(finished: Path, call, error, message: str) -> None:
    from gradiend import Trainer

    trainer = Trainer.from_experiment(finished, show_progress=False)
    before = _snapshot(finished)
    with pytest.raises(error, match=message) as info:
        call(trainer)
    assert str(info.value)[0] not in "'\"" and _snapshot(finished) == before  # plain text, nothing written
