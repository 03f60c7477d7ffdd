"""The `gradiend` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gradiend import __version__


def _demo(ns: argparse.Namespace) -> int:
    from gradiend.demo import format_report, run_demo

    result = run_demo(experiment_dir=ns.experiment_dir, max_steps=ns.steps, train_batch_size=ns.batch_size,
                      eval_steps=ns.eval_steps, learning_rate=ns.learning_rate, seed=ns.seed,
                      show_progress=not ns.quiet, plots=not ns.no_plots)
    print(format_report(result))
    return 0


def _embedded(ns: argparse.Namespace) -> int:
    from gradiend.embedded import embedded_model_path

    print(embedded_model_path(ns.kind))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradiend", description="Learn, measure and rewrite a feature neuron "
                                     "from a language model's gradients.")
    parser.add_argument("--version", action="version", version=f"gradiend {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="offline demo: 3SG vs 3PL pronouns on the embedded masked LM")
    demo.add_argument("--experiment-dir", default="runs/demo")
    demo.add_argument("--steps", type=int, default=100)
    demo.add_argument("--batch-size", type=int, default=8)
    demo.add_argument("--eval-steps", type=int, default=25)
    demo.add_argument("--learning-rate", type=float, default=1e-3)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--no-plots", action="store_true", help="skip the matplotlib plots")
    demo.set_defaults(func=_demo)
    emb = sub.add_parser("embedded-model", help="build (once) and print the path of an embedded default model")
    emb.add_argument("kind", nargs="?", default="mlm")
    emb.set_defaults(func=_embedded)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    package_logger = logging.getLogger("gradiend")  # the package's logger only, never the root
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO if ns.verbose else logging.WARNING)
    return ns.func(ns)


if __name__ == "__main__":
    sys.exit(main())
