"""Import cost of gradiend on top of torch, timed in fresh interpreters.

Each fresh Python process times `import torch`, then the statement under test, with
`perf_counter` (interpreter start-up excluded). Statements run `--repeats` times, interleaved so
that load drifts hit all alike; the script prints medians, the modules each statement added and
the ratio of `import torch; <statement>` to `import torch` alone.

    python bench/bench_import.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

STATEMENTS = ("pass", "import gradiend", "from gradiend import TextPredictionTrainer")
_PROBE = ("import sys, time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); n = len(sys.modules); "
          "{stmt}; print(t1 - t0, time.perf_counter() - t1, len(sys.modules) - n)")


def _run(stmt: str) -> tuple[float, float, int]:
    """(torch seconds, statement seconds, modules the statement added) in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", _PROBE.format(stmt=stmt)], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per statement (median)")
    repeats = parser.parse_args().repeats
    samples: dict[str, list[tuple[float, float, int]]] = {s: [] for s in STATEMENTS}
    for _ in range(repeats):
        for stmt in STATEMENTS:
            samples[stmt].append(_run(stmt))
    torch_s = statistics.median(t for runs in samples.values() for t, _, _ in runs)
    print(f"import torch: {torch_s:.3f} s (median of {repeats * len(STATEMENTS)} fresh processes)")
    print(f"{'after import torch':45s} {'median s':>9s} {'modules':>8s} {'ratio':>6s}")
    for stmt, runs in samples.items():
        extra = statistics.median(s for _, s, _ in runs)
        modules = max(m for _, _, m in runs)
        print(f"{stmt:45s} {extra:9.3f} {modules:8d} {(torch_s + extra) / torch_s:6.2f}")


if __name__ == "__main__":
    main()
