"""The `gradiend` command line: end to end through subprocesses on the tiny BERT, and its argument handling."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_rows

from gradiend import cli
from gradiend.arguments import TrainingArguments
from gradiend.records import TrainingRecord

NEUTRAL = ["the man walked home and was happy .", "the sea was very old and the ship was little .",
           "the woman saw the house at night .", "then the children talked of the letter again ."]


def gradiend(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    env.pop("DISPLAY", None)
    return subprocess.run([sys.executable, "-m", "gradiend", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env=env)


@pytest.fixture()
def inputs(tmp_path, tiny_mlm_dir) -> Path:
    """A YAML config beside a data CSV and a neutral-text CSV (relative paths resolve against the config)."""
    make_rows().to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "neutral.csv").write_text("text\n" + "\n".join(NEUTRAL) + "\n", encoding="utf-8")
    (tmp_path / "run.yaml").write_text(f"""
model: {tiny_mlm_dir}
data: data.csv
eval_neutral_data: neutral.csv
target_classes: [3SG, 3PL]
experiment_dir: {tmp_path / 'exp'}
training_args:
  max_steps: 4
  eval_steps: 2
  train_batch_size: 4
  learning_rate: 1e-3        # YAML 1.1 reads this as a string; the CLI converts it
  scale_estimation_batches: 2
  params: [encoder.layer.1.*]
  decoder_eval_lrs: [1.0, 0.01]
""", encoding="utf-8")
    return tmp_path


def test_train_evaluate_rewrite_report_end_to_end(inputs, capsys) -> None:
    exp = inputs / "exp"
    done = gradiend("train", str(inputs / "run.yaml"), "--seed", "1", "--quiet", cwd=inputs)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(exp)  # --quiet: only the result
    assert "%|" not in done.stderr  # no progress bars (ours or the Hugging Face ones)
    stats = json.loads((exp / "model" / "training.json").read_text())
    assert stats["training_args"]["seed"] == 1 and stats["training_args"]["learning_rate"] == 0.001
    assert stats["training_args"]["params"] == ["encoder.layer.1.*"]
    assert stats["training_stats"]["global_step"] == 4
    run_config = json.loads((exp / "run_config.json").read_text())
    assert run_config["data"] == str(inputs / "data.csv") and run_config["target_classes"] == ["3SG", "3PL"]
    assert isinstance(run_config["data_options"]["random_state"], int)  # the drawn split can be rebuilt
    assert (exp / "training_convergence.png").read_bytes().startswith(b"\x89PNG")

    early = gradiend("rewrite", str(exp), "--target-class", "3SG", "--out", str(inputs / "x"))
    assert early.returncode == cli.EXIT_MISSING
    assert f"run `gradiend evaluate {exp} --decoder --target-class 3SG` first" in early.stderr

    done = gradiend("evaluate", str(exp), "--target-class", "3SG", "--json", "-q")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result["encoder"]["mean_by_class"]) == {"3SG", "3PL"}
    assert result["decoder"]["3SG"]["learning_rate"] in (1.0, 0.01)
    assert Path(result["encoder"]["plot_path"]).is_file()
    assert Path(result["decoder"]["3SG"]["plot_path"]) == exp / "decoder_probability_shifts_3SG.png"
    assert (exp / "encoded_values_split_test.csv").is_file() and (exp / "decoder_grid.json").is_file()

    done = gradiend("rewrite", str(exp), "--target-class", "3SG", "--out", str(inputs / "rewritten"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(inputs / "rewritten")
    assert (inputs / "rewritten" / "config.json").is_file() and (inputs / "rewritten" / "README.md").is_file()
    _rewrite_never_deletes_the_users_files(exp, inputs, capsys)

    done = gradiend("report", str(exp))
    assert done.returncode == 0, done.stderr
    text = (exp / "report.html").read_text(encoding="utf-8")
    assert done.stdout.strip() == str(exp / "report.html")
    assert "<title>GRADIEND report: 3SG vs 3PL on" in text and text.count("data:image/png;base64,") == 3


def _rewrite_never_deletes_the_users_files(exp: Path, inputs: Path, capsys: pytest.CaptureFixture) -> None:
    """`gradiend rewrite --out` (in process): a user's directory needs --overwrite, the experiment is refused."""
    rewrite = ["rewrite", str(exp), "--target-class", "3SG", "-q", "--out"]
    thesis = inputs / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("mine")
    capsys.readouterr()
    assert cli.main([*rewrite, str(thesis)]) == cli.EXIT_UNWRITABLE
    err = capsys.readouterr().err
    assert f"Refusing to replace {thesis}" in err and "thesis.tex" in err and "--overwrite" in err
    assert (thesis / "thesis.tex").read_text() == "mine"
    before = sorted(p.name for p in exp.iterdir())
    for bad in (exp, exp / "model", inputs):
        assert cli.main([*rewrite, str(bad), "--overwrite"]) == cli.EXIT_USAGE
        assert "experiment" in capsys.readouterr().err
    assert sorted(p.name for p in exp.iterdir()) == before and (thesis / "thesis.tex").is_file()
    assert cli.main([*rewrite, str(inputs / "rewritten")]) == cli.EXIT_OK  # ours: replaced
    assert cli.main([*rewrite, str(thesis), "--overwrite"]) == cli.EXIT_OK
    assert not (thesis / "thesis.tex").exists() and (thesis / "config.json").is_file()


