"""Efficient SAM variants through the training engine: the synthetic smoke task, per-epoch pass
averages and per-step decision traces in log.jsonl, and resume of per-sample/adaptive state."""

from __future__ import annotations

import json

import pytest
from problems import tiny_run  # tests/ is on sys.path under pytest

from sampa.config import RunConfig
from sampa.train import train

# Small-scale settings: vSAM's windows and warm-up, SAF/MESA's start epochs (and MESA's EMA decay, so
# that its teacher moves within a few dozen steps) are shortened to fit five epochs; mSAM keeps m = 32
# (two micro-batches per batch of 64).
SMOKE_HPARAMS = {
    "looksam": {},
    "aesam": {},
    "saf": {"e_start": 2, "lag": 1},
    "mesa": {"e_start": 2, "beta": 0.9},
    "esam": {"gamma": 0.5},
    "msam": {},
    "vsam": {"warmup_epochs": 1, "window": 6, "var_blocks": 3},
    "sampa-msam": {},
}
CHANCE = 0.1  # 10 balanced classes


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


@pytest.mark.parametrize("name", list(SMOKE_HPARAMS))
def test_trains_the_synthetic_smoke_task_better_than_chance(name, tmp_path):
    metrics = train(smoke_config(name), tmp_path / name, log_progress=False)
    assert metrics["status"] == "complete"
    assert metrics["final_test_acc"] > 2 * CHANCE and metrics["test_acc"] > 2 * CHANCE
    rows = log_rows(tmp_path / name)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


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
