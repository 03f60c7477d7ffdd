"""Validity bench: does the feature neuron separate the classes, stay quiet on neutral text, and train
at every sensible learning rate?

For each shipped feature (3SG/3PL pronouns, M/F gender; `gradiend.demo_data`) on each embedded
model (MiniLM masked LM: all backbone weights; SmolLM2 causal LM: `model.layers.25.mlp.*`, as in
the demo) × learning rate × seed, it trains `--steps` steps at batch `--batch` and evaluates the
encoder on the test split plus both neutral variants. One table row per run:

    class |ρ|       Pearson of h and the ±1 label over the two classes' test rows
    mean A / B      class means of h
    |h| masked      mean |h| on test texts with the slot filled and another word masked
    |h| corpus      mean |h| on the neutral corpus (a random word masked)
    all ρ / all acc Pearson and ternary accuracy over all rows, neutral labelled 0
                    (h ≥ 0.5 → +1, h ≤ −0.5 → −1, else 0)
    conv            training's own verdict (|ρ| ≥ 0.5, class means ≥ 0.5, opposite signs)
    target          the issue's targets: class |ρ| ≥ 0.98, class means ≥ 0.9, both neutral |h| ≤ 0.2,
                    all-data ρ ≥ 0.95
    lr-ok           the learning-rate target: |ρ| ≥ 0.95 and class means ≥ 0.8
    shift, LMS      (`--decoder`) the selected rewrite strengthening the pair's first class: P(class A) on
                    class B's test rows after / before, and LMS / base LMS (the adaptive search with the LMS
                    bound 0.99·base; the saved decoder, `decoder_fit="class_means"` by default)

`--variant` picks method variants to compare (ablation); each is a set of `TrainingArguments`
overrides, so what is measured is exactly what a user gets with those arguments. All runs of one
(model, feature) share the base model and its training batches (`data_seed=0`), and their
gradients are cached on disk (`--cache-dir`), so only the first run pays the base-model passes.

    python bench/validity.py --models mlm --features pronouns --lrs 1e-3 --seeds 0 --variant before,after
    python bench/validity.py --variant before,after --markdown bench/validity.md   # the full table

Variants (`VARIANTS`): `default` = whatever the installed library does (since issue 15: gradients of the
per-row sum, `scale_norms(lr)`, and the encoder calibration, `gradiend.calibration`); `uncalibrated` =
`calibrate_encoder=False`. A calibrated run also reports `<variant>/raw`, the same run before the
calibration (its encodings recovered exactly from the calibrated ones), so every row of the default shows
what the calibration did at no extra training. Bench-only loops (the library's loop with `_launch`
replaced, steps sequential): `before` = gradients of the MSE over n inputs (Adam in its ε regime) with the
input scaled to L1 1e4 and the target to RMS 0.01; `sum` = gradients of the per-row sum (Adam's normalised
regime); `after` = `sum` + `gradiend.step.scale_norms(lr)`; `after_neutral` = `after` plus one batch of
neutral rows (`gradiend.data.neutral_rows`, target 0) per step; `_cal` = with the calibration; `prune1` =
the library's pre-pruning to 1 % of the inputs.

`--keep-cache` reuses the gradients an earlier call left in `--cache-dir` (one directory per model and
feature; 11-12 GB for MiniLM), so the table can be built in several calls.

Cost: the first run of a (model, feature) pays 100 base-model passes (MiniLM ~0.3 s each on two idle
cores) and writes ~11 GB of cached gradients; later runs read them back. A 3-step smoke run
(`--steps 3 --eval-steps 3 --eval-rows 4 --test-rows 4`) took 24-42 s per run on a heavily shared
2-core machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Feature:
    data: Callable[[], pd.DataFrame]
    pair: tuple[str, str]


@dataclass(frozen=True)
class ModelSetup:
    kind: str
    args: dict[str, Any] = field(default_factory=dict)


def _features() -> dict[str, Feature]:
    from gradiend.demo_data import demo_gender_data, load_demo_data

    return {"pronouns": Feature(load_demo_data, ("3SG", "3PL")), "gender": Feature(demo_gender_data, ("M", "F"))}


MODELS = {"mlm": ModelSetup("mlm"), "clm": ModelSetup("clm", {"params": ["model.layers.25.mlp.*"]})}

# Method variants: TrainingArguments overrides, plus bench-only experimental switches under "_" keys
# (used to measure a change before it moves into the library). A key the installed TrainingArguments
# lacks makes the variant unavailable (reported, not silently ignored).
_RAW = {"calibrate_encoder": False}  # the trained encoder as it comes out of training
_EXPERIMENT = {**_RAW, "overlap_step": False}  # bench-only loops replace `_launch`: steps run sequentially
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},                                   # whatever the installed library does
    "uncalibrated": _RAW,                            # the library without the encoder calibration
    "before": {**_EXPERIMENT, "_sum": False, "_scales": "fixed"},  # MSE gradients (Adam's ε regime), L1 1e4 / RMS 0.01
    "sum": {**_EXPERIMENT, "_sum": True, "_scales": "fixed"},      # only A: Adam out of the ε regime
    "after": {**_EXPERIMENT, "_sum": True, "_scales": "lr"},       # A + B: scale_norms(lr) (issue 15)
    "after_cal": {"overlap_step": False, "_sum": True, "_scales": "lr"},  # A + B + encoder calibration
    "after_neutral": {**_EXPERIMENT, "_sum": True, "_scales": "lr", "_neutral": True},  # + a neutral batch per step
    "after_neutral_cal": {"overlap_step": False, "_sum": True, "_scales": "lr", "_neutral": True},
    "prune1": {**_RAW, "_prune": 0.01},              # library pre-pruning: top 1 % inputs by |mean diff gradient|
    "prune1_cal": {"_prune": 0.01},
}


def experimental_loop(switches: dict[str, Any], neutral_rows: pd.DataFrame) -> type:
    """A TrainingLoop subclass implementing the bench-only switches with the library's pieces
    (`FusedLoss(coordinate_sum=)`, `scale_norms`, `neutral_rows`), so that a variant can be measured
    before and after training.py wires it (the library's loop is not edited)."""
    import torch

    from gradiend import training
    from gradiend.data import NeutralSchedule
    from gradiend.step import FusedLoss, scale_norms

    class Loop(training.TrainingLoop):
        def standardize(self) -> None:
            lr = self.args.learning_rate
            norms = (1e4, 0.01) if switches.get("_scales") == "fixed" else scale_norms(lr)
            encoder_max = float(self.gradiend.encoder_weight.detach().abs().max())
            if switches.get("_scales") == "lr" and encoder_max > 1.5 * lr:  # the library's fit has not done it
                self.gradiend.scale_initial_weights(lr)
            l1, rms = [], []
            for source, target in self._probe_pairs():
                l1.append(float(source.abs().sum()))
                rms.append(float(target.pow(2).mean().sqrt()))
            self.gradiend.input_scale.fill_(sum(l1) / len(l1) / norms[0])
            self.gradiend.target_scale.fill_(sum(rms) / len(rms) / norms[1])

        def _launch(self, step: int, batches: Any) -> None:  # the library's sequential step, replaced
            args, g, b = self.args, self.gradiend, len(batches)
            if not hasattr(self, "_rows"):
                extra = 1 if switches.get("_neutral") else 0
                self._src = torch.zeros(b + extra, g.config.input_dim)
                self._tgt = torch.zeros(b + extra, g.config.input_dim)
                self._loss = FusedLoss(g, b + extra, coordinate_sum=switches.get("_sum", True))
                self._rows = NeutralSchedule(len(neutral_rows), args.train_batch_size, 0) if extra else None
            t0 = time.perf_counter()
            for slot, batch in enumerate(batches):
                grads = self._gradients(step, batch, {k: self._buffers[k][slot] for k in self.kinds})
                self._src[slot].copy_(grads[args.source])
                self._tgt[slot].copy_(grads[args.target])
            if self._rows is not None:
                sub = neutral_rows.iloc[list(self._rows.next())]
                words = list(sub["factual"])
                self.source.gradients(step, list(sub["masked"]), words, words, {args.source: self._src[b]}, keep=True)
            t1 = time.perf_counter()
            loss, _ = self._loss.loss_and_grad(self._src, self._tgt)
            self.optimizer.step()
            self.timings["gradients"] += t1 - t0
            self.timings["gradiend"] += time.perf_counter() - t1
            self._finish(step, float(loss))

    return Loop


@dataclass
class Row:
    model: str
    feature: str
    variant: str
    lr: float
    seed: int
    metrics: dict[str, Any]

    def cells(self) -> list[str]:
        m = self.metrics
        if "error" in m:
            return [self.model, self.feature, self.variant, f"{self.lr:g}", str(self.seed), m["error"]]
        means = list(m["mean_by_class"].values())
        return [self.model, self.feature, self.variant, f"{self.lr:g}", str(self.seed),
                f"{abs(m['correlation']):.3f}", f"{means[0]:+.3f}", f"{means[1]:+.3f}",
                f"{m['abs_masked']:.3f}", f"{m['abs_corpus']:.3f}", f"{m['all_correlation']:.3f}",
                f"{m['all_accuracy']:.3f}", "yes" if m["converged"] else "no",
                "yes" if m["target"] else "no", "yes" if m["lr_ok"] else "no",
                f"{m['gain']:.3g}" if m.get("gain") is not None else "-",
                f"{m['shift']:.2f}" if m.get("shift") is not None else "-",
                f"{m['lms_ratio']:.4f}" if m.get("lms_ratio") is not None else "-", f"{m['seconds']:.0f}"]


HEADER = ["model", "feature", "variant", "lr", "seed", "class |ρ|", "mean A", "mean B", "|h| masked",
          "|h| corpus", "all ρ", "all acc", "conv", "target", "lr-ok", "gain", "shift", "LMS", "s"]


def judge(metrics: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, from encoder metrics."""
    means = [abs(v) for v in metrics["mean_by_class"].values()]
    rho = abs(metrics["correlation"])
    quiet = max(metrics["abs_masked"], metrics["abs_corpus"]) <= 0.2
    return {"target": rho >= 0.98 and min(means) >= 0.9 and quiet and metrics["all_correlation"] >= 0.95,
            "lr_ok": rho >= 0.95 and min(means) >= 0.8}


class Bench:
    """One loaded (model, feature): template, rows, neutral texts and a gradient cache shared by its runs."""

    def __init__(self, model: str, feature: str, ns: argparse.Namespace) -> None:
        from gradiend import TrainingArguments, embedded_model_path
        from gradiend.data import prepare_rows, unify
        from gradiend.demo_data import load_demo_neutral
        from gradiend.gradient_cache import GradientStore
        from gradiend.runs import new_template

        self.model, self.feature, self.ns = model, feature, ns
        spec, setup = _features()[feature], MODELS[model]
        self.base = embedded_model_path(model)
        self.rows, self.pair = unify(spec.data(), list(spec.pair), seed=0)
        args = TrainingArguments(experiment_dir=ns.workdir, **setup.args)
        self.template = new_template(self.base, args, self.rows, self.pair)
        self.train_rows = prepare_rows(self.rows, "train", self.pair, self.template.objective, "training")
        self.eval_rows = prepare_rows(self.rows, "validation", self.pair, self.template.objective, "evaluation")
        self.neutral = list(load_demo_neutral()["text"])
        cache_dir = Path(ns.cache_dir) / f"{model}_{feature}"
        if not ns.keep_cache:
            shutil.rmtree(cache_dir, ignore_errors=True)
        self.store = GradientStore("disk", int(ns.cache_gb * 1024**3), "float32", cache_dir)
        self.store.shared = True
        if ns.keep_cache and cache_dir.is_dir():  # a previous call's entries (the store starts empty otherwise)
            for entry in cache_dir.glob("*.safetensors"):
                self.store._on_disk.add(entry.stem)
                self.store.bytes += entry.stat().st_size
        self._prune_masks: dict[float, Any] = {}
        self._store_override = None
        self.neutral_train = self._neutral_train_rows()

    def _neutral_train_rows(self) -> pd.DataFrame:
        """Training texts with the slot filled and another (non-target) word masked: neutral rows."""
        from gradiend.data import neutral_rows

        return neutral_rows(self.train_rows, self.template.objective, seed=0)

    def run(self, variant: str, lr: float, seed: int) -> dict[str, dict[str, Any]]:
        """{variant: metrics}; a calibrated run also gives `<variant>/raw`: the same run before the calibration
        (its encodings recovered exactly from the calibrated ones, h = tanh((atanh(h_cal) − c) / a))."""
        import numpy as np

        from gradiend import TrainingArguments
        from gradiend.encoder_eval import split_encodings

        ns, setup = self.ns, MODELS[self.model]
        overrides = {**setup.args, **{k: v for k, v in VARIANTS[variant].items() if not k.startswith("_")}}
        try:
            args = TrainingArguments(experiment_dir=ns.workdir, train_batch_size=ns.batch, max_steps=ns.steps,
                                     eval_steps=ns.eval_steps, learning_rate=lr, seed=seed, data_seed=0,
                                     show_progress=False, encoder_eval_train_max_size=ns.eval_rows,
                                     eval_batch_size=16, **overrides)
        except (TypeError, ValueError) as err:
            return {variant: {"error": f"variant unavailable: {err}"}}
        switches = {k: v for k, v in VARIANTS[variant].items() if k.startswith("_")}
        t0 = time.perf_counter()
        model = self.template.with_new_gradiend(seed)
        self._store_override = None
        if "_prune" in switches:
            model = self.pruned(seed, switches["_prune"])
        outcome = self.train(model, args, switches)
        model.gradiend.load_state_dict(outcome.state)
        seconds = time.perf_counter() - t0
        frame = split_encodings(model, self.rows, self.pair, "test", max_size=ns.test_rows, neutral_texts=self.neutral,
                                seed=0, batch_size=16, show_progress=False, cache=None)
        run = {"converged": outcome.converged, "seconds": seconds,
               "history": {"scores": outcome.stats["training_stats"]["scores"],
                           "mean_by_class": outcome.stats["training_stats"]["mean_by_class"]}}
        calibration = outcome.stats.get("calibration", {})
        results = {variant: {**self.metrics(frame), **run, "gain": calibration.get("gain"),
                             "calibration": calibration, **(self.decoder(model) if ns.decoder else {})}}
        if "gain" in calibration:
            h = np.clip(frame["encoded"].to_numpy(dtype=np.float64), -1 + 1e-7, 1 - 1e-7)
            raw = frame.assign(encoded=np.tanh((np.arctanh(h) - calibration["offset"]) / calibration["gain"]))
            results[f"{variant}/raw"] = {**self.metrics(raw), **run}
        return results

    def decoder(self, model: Any) -> dict[str, Any]:
        """The selected rewrite strengthening class A (adaptive search, LMS ≥ 0.99·base): shift and LMS ratio."""
        from gradiend.decoder_eval import DecoderRequest, evaluate_decoder

        cls = self.pair[0]
        result = evaluate_decoder(model, self.rows, self.pair, DecoderRequest([cls], show_progress=False))
        sel = result[cls]
        return {"shift": sel["value"] / sel["base_value"], "lms_ratio": sel["lms"] / sel["base_lms"],
                "rewrite": {"id": sel["id"], "p_base": sel["base_value"], "p": sel["value"]}}

    def metrics(self, frame: pd.DataFrame) -> dict[str, Any]:
        """The table's numbers and the targets' verdicts from an encoded test frame."""
        from gradiend.encoder_eval import encoder_metrics

        m = encoder_metrics(frame, self.pair)
        out = {"correlation": m["correlation"], "mean_by_class": m["mean_by_class"],
               "abs_masked": m["abs_mean_by_type"].get("neutral_training_masked", float("nan")),
               "abs_corpus": m["abs_mean_by_type"].get("neutral_dataset", float("nan")),
               "all_correlation": m["all_data"]["correlation"], "all_accuracy": m["all_data"]["accuracy"]}
        return {**out, **judge(out)}

    def train(self, model: Any, args: Any, switches: dict[str, Any]) -> Any:
        """`train_gradiend`, with the experimental loop when a switch asks for one."""
        import functools
        from unittest import mock

        from gradiend import training

        if not switches or set(switches) == {"_prune"}:
            return training.train_gradiend(model, self.train_rows, self.eval_rows, self.pair, args,
                                           gradient_store=self._store_override or self.store)
        loop_cls = experimental_loop(switches, self.neutral_train)
        with mock.patch.object(training, "TrainingLoop", functools.partial(loop_cls)):
            return training.train_gradiend(model, self.train_rows, self.eval_rows, self.pair, args,
                                           gradient_store=self._store_override or self.store)

    def pruned(self, seed: int, topk: float) -> Any:
        """A fresh GRADIEND pre-pruned to the top `topk` inputs by |mean diff gradient| (16 rows); pruned
        runs use their own gradient cache (their vectors are shorter)."""
        from gradiend import PrePruneConfig
        from gradiend.gradient_cache import GradientStore
        from gradiend.pruning import pre_prune

        if topk not in self._prune_masks:
            probe = self.template.with_new_gradiend(0)
            keep = pre_prune(probe, self.train_rows, self.pair,
                             PrePruneConfig(n_samples=16, topk=topk, source="diff"), False)
            store = GradientStore("memory", 8 * 1024**3, "float32")
            store.shared = True
            self._prune_masks[topk] = (keep, store)
        keep, self._store_override = self._prune_masks[topk]
        return self.template.with_new_gradiend(seed).prune(keep)

    def close(self) -> None:
        if not self.ns.keep_cache:
            self.store.clear()


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    """Per (model, variant): runs meeting the targets / the lr target, mean neutral |h| and all-data ρ."""
    ok = [r for r in rows if "error" not in r.metrics]
    frame = pd.DataFrame([{"model": r.model, "variant": r.variant, "target": r.metrics["target"],
                           "lr_ok": r.metrics["lr_ok"], "rho": abs(r.metrics["correlation"]),
                           "neutral": max(r.metrics["abs_masked"], r.metrics["abs_corpus"]),
                           "all_rho": r.metrics["all_correlation"]} for r in ok])
    if frame.empty:
        return ""
    agg = frame.groupby(["model", "variant"]).agg(runs=("target", "size"), target=("target", "sum"),
                                                 lr_ok=("lr_ok", "sum"), rho=("rho", "mean"),
                                                 max_neutral=("neutral", "mean"), all_rho=("all_rho", "mean"))
    agg = agg.round(3).reset_index()
    lines = ["| " + " | ".join(agg.columns) + " |", "|" + "---|" * len(agg.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in agg.itertuples(index=False)]
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mlm,clm")
    p.add_argument("--features", default="pronouns,gender")
    p.add_argument("--variant", default="default", help=f"comma-separated, from {sorted(VARIANTS)}")
    p.add_argument("--lrs", default="1e-5,1e-4,1e-3,1e-2")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--eval-steps", type=int, default=25)
    p.add_argument("--eval-rows", type=int, default=60, help="validation rows per class during training")
    p.add_argument("--test-rows", type=int, default=100, help="test rows per class (and neutral texts)")
    p.add_argument("--cache-dir", default=None, help="disk gradient cache (default: a temporary directory)")
    p.add_argument("--cache-gb", type=float, default=40.0)
    p.add_argument("--keep-cache", action="store_true", help="reuse the gradients a previous call left in "
                   "--cache-dir (same base models and parameters; entries are keyed by the batch's texts) and "
                   "leave them there")
    p.add_argument("--decoder", action="store_true", help="also score the rewrite at the LMS bound (columns "
                   "shift, LMS; minutes per run)")
    p.add_argument("--markdown", default=None, help="write the table (and a JSON next to it) here")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import torch

    ns = parse(argv)
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.WARNING)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    variants = ns.variant.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        ns.workdir = tmp
        ns.cache_dir = ns.cache_dir or str(Path(tmp) / "cache")
        for model in ns.models.split(","):
            for feature in ns.features.split(","):
                bench = Bench(model, feature, ns)
                for variant in variants:
                    for lr in [float(v) for v in ns.lrs.split(",")]:
                        for seed in [int(s) for s in ns.seeds.split(",")]:
                            try:
                                results = bench.run(variant, lr, seed)
                            except (FloatingPointError, RuntimeError) as err:
                                results = {variant: {"error": f"{type(err).__name__}: {str(err)[:80]}"}}
                            for name, metrics in results.items():
                                row = Row(model, feature, name, lr, seed, metrics)
                                rows.append(row)
                                print(" | ".join(row.cells()), flush=True)
                            if ns.markdown:  # after every run: a long table survives an interruption
                                write_tables(rows, ns.markdown)
                bench.close()
    print(markdown(rows))
    print(summary(rows))
    if ns.markdown:
        write_tables(rows, ns.markdown)


def write_tables(rows: list[Row], path: str) -> None:
    """The table and the per-(model, variant) summary as markdown, every row's metrics as JSON next to it."""
    Path(path).write_text(markdown(rows) + "\n\n" + summary(rows) + "\n")
    Path(path).with_suffix(".json").write_text(json.dumps(
        [{"model": r.model, "feature": r.feature, "variant": r.variant, "lr": r.lr, "seed": r.seed,
          **r.metrics} for r in rows], indent=1, default=str))


if __name__ == "__main__":
    main()