def test_cli_errors_through_the_console(tmp_path) -> None:
    typo = gradiend("train", "--max-step", "3", "--lerning-rate", "0.1")
    assert typo.returncode == cli.EXIT_USAGE
    assert "--max-step (did you mean --max-steps?)" in typo.stderr
    assert "--lerning-rate (did you mean --learning-rate?)" in typo.stderr
    missing = gradiend("evaluate", str(tmp_path))
    assert missing.returncode == cli.EXIT_MISSING
    assert "run `gradiend train CONFIG.yaml` first" in missing.stderr and "Traceback" not in missing.stderr


# -- in-process: argument handling ---------------------------------------------------------------------------
def test_every_training_argument_has_a_documented_flag() -> None:
    parser = cli._subparser(cli.build_parser(), "train")
    help_text = parser.format_help()
    flags = set(parser.known_flags())
    for field in dataclasses.fields(TrainingArguments):
        assert cli.flag_name(field.name) in flags, field.name
        is_bool = cli._without_none(cli._field_types()[field.name]) == (bool,)
        assert ("--no-" + cli.flag_name(field.name)[2:] in flags) == is_bool, field.name
    flat = " ".join(help_text.split())
    assert "Optimisation: batch sizes, optimiser, schedule, seed and sequence length:" in help_text
    assert "TrainingArguments.optimization (OptimizationArgs)" in flat
    assert "AdamW learning rate of the GRADIEND [float, > 0, finite; default 0.001]" in flat
    assert "--activation-encoder {tanh,hardtanh}" in flat and "--objective {mlm,clm,clm_mlm_head,none}" in flat
    assert "exit codes:" in help_text


def test_help_comes_from_metadata_not_source(monkeypatch) -> None:
    """Help, types, defaults, choices and groups survive when the source code cannot be read."""
    import inspect

    def no_source(obj: object) -> str:
        raise OSError("no source available")

    monkeypatch.setattr(inspect, "getsource", no_source)
    monkeypatch.setattr(inspect, "getsourcelines", no_source)
    help_text = " ".join(cli._subparser(cli.build_parser(), "train").format_help().split())
    for title in ("Output:", "GRADIEND:", "Optimisation:", "Prediction objective:", "Evaluation:", "Convergence:",
                  "Multiple seeds:", "Gradient cache:", "Pruning:", "Decoder evaluation:", "Miscellaneous:"):
        assert title in help_text, title
    assert "train up to this many seeds [int, > 0; default 1]" in help_text
    assert "--saved-seed-runs {best_only,all_convergent,all_tried}" in help_text
    assert "[float | None, in [0, 1]; default 0.5]" in help_text
    assert "--do-eval, --no-do-eval evaluate on the validation split during training [bool; default True]" in help_text
    assert "unused: accepted for reference compatibility" in help_text
    assert not hasattr(cli, "FIELD_DOCS") and not hasattr(cli, "field_comments")


