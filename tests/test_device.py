"""One device setting honoured by every load and reload; loaded models used as they are (never reloaded);
GRADIENDs built on their device in their own dtype; rewrites and seeds that hold no extra copies.

This machine has only a CPU, so a wrong device cannot show as cuda-vs-cpu. Instead `default_device` (what
`device=None` resolves to) is patched to the meta device: a load that ignores the trainer's device falls back
to it and fails or lands on meta, while every load that honours `device="cpu"` lands on the CPU.
"""

from __future__ import annotations

import gc
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import make_rows, make_tokenizer
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer, PreTrainedModel

import gradiend.devices as devices
from gradiend import TextPredictionTrainer, TrainingArguments
from gradiend import runs as runs_module
from gradiend import seeds as seeds_module
from gradiend.devices import device_name, resolve_device
from gradiend.loaded_base import weights_fingerprint
from gradiend.model import GradiendConfig, GradiendModel
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.trainer.trainer import Trainer

PARAMS = ["encoder.layer.1.*"]
CPU = torch.device("cpu")


def _args(experiment: Path, **kw) -> TrainingArguments:
    base = dict(experiment_dir=str(experiment), train_batch_size=4, max_steps=3, eval_steps=3, seed=0,
                show_progress=False, scale_estimation_batches=2, params=PARAMS, use_cache=True)
    return TrainingArguments(**{**base, **kw})


def _train(trainer: Trainer, **kw) -> Trainer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 3 steps on a random model do not converge
        return trainer.train(**kw)


def _where(model: ModelWithGradiend) -> set[tuple[str, torch.dtype]]:
    """(device type, dtype) of every base-model and GRADIEND parameter."""
    tensors = [*model.base_model.parameters(), *model.gradiend.parameters()]
    return {(t.device.type, t.dtype) for t in tensors if t.is_floating_point()}


@pytest.fixture()
def meta_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """`device=None` resolves to the meta device: only loads that honour an explicit device work."""
    monkeypatch.setattr(devices, "default_device", lambda: torch.device("meta"))


# -- the setting ------------------------------------------------------------------------------------------------
def test_device_spelling_is_validated_and_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TrainingArguments(device=torch.device("cuda", 1)).device == "cuda:1"
    assert TrainingArguments(device=" CPU ").device == "cpu" and TrainingArguments().device is None
    assert device_name(2) == "cuda:2"
    for bad in ("gpu", "cuda:x", True):
        with pytest.raises(ValueError, match="device"):
            TrainingArguments(device=bad)
    assert TrainingArguments.from_dict(TrainingArguments(device="mps").to_dict()).device == "mps"
    assert resolve_device(None, fallback=torch.device("meta")).type == "meta"  # a loaded model's own device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == CPU
    with pytest.raises(RuntimeError, match=r"no CUDA GPU is available.*device='cpu'"):
        resolve_device("cuda:0")


def test_the_meta_default_bites(tiny_mlm_dir: str, meta_default: None) -> None:
    """The control for the tests below: a load that does not pass the device fails."""
    with pytest.raises((RuntimeError, NotImplementedError, ValueError)):
        ModelWithGradiend.create(tiny_mlm_dir, params=PARAMS)
    assert _where(ModelWithGradiend.create(tiny_mlm_dir, params=PARAMS, device="cpu")) == {("cpu", torch.float32)}


def test_every_load_and_reload_lands_on_the_set_device(tiny_mlm_dir: str, tmp_path: Path, meta_default: None) -> None:
    """First load, get_model, cached-run reload, unload + reload, load_model, from_experiment and rewrite: all
    on the device set by args or by `trainer.to(...)`, and in the base dtype the run was trained with."""
    expected = {("cpu", torch.bfloat16), ("cpu", torch.float32)}  # bf16 base, float32 GRADIEND
    args = _args(tmp_path / "exp", torch_dtype="bfloat16", device="cpu", decoder_eval_lrs=[0.1])
    trainer = _train(TextPredictionTrainer(tiny_mlm_dir, data=make_rows(), args=args))
    assert _where(trainer.get_model()) == expected
    cached = TextPredictionTrainer(tiny_mlm_dir, data=make_rows(), args=args.replace(device=None)).to("cpu")
    assert cached.training_args.device == "cpu"  # remembered
    _train(cached)
    assert cached.get_model() is not trainer.get_model() and _where(cached.get_model()) == expected
    cached.unload_model()
    assert _where(cached.get_model()) == expected
    assert _where(cached.load_model(cached.model_path)) == expected
    attached = Trainer.from_experiment(trainer.experiment_dir, data=make_rows(), device="cpu")
    assert _where(attached.get_model()) == expected
    trainer.evaluate_decoder(target_class="3SG")
    rewritten = trainer.rewrite_base_model(target_class="3SG")
    assert {(p.device.type, p.dtype) for p in rewritten.parameters()} == {("cpu", torch.bfloat16)}


