"""Which model and selection fits on which hardware: a markdown table computed from the memory plan.

Each model is built from its published configuration on the meta device (no weights, no download), the
selection is a `ParamMap` of it, and `gradiend.memory.run_shape` + `plan_memory` give the bytes a training
run needs per GPU (one GPU; or N GPUs with a sharded GRADIEND: `torchrun --nproc-per-node N`,
`shard_gradiend=True`, the trained weights gathered into rank 0's host memory: `sharded_final_weights="rank0_host"`,
the default, which `Trainer.train()` and `gradiend train` use)
and on the host (best checkpoint; for the sharded run rank 0's, which also receives the full weights). A GPU
"fits" when everything the plan puts on it (base model included) stays below its memory less `--reserve` GiB
for the CUDA context and the allocator's slack. Sizes are GiB (2^30 bytes; a card sold as "80 GB" has
80 GiB). Defaults: float32 GRADIEND with a decoder bias (rows marked "no decoder bias": `bias_decoder=False`),
source alternative / target diff, `train_batch_size` 8 at 128 tokens (the activation estimate), BERT/GPT-2
in float32, Llama in bfloat16.

    python bench/memory_table.py                   # the README tables
    python bench/memory_table.py --batch-size 32 --reserve 0
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, GPT2Config, LlamaConfig

from gradiend.arguments import TrainingArguments
from gradiend.memory import RunShape, plan_memory, run_shape
from gradiend.params import ParamMap

GB = 2**30  # GiB: a card sold as "80 GB" has 80 GiB (81,920 MiB)
GPUS = (24, 80)  # GiB per GPU
SHARDED = 8


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    config: Callable[[], object]
    loader: type
    dtype: torch.dtype
    selections: dict[str, list[str] | None]  # None: the default (whole backbone)


MODELS = (
    Model("BERT-base", BertConfig, AutoModelForMaskedLM, torch.float32,
          {"full backbone": None, "attention only": ["bert.encoder.layer.*.attention.*"],
           "one MLP block (layer 6)": ["bert.encoder.layer.5.intermediate.*", "bert.encoder.layer.5.output.dense.*"]}),
    Model("GPT-2 (124M)", GPT2Config, AutoModelForCausalLM, torch.float32,
          {"full backbone": None, "attention only": ["transformer.h.*.attn.*"],
           "one MLP block (layer 6)": ["transformer.h.5.mlp.*"]}),
    Model("Llama-3-8B", lambda: LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False),
        AutoModelForCausalLM, torch.bfloat16,
        {"full backbone": None, "attention only": ["model.layers.*.self_attn.*"],
         "one MLP block (layer 16)": ["model.layers.15.mlp.*"]}),
)


def meta_model(spec: Model) -> torch.nn.Module:
    """The model of `spec`'s configuration on the meta device, in its dtype (shapes only)."""
    with torch.device("meta"):
        return spec.loader.from_config(spec.config(), dtype=spec.dtype)


NO_BIAS = {("Llama-3-8B", "full backbone")}  # shown again with bias_decoder=False
BREAKDOWN = ("Llama-3-8B", "full backbone")  # the per-component table of the sharded run


def shapes(args: TrainingArguments) -> list[tuple[str, str, int, RunShape]]:
    """(model, selection label, inputs, one-GPU run shape) per table row."""
    out = []
    for spec in MODELS:
        base = meta_model(spec)
        for label, patterns in spec.selections.items():
            param_map = ParamMap.select(base, patterns)
            shape = run_shape(base, param_map, args, bias_decoder=args.bias_decoder, base_loaded=False)
            out.append((spec.name, label, param_map.size, shape))
            if (spec.name, label) in NO_BIAS and shape.bias_decoder:
                out.append((spec.name, f"{label}, no decoder bias", param_map.size,
                            dataclasses.replace(shape, bias_decoder=False)))
    return out


def sharded(shape: RunShape) -> RunShape:
    """The run on `SHARDED` GPUs: a sharded GRADIEND whose weights end in rank 0's host memory."""
    return dataclasses.replace(shape, shards=SHARDED, gather_to_main_host=True, gradient_buffer_sets=1)


def rows(args: TrainingArguments, reserve: float) -> list[list[str]]:
    """One table row per model × selection."""
    out = []
    for name, label, size, shape in shapes(args):
        one, many = plan_memory(shape), plan_memory(sharded(shape))
        gpu_one, gpu_many = one.needed("device"), many.needed("device")
        out.append([name, label, f"{size / 1e6:,.1f}M", _gb(one.gradiend_bytes), _gb(gpu_one),
                    *(_fits(gpu_one, s, reserve) for s in GPUS), _gb(one.needed("host")), _gb(gpu_many),
                    *(_fits(gpu_many, s, reserve) for s in GPUS), _gb(many.needed("host"))])
    return out


def _gb(n: int) -> str:
    return f"{n / GB:,.1f}"


def _fits(need: int, size: int, reserve: float) -> str:
    return "yes" if need <= (size - reserve) * GB else "no"


def table(args: TrainingArguments, reserve: float) -> str:
    head = ["model", "selection", "inputs", "GRADIEND state GiB", "1 GPU: GiB", *(f"{s} GiB" for s in GPUS),
            "host GiB", f"{SHARDED} GPUs sharded: GiB/GPU", *(f"{SHARDED}×{s} GiB" for s in GPUS),
            "rank 0 host GiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows(args, reserve)]
    return "\n".join(lines)


def breakdown(args: TrainingArguments) -> str:
    """GiB per GPU and on rank 0's host by component, of the `BREAKDOWN` model's sharded run, with and without
    the decoder bias."""
    found = [(label, shape) for name, label, _, shape in shapes(args)
             if name == BREAKDOWN[0] and (label == BREAKDOWN[1] or label.startswith(f"{BREAKDOWN[1]},"))]
    plans = [(label, plan_memory(sharded(shape))) for label, shape in found]
    names = [c.name for c in plans[0][1].components]
    head = ["component", "where", *(label for label, _ in plans)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "|".join("---:" for _ in plans) + "|"]
    for name in names:
        where = next(c.where for c in plans[0][1].components if c.name == name)
        values = [plan.bytes(name) for _, plan in plans]
        if any(values):
            lines.append(f"| {name} | {where} | " + " | ".join(_gb(v) for v in values) + " |")
    lines.append("| **per GPU** | device | " + " | ".join(_gb(p.needed("device")) for _, p in plans) + " |")
    lines.append("| **rank 0 host** | host | " + " | ".join(_gb(p.needed("host")) for _, p in plans) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8, help="train_batch_size (activation estimate)")
    parser.add_argument("--reserve", type=float, default=2.0, help="GiB per GPU kept free (CUDA context, slack)")
    parser.add_argument("--no-bias", action="store_true", help="bias_decoder=False")
    opts = parser.parse_args()
    args = TrainingArguments(train_batch_size=opts.batch_size, bias_decoder=not opts.no_bias)
    print(table(args, opts.reserve))
    print()
    print(breakdown(args))


if __name__ == "__main__":
    main()
