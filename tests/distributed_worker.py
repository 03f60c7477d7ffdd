"""One rank of the distributed tests (`tests/test_distributed.py`): run scenarios, save what they produce.

    python tests/distributed_worker.py MODEL_DIR OUT_DIR SCENARIO [SCENARIO ...]

The test starts two of these with torchrun's variables set (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and calls `run` in its own process for the one-process reference. Each scenario saves
`OUT_DIR/<scenario>/rank<r>.safetensors` (tensors) and `rank<r>.json` (numbers) with plain file writes
(the library's writes are rank 0's only, these are the test's own).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import make_rows

from gradiend import TrainingArguments, TrainingCallback, distributed, gradient_source
from gradiend.data import unify
from gradiend.experiment import WRITE_HOOK_ENV
from gradiend.gradient_cache import GradientStore
from gradiend.gradient_source import GradientSource
from gradiend.model_with_gradiend import ModelWithGradiend
from gradiend.resume import STATE_FILE, ResumeCheckpoint
from gradiend.rewrite import applied
from gradiend.training import encode_rows, train_gradiend

PAIR = ["3SG", "3PL"]
PARAMS = ["encoder.layer.1.*"]
BATCH = 3  # odd: two ranks get 2 and 1 rows
DIE_AT_STEP = 2
CRASH_AT_STEP = 5  # the resume scenario: after the checkpoints of steps 2 and 4
EXIT_DIED = 17


class Setup:
    """The tiny model's template and the rows every scenario shares."""

    def __init__(self, model_dir: str) -> None:
        rows, pair = unify(make_rows(repeat=1), target_classes=PAIR, seed=0)
        self.pair = pair
        self.train = rows[rows["split"] == "train"].reset_index(drop=True)
        self.val = rows[rows["split"] == "validation"].reset_index(drop=True)
        self.model_dir = model_dir
        self.template = ModelWithGradiend.create(model_dir, feature_classes=pair, seed=0, params=PARAMS)
        # training is compared in float64: Adam gives every coordinate a step of about the learning rate, so in
        # float32 the coordinates whose gradient is rounding noise (attention key biases: zero in exact
        # arithmetic) take rounding-determined steps, and 1 and 2 processes differ by 2e-4 (relative L2)
        self.template64 = ModelWithGradiend.create(model_dir, feature_classes=pair, seed=0, params=PARAMS,
                                                   torch_dtype="float64", gradiend_dtype="float64")

    def args(self, **overrides: Any) -> TrainingArguments:
        values = {"train_batch_size": BATCH, "max_steps": 6, "eval_steps": 3, "seed": 0, "show_progress": False,
                  "scale_estimation_batches": 2, "distributed_timeout": 20.0,
                  "calibrate_encoder": False,  # the trained weights themselves are compared (calibration refits them)
                  **overrides}
        return TrainingArguments(**values)


def _save(out: Path, name: str, tensors: dict[str, torch.Tensor], numbers: dict[str, Any]) -> None:
    rank = distributed.context().rank
    directory = out / name
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
              str(directory / f"rank{rank}.safetensors"))
    (directory / f"rank{rank}.json").write_text(json.dumps(numbers), encoding="utf-8")


def _gradients(setup: Setup, out: Path, name: str, sharded: bool) -> None:
    engine = setup.template.engine
    n = setup.template.param_map.size
    ctx = distributed.context()
    width = distributed.padded_shard(n, ctx.world_size) if sharded and ctx.enabled else n
    buffers = {k: torch.zeros(width) for k in ("alternative", "diff")}
    rows = setup.train.iloc[:BATCH]
    GradientSource(engine, sharded=sharded).gradients(0, list(rows["masked"]), list(rows["factual"]),
                                                       list(rows["alternative"]), buffers, keep=False)
    lo, hi = distributed.my_share(n) if sharded else (0, n)
    _save(out, name, {k: v[:hi - lo] for k, v in buffers.items()}, {"lo": lo, "hi": hi, "n": n})


def _train(setup: Setup, out: Path, name: str, cache: str = "off", template: ModelWithGradiend | None = None,
           **overrides: Any) -> None:
    args = setup.args(**overrides)
    store = None
    if cache != "off":
        store = GradientStore(cache, 2**30, "float32", out / name / "cache" if cache == "disk" else None)
    model = (template or setup.template64).with_new_gradiend(args.seed)
    held = _Held()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        outcome = train_gradiend(model, setup.train, setup.val, setup.pair, args, callbacks=[held],
                                 gradient_store=store)
    tensors = {**{f"best.{k}": v for k, v in outcome.state.items()},
               **{f"final.{k}": v for k, v in model.gradiend.state_dict().items()}}
    stats, training = outcome.stats, outcome.stats["training_stats"]
    _save(out, name, tensors, {"losses": stats["losses"], "scores": training["scores"],
                               "scales": stats["gradient_scales"], "flips": training["sign_flips_at_steps"],
                               "cache": store.summary() if store is not None else None, "held": held.sizes})
    if store is not None:
        store.clear()