def test_cli_and_configuration_modules_do_not_import_torch() -> None:
    """`--version`, `--help` and `train --help` from cli.py and arguments.py alone load no heavy module.

    The package `__init__` is bypassed here so that only these two modules are judged.
    """
    probe = ("import sys, types\n"
             "package = types.ModuleType('gradiend'); package.__path__ = [sys.argv[1]]\n"
             "sys.modules['gradiend'] = package\n"
             "from gradiend import cli\n"
             "for argv in (['--version'], ['--help'], ['train', '--help']):\n"
             "    try:\n"
             "        cli.main(argv)\n"
             "    except SystemExit as stop:\n"
             "        assert stop.code == 0, stop.code\n"
             "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'pandas', 'yaml') if m in sys.modules)\n"
             "print('HEAVY', heavy)\n")
    done = subprocess.run([sys.executable, "-c", probe, str(Path(cli.__file__).parent)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "gradiend " in done.stdout and "HEAVY []" in done.stdout


def test_version_command_does_not_import_torch() -> None:
    """The console command end to end (this also needs the lazy package `__init__`)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "gradiend", "--version"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0 and done.stdout.strip().startswith("gradiend ")
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "gradiend.cli" in imported
    assert not {"torch", "transformers"} & imported


def test_flags_parse_to_field_types(tmp_path) -> None:
    ns = cli.parse_args(["train", "--max_steps", "5", "--learning-rate=2e-3", "--no-do-eval", "--params", "a.*", "b",
                         "--use-cache", "--seed", "none", "--decoder-eval-lrs", "1", "0.5",
                         "--pre-prune-config", "{topk: 0.2}", "--torch-dtype", "bfloat16", "-q"])
    values = {k[3:]: v for k, v in vars(ns).items() if k.startswith("ta_")}
    assert values == {"max_steps": 5, "learning_rate": 2e-3, "do_eval": False, "params": ["a.*", "b"],
                      "use_cache": True, "seed": None, "decoder_eval_lrs": [1.0, 0.5],
                      "pre_prune_config": {"topk": 0.2}, "torch_dtype": "bfloat16"}
    assert ns.quiet
    assert cli.parse_args(["train", "--use-cache", "always"]).ta_use_cache == "always"
    with pytest.raises(SystemExit) as info:
        cli.parse_args(["train", "--max-steps", "many"])
    assert info.value.code == cli.EXIT_USAGE


def test_text_booleans_lists_and_choices_on_flags() -> None:
    def values(*argv: str) -> dict:
        ns = cli.parse_args(["train", *argv])
        return {k[3:]: v for k, v in vars(ns).items() if k.startswith("ta_")}

    for word, expected in (("true", True), ("Yes", True), ("on", True), ("1", True),
                           ("false", False), ("NO", False), ("off", False), ("0", False)):
        assert values(f"--do-eval={word}") == {"do_eval": expected}, word
        assert values("--bias_decoder", word) == {"bias_decoder": expected}, word
    assert values("--no-do-eval", "--show-progress") == {"do_eval": False, "show_progress": True}
    ns = cli.parse_args(["train", "--do-eval", "run.yaml"])  # a non-boolean word stays the config file
    assert ns.ta_do_eval is True and ns.config == "run.yaml"
    assert values("--use-cache", "false", "--objective", "none", "--params", "none", "--decoder-eval-lrs",
                  "[1, 0.5]") == {"use_cache": False, "objective": None, "params": None,
                                  "decoder_eval_lrs": [1.0, 0.5]}
    assert values("--metadata", "{a: [1, 2]}") == {"metadata": {"a": [1, 2]}}
    for bad in (["--activation-encoder", "relu"], ["--decoder-eval-lrs", "1", "x"], ["--seed", "1.5"],
                ["--use-cache", "sometimes"], ["--learning-rate", "fast"]):
        with pytest.raises(SystemExit) as info:
            cli.parse_args(["train", *bad])
        assert info.value.code == cli.EXIT_USAGE, bad


def test_config_files_accept_sections_and_text_values() -> None:
    _, args = cli.split_config({"optimization": {"learning_rate": "1e-4", "max_steps": "5"},
                                "training_args": {"seeds": {"max_seeds": 2}, "do_eval": "false"},
                                "show_progress": "off", "seed": "null", "use_cache": "always"})
    assert args == {"learning_rate": 1e-4, "max_steps": 5, "max_seeds": 2, "do_eval": False,
                    "show_progress": False, "seed": None, "use_cache": "always"}
    assert TrainingArguments(**args).optimization.learning_rate == 1e-4
    with pytest.raises(cli.UsageError, match=r"optimization\.learnig_rate.*did you mean learning_rate\?"):
        cli.split_config({"optimization": {"learnig_rate": 1}})
    with pytest.raises(cli.UsageError, match="did you mean optimization"):
        cli.split_config({"optimisation": {"learning_rate": 1}})
    with pytest.raises(cli.UsageError, match="do_eval: cannot read 'maybe' as bool"):
        cli.split_config({"do_eval": "maybe"})


def test_config_files(tmp_path, capsys) -> None:
    (tmp_path / "data.csv").write_text("x")
    trainer, args = cli.split_config({"data": "data.csv", "model": "bert-base-uncased",
                                      "args": {"learning_rate": "1e-4", "decoder_eval_lrs": ["1e-2", 1]},
                                      "max_steps": 7}, tmp_path / "c.yaml")
    assert trainer == {"data": str(tmp_path / "data.csv"), "model": "bert-base-uncased"}
    assert args == {"learning_rate": 1e-4, "decoder_eval_lrs": [0.01, 1], "max_steps": 7}
    assert TrainingArguments(**args).learning_rate == 1e-4
    with pytest.raises(cli.UsageError, match=r"Unknown setting 'learnig_rate'.*did you mean learning_rate\?"):
        cli.split_config({"learnig_rate": 1})
    with pytest.raises(cli.UsageError, match="cannot read 'fast' as float"):
        cli.split_config({"learning_rate": "fast"})
    (tmp_path / "bad.yaml").write_text("max_steps: [1\n")
    assert cli.main(["train", str(tmp_path / "bad.yaml")]) == cli.EXIT_USAGE
    assert "is not valid YAML" in capsys.readouterr().err
    (tmp_path / "c.json").write_text(json.dumps({"model": "m", "data": "d", "max_steps": 0,
                                                 "experiment_dir": str(tmp_path / "e")}))
    assert cli.main(["train", str(tmp_path / "c.json")]) == cli.EXIT_USAGE
    assert "Invalid TrainingArguments: max_steps must be a positive integer" in capsys.readouterr().err
    assert cli.main(["train", "--model", "m"]) == cli.EXIT_USAGE
    assert "needs data" in capsys.readouterr().err
    assert cli.main(["train", str(tmp_path / "nope.yaml")]) == cli.EXIT_MISSING


def test_train_settings_flags_win_over_the_config_file(tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model: from-config\ndata: d\nrun_id: r\nmax_steps: 7\nlearning_rate: 1e-4\n")
    ns = cli.parse_args(["train", str(config), "--model", "from-flag", "--max-steps", "9",
                         "--experiment-dir", str(tmp_path / "e"), "-q"])
    trainer_inputs, arg_values = cli._train_settings(ns)
    assert trainer_inputs == {"model": "from-flag", "data": "d", "run_id": "r"}
    assert arg_values == {"max_steps": 9, "learning_rate": 1e-4, "experiment_dir": str(tmp_path / "e"),
                          "show_progress": False}  # --quiet turns progress off unless set explicitly
    with pytest.raises(cli.UsageError, match="needs experiment_dir"):
        cli._train_settings(cli.parse_args(["train", "--model", "m", "--data", "d"]))


def test_output_errors_in_process(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = cli.main(["train", "--model", "m", "--data", "d", "--experiment-dir", str(blocker / "exp")])
    assert code == cli.EXIT_UNWRITABLE
    assert f"Cannot write {blocker / 'exp'}: {blocker} is a file" in capsys.readouterr().err
    (tmp_path / "exp" / "model").mkdir(parents=True)
    assert cli.main(["report", str(tmp_path / "exp")]) == cli.EXIT_MISSING
    assert "run `gradiend train CONFIG.yaml` first" in capsys.readouterr().err


def test_demo_setups_and_report_text() -> None:
    from gradiend.demo import DEMOS, DemoResult, format_report, run_demo

    assert {k: (v.classes, v.target) for k, v in DEMOS.items()} == {"mlm": (("3SG", "3PL"), "3SG"),
                                                                    "clm": (("M", "F"), "F")}
    assert cli.parse_args(["demo", "--model", "clm"]).model == "clm"
    with pytest.raises(SystemExit):
        cli.parse_args(["demo", "--model", "gpt"])
    with pytest.raises(ValueError, match="Unknown demo model 'gpt'"):
        run_demo(model="gpt")
    encoder = {"correlation": 0.9, "mean_by_class": {"M": 0.8, "F": -0.7}, "neutral_mean_by_type": {"x": 0.1},
               "accuracy": 0.95}
    decoder = {"base_value": 0.1, "value": 0.3, "feature_factor": 1.0, "learning_rate": 3.0, "base_lms": 0.5,
               "lms": 0.49}
    text = format_report(DemoResult("exp", "exp/model", encoder, TrainingRecord(), decoder, "exp/rewritten_F",
                                    {"training": 1.0, "encoder_evaluation": 1.0, "decoder_evaluation": 1.0,
                                     "total": 3.0}, ["a.png"], DEMOS["clm"].description, "F", "M", "exp/report.html"))
    assert "P(F) on M rows: rewritten" in text and "report: exp/report.html" in text
    assert text.startswith("GRADIEND demo: M (he) vs F (she) on the embedded SmolLM2 causal LM")


def test_main_in_process_leaves_logging_and_malloc_tuning_as_found(tmp_path) -> None:
    import logging

    from gradiend import allocator

    package_logger = logging.getLogger("gradiend")
    handlers, level, tuned = list(package_logger.handlers), package_logger.level, allocator.ENABLED
    for _ in range(2):
        assert cli.main(["report", str(tmp_path / "missing"), "--quiet"]) == cli.EXIT_MISSING
    assert package_logger.handlers == handlers and package_logger.level == level
    assert allocator.ENABLED is tuned


def test_config_file_output_paths_resolve_against_the_file(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    config = folder / "run.yaml"
    config.write_text("experiment_dir: runs/x\noptimization: {learning_rate: 0.01}\n"
                      f"training_args: {{seed_runs_dir: seeds, output_dir: {tmp_path / 'abs'}}}\n")
    monkeypatch.chdir(tmp_path)  # another working directory than the file's
    _, args = cli.split_config(cli.read_config(config), config)
    assert args["experiment_dir"] == str(folder / "runs" / "x")
    assert args["seed_runs_dir"] == str(folder / "seeds") and args["output_dir"] == str(tmp_path / "abs")
    assert args["learning_rate"] == 0.01


def test_class_options_reach_training_and_reattach(tmp_path, tiny_mlm_dir) -> None:
    """--class-merge-map / --all-classes train the merged pair, and run_config.json reattaches with them."""
    import pandas as pd

    from gradiend import Trainer

    rows = make_rows(repeat=2)
    obj = rows[rows["label_class"] == "3SG"].assign(label_class="OBJ", label="him")
    pd.concat([rows, obj], ignore_index=True).to_csv(tmp_path / "data.csv", index=False)
    exp = tmp_path / "exp"
    code = cli.main(["train", "--model", tiny_mlm_dir, "--data", str(tmp_path / "data.csv"), "--experiment-dir",
                     str(exp), "--class-merge-map", '{"singular": ["3SG", "OBJ"], "plural": ["3PL"]}',
                     "--all-classes", "singular", "plural", "--max-steps", "2", "--train-batch-size", "4",
                     "--scale-estimation-batches", "1", "--params", "encoder.layer.1.*", "--no-do-eval", "-q",
                     "--no-plots"])
    assert code == 0
    run_config = json.loads((exp / "run_config.json").read_text())
    assert run_config["class_merge_map"] == {"singular": ["3SG", "OBJ"], "plural": ["3PL"]}
    assert run_config["all_classes"] == run_config["target_classes"] == ["singular", "plural"]
    trainer = Trainer.from_experiment(exp, show_progress=False)
    assert trainer.pair == ("singular", "plural")
