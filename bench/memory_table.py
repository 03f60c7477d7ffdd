"""Which model and selection fits on which hardware: a markdown table computed from the memory plan.

Each model is built from its published configuration on the meta device (no weights, no download), the
selection is a `ParamMap` of it, and `gradiend.memory.run_shape` + `plan_memory` give the bytes a training
run needs per GPU (one GPU; or N GPUs with a sharded GRADIEND: `torchrun --nproc-per-node N`,
`shard_gradiend=True`) and on the host (best checkpoint, per rank). A GPU "fits" when everything the plan
puts on it (base model included) stays below its memory less `--reserve` GB for the CUDA context and the
allocator's slack. Defaults: float32 GRADIEND with a decoder bias, source alternative / target diff,
`train_batch_size` 8 at 128 tokens (the activation estimate), BERT/GPT-2 in float32, Llama in bfloat16.

    python bench/memory_table.py                   # the README table
    python bench/memory_table.py --batch-size 32 --reserve 0
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, GPT2Config, LlamaConfig

from gradiend.arguments import TrainingArguments
from gradiend.memory import plan_memory, run_shape
from gradiend.params import ParamMap

GB = 1e9
GPUS = (24, 80)  # GB per GPU
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


def rows(args: TrainingArguments, reserve: float) -> list[list[str]]:
    """One table row per model × selection."""
    out = []
    for spec in MODELS:
        base = meta_model(spec)
        for label, patterns in spec.selections.items():
            param_map = ParamMap.select(base, patterns)
            shape = run_shape(base, param_map, args, bias_decoder=args.bias_decoder, base_loaded=False)
            one = plan_memory(shape)
            many = plan_memory(dataclasses.replace(shape, shards=SHARDED))
            gpu_one, gpu_many = one.needed("device"), many.needed("device")
            cells = [spec.name, label, f"{param_map.size / 1e6:,.1f}M", _gb(one.gradiend_bytes), _gb(gpu_one),
                     *(_fits(gpu_one, size, reserve) for size in GPUS), _gb(gpu_many),
                     *(_fits(gpu_many, size, reserve) for size in GPUS), _gb(one.needed("host"))]
            out.append(cells)
    return out


def _gb(n: int) -> str:
    return f"{n / GB:,.1f}"


def _fits(need: int, size: int, reserve: float) -> str:
    return "yes" if need <= (size - reserve) * GB else "no"


def table(args: TrainingArguments, reserve: float) -> str:
    head = ["model", "selection", "inputs", "GRADIEND state GB", "1 GPU: GB", *(f"{s} GB" for s in GPUS),
            f"{SHARDED} GPUs sharded: GB/GPU", *(f"{SHARDED}×{s} GB" for s in GPUS), "host GB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows(args, reserve)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8, help="train_batch_size (activation estimate)")
    parser.add_argument("--reserve", type=float, default=2.0, help="GB per GPU kept free (CUDA context, slack)")
    parser.add_argument("--no-bias", action="store_true", help="bias_decoder=False")
    opts = parser.parse_args()
    args = TrainingArguments(train_batch_size=opts.batch_size, bias_decoder=not opts.no_bias)
    print(table(args, opts.reserve))


if __name__ == "__main__":
    main()
