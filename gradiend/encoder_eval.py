"""Encoder evaluation: which rows to encode, encoding them, and the metrics on the encodings."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from gradiend import distributed
from gradiend.data import MASK, cap_per_class, mask_random_word, prepare_rows
from gradiend.experiment import atomic_write_json, atomic_write_with, fingerprint, read_json, short_hash
from gradiend.metrics import count_by_group, mean_by_group, pearson
from gradiend.records import EncoderMeta

if TYPE_CHECKING:
    from gradiend.model_with_gradiend import ModelWithGradiend

logger = logging.getLogger(__name__)

TRAINING = "training"
NEUTRAL_MASKED = "neutral_training_masked"
NEUTRAL_DATASET = "neutral_dataset"
NEUTRAL_BOUNDS = (-0.5, 0.5)


def build_encoder_frame(rows: pd.DataFrame, pair: Sequence[str], *, neutral_texts: Sequence[str] | None = None,
                        max_size: int | None = None, seed: int | None = 0,
                        excluded_words: Iterable[str] = (), mask: str = MASK,
                        usable: Callable[[str], bool] | None = None,
                        context_ok: Callable[[str], bool] | None = None) -> pd.DataFrame:
    """Rows to encode: the pair's rows of one split plus the two neutral variants.

    `neutral_training_masked`: the split's texts with the slot filled by the factual token and
    another (non-target) word masked; `neutral_dataset`: the same on feature-free texts.
    `usable` (a word) and `context_ok` (the masked text) restrict which words may be masked.
    """
    rows = cap_per_class(rows, max_size, seed)
    frame = pd.DataFrame({
        "text": rows["masked"].to_numpy(), "factual": rows["factual"].to_numpy(),
        "alternative": rows["alternative"].to_numpy(), "label": rows["label"].to_numpy(),
        "factual_class": rows["factual_class"].to_numpy(), "alternative_class": rows["alternative_class"].to_numpy(),
        "type": TRAINING, "data_split": rows["split"].to_numpy()})
    excluded = {w.lower() for w in excluded_words} | {t.lower() for t in rows["factual"]} | {
        t.lower() for t in rows["alternative"]}
    rng = np.random.default_rng(seed)
    filled = [t.replace(mask, f) for t, f in zip(rows["masked"], rows["factual"], strict=True)]
    parts = [frame, _neutral_part(mask_random_word(filled, excluded, rng, mask, usable, context_ok), NEUTRAL_MASKED)]
    if neutral_texts is not None:
        texts = list(neutral_texts)
        if max_size is not None and len(texts) > max_size:
            texts = [texts[i] for i in sorted(rng.choice(len(texts), size=max_size, replace=False))]
        parts.append(_neutral_part(mask_random_word(texts, excluded, rng, mask, usable, context_ok), NEUTRAL_DATASET))
    return pd.concat(parts, ignore_index=True)


def _neutral_part(masked: pd.DataFrame, kind: str) -> pd.DataFrame:
    return pd.DataFrame({"text": masked["masked"], "factual": masked["factual"], "alternative": masked["factual"],
                         "label": 0, "factual_class": "neutral", "alternative_class": "neutral", "type": kind,
                         "data_split": ""})


def encode_frame(model: ModelWithGradiend, frame: pd.DataFrame, batch_size: int = 32,
                 show_progress: bool = True) -> pd.DataFrame:
    """Add an `encoded` column (feature 0; `encoded_<j>` for further features).

    Target-pair rows use the GRADIEND's training source; neutral rows the factual gradient.
    Several processes (torchrun): each rank encodes its share of the rows, all ranks get every value.
    """
    frame = frame.copy()
    lo, hi = distributed.my_share(len(frame))
    values = distributed.gather_rows(_encoded_values(model, frame.iloc[lo:hi], batch_size, show_progress), len(frame))
    frame["encoded"] = values[:, 0]
    for j in range(1, values.shape[1]):
        frame[f"encoded_{j}"] = values[:, j]
    return frame


def _encoded_values(model: ModelWithGradiend, frame: pd.DataFrame, batch_size: int,
                    show_progress: bool) -> np.ndarray:
    """(rows × latent_dim) encodings of `frame`'s rows, each group with its gradient kind."""
    values = np.zeros((len(frame), model.config.latent_dim), dtype=np.float32)
    groups = [(frame["type"] == TRAINING).to_numpy(), (frame["type"] != TRAINING).to_numpy()]
    kinds = [model.config.source, "factual"]
    total = len(frame)
    with tqdm(total=total, desc="Encoding", disable=not show_progress or total == 0, leave=False) as bar:
        for selected, kind in zip(groups, kinds, strict=True):
            idx = np.flatnonzero(selected)
            for start in range(0, len(idx), batch_size):
                chunk = idx[start:start + batch_size]
                sub = frame.iloc[chunk]
                values[chunk] = model.encode(list(sub["text"]), list(sub["factual"]), list(sub["alternative"]),
                                             kind=kind, batch_size=batch_size)
                bar.update(len(chunk))
    return values


