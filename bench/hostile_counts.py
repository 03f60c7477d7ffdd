"""Count the hostile inputs and faults that tests/test_hostile*.py try, and how each ended (issue 18's table).

    python bench/hostile_counts.py              # run the tests (a few minutes on 2 cores) and print the table
    python bench/hostile_counts.py --collect    # only list the cases (no outcome)
    python bench/hostile_counts.py --json       # the table as JSON

Every test there carries a kind (`tests/hostile_cases.py`): `error` (a clear error is expected), `safe`
(made harmless without an error), `data` (the user's files and earlier results survive) and `fault` (a
kill, crash or full disk loses nothing). Each collected item is one case; a test that covers several
scenarios records how many with `record_property("cases", n)`. A failing `error`/`safe` case counts as a
silent or raw result, a failing `data`/`fault` case as data lost. Extra arguments go to pytest.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
KINDS = ("error", "safe", "data", "fault")
HEADINGS = {"error": "clear errors", "safe": "made harmless", "data": "user data intact", "fault": "faults survived"}


@dataclass
class Tally:
    """Cases per kind and outcome, and the tests that carry no kind."""

    cases: dict[str, dict[str, int]] = field(default_factory=lambda: {k: {"passed": 0, "failed": 0, "skipped": 0,
                                                                          "collected": 0} for k in KINDS})
    tests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    untagged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        passed = {k: self.cases[k]["passed"] for k in KINDS}
        failed = {k: self.cases[k]["failed"] for k in KINDS}
        return {"tests": sum(self.tests.values()), "inputs_tried": sum(c["collected"] for c in self.cases.values()),
                **{HEADINGS[k].replace(" ", "_"): passed[k] for k in KINDS},
                "silent_or_raw_results": failed["error"] + failed["safe"],
                "data_lost": failed["data"] + failed["fault"],
                "skipped": sum(c["skipped"] for c in self.cases.values()),
                "by_kind": self.cases, "tests_by_kind": self.tests, "untagged": self.untagged, "failed": self.failed}


class CountingPlugin:
    """Reads each test's kind and case count; records the outcome of its call phase."""

    def __init__(self) -> None:
        self.tally = Tally()
        self._kinds: dict[str, str] = {}

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            kind = getattr(getattr(item, "function", None), "hostile_kind", None)
            if kind is None:
                self.tally.untagged.append(item.nodeid)
                continue
            self._kinds[item.nodeid] = kind
            self.tally.tests[kind] += 1
            self.tally.cases[kind]["collected"] += 1

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        kind = self._kinds.get(report.nodeid)
        if kind is None or not (report.when == "call" or (report.when == "setup" and not report.passed)):
            return
        extra = dict(report.user_properties).get("cases", 1)
        outcome = "failed" if report.failed else "skipped" if report.skipped else "passed"
        self.tally.cases[kind][outcome] += int(extra)
        self.tally.cases[kind]["collected"] += int(extra) - 1
        if report.failed:
            self.tally.failed.append(report.nodeid)


def _table(summary: dict[str, Any], ran: bool) -> str:
    rows = [f"{'kind':<8}{'tests':>7}{'cases':>7}" + (f"{'passed':>8}{'failed':>8}" if ran else "")]
    for kind in KINDS:
        counts = summary["by_kind"][kind]
        rows.append(f"{kind:<8}{summary['tests_by_kind'][kind]:>7}{counts['collected']:>7}"
                    + (f"{counts['passed']:>8}{counts['failed']:>8}" if ran else ""))
    lines = ["\n".join(rows), "", f"inputs and faults tried: {summary['inputs_tried']} (in {summary['tests']} tests)"]
    if ran:
        lines += [f"clear errors:           {summary['clear_errors']}",
                  f"made harmless:          {summary['made_harmless']}",
                  f"user data intact:       {summary['user_data_intact']}",
                  f"faults survived:        {summary['faults_survived']}",
                  f"silent or raw results:  {summary['silent_or_raw_results']} (target 0)",
                  f"data lost:              {summary['data_lost']} (target 0)"]
        if summary["skipped"]:
            lines.append(f"skipped:                {summary['skipped']}")
        lines += [f"FAILED: {nodeid}" for nodeid in summary["failed"]]
    lines += [f"untagged test (no kind): {nodeid}" for nodeid in summary["untagged"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", action="store_true", help="list the cases without running them")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    args, extra = parser.parse_known_args(argv)
    plugin = CountingPlugin()
    files = sorted(str(p) for p in (REPO / "tests").glob("test_hostile*.py"))
    options = ["-q", "-p", "no:cacheprovider", "-m", "not integration", *(["--collect-only"] if args.collect else [])]
    code = pytest.main([*options, *extra, *files], plugins=[plugin])
    summary = plugin.tally.summary()
    print(json.dumps(summary, indent=2) if args.json else _table(summary, ran=not args.collect))
    return int(code) if code not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED) else 0


if __name__ == "__main__":
    sys.exit(main())
