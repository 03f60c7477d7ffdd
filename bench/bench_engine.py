"""Benchmark: our gradient engine vs a naive per-example loop, on the same model, in one process.

Prints seconds per GRADIEND training step (source + target gradients of one batch, then one
optimizer step) and encodings per second (forward-mode batch encodings vs one backward pass per
example), each with the ratio naive / ours.

    python bench/bench_engine.py                 # embedded MiniLM masked LM
    python bench/bench_engine.py --model PATH    # any local masked LM
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gradiend.demo_data import load_demo_data
from gradiend.embedded import embedded_model_path
from gradiend.model_with_gradiend import ModelWithGradiend


def naive_gradient(model, tokenizer, names, text: str, token: str) -> torch.Tensor:
    """What a straightforward implementation does: HF loss with labels, backward, torch.cat."""
    enc = tokenizer(text.replace("[MASK]", tokenizer.mask_token), return_tensors="pt")
    labels = torch.full_like(enc["input_ids"], -100)
    labels[enc["input_ids"] == tokenizer.mask_token_id] = tokenizer.convert_tokens_to_ids(token.lower())
    model.zero_grad(set_to_none=True)
    model(**enc, labels=labels).loss.backward()
    params = dict(model.named_parameters())
    return torch.cat([params[n].grad.reshape(-1) for n in names])


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="local masked LM (default: embedded MiniLM)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--encode-rows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    ns = parser.parse_args()
    torch.manual_seed(0)
    mwg = ModelWithGradiend.create(ns.model or embedded_model_path("mlm"), feature_classes=["3SG", "3PL"])
    model, tok, names = mwg.base_model, mwg.tokenizer, mwg.param_map.names
    rows = load_demo_data()
    sg = rows[rows["label_class"] == "3SG"].head(max(ns.batch_size, ns.encode_rows))
    texts, factual = list(sg["masked"]), list(sg["label"])
    alternative = ["they" if f.islower() else "They" for f in factual]
    b = ns.batch_size
    gradiend = mwg.gradiend
    optimizer = torch.optim.AdamW(gradiend.parameters(), lr=1e-3)

    def gradiend_step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        gradiend.loss(x.unsqueeze(0), y.unsqueeze(0))[0].backward()
        optimizer.step()

    def ours_step() -> None:
        g = mwg.engine.gradients(texts[:b], factual[:b], alternative[:b], ["alternative", "diff"])
        gradiend_step(g["alternative"], g["diff"])

    def naive_step() -> None:
        pairs_f = zip(texts[:b], factual[:b], strict=True)
        pairs_a = zip(texts[:b], alternative[:b], strict=True)
        gf = torch.stack([naive_gradient(model, tok, names, t, f) for t, f in pairs_f]).mean(0)
        ga = torch.stack([naive_gradient(model, tok, names, t, a) for t, a in pairs_a]).mean(0)
        gradiend_step(ga, gf - ga)

    n = ns.encode_rows
    directions = gradiend.encoder_directions().detach()

    def ours_encode() -> None:
        mwg.engine.directional(texts[:n], factual[:n], alternative[:n], "alternative", directions)

    def naive_encode() -> None:
        for t, a in zip(texts[:n], alternative[:n], strict=True):
            directions @ naive_gradient(model, tok, names, t, a)

    print(f"model: {mwg.base_model_path}  selected parameters: {mwg.param_map.size:,}  "
          f"threads: {torch.get_num_threads()}")
    s_ours, s_naive = timed(ours_step, ns.repeats), timed(naive_step, ns.repeats)
    print(f"training step (batch {b}):  ours {s_ours:.3f} s   naive {s_naive:.3f} s   speed-up {s_naive / s_ours:.2f}x")
    e_ours, e_naive = timed(ours_encode, ns.repeats), timed(naive_encode, ns.repeats)
    print(f"encodings ({n} rows):      ours {n / e_ours:.1f}/s   naive {n / e_naive:.1f}/s   "
          f"speed-up {e_naive / e_ours:.2f}x")


if __name__ == "__main__":
    main()