def _train_host(setup: Setup, out: Path, name: str) -> None:
    """A sharded run whose best weights are gathered into rank 0's host memory only, then encoder evaluation
    of the validation rows with the best weights: slice-wise on every rank (in one process: the full model)."""
    args = setup.args(shard_gradiend=True)
    model = setup.template64.with_new_gradiend(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        outcome = train_gradiend(model, setup.train, setup.val, setup.pair, args, final_weights="rank0_host")
    tensors = {f"best.{k}": v for k, v in outcome.state.items()}
    numbers: dict[str, Any] = {"devices": sorted({str(v.device) for v in outcome.state.values()}),
                               "full_model": sum(p.numel() for p in model.gradiend.parameters())}
    if outcome.shard is not None:
        with outcome.shard.encoding():
            encoded = encode_rows(model, setup.val, 4)
        tensors.update({f"slice.{k}": v for k, v in outcome.shard.module.state_dict().items()})
        numbers.update(lo=outcome.shard.lo, hi=outcome.shard.hi)
        update = outcome.shard.lazy_update(-1.0)  # a decoder candidate from the ranks' decoder slices
    else:
        model.gradiend.load_state_dict(outcome.state)
        encoded = encode_rows(model, setup.val, 4)
        update = model.lazy_update(-1.0)
    before = torch.cat([p.detach().reshape(-1) for p in model.engine.params])
    with applied(model.base_model, model.param_map, update, 0.05):
        edited = torch.cat([p.detach().reshape(-1) for p in model.engine.params])
    restored = torch.cat([p.detach().reshape(-1) for p in model.engine.params])
    numbers["restored"] = bool(torch.equal(before, restored))
    _save(out, name, {**tensors, "encoded": torch.from_numpy(encoded), "edit": edited - before}, numbers)


def _prune(setup: Setup, out: Path, name: str) -> None:
    """Pre-pruning statistics: each rank passes over its share of the sampled batches, the sums are all-reduced."""
    from gradiend.arguments import PrePruneConfig
    from gradiend.pruning import gradient_importance, select_top

    cfg = PrePruneConfig(n_samples=12, batch_size=2, topk=0.2, seed=0)
    importance = gradient_importance(setup.template, setup.train, setup.pair, cfg, show_progress=False)
    keep = select_top(importance, cfg.topk)
    _save(out, name, {"importance": importance, "keep": keep.to(torch.uint8)}, {})


class _Crashed(RuntimeError):
    pass


class _Crash(TrainingCallback):
    def on_step_end(self, step: int, loss: float) -> None:
        if step == CRASH_AT_STEP:
            raise _Crashed(f"crash after step {step}")


def _resume(setup: Setup, out: Path, name: str) -> None:
    """A sharded run (resume checkpoints every 2 steps) killed after step 5 on every rank, then run again: it
    continues from step 4's checkpoint, each rank from its slice."""
    args = setup.args(shard_gradiend=True, save_steps=2)
    directory = out / name / "checkpoint"

    def attempt(callbacks: list[TrainingCallback]) -> tuple[ModelWithGradiend, Any]:
        model = setup.template64.with_new_gradiend(args.seed)  # as `train_shard`, which it must equal
        checkpoint = ResumeCheckpoint(directory, "run-key", args.save_steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return model, train_gradiend(model, setup.train, setup.val, setup.pair, args, callbacks,
                                         checkpoint=checkpoint)

    try:
        attempt([_Crash()])
    except _Crashed:
        pass
    saved = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    files = sorted(p.name for p in directory.iterdir())
    model, outcome = attempt([])
    tensors = {**{f"best.{k}": v for k, v in outcome.state.items()},
               **{f"final.{k}": v for k, v in model.gradiend.state_dict().items()}}
    _save(out, name, tensors, {"step": saved["step"], "shards": saved["shards"], "files": files,
                               "losses": outcome.stats["losses"], "scores": outcome.stats["training_stats"]["scores"]})


class _Held(TrainingCallback):
    """What a rank holds while it trains: entries of the trained weights, of their AdamW state, of the full model."""

    def on_train_begin(self, model: ModelWithGradiend, optimizer: torch.optim.Optimizer, args: Any) -> None:
        self.model, self.optimizer, self.sizes = model, optimizer, {}

    def on_step_end(self, step: int, loss: float) -> None:
        if step == 1:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            state = [t for entry in self.optimizer.state.values() for t in entry.values() if t.dim() > 0]
            self.sizes = {"trained": sum(p.numel() for p in params), "adam": sum(t.numel() for t in state),
                          "full_model": sum(p.numel() for p in self.model.gradiend.parameters())}


class _Stop(TrainingCallback):
    """Rank 1 dies (`die`) or hangs (`hang`) after step `DIE_AT_STEP`."""

    def __init__(self, how: str) -> None:
        self.how = how

    def on_step_end(self, step: int, loss: float) -> None:
        if distributed.context().rank != 1 or step != DIE_AT_STEP:
            return
        if self.how == "die":
            os._exit(EXIT_DIED)
        time.sleep(120)  # the test kills it long before


def _broken_peer(setup: Setup, out: Path, how: str) -> None:
    args = setup.args(max_steps=20, eval_steps=100)
    model = setup.template.with_new_gradiend(args.seed)
    started = time.monotonic()
    try:
        train_gradiend(model, setup.train, None, setup.pair, args, callbacks=[_Stop(how)])
    except distributed.DistributedError as err:
        _save(out, how, {}, {"error": str(err), "seconds": time.monotonic() - started})
        raise SystemExit(3) from err


def _experiment(setup: Setup, out: Path) -> None:
    """A whole experiment (train, encoder and decoder evaluation) with a per-rank write log."""
    from tiny_experiment import build

    rank = distributed.context().rank
    os.environ[WRITE_HOOK_ENV] = str(out / f"writes_rank{rank}.log")
    try:
        trainer = build(setup.model_dir, out / "experiment")
    finally:
        del os.environ[WRITE_HOOK_ENV]
    experiment = trainer.experiment
    encoded = [float(v) for r in experiment.encoder_results() for v in pd.read_csv(r.csv)["encoded"]]
    _save(out, "experiment", {"encoded": torch.tensor(encoded)},
          {"summaries": experiment.load_decoder_summaries().to_json(), "grid": experiment.load_decoder()["grid"]})


def _experiment_shard(setup: Setup, out: Path) -> None:
    """The tiny experiment trained with a sharded GRADIEND gathered on every rank (`sharded_final_weights=
    'every_rank'`) and resume checkpoints every 2 steps, then evaluated."""
    from tiny_experiment import LRS, NEUTRAL

    from gradiend import TextPredictionTrainer

    rank = distributed.context().rank
    args = TrainingArguments(experiment_dir=str(out / "sharded_experiment"), train_batch_size=4, max_steps=6,
                             eval_steps=3, seed=0, show_progress=False, scale_estimation_batches=2,
                             params=["encoder.layer.1.*"], decoder_eval_lrs=LRS, shard_gradiend=True, save_steps=2,
                             distributed_timeout=30.0, sharded_final_weights="every_rank")  # rank0_host: trainer_host
    trainer = TextPredictionTrainer(model=setup.model_dir, data=make_rows(), args=args, target_classes=PAIR,
                                    eval_neutral_data=NEUTRAL)
    os.environ[WRITE_HOOK_ENV] = str(out / f"shard_writes_rank{rank}.log")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            trainer.train()
        trainer.evaluate_encoder()
        trainer.evaluate_decoder(target_class="3SG")
    finally:
        del os.environ[WRITE_HOOK_ENV]
    experiment = trainer.experiment
    encoded = [float(v) for r in experiment.encoder_results() for v in pd.read_csv(r.csv)["encoded"]]
    _save(out, "experiment_shard", {"encoded": torch.tensor(encoded)},
          {"summaries": experiment.load_decoder_summaries().to_json(),
           "resume_left": sorted(str(p) for p in (out / "sharded_experiment").rglob("rank*.safetensors"))})


def _large_tensors(model: ModelWithGradiend, setup: Setup) -> list[tuple[int, str]]:
    """(entries, device) of every live tensor of at least the GRADIEND's input count, other than the base model's
    weights and the other scenarios' templates: a rank holding any part of the whole GRADIEND (weights, a full
    decoded update) shows up here."""
    import gc

    n = model.param_map.size
    mine = [*model.base_model.parameters(), *model.base_model.buffers(), *setup.template.gradiend.parameters(),
            *setup.template64.gradiend.parameters()]
    base = {t.untyped_storage().data_ptr() for t in mine}
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() on deprecated torch objects warns
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in tensors:
        if not obj.is_meta and obj.numel() >= n and obj.untyped_storage().data_ptr() not in base:
            found.append((obj.numel(), str(obj.device)))
    return sorted(found)


def _holdings(model: ModelWithGradiend, setup: Setup) -> dict[str, Any]:
    """What the trainer's model holds on this rank: its class, the largest GRADIEND tensors anywhere, the slice."""
    from gradiend.sharded_model import ShardedModelWithGradiend

    info: dict[str, Any] = {"type": type(model).__name__, "n": model.param_map.size,
                            "large": _large_tensors(model, setup)}
    if isinstance(model, ShardedModelWithGradiend):
        info["slice"] = [model.shard.lo, model.shard.hi]
        info["whole_entries"] = sum(p.numel() for p in model.shard.full.parameters())
        try:
            info["whole_device"] = str(model.gradiend.encoder_weight.device)
        except RuntimeError as err:
            info["whole_error"] = str(err)
    return info


def _selected(model: Any, names: list[str]) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters())
    return {name: named[name].detach().clone() for name in names}


def _trainer_host(setup: Setup, out: Path) -> None:
    """The trainer's whole workflow with a sharded GRADIEND kept split (`sharded_final_weights='rank0_host'`, the
    default): train, encoder and decoder evaluation, a saved and an in-memory rewrite, then the saved checkpoint
    read again (each rank its slice) and encoded. In one process: the same calls on the whole GRADIEND."""
    from tiny_experiment import LRS, NEUTRAL

    from gradiend import TextPredictionTrainer

    rank = distributed.context().rank
    args = TrainingArguments(experiment_dir=str(out / "host_experiment"), train_batch_size=4, max_steps=6,
                             eval_steps=3, seed=0, show_progress=False, scale_estimation_batches=2, params=PARAMS,
                             decoder_eval_lrs=LRS, shard_gradiend=True, distributed_timeout=30.0,
                             torch_dtype="float64", gradiend_dtype="float64")  # float64: see `Setup.template64`
    trainer = TextPredictionTrainer(model=setup.model_dir, data=make_rows(), args=args, target_classes=PAIR,
                                    eval_neutral_data=NEUTRAL)
    held = _Held()
    os.environ[WRITE_HOOK_ENV] = str(out / f"host_writes_rank{rank}.log")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            trainer.train(callbacks=[held])
        encoded = trainer.evaluate_encoder(return_df=True)["encoder_df"]["encoded"].to_numpy()
        decoder = trainer.evaluate_decoder(target_class="3SG")
        trainer.rewrite_base_model(target_class="3SG", output_dir=out / "host_rewrite")
        model = trainer.get_model()
        names = list(model.param_map.names)
        rewritten = _selected(trainer.rewrite_base_model(target_class="3SG"), names)  # in memory, on every rank
        after = _holdings(model, setup)
        trainer.unload_model()
        reread = trainer.evaluate_encoder(use_cache=False, return_df=True)["encoder_df"]["encoded"].to_numpy()
        reloaded = _holdings(trainer.get_model(), setup)
    finally:
        del os.environ[WRITE_HOOK_ENV]
    record = trainer.get_training_record()
    _save(out, "trainer_host", {"encoded": torch.tensor(encoded), "reread": torch.tensor(reread),
                                **{f"rewrite.{k}": v for k, v in rewritten.items()}},
          {"held": held.sizes, "after": after, "reloaded": reloaded, "selected": decoder["3SG"]["id"],
           "grid": decoder["grid"], "calibration": record.to_json().get("calibration")})


def _cli_shard(setup: Setup, out: Path) -> None:
    """`gradiend train` on a sharded config (as `torchrun -m gradiend train run.json` runs it on every rank), two
    seeds: the best one is read back slice-wise unless it is the last, and scored slice-wise on 3 validation rows per
    class (not the rows training selected on)."""
    from tiny_experiment import LRS

    from gradiend import cli

    config = {"model": setup.model_dir, "data": str(out / "data.csv"), "target_classes": PAIR,
              "experiment_dir": str(out / "cli_experiment"), "train_batch_size": 4,
              "max_steps": 6, "eval_steps": 3, "seed": 0, "show_progress": False, "scale_estimation_batches": 2,
              "params": PARAMS, "decoder_eval_lrs": LRS, "shard_gradiend": True, "distributed_timeout": 30.0,
              "torch_dtype": "float64", "gradiend_dtype": "float64",  # the settings of `_trainer_host`, and 2 seeds
              "max_seeds": 2, "min_convergent_seeds": 2, "saved_seed_runs": "all_tried", "seed_stability_topk": 50,
              "convergent_score_threshold": 0.0, "convergent_mean_by_class_threshold": None,
              "seed_selection_eval_max_size": 3}  # every seed "converges", so it is scored on validation rows
    rank = distributed.context().rank
    for name, text in (("data.csv", make_rows().to_csv(index=False)), ("run.json", json.dumps(config))):
        scratch = out / f"{name}.rank{rank}"  # the test's own inputs, the same bytes from either rank
        scratch.write_text(text, encoding="utf-8")
        os.replace(scratch, out / name)
    distributed.barrier("test inputs written")
    os.environ[WRITE_HOOK_ENV] = str(out / f"cli_writes_rank{rank}.log")
    try:
        code = cli.main(["train", str(out / "run.json"), "--no-plots", "--quiet"])
    finally:
        del os.environ[WRITE_HOOK_ENV]
    (out / f"cli_rank{rank}.json").write_text(json.dumps({"code": code}), encoding="utf-8")


def _diverge(setup: Setup, out: Path) -> None:
    """The ranks ask a sharded GRADIEND for different decoded rows (as ranks taking different decoder-grid paths
    would): every rank stops with a clear error instead of exchanging mismatched slices."""
    from gradiend.sharding import Shard

    shard = Shard(setup.template.with_new_gradiend(0).gradiend)
    update = shard.lazy_update(-1.0)
    try:
        update(slice(0, 10 + distributed.context().rank))
    except distributed.DistributedError as err:
        _save(out, "diverge", {}, {"error": str(err)})
        return
    _save(out, "diverge", {}, {"error": None})


SCENARIOS: dict[str, Callable[[Setup, Path], None]] = {
    "grad": lambda s, o: _gradients(s, o, "grad", sharded=False),
    "grad_shard": lambda s, o: _gradients(s, o, "grad_shard", sharded=True),
    "train": lambda s, o: _train(s, o, "train"),
    "train_memory": lambda s, o: _train(s, o, "train_memory", cache="memory"),
    "train_disk": lambda s, o: _train(s, o, "train_disk", cache="disk"),
    "train_shard": lambda s, o: _train(s, o, "train_shard", shard_gradiend=True),
    "train_shard_disk": lambda s, o: _train(s, o, "train_shard_disk", cache="disk", shard_gradiend=True),
    "train_shard_host": lambda s, o: _train_host(s, o, "train_shard_host"),
    "train_batches": lambda s, o: _train(s, o, "train_batches", gradiend_batch_size=2, shard_gradiend=True,
                                         max_steps=4, eval_steps=2),
    "experiment": _experiment,
    "experiment_shard": _experiment_shard,
    "trainer_host": _trainer_host,
    "cli_shard": _cli_shard,
    "diverge": _diverge,
    "prune": lambda s, o: _prune(s, o, "prune"),
    "resume_shard": lambda s, o: _resume(s, o, "resume_shard"),
    "train_cuda": lambda s, o: _train(s, o, "train_cuda", template=s.template.to(f"cuda:{torch.cuda.current_device()}"),
                                      shard_gradiend=True, cache="memory"),
    "die": lambda s, o: _broken_peer(s, o, "die"),
    "hang": lambda s, o: _broken_peer(s, o, "hang"),
}


def run(model_dir: str, out: Path, scenarios: list[str]) -> None:
    """Run `scenarios` in order in this process (one rank, or the whole run without torchrun)."""
    setup = Setup(model_dir)
    for name in scenarios:
        SCENARIOS[name](setup, out)


def _wait_for_peers(out: Path) -> None:
    """File barrier before the process group forms: imports can lag by seconds on a busy machine, and the
    `hang` launch's 3-second timeout also bounds the rendezvous."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ready{rank}").touch()
    deadline = time.monotonic() + 120
    while not all((out / f"ready{r}").exists() for r in range(world)) and time.monotonic() < deadline:
        time.sleep(0.05)


if __name__ == "__main__":
    gradient_source.REDUCE_CHUNK = 4099  # sharded runs reduce many chunks, cut inside parameters (not at their ends)
    _wait_for_peers(Path(sys.argv[2]))
    with distributed.session(3.0 if "hang" in sys.argv[3:] else 30.0):  # a hanging peer is noticed in seconds
        run(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])