def _ternary(values: np.ndarray) -> np.ndarray:
    low, high = NEUTRAL_BOUNDS
    return np.where(values <= low, -1, np.where(values >= high, 1, 0))


def _block(encoded: np.ndarray, labels: np.ndarray, binary: bool = False) -> dict[str, Any]:
    if binary:
        accuracy = float(np.mean(np.where(encoded >= 0, 1, -1) == labels)) if len(labels) else 0.0
    else:
        accuracy = float(np.mean(_ternary(encoded) == labels)) if len(labels) else 0.0
    return {"correlation": pearson(encoded, labels), "accuracy": accuracy, "n": len(labels)}


def encoder_metrics(frame: pd.DataFrame, pair: Sequence[str]) -> dict[str, Any]:
    """Correlation, accuracies and mean encodings by class and by row type.

    * `correlation` / `accuracy`: the pair's rows only (labels ±1): Pearson of h with the label,
      and the ternary accuracy below.
    * `all_data_correlation` / `all_data_accuracy` (also in `all_data`): every row, neutral rows
      labelled 0. The ternary classification reads h ≥ 0.5 as class A (+1), h ≤ −0.5 as class B
      (−1) and |h| < 0.5 as neutral (0) (`NEUTRAL_BOUNDS`); accuracy = share of rows whose
      reading equals their label. A neuron that fires on neutral text scores low on both.
    * `mean_by_feature_class` (`n_by_feature_class`): mean h (rows) per factual class of the
      non-neutral rows, the pair's classes and, with `include_other_classes`, every other class
      (label 0); the neutral variants are in `neutral_mean_by_type`.
    * `neutral_abs_mean_by_type`: mean |h| per neutral variant (0 = perfectly quiet; the signed
      `neutral_mean_by_type` can be 0 while every neutral text encodes to ±1), and
      `neutral_within_bounds_by_type`: the share of those rows with |h| < 0.5.
    """
    enc = frame["encoded"].to_numpy(dtype=float)
    lab = frame["label"].to_numpy(dtype=float)
    training = (frame["type"] == TRAINING).to_numpy()
    target = np.isin(lab, (1, -1)) & training
    by_type = {t: float(frame.loc[frame["type"] == t, "encoded"].mean()) for t in frame["type"].unique()}
    by_class = {str(c): float(frame.loc[training & (frame["factual_class"] == c).to_numpy(), "encoded"].mean())
                for c in pair if (training & (frame["factual_class"] == c).to_numpy()).any()}
    neutral = {t: v for t, v in by_type.items() if t != TRAINING}
    abs_by_type = {t: float(frame.loc[frame["type"] == t, "encoded"].abs().mean()) for t in by_type}
    low, high = NEUTRAL_BOUNDS
    within = {t: float(frame.loc[frame["type"] == t, "encoded"].between(low, high, inclusive="neither").mean())
              for t in neutral}
    training_only = _block(enc[training], lab[training])
    all_data = _block(enc, lab)
    return {
        "n_samples": len(frame),
        "sample_counts": {str(t): int(n) for t, n in frame["type"].value_counts().items()},
        "correlation": training_only["correlation"],
        "accuracy": training_only["accuracy"],
        "all_data_correlation": all_data["correlation"],
        "all_data_accuracy": all_data["accuracy"],
        "training_only": training_only,
        "all_data": all_data,
        "target_classes_only": _block(enc[target], lab[target], binary=True),
        "mean_by_class": by_class,
        "mean_by_feature_class": mean_by_group(enc[training], frame["factual_class"].to_numpy()[training]),
        "n_by_feature_class": count_by_group(frame["factual_class"].to_numpy()[training]),
        "mean_by_type": by_type,
        "abs_mean_by_type": abs_by_type,
        "neutral_mean_by_type": neutral,
        "neutral_abs_mean_by_type": {t: abs_by_type[t] for t in neutral},
        "neutral_within_bounds_by_type": within,
        "std_by_class": {str(c): float(frame.loc[training & (frame["factual_class"] == c).to_numpy(),
                                                  "encoded"].std(ddof=0)) for c in by_class},
        "boundaries": {"neutral_lower": NEUTRAL_BOUNDS[0], "neutral_upper": NEUTRAL_BOUNDS[1], "binary": 0.0},
        "label_value_to_class_name": {"1": pair[0], "-1": pair[1], "0": "neutral"},
    }


