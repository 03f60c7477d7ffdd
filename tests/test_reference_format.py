"""Reading GRADIEND checkpoints of the reference package (gradiend 0.2.x format).

`write_reference_checkpoint` builds such a checkpoint from the format's description (config.json
with format_version 0 / architecture / mapping / metadata, model.safetensors with wrapped-Linear keys,
mapping_indices / mapping_masks safetensors files, gradiend_context.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gradiend.model import GradiendModel
from gradiend.reference_format import (
    ReferenceFormatError,
    convert_reference_checkpoint,
    is_reference_checkpoint,
    load_reference_checkpoint,
    read_reference_gradiend,
)


def write_reference_checkpoint(directory: Path, base_model: str, selection: dict[str, tuple[tuple[int, ...], str,
                               torch.Tensor | None]], *, latent_dim: int = 1, activation_encoder: str = "tanh",
                               bias_decoder: bool = True, context: dict | None = None, seed: int = 0,
                               ) -> dict[str, torch.Tensor]:
    """A reference-format checkpoint; `selection`: name → (shape, repr, mask or index tensor or None).

    Returns the weights written (reference layout: encoder (k, n), decoder (n, k)).
    """
    directory.mkdir(parents=True, exist_ok=True)
    entries, indices, masks = [], {}, {}
    n = 0
    for i, (name, (shape, rep, sel)) in enumerate(selection.items()):
        numel = int(torch.tensor(shape).prod())
        count = numel if rep == "all" else int(sel.to(torch.bool).sum()) if rep == "mask" else int(sel.numel())
        entry = {"name": name, "shape": list(shape), "repr": rep, "num_selected": count}
        if rep == "indices":
            entry["key"] = f"L{i}"
            indices[f"L{i}"] = sel.to(torch.int32)
        elif rep == "mask":
            entry["key"] = f"L{i}"
            masks[f"L{i}"] = sel.to(torch.uint8)
        entries.append(entry)
        n += count
    mapping = {"mode": "mixed", "param_map": entries}
    if indices:
        mapping["indices_file"] = "mapping_indices.safetensors"
        save_file(indices, str(directory / "mapping_indices.safetensors"))
    if masks:
        mapping["masks_file"] = "mapping_masks.safetensors"
        save_file(masks, str(directory / "mapping_masks.safetensors"))
    config = {"format_version": 0,
              "architecture": {"input_dim": n, "latent_dim": latent_dim, "activation_encoder": activation_encoder,
                               "activation_decoder": "id", "bias_decoder": bias_decoder, "torch_dtype": "float32"},
              "mapping": mapping, "metadata": {"base_model": base_model}}
    (directory / "config.json").write_text(json.dumps(config))
    if context is not None:
        (directory / "gradiend_context.json").write_text(json.dumps(context))
    gen = torch.Generator().manual_seed(seed)
    weights = {"encoder.0.linear.weight": torch.randn(latent_dim, n, generator=gen) * 0.1,
               "encoder.0.linear.bias": torch.randn(latent_dim, generator=gen) * 0.1,
               "decoder.0.linear.weight": torch.randn(n, latent_dim, generator=gen)}
    if bias_decoder:
        weights["decoder.0.linear.bias"] = torch.randn(n, generator=gen)
    save_file(weights, str(directory / "model.safetensors"))
    return weights


def _reference_selection(tiny_mlm_dir: str) -> dict:
    from transformers import AutoModelForMaskedLM

    params = dict(AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir).named_parameters())
    layer = "bert.encoder.layer.0.attention.self."
    names = [layer + "query.bias", layer + "key.weight", layer + "value.weight"]
    shapes = [tuple(params[n].shape) for n in names]
    mask = torch.zeros(shapes[1], dtype=torch.bool)
    mask.view(-1)[torch.tensor([3, 1, 40, 7])] = True
    return {names[0]: (shapes[0], "all", None),
            names[1]: (shapes[1], "mask", mask),
            names[2]: (shapes[2], "indices", torch.tensor([9, 2, 30, 5]))}  # deliberately out of order


def _reference_input(selection: dict, grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """The flat input the reference builds: parameters in map order, each in its listed coordinate order."""
    parts = []
    for name, (_, rep, sel) in selection.items():
        flat = grads[name].reshape(-1)
        if rep == "all":
            parts.append(flat)
        elif rep == "mask":
            parts.append(flat[sel.reshape(-1)])
        else:
            parts.append(flat[sel])
    return torch.cat(parts)


def test_detects_reference_checkpoints_only(tmp_path, tiny_mlm_dir):
    write_reference_checkpoint(tmp_path / "ref", tiny_mlm_dir, _reference_selection(tiny_mlm_dir))
    assert is_reference_checkpoint(tmp_path / "ref")
    assert not is_reference_checkpoint(tiny_mlm_dir)  # an HF model's config.json has no "architecture"
    assert not is_reference_checkpoint(tmp_path / "missing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert not is_reference_checkpoint(tmp_path / "broken")


def test_reference_weights_give_the_reference_encoding_and_update(tmp_path, tiny_mlm_dir):
    selection = _reference_selection(tiny_mlm_dir)
    weights = write_reference_checkpoint(tmp_path / "ref", tiny_mlm_dir, selection,
                                         context={"source": "alternative", "target": "diff",
                                                  "feature_class_encoding_direction": {"3PL": -1, "3SG": 1}})
    model = load_reference_checkpoint(tmp_path / "ref")
    assert model.config.feature_classes == ["3SG", "3PL"]
    assert model.config.source == "alternative" and model.config.objective == "mlm"
    gen = torch.Generator().manual_seed(1)
    grads = {name: torch.randn(shape, generator=gen) for name, (shape, _, _) in selection.items()}
    x_ref = _reference_input(selection, grads)
    x_ours = model.param_map.gather([grads[s.name] for s in model.param_map.specs],
                                    torch.empty(model.param_map.size))
    expected = torch.tanh(weights["encoder.0.linear.weight"] @ x_ref + weights["encoder.0.linear.bias"])
    torch.testing.assert_close(model.gradiend.encode(x_ours), expected)
    # the decoded update lands on the same base-model coordinates as the reference's
    h = torch.tensor([0.7])
    update_ref = weights["decoder.0.linear.weight"] @ h + weights["decoder.0.linear.bias"]
    expanded = dict(zip(model.param_map.names, model.param_map.expand(model.update_vector(0.7)), strict=True))
    offset = 0
    for name, (shape, rep, sel) in selection.items():
        coords = torch.arange(int(torch.tensor(shape).prod())) if rep == "all" else (
            torch.nonzero(sel.reshape(-1)).reshape(-1) if rep == "mask" else sel)
        got = expanded[name].reshape(-1)[coords]
        torch.testing.assert_close(got, update_ref[offset:offset + coords.numel()])
        offset += coords.numel()


def test_converted_checkpoint_round_trips_in_our_format(tmp_path, tiny_mlm_dir):
    write_reference_checkpoint(tmp_path / "ref", tiny_mlm_dir, _reference_selection(tiny_mlm_dir), latent_dim=2,
                               activation_encoder="smht", bias_decoder=False)
    gradiend = read_reference_gradiend(tmp_path / "ref")
    assert gradiend.config.activation_encoder == "hardtanh" and gradiend.decoder_bias is None
    assert gradiend.config.source == "factual"  # the reference model's default when no context file exists
    out = convert_reference_checkpoint(tmp_path / "ref", tmp_path / "ours")
    loaded = GradiendModel.from_pretrained(out)
    x = torch.randn(3, gradiend.config.input_dim)
    torch.testing.assert_close(loaded.encode(x), gradiend.encode(x))
    assert loaded.param_index.keys() == gradiend.param_index.keys()


def test_pickled_weights_are_refused_with_the_conversion_recipe(tmp_path, tiny_mlm_dir):
    ref = tmp_path / "ref"
    write_reference_checkpoint(ref, tiny_mlm_dir, _reference_selection(tiny_mlm_dir))
    (ref / "model.safetensors").rename(ref / "pytorch_model.bin")
    with pytest.raises(ReferenceFormatError, match="never unpickles") as info:
        read_reference_gradiend(ref)
    assert "weights_only=True" in str(info.value) and "save_file" in str(info.value)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["architecture"].update(activation_encoder="relu"), "activation_encoder 'relu'"),
    (lambda c: c["architecture"].update(activation_decoder="tanh"), "activation_decoder"),
    (lambda c: c["architecture"].update(input_dim=5), "does not match|selects"),
    (lambda c: c.update(format_version=3), "format_version 3"),
    (lambda c: c.pop("mapping"), "mapping.param_map"),
    (lambda c: c["mapping"].update(indices_file="mapping_indices.pth"), "pickle"),
])
def test_bad_reference_checkpoints_name_the_problem(tmp_path, tiny_mlm_dir, edit, message):
    ref = tmp_path / "ref"
    write_reference_checkpoint(ref, tiny_mlm_dir, _reference_selection(tiny_mlm_dir))
    config = json.loads((ref / "config.json").read_text())
    edit(config)
    (ref / "config.json").write_text(json.dumps(config))
    with pytest.raises(ReferenceFormatError, match=message):
        read_reference_gradiend(ref)


def test_checkpoint_of_another_architecture_is_refused(tmp_path, tiny_mlm_dir):
    write_reference_checkpoint(tmp_path / "ref", tiny_mlm_dir,
                               {"bert.encoder.layer.0.attention.self.query.weight": ((5, 5), "all", None)})
    with pytest.raises(ValueError, match="shape"):
        load_reference_checkpoint(tmp_path / "ref")
