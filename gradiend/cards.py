"""Model cards for the Hugging Face Hub: one for a GRADIEND checkpoint, one for a rewritten base model.

Both are `huggingface_hub.ModelCard` objects whose metadata is built with `ModelCardData`, so the
YAML header is what the Hub expects: `base_model` is set only when the base model is a Hub id (a
local path is invalid metadata), together with `base_model_relation`. `huggingface_hub` is imported
inside the functions, so that `import gradiend` stays cheap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

    from gradiend.model import GradiendConfig
    from gradiend.records import DecoderSelection, EncoderMetrics, TrainingRecord

logger = logging.getLogger(__name__)

LIBRARY_NAME = "gradiend"
MAX_LISTED_TENSORS = 12
_LMS_TEXT = {
    "mlm": "LMS: masked-token accuracy on neutral text.",
    "clm": "LMS: 1 / (1 + mean next-token cross-entropy) on neutral text.",
    "clm_mlm_head": "LMS: 1 / (1 + mean next-token cross-entropy) on neutral text (the causal LM's own head).",
}
_PIPELINE_TAGS = {"mlm": "fill-mask", "clm": "text-generation", "clm_mlm_head": "text-generation"}


def hub_model_id(name: str | os.PathLike | None, resolved: str | None = None) -> str | None:
    """`name` when it names a model on the Hugging Face Hub, else None.

    A local path is never a Hub id: one that exists now, one that looks like a path (``./m``,
    ``/m``, ``a/b/c``), or one that was local when the checkpoint was made (`resolved`, the
    recorded absolute path, is then absolute).
    """
    if name is None or not str(name).strip():
        return None
    text = os.fspath(name)
    if resolved is not None and os.path.isabs(resolved):
        return None
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1 or Path(text).expanduser().exists():
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return None
    return text


@dataclass
class CheckpointResults:
    """What a GRADIEND card reports: the checkpoint's config and the experiment's current results."""

    config: GradiendConfig
    training: TrainingRecord | None = None
    encoder: dict[str, EncoderMetrics] = field(default_factory=dict)  # split label → metrics
    decoder: dict[str, DecoderSelection] = field(default_factory=dict)  # selection key → selection
    written_by: str | None = None  # the gradiend version that wrote the checkpoint


def _card(data: Any, body: str) -> ModelCard:
    """A ModelCard from metadata and a Markdown body; parsing it back validates the YAML header."""
    from huggingface_hub import ModelCard

    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n")


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec) if isinstance(value, (int, float)) else str(value).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]


def _feature_lines(config: GradiendConfig, base_text: str) -> list[str]:
    direction = config.feature_class_encoding_direction
    classes = ", ".join(f"`{c}` (encoded as {direction.get(c, '?'):+})" if c in direction else f"`{c}`"
                        for c in config.feature_classes) or "not recorded"
    kind = "masked" if config.objective == "mlm" else "causal"
    return [f"A GRADIEND feature neuron learned from the parameter gradients of the {kind} LM {base_text}. "
            f"The encoder maps a gradient to one "
            f"feature value; the decoder maps a feature value back to a weight update.", "",
            f"- **Feature classes:** {classes}",
            f"- **Gradients:** source `{config.source}`, target `{config.target}`, latent dimension "
            f"{config.latent_dim}, activation `{config.activation_encoder}`, weights in `{config.gradiend_dtype}` "
            f"(base model in `{config.torch_dtype}`)"]


def _parameter_lines(config: GradiendConfig) -> list[str]:
    sizes = []
    for spec in config.param_map:
        count = spec.get("kept")
        if count is None:
            count = 1
            for dim in spec.get("shape", ()):
                count *= int(dim)
        sizes.append((spec["name"], count))
    lines = ["## Selected parameters", "",
             f"{config.input_dim:,} entries in {len(sizes)} tensors of the base model:", ""]
    lines += _table(("tensor", "entries"), [(n, f"{c:,}") for n, c in sizes[:MAX_LISTED_TENSORS]])
    if len(sizes) > MAX_LISTED_TENSORS:
        lines.append(f"| … {len(sizes) - MAX_LISTED_TENSORS} more (see `gradiend_config.json`) | |")
    return lines


def _encoder_lines(encoder: Mapping[str, EncoderMetrics], classes: Sequence[str]) -> list[str]:
    if not encoder:
        return ["## Encoder evaluation", "", "Not evaluated when this card was written."]
    neutral_types = sorted({t for m in encoder.values() for t in m.neutral_mean_by_type})
    header = ["split", "rows", "correlation", "accuracy", *(f"mean `{c}`" for c in classes),
              *(f"mean {t}" for t in neutral_types)]
    rows = [[split, m.n_samples, m.correlation, m.accuracy, *(m.mean_by_class.get(c) for c in classes),
             *(m.neutral_mean_by_type.get(t) for t in neutral_types)] for split, m in sorted(encoder.items())]
    return ["## Encoder evaluation", "", *_table(header, rows), "",
            "Correlation and accuracy of the feature value with the class labels (+1 / −1) on the training-like "
            "rows; the neutral columns are the mean feature value on feature-free text (ideally near 0)."]


def _decoder_lines(decoder: Mapping[str, DecoderSelection]) -> list[str]:
    if not decoder:
        return ["## Decoder selection", "", "Not evaluated when this card was written."]
    rows = [[key, s.feature_factor, s.learning_rate, s.value, s.base_value, s.lms, s.base_lms]
            for key, s in sorted(decoder.items())]
    return ["## Decoder selection", "",
            *_table(("target", "feature_factor", "learning_rate", "metric", "metric (base)", "LMS", "LMS (base)"),
                    rows)]


def _training_lines(training: TrainingRecord | None) -> list[str]:
    if training is None:
        return []
    best = training.best_score_checkpoint
    stats = [("training steps", training.training_stats.get("global_step")),
             ("training rows", training.training_stats.get("n_train_rows")),
             ("best evaluation correlation", best.correlation if best else None),
             ("at step", best.global_step if best else None),
             ("training time (s)", training.time.get("total"))]
    if training.convergence_info is not None:
        stats.append(("converged", training.convergence_info.converged))
        if training.convergence_info.reason:
            stats.append(("convergence note", training.convergence_info.reason))
    return ["## Training", "", *_table(("quantity", "value"), [s for s in stats if s[1] is not None])]


def _usage_lines(repo_id: str | None, decoder: Mapping[str, DecoderSelection]) -> list[str]:
    source = repo_id or "path/to/this/checkpoint"
    chosen = next(iter(sorted(decoder.items())), None)
    if chosen is not None:
        key, sel = chosen
        apply = (f"rewritten = model.rewrite_base_model(learning_rate={sel.learning_rate:g}, "
                 f"feature_factor={sel.feature_factor:g})  # the {key} selection")
    else:
        apply = ("rewritten = model.rewrite_base_model(learning_rate=1e-3, feature_factor=1.0)  "
                 "# choose both with the decoder grid")
    return ["## Use", "", "```python", "from gradiend import ModelWithGradiend",
            f'model = ModelWithGradiend.from_pretrained("{source}")  # loads the base model too', apply, "```", "",
            "`model.encode(texts, factual_tokens, alternative_tokens)` gives the feature values of new texts."]


def gradiend_card(results: CheckpointResults, repo_id: str | None = None) -> ModelCard:
    """The model card of a GRADIEND checkpoint (Hub metadata + what it is, how it did, how to use it)."""
    from huggingface_hub import ModelCardData

    from gradiend._version import __version__

    config = results.config
    base_id = hub_model_id(config.base_model, config.base_model_resolved)
    base_text = f"[`{base_id}`](https://huggingface.co/{base_id})" if base_id else \
        f"`{Path(config.base_model or 'unknown').name}` (a local model, not on the Hub)"
    data = ModelCardData(library_name=LIBRARY_NAME, base_model=base_id,
                         tags=[LIBRARY_NAME, "interpretability", "feature-neuron", config.objective],
                         **({"base_model_relation": "adapter"} if base_id else {}))
    title = " vs ".join(config.feature_classes) or "feature"
    body = [f"# GRADIEND: {title}", "", *_feature_lines(config, base_text), "", *_parameter_lines(config), "",
            *_training_lines(results.training), "", *_encoder_lines(results.encoder, config.feature_classes), "",
            *_decoder_lines(results.decoder), "", *_usage_lines(repo_id, results.decoder), "",
            f"Card made with gradiend {__version__}; checkpoint written by gradiend {results.written_by or 'unknown'}."]
    return _card(data, "\n".join(body))


def rewrite_card(info: Mapping[str, Any]) -> ModelCard:
    """The model card of a base model rewritten by a GRADIEND: valid metadata and the edit that made it.

    `info`: base_model, base_model_resolved (optional), key, target_class, strengthen, feature_classes,
    feature_factor, learning_rate, value, base_value, lms, base_lms, n_parameters, n_tensors, objective,
    library_version.
    """
    from huggingface_hub import ModelCardData

    objective = info.get("objective", "mlm")
    base_id = hub_model_id(info["base_model"], info.get("base_model_resolved"))
    base_name = base_id or Path(str(info["base_model"])).name
    data = ModelCardData(library_name="transformers", base_model=base_id, pipeline_tag=_PIPELINE_TAGS.get(objective),
                         tags=[LIBRARY_NAME, str(info["key"])],
                         **({"base_model_relation": "finetune"} if base_id else {}))
    verb = "strengthening" if info["strengthen"] else "weakening"
    loader = "AutoModelForMaskedLM" if objective == "mlm" else "AutoModelForCausalLM"
    body = [
        f"# {base_name} rewritten by GRADIEND ({info['key']})", "",
        f"This checkpoint is `{base_name}`{'' if base_id else ' (a local model, not on the Hub)'} with the weights "
        f"θ' = θ + learning_rate · dec(feature_factor) of a GRADIEND feature neuron trained on the classes "
        f"{list(info['feature_classes'])} ({verb} `{info['target_class']}`).", "",
        *_table(("quantity", "value"), [
            ("feature_factor", format(info["feature_factor"], "g")),
            ("learning_rate", format(info["learning_rate"], "g")),
            ("metric (selected)", info.get("value")), ("metric (base model)", info.get("base_value")),
            ("LMS (selected)", info.get("lms")), ("LMS (base model)", info.get("base_lms")),
            ("changed parameters", f"{info['n_parameters']:,} entries in {info['n_tensors']} tensors"),
            ("gradiend version", info["library_version"])]), "",
        "Strengthen metric: mean probability of the class's tokens on the other class's rows; weaken metric: "
        "1 − mean probability of the class's tokens on its own rows. " + _LMS_TEXT.get(objective, ""), "",
        "## Use", "", "```python", f"from transformers import {loader}, AutoTokenizer",
        f'model = {loader}.from_pretrained("path/or/repo-id")',
        'tokenizer = AutoTokenizer.from_pretrained("path/or/repo-id")', "```",
    ]
    return _card(data, "\n".join(body))
