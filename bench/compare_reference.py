"""Side-by-side benchmark: this working tree vs the reference package (`gradiend==0.2.3` from PyPI).

One command creates two virtual environments if missing, writes one dataset, and runs the same
workload (same model, data, hyper-parameters, steps and seeds) in each, one fresh subprocess per
side: train -> evaluate_encoder -> evaluate_decoder(target_class) -> rewrite_base_model. For every
phase it prints wall time, peak RSS, bytes on disk, encoder correlation, the selected decoder
config, and the ratios ours / reference. The reference is installed for measurement only.

    python bench/compare_reference.py --model tiny                        # random 2-layer BERT
    python bench/compare_reference.py --workload minilm                   # the README's MiniLM table
    python bench/compare_reference.py --workload demo                     # what `gradiend demo` runs
    python bench/compare_reference.py --workload clm                      # SmolLM2, one MLP block
    python bench/compare_reference.py --model minilm --max-steps 10       # embedded MiniLM, fewer steps
    python bench/compare_reference.py --model tiny --markdown perf.md     # also write a README table

Per phase it also reports the physical-limit fraction: the share of the phase's wall time spent
inside the base model's forward (timed at the backbone class, the same way for both packages) and
the number of those forwards; the train phase's forward+backward share comes from our training.json.

Virtual environments (under `--venv-root`, default ~/.cache/gradiend/bench-venvs) are created with
`--system-site-packages` so that the torch / transformers already on the machine are reused
(no multi-GB download); ours gets `pip install -c constraints.txt -e <repo>`, the reference
`pip install -c constraints.txt gradiend==0.2.3`. A venv's own site-packages come before the
system ones, so each side imports its own `gradiend` (checked and printed).

Matching the workloads: the reference stops `max_steps` at `num_train_epochs` (default 3), ours
lets `max_steps` win, so both sides get a large `num_train_epochs`; both get `--max-seeds`
(default 1; the reference's own default is 3) with `min_convergent_seeds=1`. "Bytes written"
is the worker's `wchar` from /proc/self/io per phase: it counts checkpoints written twice and
temporary files, which the final directory size hides. Per-phase peak RSS resets the kernel's
high-water mark (VmHWM) through /proc/self/clear_refs before each phase (falls back to the
process peak where that is refused).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REFERENCE_SPEC = "gradiend==0.2.3"
PHASES = ("train", "evaluate_encoder", "evaluate_decoder", "rewrite")


# --------------------------------------------------------------------------------------------
# worker: runs inside one venv, imports whichever `gradiend` that venv has
# --------------------------------------------------------------------------------------------

def _rss_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _bytes_written() -> int:
    """Bytes this process passed to write(2) so far (`wchar`; counts rewrites and temp files too)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _dir_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def forward_meter(model_path: str) -> dict[str, float]:
    """Time spent inside the base model's backbone forward (outermost calls), for both packages alike.

    Patches the backbone class's `forward` (e.g. BertModel, LlamaModel) in this worker process; the
    share of a phase's wall time spent there is the phase's physical-limit fraction (forward only:
    backward passes run outside it, see the training split for those).
    """
    from transformers import MODEL_MAPPING, AutoConfig

    backbone = MODEL_MAPPING[type(AutoConfig.from_pretrained(model_path))]
    meter = {"seconds": 0.0, "calls": 0, "depth": 0}
    original = backbone.forward

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        if meter["depth"]:
            return original(self, *args, **kwargs)
        meter["depth"] += 1
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            meter["seconds"] += time.perf_counter() - start
            meter["calls"] += 1
            meter["depth"] -= 1

    backbone.forward = timed
    return meter


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)[:200]


def _decoder_choice(dec: dict[str, Any], target_class: str) -> dict[str, Any]:
    summary = dec.get(target_class, dec)
    keys = ("feature_factor", "learning_rate", "value", "lms", "base_value", "base_lms")
    return {k: _jsonable(summary.get(k)) for k in keys if isinstance(summary, dict) and k in summary}