def test_to_moves_loaded_models_and_cuda_without_a_gpu_fails_clearly(tiny_mlm_dir: str, tmp_path: Path) -> None:
    trainer = _train(TextPredictionTrainer(tiny_mlm_dir, data=make_rows(), args=_args(tmp_path / "exp")))
    model = trainer.get_model()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            trainer.cuda(0)
        assert trainer.training_args.device is None, "a failed move is not remembered"
    assert trainer.cpu().get_model() is model and trainer.training_args.device == "cpu"


def test_best_earlier_seed_joins_the_loaded_base_model(tiny_mlm_dir: str, tmp_path: Path, meta_default: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The best seed is not the last one: its saved GRADIEND goes onto the base model already in memory
    (no base reload, the run's device); each finished seed is dropped before the next one trains."""
    monkeypatch.setattr(seeds_module, "_best_run", lambda runs: runs[0])
    live: list[weakref.ref] = []
    original = runs_module.train_gradiend

    def tracking(model, *a, **kw):
        gc.collect()
        assert all(ref() is None for ref in live), "a finished seed's GRADIEND is still alive"
        live.append(weakref.ref(model.gradiend))
        return original(model, *a, **kw)

    monkeypatch.setattr(runs_module, "train_gradiend", tracking)
    loads = _count_base_loads(monkeypatch)
    args = _args(tmp_path / "exp", max_seeds=2, min_convergent_seeds=2, device="cpu", saved_seed_runs="all_tried")
    trainer = _train(TextPredictionTrainer(tiny_mlm_dir, data=make_rows(), args=args))
    assert len(live) == 2 and len(loads) == 1
    model = trainer.get_model()
    assert len(loads) == 1 and _where(model) == {("cpu", torch.float32)}
    saved = load_file(str(Path(trainer.model_path) / "model.safetensors"))
    seed0 = load_file(str(Path(trainer.experiment_dir) / "seeds" / "seed_0" / "model.safetensors"))
    for name, value in model.gradiend.state_dict().items():
        assert torch.equal(value, saved[name]) and torch.equal(value, seed0[name]), name


def _count_base_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    loads: list[str] = []
    original = PreTrainedModel.from_pretrained.__func__

    def counting(cls, name, *a, **kw):
        loads.append(str(name))
        return original(cls, name, *a, **kw)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(counting))
    return loads


# -- loaded models in -------------------------------------------------------------------------------------------
def _forbid_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a, **kw):
        raise AssertionError("a base model was loaded from a path")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(AutoModelForMaskedLM, "from_pretrained", refuse)


def test_a_loaded_model_trains_without_a_reload_like_its_path(tiny_mlm_dir: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    by_path = _train(TextPredictionTrainer(tiny_mlm_dir, data=make_rows(), args=_args(tmp_path / "path")))
    loaded = AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm_dir)
    _forbid_loading(monkeypatch)
    trainer = TextPredictionTrainer(loaded, data=make_rows(), args=_args(tmp_path / "obj"), tokenizer=tokenizer)
    _train(trainer)
    model = trainer.get_model()
    assert model.base_model is loaded and model.tokenizer is tokenizer
    for name, value in by_path.get_model().gradiend.state_dict().items():
        assert torch.equal(value, model.gradiend.state_dict()[name]), name
    config = model.config
    assert config.base_model == tiny_mlm_dir and config.base_model_fingerprint == weights_fingerprint(loaded)
    # reloads reuse the object: cached run, unload + get_model, load_model
    trainer.unload_model()
    assert trainer.get_model().base_model is loaded
    again = TextPredictionTrainer(loaded, data=make_rows(), args=_args(tmp_path / "obj"), tokenizer=tokenizer)
    _train(again)
    assert again.get_model().base_model is loaded
    assert again.load_model(again.model_path).base_model is loaded


