"""Under torchrun only rank 0 touches files: a rewrite save and the seed-checkpoint cleanup skip on other ranks."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForMaskedLM, AutoTokenizer

from gradiend import TrainingArguments, distributed, rewrite, seeds
from gradiend.records import SeedRun


@pytest.mark.parametrize("rank0", [True, False])
def test_seed_cleanup_only_on_rank_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rank0: bool) -> None:
    monkeypatch.setattr(distributed, "may_write", lambda: rank0)
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"seed_{seed}"
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"w")
        (out / "training.json").write_text("{}")
        runs.append(SeedRun(seed=seed, output_dir=str(out), converged=seed == 0))
    seeds._retain(runs, runs[0], TrainingArguments(saved_seed_runs="best_only"))
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    if rank0:
        assert left == ["seed_0/training.json", "seed_1/training.json"]
    else:
        assert len(left) == 4, "another rank deletes nothing (rank 0's files)"


@pytest.mark.parametrize("rank0", [True, False])
def test_rewrite_saves_only_on_rank_zero(tmp_path: Path, tiny_mlm_dir: str, monkeypatch: pytest.MonkeyPatch,
                                         rank0: bool) -> None:
    monkeypatch.setattr(distributed, "may_write", lambda: rank0)
    monkeypatch.setattr(rewrite, "model_card", lambda card: "card")  # the card has its own tests
    model = AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm_dir)
    out = tmp_path / "rewritten"
    assert rewrite.save_rewritten(model, tokenizer, out, {"base_model": tiny_mlm_dir}) == str(out)
    assert (out / "model.safetensors").exists() == rank0
    assert not [p for p in tmp_path.iterdir() if p != out], "no scratch copy is left behind"


def test_settings_that_do_not_change_learning_keep_the_cached_run(tiny_mlm_dir: str) -> None:
    """Process layout and evaluation-only switches reuse a finished run; a learning setting does not."""
    from conftest import make_rows

    from gradiend.runs import run_fingerprint

    args, rows = TrainingArguments(), make_rows()
    key = run_fingerprint(args, tiny_mlm_dir, rows, None)
    for change in ({"distributed_timeout": 30.0}, {"shard_gradiend": True}, {"include_other_classes": True}):
        assert run_fingerprint(args.replace(**change), tiny_mlm_dir, rows, None) == key, change
    assert run_fingerprint(args.replace(learning_rate=1e-4), tiny_mlm_dir, rows, None) != key
