"""Issue 18, part A: nothing of the user's is ever deleted, paths cannot escape, crash leftovers are undone.

Each case feeds a hostile or careless path (a user's directory, the experiment itself, a class named
`../../X`, a run killed between the renames of a directory swap) and checks for a clear error and
byte-identical user files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hostile_cases import case

from gradiend.experiment import (
    OUTPUT_MARKER,
    ExperimentDir,
    OutputNotOursError,
    UnsafePathError,
    atomic_directory,
    atomic_write_json,
    child_path,
    foreign_files,
    safe_path_part,
)

REPO = Path(__file__).resolve().parents[1]


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file below `root` with its bytes (to show that nothing changed)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write(directory: Path, name: str, text: str = "x") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)
    return directory / name


# -- 1. a directory is replaced only when it is ours --------------------------------------------------------

@case("data")
def test_a_users_directory_is_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    thesis = _write(out, "thesis.tex", "\\chapter{mine}")
    expected = r"(?s)Refusing to replace .*out.*thesis\.tex.*overwrite=True.*--overwrite"
    with pytest.raises(OutputNotOursError, match=expected), atomic_directory(out) as tmp:
        _write(tmp, "config.json", "{}")
    assert thesis.read_text() == "\\chapter{mine}" and sorted(os.listdir(out)) == ["thesis.tex"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the temp dir is gone too


@case("data")
def test_our_directory_is_replaced_and_a_file_added_later_protects_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()  # empty: ours
    with atomic_directory(out, kind="rewrite") as tmp:
        _write(tmp, "config.json", "{}")
    manifest = json.loads((out / OUTPUT_MARKER).read_text())
    assert (manifest["written_by"], manifest["kind"], manifest["files"]) == ("gradiend", "rewrite", ["config.json"])
    with atomic_directory(out) as tmp:  # carries our manifest: replaced
        _write(tmp, "config.json", "{\"v\": 2}")
    assert (out / "config.json").read_text() == "{\"v\": 2}"
    _write(out, "notes.txt", "mine")
    assert foreign_files(out) == ["notes.txt"]
    with pytest.raises(OutputNotOursError, match=r"notes\.txt"), atomic_directory(out) as tmp:
        _write(tmp, "config.json", "{}")
    assert (out / "notes.txt").read_text() == "mine"
    with atomic_directory(out, overwrite=True) as tmp:  # the user's explicit choice
        _write(tmp, "config.json", "{}")
    assert sorted(os.listdir(out)) == [OUTPUT_MARKER, "config.json"]


@case("data")
def test_a_user_file_appearing_during_the_write_is_still_protected(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(OutputNotOursError), atomic_directory(out) as tmp:
        _write(out, "thesis.tex", "written meanwhile")
        _write(tmp, "config.json", "{}")
    assert (out / "thesis.tex").read_text() == "written meanwhile"


@pytest.mark.parametrize("files", [
    {"gradiend_config.json": "{}", "model.safetensors": "w", "training.json": "{}", "param_map.safetensors": "p"},
    {"training.json": "{}"},  # a seed run whose checkpoint was pruned away
    {"config.json": "{}", "README.md": "---\ntags:\n- gradiend\n---\n", "model.safetensors": "w",
     "tokenizer.json": "{}", "tokenizer_config.json": "{}", "special_tokens_map.json": "{}", "vocab.txt": "a"},
])
@case("safe")
def test_directories_an_earlier_version_wrote_stay_replaceable(tmp_path: Path, files: dict[str, str]) -> None:
    out = tmp_path / "legacy"
    for name, text in files.items():
        _write(out, name, text)
    assert foreign_files(out) == []
    with atomic_directory(out) as tmp:
        _write(tmp, "training.json", "{}")
    assert sorted(os.listdir(out)) == [OUTPUT_MARKER, "training.json"]


@pytest.mark.parametrize("files", [
    {"gradiend_config.json": "{}", "thesis.tex": "mine"},
    {"config.json": "{}", "README.md": "# my own model\n", "model.safetensors": "w"},  # no gradiend tag
    {"config.json": "{}", "README.md": "- gradiend", "train.py": "print()"},
    {"data.csv": "a,b"},
])
@case("data")
def test_lookalikes_of_old_layouts_are_not_ours(tmp_path: Path, files: dict[str, str]) -> None:
    out = tmp_path / "looks_like_ours"
    for name, text in files.items():
        _write(out, name, text)
    before = _snapshot(out)
    with pytest.raises(OutputNotOursError), atomic_directory(out) as tmp:
        _write(tmp, "config.json", "{}")
    assert _snapshot(out) == before


@case("data")
def test_a_saved_dataset_is_replaceable_but_not_a_file_or_link(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    _write(dataset, "dataset_dict.json", "{}")
    _write(dataset / "train", "data-00000-of-00001.arrow", "a")
    _write(dataset / "train", "state.json", "{}")
    with atomic_directory(dataset) as tmp:
        _write(tmp, "dataset_dict.json", "{}")
    blocker = _write(tmp_path, "a_file", "mine")
    link = tmp_path / "link"
    link.symlink_to(dataset)
    for target in (blocker, link):
        with pytest.raises(OutputNotOursError, match="not a directory"), atomic_directory(target, overwrite=True):
            pass
    assert blocker.read_text() == "mine" and link.is_symlink()


@case("data")
def test_overwrite_never_replaces_an_experiment_or_the_working_directory(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    exp = tmp_path / "exp"
    atomic_write_json(exp / "decoder_grid.json", {"records": []})
    with pytest.raises(UnsafePathError, match="experiment directory"), atomic_directory(exp, overwrite=True):
        pass
    monkeypatch.chdir(exp)
    with pytest.raises(UnsafePathError, match="current or the home directory"), \
            atomic_directory(tmp_path, overwrite=True):
        pass
    assert (exp / "decoder_grid.json").is_file()


# -- 3. names as path parts ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "safe"), [
    ("3SG", "3SG"), ("he_weaken", "he_weaken"), ("M.F-x", "M.F-x"), ("../../X", "_._.._X-"),
    ("<script>alert(1)</script>", "_script_alert_1___script_-"), ("a/b", "a_b-"), ("C:\\x", "C__x-"),
    (".hidden", "_hidden-"), (".model.deadbeef.tmp", "_model.deadbeef.tmp-"), ("ünï", "_n_-"),
    ("x" * 300, "x" * 91 + "-"),
])
@case("safe")
def test_safe_path_part(name: str, safe: str) -> None:
    result = safe_path_part(name)
    assert result == safe if safe == name else result.startswith(safe) and len(result) == len(safe) + 8
    assert len(result) <= 100 and "/" not in result and not result.startswith(".")
    assert len({safe_path_part(n) for n in ("男", "女", "_", "x" * 300, "x" * 299 + "y")}) == 5  # no clashes


@pytest.mark.parametrize("name", ["", " ", ".", ".."])
@case("error")
def test_names_that_cannot_be_a_path_part_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError, match="cannot be used as a file name"):
        child_path(tmp_path, name, "class")
    with pytest.raises(TypeError):
        safe_path_part(3)  # type: ignore[arg-type]


@case("safe")
def test_experiment_paths_from_names_stay_inside(tmp_path: Path) -> None:
    exp = ExperimentDir(tmp_path / "exp")
    for key in ("../../X", "<script>", "/etc/passwd", "..\\..\\X"):
        assert exp.rewritten(key).parent == exp.root
    for key in ("model", "seeds", "cache"):
        with pytest.raises(UnsafePathError, match="own"):
            exp.rewritten(key)
    assert exp.encoder_csv("../../x", None).parent == exp.root
    assert exp.encoder_csv("test", 5).name == "encoded_values_split_test_max_size_5.csv"  # names unchanged


@case("error")
def test_model_dir_equal_to_or_above_the_experiment_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    for model_dir in (root, tmp_path, root / "model" / ".."):
        with pytest.raises(UnsafePathError, match="holds the experiment directory"):
            ExperimentDir(root, model_dir=model_dir)
    with pytest.raises(UnsafePathError):
        ExperimentDir(root, seeds_dir=root)
    with pytest.raises(UnsafePathError, match="experiment directory"):
        with ExperimentDir(root).replace_dir(".."):
            pass


# -- 1-3 through the Trainer: rewrites into users' directories, the experiment itself, class names -----------

@pytest.fixture(scope="module")
def trained(tiny_mlm_dir: str, tmp_path_factory: pytest.TempPathFactory):
    from tiny_experiment import build

    return build(tiny_mlm_dir, tmp_path_factory.mktemp("hostile") / "exp", encoder=False, decoder=True)


@case("data")
def test_rewrite_refuses_users_directories_and_the_experiment(trained, tmp_path: Path) -> None:
    exp = trained.experiment
    before = _snapshot(exp.root)
    out = tmp_path / "out"
    thesis = _write(out, "thesis.tex", "\\chapter{mine}")
    with pytest.raises(OutputNotOursError, match=r"thesis\.tex.*overwrite=True"):
        trained.rewrite_base_model(target_class="3SG", output_dir=out)
    assert thesis.read_text() == "\\chapter{mine}" and sorted(os.listdir(out)) == ["thesis.tex"]
    for bad in (exp.root, exp.root.parent, exp.model, exp.model / "sub", exp.root / "cache"):
        with pytest.raises(UnsafePathError, match="experiment"):
            trained.rewrite_base_model(target_class="3SG", output_dir=bad, overwrite=True)
    assert _snapshot(exp.root) == before  # nothing of the experiment changed

    saved = Path(trained.rewrite_base_model(target_class="3SG", output_dir=tmp_path / "fresh"))
    assert (saved / OUTPUT_MARKER).is_file() and (saved / "config.json").is_file()
    trained.rewrite_base_model(target_class="3SG", output_dir=saved)  # ours: replaced without overwrite
    (saved / OUTPUT_MARKER).unlink()  # as an earlier version left it
    trained.rewrite_base_model(target_class="3SG", output_dir=saved)
    with pytest.raises(OutputNotOursError):
        trained.rewrite_base_model(target_class="3SG", output_dir=out)
    assert Path(trained.rewrite_base_model(target_class="3SG", output_dir=out, overwrite=True)) == out
    assert not (out / "thesis.tex").exists()  # only with overwrite=True


@case("safe")
def test_hostile_class_names_create_nothing_outside(trained, tmp_path: Path) -> None:
    from gradiend.rewrite import rewrite_selected

    exp = trained.experiment
    selection = trained.evaluate_decoder(target_class="3SG")["3SG"]
    keys = ["../../X", "<script>alert(1)</script>"]
    selections = dict.fromkeys(keys, selection)
    outside = _snapshot(tmp_path)
    victim = exp.root.parent.parent / "X"
    paths = rewrite_selected(trained.get_model(), selections, keys, keys, feature_classes=list(trained.pair),
                             base_model="b", output_dir=None, default_dir=exp.rewritten, experiment=exp)
    assert [Path(p).parent for p in paths] == [exp.root, exp.root]
    assert [Path(p).name[:-9] for p in paths] == ["_._.._X", "_script_alert_1___script_"]
    assert not victim.exists() and _snapshot(tmp_path) == outside
    paths = rewrite_selected(trained.get_model(), selections, keys, keys, feature_classes=list(trained.pair),
                             base_model="b", output_dir=tmp_path / "out", default_dir=None, experiment=exp)
    assert sorted(p[:-9] for p in os.listdir(tmp_path / "out")) == ["_._.._X", "_script_alert_1___script_"]
    with pytest.raises(UnsafePathError, match="same directories"):
        rewrite_selected(trained.get_model(), dict.fromkeys(["a", "a"], selection), ["a", "a"],
                         ["a", "a"], feature_classes=list(trained.pair), base_model="b",
                         output_dir=tmp_path / "clash", default_dir=None)
    assert not (tmp_path / "clash").exists()


# -- 5. evaluate and rewrite take the lock, without deadlocking inside train() -------------------------------

@case("error")
def test_evaluate_and_rewrite_take_the_lock(trained, tmp_path: Path) -> None:
    exp = trained.experiment
    errors: list[BaseException] = []

    def other_writer() -> None:
        for call in (lambda: trained.evaluate_decoder(target_class="3SG"),
                     lambda: trained.evaluate_encoder(max_size=4),
                     lambda: trained.rewrite_base_model(target_class="3SG", output_dir=tmp_path / "r")):
            try:
                call()
            except RuntimeError as err:
                errors.append(err)

    with exp.lock():
        thread = threading.Thread(target=other_writer)
        thread.start()
        thread.join()
        trained.evaluate_decoder(target_class="3SG")  # the holder's own thread writes (as inside train())
    assert len(errors) == 3 and all("in use by another run" in str(e) for e in errors)
    assert not (tmp_path / "r").exists()
    trained.rewrite_base_model(target_class="3SG", output_dir=tmp_path / "r")  # free again


# -- 4. crash leftovers ------------------------------------------------------------------------------------

_KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from gradiend.experiment import ExperimentDir, atomic_write_json

    root, moment = Path(sys.argv[1]), sys.argv[2]
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if moment == "between-renames" and str(dst).endswith(".old"):
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
    if moment == "after-swap":
        import gradiend.experiment as e
        e._remove_tree = lambda path: os.kill(os.getpid(), signal.SIGKILL)
    exp = ExperimentDir(root)
    with exp.lock():
        with exp.replace_dir("model") as tmp:
            atomic_write_json(tmp / "training.json", {"version": "new"})
            if moment == "mid-write":
                (tmp / "model.safetensors").write_bytes(b"partial")
                fd = os.open(root / ".decoder_grid.json.0123abcd.tmp", os.O_CREAT | os.O_WRONLY)
                os.kill(os.getpid(), signal.SIGKILL)
""")