def test_a_loaded_model_is_keyed_by_its_weights(tiny_mlm_dir: str, tmp_path: Path) -> None:
    loaded = AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm_dir)
    args = _args(tmp_path / "exp")
    trainer = _train(TextPredictionTrainer(loaded, data=make_rows(), args=args, tokenizer=tokenizer))
    stamp = (Path(trainer.model_path) / "model.safetensors").stat().st_mtime_ns
    same = AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir)  # equal weights, another object
    assert weights_fingerprint(same) == weights_fingerprint(loaded)
    _train(TextPredictionTrainer(same, data=make_rows(), args=args, tokenizer=tokenizer))
    assert (Path(trainer.model_path) / "model.safetensors").stat().st_mtime_ns == stamp, "reused, not retrained"
    with torch.no_grad():
        same.bert.encoder.layer[0].output.dense.bias[0] += 1.0  # edited in memory: another model
    assert weights_fingerprint(same) != weights_fingerprint(loaded)
    _train(TextPredictionTrainer(same, data=make_rows(), args=args, tokenizer=tokenizer))
    assert (Path(trainer.model_path) / "model.safetensors").stat().st_mtime_ns != stamp, "retrained"
    with pytest.warns(UserWarning, match="other than those"):
        ModelWithGradiend.from_pretrained(trainer.model_path, base_model=loaded, tokenizer=tokenizer)


def test_model_with_gradiend_around_a_loaded_model(tiny_mlm_dir: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm_dir)
    by_path = ModelWithGradiend.create(tiny_mlm_dir, params=PARAMS, seed=3)
    _forbid_loading(monkeypatch)
    model = ModelWithGradiend.create(loaded, tokenizer=tokenizer, params=PARAMS, seed=3)
    assert model.base_model is loaded and model.param_map.size == by_path.param_map.size
    assert torch.equal(model.gradiend.encoder_weight, by_path.gradiend.encoder_weight)
    model.save_pretrained(tmp_path / "g")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same weights: no "other weights" warning
        reloaded = ModelWithGradiend.from_pretrained(tmp_path / "g", base_model=loaded, tokenizer=tokenizer)
    assert reloaded.base_model is loaded
    texts, factual, alternative = ["[MASK] walked home ."], ["he"], ["they"]
    assert reloaded.encode(texts, factual, alternative).tolist() == model.encode(texts, factual, alternative).tolist()
    trainer = TextPredictionTrainer(model, data=make_rows(), args=_args(tmp_path / "exp"))
    assert trainer.get_model() is model and trainer.base_model_path == tiny_mlm_dir
    _train(trainer)
    assert trainer.get_model().base_model is loaded


def test_loaded_model_errors_name_the_fix(tiny_mlm_dir: str, tmp_path: Path) -> None:
    loaded = AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm_dir)
    rows = make_rows()
    with pytest.raises(ValueError, match="needs its tokenizer: pass tokenizer="):
        TextPredictionTrainer(loaded, data=rows)
    small = make_tokenizer(tmp_path / "small")  # built from the same words, then another model's vocabulary
    small.add_tokens([f"extra{i}" for i in range(40)])
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but .* embedding matrix has \d+ rows"):
        TextPredictionTrainer(loaded, data=rows, tokenizer=small)
    with pytest.raises(ValueError, match="tokenizer= goes with a loaded model"):
        TextPredictionTrainer(tiny_mlm_dir, data=rows, tokenizer=tokenizer)
    with pytest.raises(TypeError, match="loaded Hugging Face model"):
        TextPredictionTrainer(torch.nn.Linear(2, 2), data=rows, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="needs its tokenizer"):
        ModelWithGradiend.create(loaded, params=PARAMS)
    config = loaded.config.__class__.from_dict(loaded.config.to_dict())
    config.name_or_path = ""
    pathless = AutoModelForMaskedLM.from_config(config)  # built, not loaded: no name_or_path
    model = ModelWithGradiend.create(pathless, tokenizer=tokenizer, params=PARAMS)
    assert model.config.base_model == "in-memory BertForMaskedLM"
    model.save_pretrained(tmp_path / "g")
    with pytest.raises(ValueError, match=r"passed in memory .* pass that model as base_model="):
        ModelWithGradiend.from_pretrained(tmp_path / "g")
    assert ModelWithGradiend.from_pretrained(tmp_path / "g", base_model=pathless, tokenizer=tokenizer).base_model \
        is pathless


