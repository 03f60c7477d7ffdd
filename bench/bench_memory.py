"""Memory plan vs measurement for real training runs on the CPU, per component, for a few model sizes.

Each size is a random-config BERT MLM whose backbone (word embeddings included) is selected whole, so
the GRADIEND dominates. Two measurements of a short training run (with in-training evaluation, so a
best checkpoint exists):

- held: after `fit`, the bytes of the distinct tensor storages the loop objects hold, by component
  (GRADIEND weights, AdamW state, `.grad` buffers, residual, gradient buffers, best checkpoint);
  exact counts, compared one by one with the plan.
- peak: the process's peak resident memory (VmHWM, reset via /proc/self/clear_refs once the base
  model is loaded) minus the resident memory at that moment. It includes every transient (autograd
  gradients of the selected tensors, activations, allocator slack) and is compared with the plan's
  GRADIEND part + engine gradients + activation estimate (the base model is already resident).

Each size runs in a fresh process (memory freed by an earlier run would be reused without showing).

    python bench/bench_memory.py                 # the default sizes, a table
    python bench/bench_memory.py --sizes 2000:128 --json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import make_rows, make_tokenizer  # noqa: E402
from transformers import BertConfig, BertForMaskedLM  # noqa: E402

from gradiend.arguments import TrainingArguments  # noqa: E402
from gradiend.data import unify  # noqa: E402
from gradiend.gradient_source import GradientSource  # noqa: E402
from gradiend.memory import plan_for_model  # noqa: E402
from gradiend.model_with_gradiend import ModelWithGradiend  # noqa: E402
from gradiend.training import TrainingLoop, evaluate_during_training  # noqa: E402

BATCH = 4
SEQ_LEN = 16  # the longest tokenised row of the test data is shorter; an upper bound for the estimate


def build_model(directory: Path, vocab: int, hidden: int) -> str:
    tokenizer = make_tokenizer(directory)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=4 * hidden, max_position_embeddings=64)
    BertForMaskedLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _storages(tensors) -> dict[int, int]:
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t is not None}


def held_by_component(loop: TrainingLoop) -> dict[str, int]:
    """Bytes of the distinct storages held by the loop's objects, by plan component."""
    g = loop.gradiend
    weights = _storages(g.parameters())
    grads = _storages(p.grad for p in g.parameters())
    state = _storages(t for s in loop.optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    buffers = _storages(loop._buffers.values())
    residual = {k: v for k, v in _storages([loop._fused.residual]).items() if k not in grads}
    best = _storages((loop.history.best_state or {}).values())
    return {"gradiend_weights": sum(weights.values()), "optimizer_state": sum(state.values()),
            "grad_buffers": sum(grads.values()), "residual": sum(residual.values()),
            "gradient_buffers": sum(buffers.values()), "best_checkpoint": sum(best.values()),
            **({"class_target_sums": loop._targets.sums.untyped_storage().nbytes()} if loop._targets else {})}


class _HeldAtEnd(TrainingLoop):
    """Records `held_by_component` at the end of training, before the loop releases its `.grad` buffers."""

    def _release_gradients(self) -> None:
        self.held = held_by_component(self)
        super()._release_gradients()


def measure(vocab: int, hidden: int, steps: int = 4) -> dict:
    """Plan and measurements of one short training run (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp), vocab, hidden)
        rows, pair = unify(make_rows(), target_classes=["3SG", "3PL"], seed=0)
        train = rows[rows["split"] == "train"].reset_index(drop=True)
        val = rows[rows["split"] == "validation"].groupby("factual_class").head(4)  # enough for a correlation
        template = ModelWithGradiend.create(model_dir, feature_classes=pair, seed=0, shape_only=True)
        args = TrainingArguments(train_batch_size=BATCH, max_steps=steps, eval_steps=max(1, steps // 2), seed=0,
                                 show_progress=False, scale_estimation_batches=2)
        n = template.param_map.size
        plan = plan_for_model(template, args, seq_len=SEQ_LEN)
        template.engine.gradients(list(val["masked"][:1]), list(val["factual"][:1]), list(val["alternative"][:1]),
                                  ["alternative"])  # warm-up: lazy imports and kernels, not counted
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        start = _status_kb("VmRSS")
        model = template.with_new_gradiend(0)
        evaluate = functools.partial(evaluate_during_training, model, val.reset_index(drop=True), pair, 8)
        loop = _HeldAtEnd(model, args, GradientSource(model.engine), evaluate)
        loop.fit(train)
        peak = _status_kb("VmHWM") - start
        held = loop.held
    planned_peak = plan.gradiend_bytes + plan.bytes("engine_gradients") + plan.bytes("base_activations")
    return {"vocab": vocab, "hidden": hidden, "n_inputs": n, "plan": plan.as_dict(), "held": held,
            "engine_gradients": plan.bytes("engine_gradients"), "activations": plan.bytes("base_activations"),
            "planned_peak": planned_peak, "measured_peak": peak, "per_input_plan": plan.per_input}


def _print(result: dict) -> None:
    print(f"\nvocab {result['vocab']}, hidden {result['hidden']}: {result['n_inputs']:,} selected inputs")
    print(f"{'component':<18}{'plan MB':>10}{'held MB':>10}")
    for name, planned in result["plan"].items():
        held = sum(result["held"].values()) if name == "total" else result["held"][name]
        print(f"{name:<18}{planned / 1e6:>10.1f}{held / 1e6:>10.1f}")
    print(f"{'+ engine grads':<18}{result['engine_gradients'] / 1e6:>10.1f}")
    print(f"{'+ activations':<18}{result['activations'] / 1e6:>10.1f}   (estimate)")
    ratio = result["measured_peak"] / result["planned_peak"]
    print(f"peak: plan {result['planned_peak'] / 1e6:.1f} MB, measured {result['measured_peak'] / 1e6:.1f} MB "
          f"(measured/plan {ratio:.3f}); plan {result['per_input_plan']:.1f} B per input")


def measure_in_subprocess(vocab: int, hidden: int, steps: int) -> dict:
    """`measure` in a fresh process: memory freed by an earlier run would otherwise be reused unseen.

    glibc's mmap threshold is fixed at 128 KiB there (which also turns its dynamic raising off), so every
    large tensor is its own mapping, returned on free: the resident peak then follows the live tensors
    instead of depending on which freed blocks happened to stay in the heap.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    out = subprocess.run([sys.executable, __file__, "--one", f"{vocab}:{hidden}", "--steps", str(steps)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["8000:128", "30000:256"],
                        help="VOCAB:HIDDEN per model (2 layers each)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="one JSON object per size instead of a table")
    parser.add_argument("--one", help="measure VOCAB:HIDDEN in this process and print its JSON (internal)")
    opts = parser.parse_args()
    if opts.one:
        print(json.dumps(measure(*(int(x) for x in opts.one.split(":")), opts.steps)))
        return
    for size in opts.sizes:
        vocab, hidden = (int(x) for x in size.split(":"))
        result = measure_in_subprocess(vocab, hidden, opts.steps)
        print(json.dumps(result)) if opts.json else _print(result)


if __name__ == "__main__":
    main()