def _steps_done(exp: Path) -> int | None:
    """Optimizer steps actually taken (both packages record `training_stats.global_step`)."""
    path = exp / "model" / "training.json"
    try:
        return int(json.loads(path.read_text())["training_stats"]["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def worker(ns: argparse.Namespace) -> None:
    """Run the workload phase by phase in this process and write a JSON result."""
    import pandas as pd

    t0 = time.perf_counter()
    import gradiend
    from gradiend.trainer.core.arguments import TrainingArguments
    from gradiend.trainer.text.prediction.trainer import TextPredictionTrainer
    import_s = time.perf_counter() - t0
    if ns.side == "ours":  # the measured configuration: malloc tuning opted in, as the `gradiend` command does
        from gradiend import allocator

        allocator.enable()
    import torch

    if ns.threads > 0:
        torch.set_num_threads(ns.threads)
    torch.manual_seed(0)
    work = Path(ns.out).parent
    exp = work / "exp"
    rewritten = work / "rewritten"
    for p in (exp, rewritten):
        shutil.rmtree(p, ignore_errors=True)
    data = pd.read_csv(ns.data)
    neutral = pd.read_csv(ns.neutral)
    extra = {**json.loads(ns.common_args or "{}"), **json.loads(ns.train_args or "{}")}
    args = TrainingArguments(experiment_dir=str(exp), train_batch_size=ns.train_batch_size, max_steps=ns.max_steps,
                             eval_steps=ns.eval_steps, learning_rate=1e-3, num_train_epochs=10_000,
                             max_seeds=ns.max_seeds, min_convergent_seeds=1, seed=0, **extra)
    trainer = TextPredictionTrainer(model=ns.model, data=data, eval_neutral_data=neutral, args=args,
                                    target_classes=json.loads(ns.classes) if ns.classes else None)
    meter = forward_meter(ns.model)
    result: dict[str, Any] = {"gradiend_file": gradiend.__file__, "import_s": import_s,
                              "version": getattr(gradiend, "__version__", "?"), "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "phases": {},
                              "loadavg_start": os.getloadavg()}
    out: dict[str, Any] = {}

    def phase(name: str, fn) -> None:
        exact = _rss_reset()
        written = _bytes_written()
        forward_s, forwards = meter["seconds"], meter["calls"]
        start = time.perf_counter()
        out[name] = fn()
        wall = time.perf_counter() - start
        result["phases"][name] = {"wall_s": wall, "peak_rss_mb": _rss_peak_mb(), "rss_exact": exact,
                                  "exp_dir_bytes": _dir_bytes(exp), "bytes_written": _bytes_written() - written,
                                  "forward_s": meter["seconds"] - forward_s, "forwards": meter["calls"] - forwards}
        print(f"[{ns.side}] {name}: {wall:.1f} s", flush=True)
        Path(ns.out).write_text(json.dumps(result, indent=1))

    phase("train", trainer.train)
    phase("evaluate_encoder", trainer.evaluate_encoder)
    lrs = json.loads(ns.decoder_lrs) if ns.decoder_lrs else None
    phase("evaluate_decoder", lambda: trainer.evaluate_decoder(target_class=ns.target_class, lrs=lrs))
    phase("rewrite", lambda: trainer.rewrite_base_model(decoder_results=out["evaluate_decoder"],
                                                        target_class=ns.target_class, output_dir=str(rewritten)))
    enc = out["evaluate_encoder"]
    result["correlation"] = _jsonable(enc.get("correlation"))
    result["mean_by_class"] = _jsonable(enc.get("mean_by_class"))
    result["decoder"] = _decoder_choice(out["evaluate_decoder"], ns.target_class)
    result["rewritten_bytes"] = _dir_bytes(rewritten)
    result["exp_dir_bytes"] = _dir_bytes(exp)
    result["steps"] = _steps_done(exp)
    result["total_s"] = sum(p["wall_s"] for p in result["phases"].values())
    result["bytes_written"] = sum(p["bytes_written"] for p in result["phases"].values())
    result["loadavg_end"] = os.getloadavg()
    result["ru_maxrss_mb"] = max(p["peak_rss_mb"] for p in result["phases"].values())
    Path(ns.out).write_text(json.dumps(result, indent=1))


# --------------------------------------------------------------------------------------------
# driver: venvs, model, data, the two subprocesses, the comparison
# --------------------------------------------------------------------------------------------

def _run(cmd: list[str], **kw: Any) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def ensure_venv(root: Path, side: str) -> Path:
    """Create `root/side` (system site-packages) and install that side's gradiend into it if missing."""
    venv = root / side
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if marker.exists():
        return python
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    pip = [str(python), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt")]
    _run(pip + (["-e", str(REPO)] if side == "ours" else [REFERENCE_SPEC]))
    marker.write_text("ok\n")
    return python


def build_tiny_bert(path: Path) -> Path:
    """A random 2-layer, hidden-128 BertForMaskedLM with the embedded MiniLM tokenizer."""
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from gradiend.embedded import embedded_model_path

    tok = AutoTokenizer.from_pretrained(embedded_model_path("mlm"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=512)
    BertForMaskedLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_dataset(work: Path, per_class: dict[str, int], neutral_rows: int,
                  feature: str = "pronouns") -> tuple[Path, Path]:
    """A fixed, seeded subsample of the shipped demo data (merged format) and neutral texts, as CSV.

    `feature`: "pronouns" (3SG he/she/it vs 3PL they) or "gender" (M he vs F she)."""
    import pandas as pd

    from gradiend.demo_data import demo_gender_data, load_demo_data, load_demo_neutral

    rows = demo_gender_data() if feature == "gender" else load_demo_data()
    parts = [grp.sample(n=min(per_class[split], len(grp)), random_state=0)
             for (split, _), grp in rows.groupby(["split", "label_class"]) if split in per_class]
    data = pd.concat(parts)[["masked", "split", "label_class", "label"]].reset_index(drop=True)
    # explicit counterfactuals (the reference requires them): 3SG -> they, 3PL -> he/she/it in turn; he <-> she
    if feature == "gender":
        alternative = ["she" if cls == "M" else "he" for cls in data["label_class"]]
        other = {"M": "F", "F": "M"}
    else:
        singular = ["he", "she", "it"]
        alternative = ["they" if cls == "3SG" else singular[i % 3] for i, cls in enumerate(data["label_class"])]
        other = {"3SG": "3PL", "3PL": "3SG"}
    data["alternative"] = [a.capitalize() if str(w)[:1].isupper() else a
                           for a, w in zip(alternative, data["label"], strict=True)]
    data["alternative_class"] = [other[str(cls)] for cls in data["label_class"]]
    neutral = load_demo_neutral()
    neutral = neutral.head(neutral_rows)[["text"]] if "text" in neutral else neutral.head(neutral_rows)
    data_path, neutral_path = work / "training.csv", work / "neutral.csv"
    data.to_csv(data_path, index=False)
    neutral.to_csv(neutral_path, index=False)
    return data_path, neutral_path


def _fmt_bytes(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    return f"{a / b:.3g}"


def comparison_table(res: dict[str, dict[str, Any]]) -> str:
    """Markdown table: per phase wall time / peak RSS, totals, disk, quality, and ours/reference ratios."""
    o, r = res["ours"], res["reference"]
    lines = ["| phase | ours (s) | reference (s) | speed-up | ours peak RSS (MB) | reference peak RSS (MB) "
             "| RSS ratio | ours fwd share (forwards) | reference fwd share (forwards) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in PHASES:
        po, pr = o["phases"].get(name, {}), r["phases"].get(name, {})
        lines.append(f"| {name} | {po.get('wall_s', float('nan')):.2f} | {pr.get('wall_s', float('nan')):.2f} "
                     f"| {_ratio(pr.get('wall_s'), po.get('wall_s'))}x "
                     f"| {po.get('peak_rss_mb', 0):.0f} | {pr.get('peak_rss_mb', 0):.0f} "
                     f"| {_ratio(po.get('peak_rss_mb'), pr.get('peak_rss_mb'))} | {_share(po)} | {_share(pr)} |")
    lines.append(f"| **end to end** | **{o['total_s']:.1f}** | **{r['total_s']:.1f}** "
                 f"| **{_ratio(r['total_s'], o['total_s'])}x** | {o['ru_maxrss_mb']:.0f} | {r['ru_maxrss_mb']:.0f} "
                 f"| {_ratio(o['ru_maxrss_mb'], r['ru_maxrss_mb'])} | {_share(_totals(o))} | {_share(_totals(r))} |")
    lines += ["", "| | ours | reference | ratio ours/reference |", "|---|---|---|---:|",
              f"| optimizer steps taken | {o.get('steps')} | {r.get('steps')} | |",
              f"| experiment dir | {_fmt_bytes(o['exp_dir_bytes'])} | {_fmt_bytes(r['exp_dir_bytes'])} "
              f"| {_ratio(o['exp_dir_bytes'], r['exp_dir_bytes'])} |",
              f"| bytes written (all phases, write(2)) | {_fmt_bytes(o.get('bytes_written', 0))} "
              f"| {_fmt_bytes(r.get('bytes_written', 0))} | {_ratio(o.get('bytes_written'), r.get('bytes_written'))} |",
              f"| rewritten model dir | {_fmt_bytes(o['rewritten_bytes'])} | {_fmt_bytes(r['rewritten_bytes'])} "
              f"| {_ratio(o['rewritten_bytes'], r['rewritten_bytes'])} |",
              f"| encoder correlation (test) | {_num(o.get('correlation'))} | {_num(r.get('correlation'))} | |",
              f"| selected decoder (feature_factor, lr) | {_dec(o)} | {_dec(r)} | |"]
    return "\n".join(lines)


def _share(phase: dict[str, Any]) -> str:
    """Share of the phase's wall time inside the base model's forward (its physical-limit fraction)."""
    if "forward_s" not in phase or not phase.get("wall_s"):
        return "n/a"
    return f"{100 * phase['forward_s'] / phase['wall_s']:.0f} % ({phase['forwards']})"


def _totals(res: dict[str, Any]) -> dict[str, Any]:
    phases = list(res["phases"].values())
    if not phases or any("forward_s" not in p for p in phases):
        return {}
    return {"wall_s": res["total_s"], "forward_s": sum(p["forward_s"] for p in phases),
            "forwards": sum(p["forwards"] for p in phases)}


def _num(x: Any) -> str:
    return f"{x:.5f}" if isinstance(x, int | float) else str(x)


def _load(res: dict[str, Any]) -> str:
    start, end = res.get("loadavg_start"), res.get("loadavg_end")
    return f"{start[0]:.1f}/{end[0]:.1f}" if start and end else "n/a"


def _dec(res: dict[str, Any]) -> str:
    d = res.get("decoder") or {}
    return f"{d.get('feature_factor')}, {d.get('learning_rate')}"


def physical_limit(exp: Path, train_wall_s: float | None) -> dict[str, float] | None:
    """Share of the train phase's wall time spent in base-model passes for training batches.

    The denominator is the whole `train()` call as the worker timed it (model loading, scale
    estimation, evaluation, checkpoint and plot writing included), not just the training loop.
    """
    path = exp / "model" / "training.json"
    if not path.exists() or not train_wall_s:
        return None
    times = json.loads(path.read_text()).get("time") or {}
    passes = times.get("base_passes", times.get("gradients", 0.0) + times.get("scale", 0.0))
    return {**{k: float(v) for k, v in times.items() if isinstance(v, int | float)},
            "train_phase_wall": float(train_wall_s), "fraction_base_passes": float(passes) / train_wall_s}


def _parse_overrides(text: str) -> dict[str, Any]:
    """'a=1,b=off' -> {'a': 1, 'b': 'off'} (JSON values where they parse, strings otherwise)."""
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--ours-args: expected key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


#: Named workloads: defaults for the flags below (explicit flags still win).
WORKLOADS: dict[str, dict[str, Any]] = {
    # what `gradiend demo` runs: all demo rows, 1000 neutral texts, 100 steps, the demo's learning rates
    "demo": {"model": "minilm", "per_class": "988,123,123", "neutral_rows": 1000, "max_steps": 100,
             "decoder_lrs": "[0.002, 0.001, 0.0005, 0.0002, 0.0001, 5e-05, 2e-05, 1e-05]"},
    # the README's MiniLM table: one epoch of 480 rows, the reference's default 3 seeds, the default 16 lrs
    "minilm": {"model": "minilm", "per_class": "240,15,15", "max_steps": 60, "max_seeds": 3},
    # embedded SmolLM2 (causal), one MLP block, he vs she, strengthen F, the clm demo's learning rates
    "clm": {"model": "clm", "per_class": "120,15,15", "max_steps": 30, "feature": "gender", "target_class": "F",
            "train_batch_size": 6, "decoder_lrs": "[30.0, 10.0, 3.0, 1.0]",
            "common_args": json.dumps({"params": ["model.layers.25.mlp.*"], "eval_batch_size": 16,
                                       "decoder_eval_max_size_training_like": 32,
                                       "decoder_eval_max_size_neutral": 32})},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default=None,
                        help="a named workload setting the defaults below: " + "; ".join(
                            f"{k}: {v}" for k, v in WORKLOADS.items()))
    parser.add_argument("--model", default="tiny", help="'tiny', 'minilm', 'clm' or a local LM directory")
    parser.add_argument("--feature", choices=["pronouns", "gender"], default="pronouns",
                        help="pronouns: 3SG vs 3PL; gender: M (he) vs F (she)")
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument("--decoder-lrs", default="", help="JSON list of decoder learning rates (default: the "
                        "package's 16)")
    parser.add_argument("--common-args", default="", help="JSON TrainingArguments given to both sides")
    parser.add_argument("--classes", default="", help=argparse.SUPPRESS)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--eval-steps", type=int, default=25)
    parser.add_argument("--target-class", default="3SG")
    parser.add_argument("--max-seeds", type=int, default=1,
                        help="max_seeds on both sides (min_convergent_seeds=1); 3 is the reference's default")
    parser.add_argument("--per-class", default="120,15,15", help="train,validation,test rows per class")
    parser.add_argument("--neutral-rows", type=int, default=12)
    parser.add_argument("--workdir", default=str(Path.home() / ".cache" / "gradiend" / "bench-compare"))
    parser.add_argument("--venv-root", default=str(Path.home() / ".cache" / "gradiend" / "bench-venvs"))
    parser.add_argument("--sides", default="ours,reference", help="which sides to (re)run; others are read back")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in both workers (0: torch's default); 1 avoids thread oversubscription "
                             "on a busy machine")
    parser.add_argument("--ours-args", default="",
                        help="extra TrainingArguments for our side only, e.g. 'gradient_cache=off' (comma-separated "
                             "key=value, values parsed as JSON where possible); results go to ours-<args>/")
    parser.add_argument("--train-args", default="", help=argparse.SUPPRESS)
    parser.add_argument("--markdown", default=None, help="also write the comparison as markdown to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side", default="", help=argparse.SUPPRESS)
    parser.add_argument("--data", default="", help=argparse.SUPPRESS)
    parser.add_argument("--neutral", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    known, _ = parser.parse_known_args()
    if known.workload:
        parser.set_defaults(**WORKLOADS[known.workload])
    ns = parser.parse_args()
    if ns.worker:
        worker(ns)
        return

    from gradiend.embedded import embedded_model_path

    label = ns.workload or (ns.model if ns.model in ("tiny", "minilm", "clm") else Path(ns.model).name)
    suffix = (f"-{ns.threads}threads" if ns.threads > 0 else "") + (f"-{ns.max_seeds}seeds" if ns.max_seeds > 1 else "")
    work = Path(ns.workdir) / f"{label}-{ns.max_steps}steps{suffix}"
    work.mkdir(parents=True, exist_ok=True)
    model = {"tiny": lambda: str(build_tiny_bert(Path(ns.workdir) / "models" / "tiny-bert")),
             "minilm": lambda: str(embedded_model_path("mlm")),
             "clm": lambda: str(embedded_model_path("clm"))}.get(ns.model, lambda: ns.model)()
    train, val, test = (int(x) for x in ns.per_class.split(","))
    data_path, neutral_path = write_dataset(work, {"train": train, "validation": val, "test": test},
                                            ns.neutral_rows, ns.feature)
    classes = json.dumps(["M", "F"] if ns.feature == "gender" else ["3SG", "3PL"])
    ours_args = _parse_overrides(ns.ours_args)
    ours_dir = "ours" + "".join(f"-{k}={v}" for k, v in ours_args.items())
    results: dict[str, dict[str, Any]] = {}
    for side in ("ours", "reference"):
        out = work / (ours_dir if side == "ours" else side) / "result.json"
        if side in ns.sides.split(","):
            python = ensure_venv(Path(ns.venv_root), side)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.unlink(missing_ok=True)
            env = {**os.environ, "PYTHONPATH": "", "TOKENIZERS_PARALLELISM": "false"}
            _run([str(python), str(Path(__file__).resolve()), "--worker", "--side", side, "--model", model,
                  "--data", str(data_path), "--neutral", str(neutral_path), "--out", str(out),
                  "--max-steps", str(ns.max_steps), "--eval-steps", str(ns.eval_steps),
                  "--target-class", ns.target_class, "--threads", str(ns.threads),
                  "--max-seeds", str(ns.max_seeds), "--train-batch-size", str(ns.train_batch_size),
                  "--decoder-lrs", ns.decoder_lrs, "--common-args", ns.common_args, "--classes", classes,
                  "--train-args", json.dumps(ours_args) if side == "ours" else ""], cwd=str(out.parent), env=env)
        if not out.exists():
            print(f"{side}: no result yet at {out}")
            continue
        results[side] = json.loads(out.read_text())
        if "total_s" not in results[side]:  # the worker writes after every phase; this one has not finished
            print(f"{side}: unfinished result at {out} (phases so far: {list(results[side]['phases'])})")
            del results[side]
            continue
        results[side]["steps"] = _steps_done(out.parent / "exp")
        print(f"{side}: gradiend {results[side]['version']} from {results[side]['gradiend_file']}")
    if len(results) < 2:
        return
    limit = physical_limit(work / ours_dir / "exp", results["ours"]["phases"].get("train", {}).get("wall_s"))
    header = (f"Workload `{label}` ({model}), {ns.feature}, {ns.max_steps} steps, eval every {ns.eval_steps}, "
              f"batch {ns.train_batch_size}, lr 1e-3, decoder lrs {ns.decoder_lrs or 'default'}, "
              f"both sides with {ns.common_args or 'no extra arguments'}, "
              f"max_seeds {ns.max_seeds}{', ours with ' + ns.ours_args if ours_args else ''}, "
              f"data {ns.per_class} rows/class (train,val,test) + {ns.neutral_rows} neutral; "
              f"machine: {platform.machine()} {os.cpu_count()} cores, torch {results['ours']['torch']} "
              f"({results['ours']['threads']} threads), python {platform.python_version()}; "
              f"ours {results['ours']['version']} vs reference {results['reference']['version']}; "
              f"1-min load average start/end: ours {_load(results['ours'])}, "
              f"reference {_load(results['reference'])} (contended: compare ratios, not seconds).")
    table = comparison_table(results)
    text = header + "\n\n" + table
    if limit:
        text += ("\n\nOur training time split (training.json `time`, s): "
                 + ", ".join(f"{k} {v:.2f}" for k, v in limit.items() if k != "fraction_base_passes")
                 + f"; base-model forward/backward for the training batches (`base_passes`) = "
                 f"**{100 * limit['fraction_base_passes']:.0f} %** of the train phase's wall time.")
    print("\n" + text + "\n")
    (work / f"comparison-{ours_dir}.json").write_text(json.dumps({**results, "physical_limit": limit}, indent=1))
    if ns.markdown:
        Path(ns.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
