"""Several processes: two gloo ranks on the CPU (torchrun's variables, `tests/distributed_worker.py`) against
the same scenarios run in this one process.

One launch of two ranks runs every agreement scenario (gradients, training with and without the gradient
cache, sharded training, a whole experiment) and ends with rank 1 dying; a second launch, started at the
same time, has rank 1 hang. Process start-up (imports) is most of the time.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from distributed_worker import EXIT_DIED, run
from safetensors.torch import load_file

import gradiend
from gradiend import distributed
from gradiend.topk import SEED_STABILITY_FILE

WORKER = Path(__file__).with_name("distributed_worker.py")
PACKAGE_ROOT = str(Path(gradiend.__file__).resolve().parents[1])  # the workers import this checkout
AGREEMENT = ["grad", "grad_shard", "prune", "train", "train_memory", "train_shard", "train_shard_disk",
             "train_shard_host", "train_batches", "experiment", "trainer_host"]
RTOL = 1e-5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(rank: int, port: int, world_size: int = 2, cpu: bool = True) -> dict[str, str]:
    """torchrun's variables for `rank`; the CPU only (gloo) unless `cpu=False`."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    path = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world_size),
                "RANK": str(rank), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1", "PYTHONPATH": path})
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _start(model_dir: str, out: Path, scenarios: list[str], world_size: int = 2,
           cpu: bool = True) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for rank in range(world_size):
        env = _env(rank, port, world_size, cpu)
        procs.append(subprocess.Popen([sys.executable, str(WORKER), model_dir, str(out), *scenarios], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return -9, err
    return proc.returncode, err


def _load(out: Path, name: str, rank: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    directory = out / name
    return (load_file(str(directory / f"rank{rank}.safetensors")),
            json.loads((directory / f"rank{rank}.json").read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def launches(tiny_mlm_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two launches of two ranks, started together while this process runs the one-process reference.

    `agreement` runs every agreement scenario, then rank 1 dies in `die`; `hang`: rank 1 hangs.
    `cli`: `gradiend train` on a sharded config.
    Returns {"two": output, "one": reference output, "hang_output": output, "cli_output": output,
    "<launch>": [(exit code, stderr)] per rank,
    "<launch>_seconds": until rank 0 exited}.
    """
    started = time.monotonic()
    two, one, hang, cli = (tmp_path_factory.mktemp(name) for name in ("two_ranks", "one_process", "hang", "cli"))
    procs = {"agreement": _start(tiny_mlm_dir, two, [*AGREEMENT, "resume_shard", "experiment_shard", "diverge",
                                                     "die"]),
             "hang": _start(tiny_mlm_dir, hang, ["hang"]), "cli": _start(tiny_mlm_dir, cli, ["cli_shard"])}
    run(tiny_mlm_dir, one, AGREEMENT)
    result: dict[str, Any] = {"two": two, "one": one, "hang_output": hang, "cli_output": cli}
    for name, (rank0, rank1) in procs.items():
        first = _finish(rank0, 300)
        result[f"{name}_seconds"] = time.monotonic() - started
        result[name] = [first, _finish(rank1, 1 if name == "hang" else 60)]  # a hanging rank 1 is killed here
    (code0, err0), (code1, err1) = result["agreement"]
    assert (code0, code1) == (3, EXIT_DIED), f"rank 0:\n{err0[-3000:]}\nrank 1:\n{err1[-3000:]}"
    return result


@pytest.fixture(scope="module")
def runs(launches: dict[str, Any]) -> tuple[Path, Path]:
    """(two-rank output, one-process output) of the agreement scenarios."""
    return launches["two"], launches["one"]


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal within rtol 1e-5 as vectors (relative L2 distance), and entry by entry within 1e-4 of the largest entry.

    Entry by entry the bar is looser: a float sum in another order changes a gradient's last bits, and
    Adam divides each gradient by its own size, so a coordinate whose gradient nearly cancels moves by a
    rounding-determined step. Training is therefore compared in float64 (`distributed_worker.Setup`); in
    float32 the trained weights of 1 and 2 processes differ by 2e-4 (relative L2), gradients by 2e-7."""
    distance = float(torch.linalg.vector_norm(actual.double() - expected.double()))
    assert distance <= RTOL * float(torch.linalg.vector_norm(expected.double())), distance
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4 * scale)


def test_gradients_equal_one_process_and_ranks_bitwise(runs) -> None:
    two, one = runs
    ref, _ = _load(one, "grad", 0)
    rank0, rank1 = _load(two, "grad", 0)[0], _load(two, "grad", 1)[0]
    for kind in ("alternative", "diff"):
        assert torch.equal(rank0[kind], rank1[kind])
        assert ref[kind].abs().max() > 0
        _close(rank0[kind], ref[kind])
    # sharded: each rank holds its slice of the same sum
    slices = [_load(two, "grad_shard", r) for r in (0, 1)]
    assert slices[0][1]["hi"] == slices[1][1]["lo"] and slices[1][1]["hi"] == slices[0][1]["n"]
    for kind in ("alternative", "diff"):
        _close(torch.cat([slices[0][0][kind], slices[1][0][kind]]), ref[kind])


@pytest.mark.parametrize("name", ["train", "train_memory", "train_shard", "train_shard_disk", "train_batches"])
def test_training_equals_one_process_and_ranks_are_bitwise_equal(runs, name) -> None:
    two, one = runs
    ref, ref_stats = _load(one, name, 0)  # in one process shard_gradiend changes nothing
    (rank0, stats0), (rank1, stats1) = _load(two, name, 0), _load(two, name, 1)
    assert rank0.keys() == ref.keys()
    for key in ref:
        assert torch.equal(rank0[key], rank1[key]), f"{name}: ranks differ in {key}"
        _close(rank0[key], ref[key])
    assert stats0 == stats1
    assert stats0["flips"] == ref_stats["flips"]
    _close(torch.tensor(stats0["losses"]), torch.tensor(ref_stats["losses"]))
    for step, score in ref_stats["scores"].items():
        assert stats0["scores"][step] == pytest.approx(score, abs=1e-4)  # correlations of the encodings
    assert stats0["scales"]["input"] == pytest.approx(ref_stats["scales"]["input"], rel=RTOL)
    assert stats0["scales"]["target"] == pytest.approx(ref_stats["scales"]["target"], rel=RTOL)
    if ref_stats["cache"] is not None:  # steps 5 and 6 draw batches again (4 per epoch): cache hits
        assert stats0["cache"]["hits"] == ref_stats["cache"]["hits"] >= 2
        assert stats0["cache"]["misses"] == ref_stats["cache"]["misses"]


def test_sharded_equals_unsharded_and_holds_half_per_rank(runs) -> None:
    two, _ = runs
    sharded, unsharded = _load(two, "train_shard", 0)[0], _load(two, "train", 0)[0]
    for key, value in unsharded.items():
        _close(sharded[key], value)
    full = _load(two, "train", 0)[1]["held"]
    assert full["trained"] == full["full_model"] > 0 and full["adam"] == 2 * full["trained"]
    n = _load(two, "train_shard", 0)[0]["final.decoder_bias"].numel()
    for rank in (0, 1):
        held = _load(two, "train_shard", rank)[1]["held"]
        # weights, AdamW state (and gradient buffers) of this rank's slice only; the full model's released
        assert held["full_model"] == 0
        assert held["trained"] == pytest.approx(full["trained"] / 2, abs=3) and held["adam"] == 2 * held["trained"]
        assert held["trained"] < full["trained"] - n


def test_rank0_host_gather_keeps_the_full_weights_off_the_other_ranks(runs) -> None:
    """final_weights="rank0_host": rank 0 gets the best weights in host memory, rank 1 only its slice of them;
    encoder evaluation afterwards sums the slices' encodings, and a decoder candidate is decoded from the ranks'
    slices; both equal one process."""
    two, one = runs
    ref, ref_info = _load(one, "train_shard_host", 0)
    (rank0, info0), (rank1, info1) = _load(two, "train_shard_host", 0), _load(two, "train_shard_host", 1)
    assert ref_info["devices"] == info0["devices"] == ["cpu"] and info0["full_model"] == ref_info["full_model"] > 0
    best = sorted(k for k in ref if k.startswith("best."))
    assert best and sorted(k for k in rank0 if k.startswith("best.")) == best
    for key in best:
        _close(rank0[key], ref[key])
    assert info1["devices"] == [] and info1["full_model"] == 0  # rank 1 never held the full weights
    assert not any(k.startswith("best.") for k in rank1)
    lo, hi = info1["lo"], info1["hi"]
    assert 0 < lo < hi == ref["best.decoder_bias"].numel()
    _close(rank1["slice.decoder_weight"], ref["best.decoder_weight"][lo:hi])
    _close(rank1["slice.encoder_weight"], ref["best.encoder_weight"][:, lo:hi])
    assert torch.equal(rank0["encoded"], rank1["encoded"]) and rank0["encoded"].abs().max() > 0
    torch.testing.assert_close(rank0["encoded"], ref["encoded"], rtol=0, atol=1e-4 * float(ref["encoded"].abs().max()))
    # a decoder candidate applied to the base model from the ranks' decoder slices (Shard.lazy_update)
    assert info0["restored"] and info1["restored"] and ref_info["restored"]
    assert torch.equal(rank0["edit"], rank1["edit"]) and ref["edit"].abs().max() > 0
    _close(rank0["edit"], ref["edit"])


def test_pre_pruning_statistics_are_split_across_ranks(runs) -> None:
    """Each rank computes its share of the pre-pruning batches; the all-reduced importance is bitwise the same on
    both ranks (so are the keep-masks) and equals one process's."""
    two, one = runs
    ref = _load(one, "prune", 0)[0]
    rank0, rank1 = _load(two, "prune", 0)[0], _load(two, "prune", 1)[0]
    assert torch.equal(rank0["importance"], rank1["importance"]) and torch.equal(rank0["keep"], rank1["keep"])
    assert ref["importance"].max() > 0
    _close(rank0["importance"], ref["importance"])
    assert int(ref["keep"].sum()) == int(rank0["keep"].sum()) > 0
    assert int((rank0["keep"] != ref["keep"]).sum()) <= 2  # at most a near-tie at the cut swapped


def test_a_sharded_experiment_with_resume_checkpoints(runs) -> None:
    """The trainer with shard_gradiend and save_steps=2: rank 1 writes only its slice of each resume checkpoint
    (into rank 0's temp directory), the checkpoints are gone at the end, and the results equal the unsharded
    two-rank experiment's."""
    two, _ = runs
    rank1 = [line.split("\t") for line in (two / "shard_writes_rank1.log").read_text(encoding="utf-8").splitlines()]
    assert rank1 and all(path.endswith("/rank1.safetensors") and "/cache/resume/" in path for _, _, _, path, _ in rank1)
    rank0 = (two / "shard_writes_rank0.log").read_text(encoding="utf-8")
    assert rank0.count("state.json") == 2  # checkpoints after steps 2 and 4 (not after the last step)
    (tensors, info), (reference, ref_info) = _load(two, "experiment_shard", 0), _load(two, "experiment", 0)
    assert info["resume_left"] == []
    assert tensors["encoded"].numel() == reference["encoded"].numel() > 0
    torch.testing.assert_close(tensors["encoded"], reference["encoded"], rtol=0, atol=1e-4)
    ids = [{k: v.get("id") for k, v in s["summaries"]["summaries"].items()} for s in (info, ref_info)]
    assert ids[0] == ids[1] and ids[0]


def test_a_resumed_sharded_run_equals_the_uninterrupted_one(runs) -> None:
    """Killed after step 5, rerun: each rank restores its slice from step 4's checkpoint (one directory, a file per
    rank, rank 0's state.json last) and the run ends bitwise where the uninterrupted sharded run ends."""
    two, _ = runs
    for rank in (0, 1):
        resumed, info = _load(two, "resume_shard", rank)
        uninterrupted, stats = _load(two, "train_shard", rank)
        assert info["step"] == 4 and info["shards"]["world_size"] == 2
        assert {"rank0.safetensors", "rank1.safetensors", "state.json"} <= set(info["files"])
        assert resumed.keys() == uninterrupted.keys()
        for key, value in uninterrupted.items():
            assert torch.equal(resumed[key], value), key
        assert info["losses"] == stats["losses"] and info["scores"] == stats["scores"]


def _written(lines: list[str], root: Path) -> set[str]:
    """The paths of a write log relative to `root`, temp directory names (`.<name>.<hex>.tmp`) as `<name>`."""
    return {re.sub(r"/\.([^/]+)\.[0-9a-f]{8}\.tmp(?=/|$)", r"/\1", line.split("\t")[3].replace(str(root), ""))
            for line in lines}


def test_only_rank_zero_writes_and_the_experiment_matches(runs) -> None:
    two, one = runs
    assert not (two / "writes_rank1.log").exists(), "rank 1 wrote experiment files"
    writes = (two / "writes_rank0.log").read_text(encoding="utf-8").splitlines()
    reference = (one / "writes_rank0.log").read_text(encoding="utf-8").splitlines()
    written = _written(writes, two)
    assert written == _written(reference, one)
    assert any(path.endswith("model") for path in written) and any("decoder" in path for path in written)
    (tensors, ours), (tensors_ref, ref) = _load(two, "experiment", 0), _load(one, "experiment", 0)
    encoded, encoded_ref = tensors["encoded"], tensors_ref["encoded"]
    assert encoded.numel() == encoded_ref.numel() > 0  # encoder evaluation: rows split across ranks, gathered
    torch.testing.assert_close(encoded, encoded_ref, rtol=0, atol=1e-4)
    ids = [{k: v.get("id") for k, v in s["summaries"].items()} for s in (ours["summaries"], ref["summaries"])]
    assert ids[0] == ids[1] and ids[0]  # the same decoder candidate selected
    assert [r["id"] for r in ours["grid"]] == [r["id"] for r in ref["grid"]]  # candidates split, gathered in order
    for record, expected in zip(ours["grid"], ref["grid"], strict=True):
        assert record["lms"] == pytest.approx(expected["lms"], rel=1e-4)
        for cls, probs in expected["probs"].items():
            assert record["probs"][cls] == pytest.approx(probs, rel=1e-4, abs=1e-7)


def test_the_trainer_keeps_a_sharded_gradiend_split_and_matches_one_process(runs) -> None:
    """sharded_final_weights='rank0_host' (the default) through the trainer: rank 1 never holds a tensor of the
    GRADIEND's size (training, evaluation, rewrites, a reload), rank 0 holds the whole GRADIEND in host memory, and
    encodings, the decoder grid and selection, and the rewritten weights (saved and in memory) equal one process."""
    two, one = runs
    ref, ref_info = _load(one, "trainer_host", 0)
    (rank0, info0), (rank1, info1) = _load(two, "trainer_host", 0), _load(two, "trainer_host", 1)
    n = ref_info["after"]["n"]
    assert ref_info["after"]["type"] == "ModelWithGradiend" and ref_info["after"]["large"]  # the whole GRADIEND
    half = -(-n // 2)
    for held in (info0["held"], info1["held"]):  # while training: the slice's weights only, the full model released
        assert held["full_model"] == 0 < held["trained"] <= 3 * half + 1
    for info in (info1["after"], info1["reloaded"]):
        assert info["type"] == "ShardedModelWithGradiend" and info["n"] == n
        assert info["large"] == [] and info["whole_entries"] == 0 and "holds only its slice" in info["whole_error"]
        lo, hi = info["slice"]
        assert 0 < lo < hi == n
    for info in (info0["after"], info0["reloaded"]):
        assert info["whole_device"] == "cpu" and info["whole_entries"] == 3 * n + 1  # W_e, b_e, W_d, b_d
        assert info["slice"][0] == 0 < info["slice"][1] < n
    # encodings: summed over the slices, the same bits on both ranks; the reloaded slices encode the same
    assert torch.equal(rank0["encoded"], rank1["encoded"]) and ref["encoded"].abs().max() > 0
    torch.testing.assert_close(rank0["encoded"], ref["encoded"], rtol=0, atol=1e-4)
    assert torch.equal(rank0["reread"], rank0["encoded"]) and torch.equal(rank1["reread"], rank1["encoded"])
    assert info0["calibration"]["gain"] == pytest.approx(ref_info["calibration"]["gain"], rel=1e-4)
    # the decoder grid: every rank scores every candidate, decoded from the slices
    assert info0["selected"] == info1["selected"] == ref_info["selected"]
    assert info0["grid"] == info1["grid"] and [r["id"] for r in info0["grid"]] == [r["id"] for r in ref_info["grid"]]
    for record, expected in zip(info0["grid"], ref_info["grid"], strict=True):
        assert record["lms"] == pytest.approx(expected["lms"], rel=1e-4)
        for cls, probs in expected["probs"].items():
            assert record["probs"][cls] == pytest.approx(probs, rel=1e-6)
    rewrites = sorted(k for k in ref if k.startswith("rewrite."))
    assert rewrites and sorted(k for k in rank0 if k.startswith("rewrite.")) == rewrites
    assert all(torch.equal(rank0[key], rank1[key]) for key in rewrites)

    def joined(tensors: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
        # one vector, as the agreement table compares it: a tensor that is rounding noise in exact arithmetic (a
        # key bias) has no relative precision of its own
        return torch.cat([tensors[key].reshape(-1).double() for key in keys])

    _close(joined(rank0, rewrites), joined(ref, rewrites))
    saved, saved_ref = (load_file(str(d / "host_rewrite" / "model.safetensors")) for d in (two, one))
    assert saved.keys() == saved_ref.keys()
    _close(joined(saved, sorted(saved_ref)), joined(saved_ref, sorted(saved_ref)))
    edited = [f"{key.removeprefix('rewrite.')}" for key in rewrites]  # the saved rewrite is the in-memory one
    assert all(torch.equal(saved[key], rank0[f"rewrite.{key}"]) for key in edited if key in saved)
    # only rank 0 wrote, and it wrote what one process writes
    assert not (two / "host_writes_rank1.log").exists(), "rank 1 wrote files"
    written = _written((two / "host_writes_rank0.log").read_text(encoding="utf-8").splitlines(), two)
    assert written == _written((one / "host_writes_rank0.log").read_text(encoding="utf-8").splitlines(), one)


def test_ranks_asking_for_different_decoded_rows_stop_with_a_clear_error(runs) -> None:
    two, _ = runs
    for rank in (0, 1):
        error = _load(two, "diverge", rank)[1]["error"]
        assert error and "the ranks asked for different decoded rows" in error and f"rank {rank}:" in error


def test_gradiend_train_on_a_sharded_config(launches) -> None:
    """`gradiend train run.json` with shard_gradiend and two seeds on two ranks: both exit 0, only rank 0 writes,
    seed 0's GRADIEND equals the one the trainer saved from the same settings, the best seed is the saved model."""
    out, two = launches["cli_output"], launches["two"]
    (code0, err0), (code1, err1) = launches["cli"]
    assert (code0, code1) == (0, 0), f"rank 0:\n{err0[-3000:]}\nrank 1:\n{err1[-3000:]}"
    assert not (out / "cli_writes_rank1.log").exists(), "rank 1 wrote files"
    experiment = out / "cli_experiment"
    report = json.loads((experiment / "seeds" / "seed_report.json").read_text(encoding="utf-8"))
    assert [run["seed"] for run in report["runs"]] == [0, 1]
    assert [run["eval_correlation_source"] for run in report["runs"]] == ["validation"] * 2  # scored slice-wise
    seed0 = load_file(str(experiment / "seeds" / "seed_0" / "model.safetensors"))
    trained = load_file(str(two / "host_experiment" / "model" / "model.safetensors"))
    assert seed0.keys() == trained.keys()
    for key, value in trained.items():
        assert torch.equal(seed0[key], value), key  # the same ranks, settings and data: the same bits
    best = load_file(str(experiment / "seeds" / f"seed_{report['best_seed']}" / "model.safetensors"))
    saved = load_file(str(experiment / "model" / "model.safetensors"))
    assert all(torch.equal(saved[key], value) for key, value in best.items())
    stats = json.loads((experiment / "model" / "training.json").read_text(encoding="utf-8"))
    assert "gain" in stats["calibration"]
    assert [run["converged"] for run in report["runs"]] == [True, True]
    stability = json.loads((experiment / "seeds" / SEED_STABILITY_FILE).read_text(encoding="utf-8"))
    assert stability["seeds"] == ["seed_0", "seed_1"]  # rank 0 alone reads the seeds' whole checkpoints


@pytest.mark.parametrize("how", ["die", "hang"])
def test_a_broken_rank_stops_the_other_with_a_clear_error(launches, how) -> None:
    name = "agreement" if how == "die" else "hang"
    out = launches["two"] if how == "die" else launches["hang_output"]
    (code0, err0), _ = launches[name]
    assert code0 == 3, err0[-3000:]
    _, info = _load(out, how, 0)
    assert "rank 0 of 2" in info["error"] and "another rank died or did not reach it" in info["error"]
    assert f"distributed_timeout={3 if how == 'hang' else 30} s" in info["error"]
    assert info["seconds"] < 30  # seconds, not the default 10 minutes
    if how == "hang":  # rank 0 waited for the timeout, not less
        assert info["seconds"] >= 3


@pytest.mark.parametrize(("batch", "latent", "bias"), [(1, 1, True), (1, 1, False), (3, 2, True)])
def test_sharded_step_equals_the_full_step(batch: int, latent: int, bias: bool) -> None:
    """Three coordinate slices stepped in three threads whose `reduce` sums over them = the full FusedLoss."""
    from gradiend.model import GradiendConfig, GradiendModel
    from gradiend.step import FusedLoss

    n, world = 1001, 3
    full = GradiendModel(GradiendConfig(input_dim=n, latent_dim=latent, bias_decoder=bias),
                         generator=torch.Generator().manual_seed(1)).double()
    full.input_scale.fill_(0.02)
    full.target_scale.fill_(3e-3)
    gen = torch.Generator().manual_seed(2)
    x, y = (torch.randn(batch, n, generator=gen, dtype=torch.float64) * 1e-2 for _ in range(2))
    loss_full, _ = FusedLoss(full, batch).loss_and_grad(x, y)
    barrier, parts = threading.Barrier(world), [None] * world

    def step(rank: int, out: list) -> None:
        lo, hi = distributed.shard_range(n, rank, world)
        config = dataclasses.replace(full.config, input_dim=hi - lo)
        shard = GradiendModel(config, shape_only=True)
        state = {k: v.clone() for k, v in full.state_dict().items()}
        state["encoder_weight"] = state["encoder_weight"][:, lo:hi].clone()
        state["decoder_weight"] = state["decoder_weight"][lo:hi].clone()
        if bias:
            state["decoder_bias"] = state["decoder_bias"][lo:hi].clone()
        shard.load_state_dict(state, assign=True)

        def reduce(value: torch.Tensor) -> torch.Tensor:  # an all-reduce over the threads
            parts[rank] = value.clone()
            barrier.wait()
            total = sum(parts)
            barrier.wait()
            return value.copy_(total)

        loss, _ = FusedLoss(shard, batch, reduce=reduce, n_total=n).loss_and_grad(x[:, lo:hi].contiguous(),
                                                                                   y[:, lo:hi].contiguous())
        out.append((rank, loss, {k: p.grad.clone() for k, p in shard.named_parameters()}))

    results: list = []
    threads = [threading.Thread(target=step, args=(r, results)) for r in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    results.sort(key=lambda item: item[0])
    assert len(results) == world
    for _, loss, grads in results:
        torch.testing.assert_close(loss, loss_full, rtol=1e-12, atol=0)
        torch.testing.assert_close(grads["encoder_bias"], full.encoder_bias.grad, rtol=1e-12, atol=0)
    for name, dim in (("encoder_weight", 1), ("decoder_weight", 0), ("decoder_bias", 0)):
        if name == "decoder_bias" and not bias:
            continue
        joined = torch.cat([grads[name] for _, _, grads in results], dim=dim)
        expected = dict(full.named_parameters())[name].grad
        assert expected.abs().max() > 0
        torch.testing.assert_close(joined, expected, rtol=1e-12, atol=1e-15 * float(expected.abs().max()))


def test_shard_ranges_cover_every_item_once_and_differ_by_one_at_most() -> None:
    for n in (0, 1, 5, 8544):
        for world in (1, 2, 3, 8):
            ranges = [distributed.shard_range(n, r, world) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
            sizes = [hi - lo for lo, hi in ranges]
            assert max(sizes) - min(sizes) <= 1 and distributed.padded_shard(n, world) == max(sizes)
    with pytest.raises(ValueError, match="rank 2 of 2"):
        distributed.shard_range(3, 2, 2)


def test_one_process_changes_nothing(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.context()
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    values = torch.arange(4.0)
    assert distributed.all_reduce_(values) is values and torch.equal(values, torch.arange(4.0))
    assert distributed.reduce_to_(values, 0) is values and torch.equal(values, torch.arange(4.0))
    out = torch.empty(4)
    assert distributed.all_gather_into_(values, out, 2, width=2) is out and torch.equal(out, values)
    with pytest.raises(ValueError, match="do not fit"):
        distributed.all_gather_into_(values, torch.empty(6), 3, width=2)
    assert distributed.all_agree(False) is False and distributed.all_agree(True) is True
    assert distributed.gather_items(distributed.split_items([1, 2, 3])) == [1, 2, 3]
    assert distributed.my_share(7) == (0, 7) and distributed.may_write()


def test_bad_launch_settings_get_clear_errors(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match=r"WORLD_SIZE='two' is not a positive integer.*torchrun"):
        distributed.init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="RANK=None is not set to a rank; launch with `torchrun"):
        distributed.init_from_env()
    with pytest.raises(ValueError, match="distributed_timeout must be a positive number of seconds"):
        distributed.init_from_env(0)
    assert not torch.distributed.is_initialized()


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL cannot put two ranks on one GPU)")
def test_nccl_smoke(tiny_mlm_dir, tmp_path) -> None:
    procs = _start(tiny_mlm_dir, tmp_path, ["train_cuda"], cpu=False)
    for rank, proc in enumerate(procs):
        code, err = _finish(proc, 300)
        assert code == 0, f"rank {rank}:\n{err[-3000:]}"
    rank0, rank1 = _load(tmp_path, "train_cuda", 0)[0], _load(tmp_path, "train_cuda", 1)[0]
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key])


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_chunked_reduction_gives_each_rank_its_slice_of_the_sum(monkeypatch, chunk: int) -> None:
    """Three ranks (threads) reduce per-parameter gradients chunk by chunk: each gets its `shard_range` slice of
    the weighted sum, zero-padded, on a pruned map with a parameter the loss does not reach on one rank."""
    from gradiend import gradient_source
    from gradiend.params import ParamMap

    world, gen = 3, torch.Generator().manual_seed(3)
    full = ParamMap.from_shapes([("a", (7, 5)), ("b", (13,)), ("c", (4, 4, 3))])
    pm = full.restrict(torch.rand(full.size, generator=gen) > 0.3)
    shapes = [spec.shape for spec in pm.specs]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(world)]
    grads[1][1] = None
    weights = [0.5, 0.25, 0.25]
    expected = sum(pm.gather(g, torch.zeros(pm.size)) * w for g, w in zip(grads, weights, strict=True))
    monkeypatch.setattr(gradient_source, "REDUCE_CHUNK", chunk)
    width = distributed.padded_shard(pm.size, world)
    reducers = []
    for rank in range(world):
        monkeypatch.setattr(distributed, "context", lambda rank=rank: distributed.Context(rank, world))
        reducers.append(gradient_source._ChunkReducer(pm, torch.empty(width), weights[rank]))
    barrier, parts, local, calls = threading.Barrier(world), [None] * world, threading.local(), []

    def reduce_to(buf: torch.Tensor, dst: int, what: str) -> torch.Tensor:  # dist.reduce over the threads
        parts[local.rank] = buf.clone()
        barrier.wait()
        if local.rank == dst:
            buf.copy_(sum(parts))
            calls.append(buf.numel())
        barrier.wait()
        return buf

    monkeypatch.setattr(distributed, "reduce_to_", reduce_to)
    outs = [torch.full((width,), float("nan")) for _ in range(world)]

    def work(rank: int) -> None:
        local.rank = rank
        reducers[rank].reduce("diff", grads[rank], outs[rank])

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for rank in range(world):
        lo, hi = distributed.shard_range(pm.size, rank, world)
        torch.testing.assert_close(outs[rank][:hi - lo], expected[lo:hi], rtol=1e-6, atol=1e-7)
        assert torch.equal(outs[rank][hi - lo:], torch.zeros(width - (hi - lo)))
    assert sum(calls) == pm.size and max(calls) <= chunk  # each coordinate reduced once, one chunk at a time


@pytest.mark.parametrize("forward_mode", [True, False])
def test_slice_projections_sum_to_the_full_encoding(tiny_mlm_dir: str, forward_mode: bool) -> None:
    """Three slices' partial projections w_slice · x_slice (a pruned map: slices cut inside pruned tensors) sum to
    the full directional derivative; forward mode and the per-row backward fallback agree."""
    from gradiend import sharding
    from gradiend.model_with_gradiend import ModelWithGradiend

    model = ModelWithGradiend.create(tiny_mlm_dir, feature_classes=["3SG", "3PL"], seed=0,
                                     params=["encoder.layer.1.*"])
    keep = torch.rand(model.param_map.size, generator=torch.Generator().manual_seed(4)) > 0.4
    model = model.prune(keep)
    engine, n = model.engine, model.param_map.size
    directions = torch.randn(2, n, generator=torch.Generator().manual_seed(5))
    texts = ["[MASK] walked to the house and was very tired .", "then [MASK] said that the sea was good ."]
    factual, alternative = ["she", "they"], ["they", "he"]
    full = engine.directional(texts, factual, alternative, "diff", directions)
    engine._use_jvp = forward_mode
    parts = [sharding.slice_projections(engine, lo, directions[:, lo:hi], texts, factual, alternative, "diff")
             for lo, hi in (distributed.shard_range(n, r, 3) for r in range(3))]
    assert all(part.shape == (2, 2) for part in parts) and all(part.abs().max() > 0 for part in parts)
    torch.testing.assert_close(sum(parts), full, rtol=1e-4, atol=1e-6 * float(full.abs().max()))


def test_a_sharded_checkpoint_round_trips_and_refuses_what_does_not_fit(tmp_path, caplog) -> None:
    """One process is the one-rank case of `ShardedCheckpoint`: its file layout round-trips; another world size, a
    truncated rank file, another run's key or a step count that does not fit make every rank start fresh."""
    from gradiend.model import GradiendConfig, GradiendModel
    from gradiend.resume import ResumeCheckpoint, TrainingState
    from gradiend.sharding import ShardedCheckpoint
    from gradiend.training import make_optimizer

    model = GradiendModel(GradiendConfig(input_dim=50), generator=torch.Generator().manual_seed(0))
    optimizer = make_optimizer(model.parameters(), gradiend.TrainingArguments(), fused=False)
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    optimizer.step()
    state = TrainingState(key="k", step=2, total_steps=6, epoch=0, gradiend=model.state_dict(),
                          optimizer=optimizer.state_dict(), history={"scores": {"2": 0.5}}, best_state=None,
                          best_is_current=True, timings={"gradients": 1.0})
    directory = tmp_path / "checkpoint"
    checkpoint = ShardedCheckpoint(ResumeCheckpoint(directory, "k", save_steps=2))
    assert checkpoint.due(2, 6) and not checkpoint.due(6, 6)
    assert checkpoint.save(state)
    assert {"rank0.safetensors", "state.json"} <= {p.name for p in directory.iterdir()}
    loaded = checkpoint.load(6, model.state_dict(), optimizer)
    assert loaded is not None and loaded.step == 2 and loaded.history == state.history
    for key, value in state.gradiend.items():
        assert torch.equal(loaded.gradiend[key], value)
    assert torch.equal(loaded.optimizer["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert ShardedCheckpoint(ResumeCheckpoint(directory, "other", 2)).load(6, model.state_dict(), optimizer) is None
    assert checkpoint.load(8, model.state_dict(), optimizer) is None  # another step count
    meta = json.loads((directory / "state.json").read_text(encoding="utf-8"))
    (directory / "state.json").write_text(json.dumps({**meta, "shards": {**meta["shards"], "world_size": 2}}))
    assert checkpoint.load(6, model.state_dict(), optimizer) is None
    assert "written by 2 sharded ranks, this run has 1" in caplog.text
    (directory / "state.json").write_text(json.dumps(meta))
    data = (directory / "rank0.safetensors").read_bytes()
    (directory / "rank0.safetensors").write_bytes(data[:-10])
    assert checkpoint.load(6, model.state_dict(), optimizer) is None
    assert "not the size rank 0 recorded" in caplog.text
    checkpoint.remove()
    assert not directory.exists()


def test_gather_to_main_in_one_process_is_a_host_copy() -> None:
    values = torch.arange(6.0)
    out = distributed.gather_to_main(values, 3, width=2)
    assert out is not None and torch.equal(out, values) and out.data_ptr() != values.data_ptr()
    with pytest.raises(ValueError, match="do not fit"):
        distributed.gather_to_main(values, 4, width=2)
    assert distributed.broadcast_(values, 0) is values