# -- GRADIENDs on their device, in their dtype ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_a_gradiend_in_another_dtype_is_the_float32_one_rounded_once(dtype: str, tmp_path: Path) -> None:
    """Built off the one-draw CPU path (drawn in host chunks), the weights are float32's rounded to `dtype`."""
    config = dict(input_dim=(1 << 20) + 5, feature_classes=["A", "B"])  # two host chunks
    reference = GradiendModel(GradiendConfig(**config), torch.Generator().manual_seed(0))
    other = GradiendModel(GradiendConfig(**config, gradiend_dtype=dtype), torch.Generator().manual_seed(0))
    for name, value in other.named_parameters():
        assert value.dtype == getattr(torch, dtype) and torch.equal(value, getattr(reference, name).to(value.dtype))
    assert other.input_scale.dtype == torch.float32
    other.save_pretrained(tmp_path)
    loaded = GradiendModel.from_pretrained(tmp_path, device="cpu")
    assert loaded.config.gradiend_dtype == dtype and not loaded.shape_only
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert loaded.encoder_weight.requires_grad and loaded.target_scale.dtype == torch.float32


def test_gradiend_dtype_reaches_the_template_and_trains(tiny_mlm_dir: str, tmp_path: Path) -> None:
    args = _args(tmp_path / "exp", gradiend_dtype="bfloat16")
    trainer = TextPredictionTrainer(tiny_mlm_dir, data=make_rows(), args=args)
    template = runs_module.new_template(tiny_mlm_dir, args, *trainer.unified_data(), CPU)
    assert template.gradiend.encoder_weight.dtype == torch.bfloat16 and template.gradiend.shape_only
    assert template.with_new_gradiend(0).gradiend.decoder_weight.dtype == torch.bfloat16
    _train(trainer)
    trained = trainer.get_model().gradiend
    assert trained.encoder_weight.dtype == torch.bfloat16 and torch.isfinite(trained.encoder_weight.float()).all()
    saved = safetensors.torch.load_file(str(tmp_path / "exp" / "model" / "model.safetensors"))
    assert saved["encoder_weight"].dtype == torch.bfloat16
    result = trainer.evaluate_encoder()  # encodes with the bf16 GRADIEND (no dtype mismatch)
    assert np.isfinite(result["correlation"]) and np.isfinite(list(result["mean_by_class"].values())).all()


# -- rewrites hold no copy --------------------------------------------------------------------------------------
def test_a_saved_rewrite_copies_no_model(tiny_mlm_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gradiend.rewrite as rewrite

    model = ModelWithGradiend.create(tiny_mlm_dir, params=["bert.embeddings.word_embeddings.weight", *PARAMS],
                                     seed=1)
    expected = model.rewrite_base_model(0.5, 1.0).state_dict()  # the in-memory copy, made before forbidding it
    before = {k: (v.data_ptr(), v.clone()) for k, v in model.base_model.state_dict().items()}

    deepcopy = rewrite.copy.deepcopy

    def refuse(*a, **kw):
        raise AssertionError("the base model was copied")

    def no_module_copies(obj, *a, **kw):
        if isinstance(obj, torch.nn.Module):
            refuse()
        return deepcopy(obj, *a, **kw)

    monkeypatch.setattr(rewrite, "rewritten_copy", refuse)
    monkeypatch.setattr(rewrite.copy, "deepcopy", no_module_copies)
    selection = {"learning_rate": 0.5, "feature_factor": 1.0, "strengthen": True}
    out = rewrite.save_selected_rewrite(model, selection, key="3SG", target_class="3SG", feature_classes=["3SG", "3PL"],
                                        base_model=tiny_mlm_dir, output_dir=tmp_path / "rw")
    for key, (ptr, value) in before.items():  # the loaded model is untouched, in place
        now = model.base_model.state_dict()[key]
        assert now.data_ptr() == ptr and torch.equal(now, value), key
    monkeypatch.undo()
    saved = AutoModelForMaskedLM.from_pretrained(out).state_dict()
    changed = [k for k in expected if not torch.equal(expected[k], before[k][1])]
    assert "bert.embeddings.word_embeddings.weight" in changed and "cls.predictions.decoder.weight" in changed
    for key, value in expected.items():
        assert torch.equal(saved[key], value), key
    head, embeddings = saved["cls.predictions.decoder.weight"], saved["bert.embeddings.word_embeddings.weight"]
    assert head.data_ptr() == embeddings.data_ptr(), "saved tied, as the model is"


def test_a_reattached_run_takes_the_device_of_the_caller(tiny_mlm_dir: str, tmp_path: Path,
                                                         meta_default: None) -> None:
    """The stored device belongs to the machine that trained; `--device` (or device=) sets it on reattach."""
    from gradiend import cli

    trainer = _train(TextPredictionTrainer(tiny_mlm_dir, data=make_rows(), args=_args(tmp_path / "exp", device="cpu")))
    assert trainer.get_training_record().training_args["device"] == "cpu"
    assert Trainer.from_experiment(trainer.experiment_dir, data=make_rows()).training_args.device is None
    ns = cli.build_parser().parse_args(["evaluate", trainer.experiment_dir, "--encoder", "--device", "CPU", "-q"])
    ns.data = make_rows()  # as --data would give
    attached = cli._trainer_for(trainer.experiment_dir, ns)
    assert attached.training_args.device == "cpu" and _where(attached.get_model()) == {("cpu", torch.float32)}
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["rewrite", trainer.experiment_dir, "--target-class", "3SG", "--device", "gpu"])