@dataclass(frozen=True)
class EncoderCache:
    """Where one split's encodings are cached, and what identifies the model that made them."""

    csv: Path
    meta: Path
    model_identity: Mapping[str, Any]


def split_encodings(model: ModelWithGradiend, rows: pd.DataFrame, pair: Sequence[str], split: str, *,
                    max_size: int | None = None, neutral_texts: Sequence[str] | None = None, seed: int | None = 0,
                    batch_size: int = 32, show_progress: bool = True, cache: EncoderCache | None = None,
                    use_cache: bool = True, excluded_words: Iterable[str] = ()) -> pd.DataFrame:
    """Encode the pair's rows of `split` plus both neutral variants; reuse a cached result of the same inputs.

    Words of every target token in `rows`, and `excluded_words`, are never masked in the neutral variants.
    """
    extra = sorted({str(w).lower() for w in excluded_words})
    purpose = f"encoder evaluation on {split!r}"
    part = prepare_rows(rows, split, pair, model.objective, purpose)
    neutral = list(neutral_texts) if neutral_texts is not None else None
    key = fingerprint({**(cache.model_identity if cache else {}), "split": split, "max_size": max_size,
                       "rows": short_hash(part.to_csv(index=False)), "seed": seed,
                       "neutral": short_hash("\n".join(neutral or [])), **({"excluded": extra} if extra else {})})
    if cache is not None and use_cache and cache.csv.is_file() and cache.meta.is_file() \
            and EncoderMeta.from_json(read_json(cache.meta, "encoder cache metadata")).fingerprint == key:
        logger.info("Reusing cached encodings %s", cache.csv)
        return pd.read_csv(cache.csv, keep_default_na=False)
    targets = {t.lower() for t in rows["factual"]} | {t.lower() for t in rows["alternative"]} | set(extra)
    frame = build_encoder_frame(part, pair, neutral_texts=neutral, max_size=max_size, seed=seed,
                                excluded_words=targets, usable=model.objective.is_known,
                                context_ok=model.objective.has_context)
    frame = encode_frame(model, frame, batch_size, show_progress)
    if cache is not None:
        atomic_write_with(cache.csv, lambda tmp: frame.to_csv(tmp, index=False))
        atomic_write_json(cache.meta, {"fingerprint": key, "model": cache.model_identity.get("weights"),
                                       "split": split, "max_size": max_size,
                                       "metrics": encoder_metrics(frame, pair)})
    return frame
