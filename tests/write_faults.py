"""Driver of the fault-injection test (tests/test_hostile.py): kill -9 a short CLI pipeline at every write point.

Run as `python tests/write_faults.py PLAN.json`. The plan names a `base` experiment directory (an earlier
finished run with a user's file in it, made first by `base_steps` if given), the pipeline `steps` (CLI
argument lists in which `{exp}` stands for the experiment directory) and a `work` directory. The driver
imports the library once and forks one child per run, so each run costs its work, not the imports:

- `work/ref`: the pipeline, uninterrupted, on a copy of `base` (its write points go to `ref.log`);
- for every write point k: a copy of `base` in `work/trial_<k>`, the pipeline SIGKILLed at write point k
  (gradiend's test hook, see `gradiend.experiment`), the killed state copied to `work/killed_<k>`, then
  the pipeline rerun in `work/trial_<k>`.

It writes `work/summary.json` (write points, the signal or exit status of every child); the test judges
the directories.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

from gradiend.experiment import WRITE_HOOK_ENV, WRITE_KILL_ENV


def _preload() -> None:
    """Import what the pipeline imports, once, before any fork (no torch computation in this process)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot
    import transformers.models.bert.modeling_bert  # noqa: F401

    import gradiend.cli
    import gradiend.report
    import gradiend.trainer.text.prediction.trainer  # noqa: F401


def _pipeline(steps: list[list[str]], exp: Path) -> int:
    from gradiend.cli import main

    for step in steps:
        code = main([part.replace("{exp}", str(exp)) for part in step])
        if code:
            return code
    return 0


def _start(steps: list[list[str]], exp: Path, log: Path, kill: int | None) -> int:
    """Fork a child that runs the pipeline with the write hook logging to `log` (killed at write `kill`)."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        output = os.open(log.with_suffix(".out"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.environ[WRITE_HOOK_ENV] = str(log)
        if kill is None:
            os.environ.pop(WRITE_KILL_ENV, None)
        else:
            os.environ[WRITE_KILL_ENV] = str(kill)
        import torch

        torch.set_num_threads(1)
        code = _pipeline(steps, exp)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _outcome(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.WEXITSTATUS(status)}"


def _fresh_copy(base: Path, exp: Path) -> None:
    shutil.copytree(base, exp, symlinks=True)


class _Trials:
    """Run trials two at a time: each is (kill at k, copy the killed state, rerun)."""

    def __init__(self, plan: dict, work: Path) -> None:
        self.steps, self.base, self.work = plan["steps"], Path(plan["base"]), work
        self.running: dict[int, tuple[int, str]] = {}  # pid -> (k, phase)
        self.outcomes: dict[str, dict[str, str]] = {}

    def begin(self, k: int) -> None:
        exp = self.work / f"trial_{k}"
        _fresh_copy(self.base, exp)
        pid = _start(self.steps, exp, self.work / f"trial_{k}.log", k)
        self.running[pid] = (k, "killed")

    def wait_one(self) -> None:
        pid, status = os.wait()
        k, phase = self.running.pop(pid)
        self.outcomes.setdefault(str(k), {})[phase] = _outcome(status)
        if phase == "killed":
            shutil.copytree(self.work / f"trial_{k}", self.work / f"killed_{k}", symlinks=True)
            rerun = _start(self.steps, self.work / f"trial_{k}", self.work / f"rerun_{k}.log", None)
            self.running[rerun] = (k, "rerun")


def main(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    work = Path(plan["work"])
    _preload()
    if plan.get("base_steps"):  # the earlier run the pipeline replaces
        _, status = os.waitpid(_start(plan["base_steps"], Path(plan["base"]), work / "base.log", None), 0)
        if _outcome(status) != "exit 0":
            raise SystemExit(f"the base run failed: {_outcome(status)}")
    _fresh_copy(Path(plan["base"]), work / "ref")
    _, status = os.waitpid(_start(plan["steps"], work / "ref", work / "ref.log", None), 0)
    summary: dict = {"ref": _outcome(status)}
    points = len((work / "ref.log").read_text().splitlines()) if (work / "ref.log").is_file() else 0
    summary["write_points"] = points
    trials = _Trials(plan, work)
    pending = plan.get("only") or list(range(1, points + 1))
    while pending or trials.running:
        while pending and len(trials.running) < plan.get("parallel", 2):
            trials.begin(pending.pop(0))
        trials.wait_one()
    summary["trials"] = trials.outcomes
    (work / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