def test_a_run_reattaches_to_a_loaded_base_model(tiny_mlm_dir: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _train(TextPredictionTrainer(tiny_mlm_dir, data=make_rows(), args=_args(tmp_path / "exp")))
    loaded = AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm_dir)
    _forbid_loading(monkeypatch)
    attached = Trainer.from_experiment(trainer.experiment_dir, data=make_rows(), model=loaded, tokenizer=tokenizer)
    model = attached.get_model()
    assert model.base_model is loaded
    for name, value in trainer.get_model().gradiend.state_dict().items():
        assert torch.equal(value, model.gradiend.state_dict()[name]), name


# -- on a GPU ---------------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_the_gpu_every_load_lands_there_and_is_built_there(tiny_mlm_dir: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    original = PreTrainedModel.from_pretrained.__func__

    def recording(cls, name, *a, **kw):
        calls.append(kw)
        return original(cls, name, *a, **kw)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(recording))
    on_gpu = ModelWithGradiend.create(tiny_mlm_dir, params=PARAMS, seed=3, device="cuda")
    assert calls[-1].get("device_map") == "cuda", "read straight onto the GPU"
    on_cpu = ModelWithGradiend.create(tiny_mlm_dir, params=PARAMS, seed=3, device="cpu")
    for name, value in on_gpu.gradiend.state_dict().items():  # the same initial GRADIEND on both devices
        assert value.is_cuda and torch.equal(value.cpu(), on_cpu.gradiend.state_dict()[name]), name
    gpu = {("cuda", torch.float32)}
    trainer = _train(TextPredictionTrainer(tiny_mlm_dir, data=make_rows(),
                                           args=_args(tmp_path / "exp", decoder_eval_lrs=[0.1])).cuda())
    assert trainer.training_args.device == "cuda" and _where(trainer.get_model()) == gpu
    cached = _train(TextPredictionTrainer(tiny_mlm_dir, data=make_rows(), args=_args(tmp_path / "exp", device="cuda")))
    assert _where(cached.get_model()) == gpu and _where(cached.load_model(cached.model_path)) == gpu
    assert _where(Trainer.from_experiment(trainer.experiment_dir, data=make_rows(), device="cuda").get_model()) == gpu
    trainer.evaluate_decoder(target_class="3SG")
    assert all(p.is_cuda for p in trainer.rewrite_base_model(target_class="3SG").parameters())
    saved = trainer.rewrite_base_model(target_class="3SG", output_dir=tmp_path / "rw")
    expected = trainer.rewrite_base_model(target_class="3SG").state_dict()
    reread = AutoModelForMaskedLM.from_pretrained(saved).state_dict()
    assert all(torch.equal(reread[k], v.cpu()) for k, v in expected.items())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_the_gpu_a_loaded_model_is_used_where_it_is(tiny_mlm_dir: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir).cuda()
    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm_dir)
    _forbid_loading(monkeypatch)
    trainer = _train(TextPredictionTrainer(loaded, data=make_rows(), args=_args(tmp_path / "exp"),
                                           tokenizer=tokenizer))  # device=None: the loaded model's own
    model = trainer.get_model()
    assert model.base_model is loaded and _where(model) == {("cuda", torch.float32)}
    trainer.cpu()
    assert next(loaded.parameters()).device.type == "cpu" and _where(trainer.get_model()) == {("cpu", torch.float32)}
