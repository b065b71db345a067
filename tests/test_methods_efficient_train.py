"""Efficient SAM variants through the training engine: per-epoch pass averages and per-step decision
traces in log.jsonl, and resume of per-sample/adaptive state (the smoke task of every method is in
test_methods.py)."""

from __future__ import annotations

import json

import pytest
from methods_table import ROWS  # tests/ is on sys.path under pytest
from problems import tiny_run

from sampa.config import RunConfig
from sampa.train import train

SMOKE_HPARAMS = {row.name: row.smoke for row in ROWS}  # short windows and start epochs (methods_table.py)


def smoke_config(name: str, **overrides) -> RunConfig:
    values = dict(
        optimizer=name,
        hparams=SMOKE_HPARAMS[name],
        epochs=5,
        batch_size=64,
        lr=0.03,
        synthetic_train_size=640,
        synthetic_test_size=200,
        eval_batch_size=500,
    )
    return tiny_run(**(values | overrides))


def log_rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_per_epoch_passes_match_each_method_s_cost(tmp_path):
    """LookSAM 1 + 1/k, SAF 1, MESA one extra forward once active, AE-SAM/vSAM 1 + their SAM-step rate."""
    runs = {}
    for name in ("looksam", "saf", "mesa", "aesam", "vsam"):
        cfg = smoke_config(name, epochs=3, synthetic_train_size=320)
        train(cfg, tmp_path / name, log_progress=False)
        runs[name] = log_rows(tmp_path / name)
    steps = runs["saf"][0]["steps"]  # 288 samples / 64 = 5 steps per epoch
    sam_steps_per_epoch = [sum(1 for t in range(e * steps, (e + 1) * steps) if t % 5 == 0) for e in range(3)]
    for row, sam_steps in zip(runs["looksam"], sam_steps_per_epoch, strict=True):
        assert row["passes_per_step"]["sequential"] == pytest.approx(1 + sam_steps / steps)
    assert all(r["passes_per_step"] == {k: 1.0 for k in r["passes_per_step"]} for r in runs["saf"])
    for row in runs["mesa"]:  # e_start = 2 (0-based)
        assert row["passes_per_step"]["forward"] == (2.0 if row["epoch"] > 2 else 1.0)
        assert row["passes_per_step"]["backward"] == 1.0
        assert ("stats" in row) == (row["epoch"] > 2)
    for name in ("aesam", "vsam"):
        for row in runs[name]:
            decisions = row["stats"]["sam_step"]
            assert row["passes_per_step"]["sequential"] == pytest.approx(1 + decisions["mean"])
            assert len(decisions["trace"]) == row["steps"]  # per-step decisions for the sampling figure
    assert all(len(r["stats"]["threshold"]["trace"]) == steps for r in runs["aesam"])
    assert all(len(r["stats"]["sampling_rate"]["trace"]) == steps for r in runs["vsam"])
    assert runs["vsam"][0]["stats"]["sam_step"]["trace"] == [1.0] * steps  # warm-up epoch


@pytest.mark.parametrize("name", ["saf", "vsam"])
def test_engine_resume_restores_per_sample_and_schedule_state(name, tmp_path):
    """Stop after 3 of 4 epochs, resume: SAF's epoch-4 targets come from the checkpointed logits table,
    vSAM continues its windows and sampling rate; the results equal an uninterrupted run."""
    cfg = smoke_config(name, epochs=4, synthetic_train_size=320)
    full = train(cfg, tmp_path / "full", log_progress=False)
    assert train(cfg, tmp_path / "split", stop_after=3, log_progress=False) is None
    resumed = train(cfg, tmp_path / "split", log_progress=False)
    for key in ("final_train_loss", "final_test_acc", "final_val_loss", "test_acc"):
        assert resumed[key] == full[key]
    last_full, last_resumed = log_rows(tmp_path / "full")[-1], log_rows(tmp_path / "split")[-1]
    assert last_resumed["stats"] == last_full["stats"] and last_full["stats"]
