"""Edit frontier: how far a rewrite moves the target probability for how much language-modelling score.

Trains one GRADIEND (embedded model, shipped feature, `--lr`, `--steps` at batch 8) and scores decoder
grids for each decoder variant × top fraction q:

    decoder  trained     the decoder as trained (`decoder_fit="trained"`)
             class_mean  dec(±1) set to the class-mean training targets (`gradiend.step.class_mean_decoder`),
                         what the library saves by default (`decoder_fit="class_means"`); the sums are taken
                         here by a bench-only loop subclass, so one training run gives both variants
    q        the fraction of coordinates the decoder weights most that the update keeps
             (`gradiend.decoder_eval.keep_top_decoder_fraction`); 1 = the full update

One table row per candidate: shift ratio = P(target class) on the other class's rows / base, and
LMS / base LMS; `kept` marks LMS ≥ 0.99·base and `*` the selection (largest shift among the kept).
`--search grid` scores every learning rate (the whole frontier), `adaptive` only up to the LMS bound.

    python bench/edit_frontier.py --feature pronouns --fractions 1,0.1,0.01,0.001
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def train(bench: Any, ns: argparse.Namespace) -> tuple[Any, dict[str, Any], Any]:
    """The trained model, its best state (the decoder as trained) and the class-mean targets of its training rows."""
    from unittest import mock

    from bench.validity import MODELS
    from gradiend import TrainingArguments, training
    from gradiend.step import ClassTargetMeans

    sums: list[ClassTargetMeans] = []

    class Loop(training.TrainingLoop):
        def _update(self, step: int, slot: int, labels: Any) -> float:
            y = self._step_inputs(slot)[1]
            if not sums:
                sums.append(ClassTargetMeans(y.shape[1], y.device))
            sums[0].add(y, labels)
            return super()._update(step, slot, labels)

    args = TrainingArguments(experiment_dir=ns.workdir, train_batch_size=8, max_steps=ns.steps, eval_steps=25,
                             learning_rate=ns.lr, seed=0, data_seed=0, show_progress=False,
                             encoder_eval_train_max_size=60, eval_batch_size=16, decoder_fit="trained",
                             **MODELS[ns.model].args)
    model = bench.template.with_new_gradiend(0)
    with mock.patch.object(training, "TrainingLoop", Loop):
        outcome = training.train_gradiend(model, bench.train_rows, bench.eval_rows, bench.pair, args,
                                          gradient_store=bench.store)
    return model, {k: v.clone() for k, v in outcome.state.items()}, sums[0]


def frontier(model: Any, bench: Any, cls: str, search: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every scored candidate as (id, shift ratio, LMS/base) and the selection."""
    from gradiend.decoder_eval import DecoderRequest, evaluate_decoder, other_class

    other = other_class(bench.pair, cls)
    result = evaluate_decoder(model, bench.rows, bench.pair, DecoderRequest([cls], search=search, show_progress=False))
    base = result["grid"][0]
    p0, lms0 = base["probs"][other][cls], base["lms"]
    rows = [{"id": r["id"], "learning_rate": r["learning_rate"], "shift": r["probs"][other][cls] / p0,
             "lms_ratio": (r["lms"] if r["lms"] is not None else r["lms_at_least"]) / lms0,
             "lms_inferred": r["lms"] is None} for r in result["grid"][1:]]
    sel = result[cls]
    return rows, {"id": sel["id"], "shift": sel["value"] / sel["base_value"], "lms_ratio": sel["lms"] / sel["base_lms"],
                  "p_base": sel["base_value"], "p": sel["value"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlm", choices=["mlm", "clm"])
    p.add_argument("--feature", default="pronouns", choices=["pronouns", "gender"])
    p.add_argument("--target-class", default=None, help="class to strengthen (default: the pair's first)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--decoders", default="trained,class_mean")
    p.add_argument("--fractions", default="1,0.1,0.01,0.001")
    p.add_argument("--search", default="adaptive", choices=["adaptive", "grid"])
    p.add_argument("--cache-dir", default=None, help="disk gradient cache (default: a temporary directory)")
    p.add_argument("--json", default=None, help="write every candidate here")
    p.add_argument("--threads", type=int, default=1)
    ns = p.parse_args(argv)
    import tempfile

    import torch

    from bench.validity import Bench
    from gradiend.decoder_eval import keep_top_decoder_fraction
    from gradiend.step import class_mean_decoder

    torch.set_num_threads(ns.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ns.workdir = tmp
        bns = argparse.Namespace(workdir=tmp, cache_dir=ns.cache_dir or tmp, cache_gb=40.0, keep_cache=True)
        bench = Bench(ns.model, ns.feature, bns)
        cls = ns.target_class or bench.pair[0]
        t0 = time.perf_counter()
        model, state, sums = train(bench, ns)
        print(f"trained in {time.perf_counter() - t0:.0f} s", flush=True)
        table, summary = [], []
        print("| decoder | q | candidate | shift ratio | LMS/base | kept |\n|---|---|---|---|---|---|")
        for decoder in ns.decoders.split(","):
            for q in [float(x) for x in ns.fractions.split(",")]:
                model.gradiend.load_state_dict(state)
                if decoder == "class_mean":
                    class_mean_decoder(model.gradiend, sums)
                keep_top_decoder_fraction(model.gradiend, q)
                rows, sel = frontier(model, bench, cls, ns.search)
                for r in rows:
                    mark = "*" if r["id"] == sel["id"] else ""
                    kept = "yes" if r["lms_ratio"] >= 0.99 else "no"
                    print(f"| {decoder} | {q:g} | {r['id']}{mark} | {r['shift']:.3f} | "
                          f"{'≥' if r['lms_inferred'] else ''}{r['lms_ratio']:.4f} | {kept} |", flush=True)
                table += [{"decoder": decoder, "q": q, **r} for r in rows]
                summary.append({"decoder": decoder, "q": q, **sel})
        print("\n| decoder | q | selected | P base → P | shift ratio | LMS/base |\n|---|---|---|---|---|---|")
        for s in summary:
            print(f"| {s['decoder']} | {s['q']:g} | {s['id']} | {s['p_base']:.3f} → {s['p']:.3f} | {s['shift']:.2f} | "
                  f"{s['lms_ratio']:.4f} |")
        if ns.json:
            Path(ns.json).write_text(json.dumps({"candidates": table, "selected": summary}, indent=1))
        bench.close()


if __name__ == "__main__":
    main()