def _kill_run(root: Path, moment: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _KILLER, str(root), moment], env=env, timeout=60,
                          capture_output=True, text=True)
    assert done.returncode == -9, done.stderr


def _old_experiment(root: Path) -> None:
    with atomic_directory(root / "model") as tmp:
        atomic_write_json(tmp / "training.json", {"version": "old"})
        (tmp / "gradiend_config.json").write_text("{}")
    _write(root, "notes.tmp", "user")
    _write(root, ".notes.tmp", "user")


@pytest.mark.parametrize(("moment", "version"), [("between-renames", "old"), ("after-swap", "new"),
                                                 ("mid-write", "old")])
@case("fault")
def test_a_run_killed_mid_swap_leaves_a_model_after_the_next_start(tmp_path: Path, moment: str, version: str) -> None:
    root = tmp_path / "exp"
    _old_experiment(root)
    _kill_run(root, moment)
    leftovers = [p.name for p in root.iterdir() if p.name.endswith((".old", ".tmp")) and "notes" not in p.name]
    assert leftovers  # the kill left something behind
    with ExperimentDir(root).lock():
        assert json.loads((root / "model" / "training.json").read_text()) == {"version": version}
        assert sorted(p.name for p in root.iterdir()) == [".gradiend.lock", ".notes.tmp", "model", "notes.tmp"]
    assert sorted(os.listdir(root / "model")) == sorted([OUTPUT_MARKER, "training.json"]
                                                          + (["gradiend_config.json"] if version == "old" else []))
    assert (root / "notes.tmp").read_text() == (root / ".notes.tmp").read_text() == "user"


@case("fault")
def test_a_swap_of_a_live_process_is_left_alone(tmp_path: Path) -> None:
    from gradiend.experiment import recover_interrupted

    aside = tmp_path / f".model.{os.getpid()}-0123abcd.old"
    _write(aside, "training.json")
    assert recover_interrupted(tmp_path) == [] and aside.is_dir() and not (tmp_path / "model").exists()
