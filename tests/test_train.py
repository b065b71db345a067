"""The training engine: run directory contents, resume determinism, divergence, restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from problems import tiny_run

from sampa import io
from sampa.train import RunError, train

RESULT_KEYS = (
    "test_acc",
    "test_loss",
    "best_val_acc",
    "best_epoch",
    "final_val_acc",
    "final_val_loss",
    "final_test_acc",
    "final_test_loss",
    "final_train_loss",
    "final_train_acc",
    "epochs_completed",
)


def results(metrics: dict) -> dict:
    return {k: metrics[k] for k in RESULT_KEYS}


def test_run_directory_holds_complete_outputs(tmp_path):
    cfg = tiny_run(optimizer="sampa", hparams={"rho": 0.1, "lam": 0.2})
    metrics = train(cfg, tmp_path / "run", log_progress=False)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        ".lock",
        "best.pt",
        "config.json",
        "log.jsonl",
        "metrics.json",
    ]
    on_disk = io.read_json(run / "metrics.json")
    assert on_disk["status"] == "complete" and not on_disk["diverged"]
    assert on_disk["test_acc"] == metrics["test_acc"]
    assert 0.0 <= on_disk["test_acc"] <= 1.0
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "passes_per_step"):
        assert key in rows[0]
    assert rows[0]["lr"] == pytest.approx(0.05) and rows[1]["lr"] < rows[0]["lr"]  # per-epoch cosine
    assert on_disk["best_val_acc"] == max(r["val_acc"] for r in rows)
    assert on_disk["best_epoch"] == 1 + [r["val_acc"] for r in rows].index(on_disk["best_val_acc"])
    # SAMPa: the first step costs one gradient, every later step two independent ones
    steps = rows[0]["steps"]
    assert rows[0]["passes_per_step"]["forward"] == pytest.approx((1 + 2 * (steps - 1)) / steps)
    assert rows[1]["passes_per_step"]["ideal_sequential"] == 1.0
    assert torch.__version__.startswith(on_disk["provenance"]["packages"]["torch"])
    assert set(on_disk["provenance"]["git"]) == {"sha", "dirty"}
    assert on_disk["memory"]["cpu_source"].startswith("getrusage")
    assert on_disk["config"]["optimizer"] == "sampa"


def test_best_checkpoint_is_the_reported_model(tmp_path):
    from sampa.data import load_dataset
    from sampa.models import build_model
    from sampa.train import evaluate

    cfg = tiny_run()
    metrics = train(cfg, tmp_path / "run", log_progress=False)
    data = load_dataset("synthetic", seed=0, synthetic_train_size=200, synthetic_test_size=100)
    model = build_model("tinycnn", 10)
    model.load_state_dict(io.load_torch(tmp_path / "run" / "best.pt"))
    assert evaluate(model, data, "test", 1000)["acc"] == metrics["test_acc"]
    assert evaluate(model, data, "val", 1000)["acc"] == metrics["best_val_acc"]


@pytest.mark.parametrize("optimizer", ["sgd", "sampa", "randsam"])
def test_interrupted_run_resumes_to_identical_results(tmp_path, optimizer):
    cfg = tiny_run(optimizer=optimizer, epochs=4)
    full = train(cfg, tmp_path / "full", log_progress=False)
    assert train(cfg, tmp_path / "resumed", stop_after=1, log_progress=False) is None
    partial = tmp_path / "resumed"
    assert not (partial / "metrics.json").exists() and (partial / "checkpoint.pt").exists()
    assert train(cfg, tmp_path / "resumed", stop_after=2, log_progress=False) is None
    resumed = train(cfg, tmp_path / "resumed", log_progress=False)
    assert results(resumed) == results(full)
    assert resumed["provenance"]["resumes"] == 2
    full_log = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    resumed_log = [json.loads(x) for x in (partial / "log.jsonl").read_text().splitlines()]
    for a, b in zip(full_log, resumed_log, strict=True):
        assert (a["train_loss"], a["val_acc"]) == (b["train_loss"], b["val_acc"])


def test_a_gpu_checkpoint_carries_the_cuda_generator_that_dropout_draws_from(monkeypatch):
    """On a GPU a model's dropout (BERT) draws from the device's CUDA generator: a resumed run must put
    its state back, or it replays the first epochs' masks. (No GPU here: the CUDA calls are recorded.)"""
    from sampa.train import device_rng_state, restore_device_rng_state

    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", device)) or "state")
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", state, device))
    )
    gpu, cpu = torch.device("cuda", 1), torch.device("cpu")
    assert device_rng_state(gpu) == "state" and device_rng_state(cpu) is None
    restore_device_rng_state(gpu, torch.tensor([7], dtype=torch.uint8))
    restore_device_rng_state(gpu, None)  # a checkpoint from a CPU, or from before it was saved
    restore_device_rng_state(cpu, torch.tensor([7], dtype=torch.uint8))
    assert calls[0] == ("get", gpu) and len(calls) == 2
    assert calls[1][0] == "set" and calls[1][2] == gpu and calls[1][1].device.type == "cpu"


def test_a_checkpoint_from_before_the_cuda_generator_was_saved_still_resumes(tmp_path):
    cfg = tiny_run(epochs=2)
    full = train(cfg, tmp_path / "full", log_progress=False)
    assert train(cfg, tmp_path / "old", stop_after=1, log_progress=False) is None
    checkpoint = io.load_torch(tmp_path / "old" / "checkpoint.pt")
    assert checkpoint.pop("cuda_rng") is None  # a CPU run
    io.save_torch(tmp_path / "old" / "checkpoint.pt", checkpoint)
    assert results(train(cfg, tmp_path / "old", log_progress=False)) == results(full)


def test_killed_process_resumes_with_the_same_command(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "sampa",
        "train",
        "--out",
        str(out),
        "--model",
        "tinycnn",
        "--dataset",
        "synthetic",
        "--optimizer",
        "sampa",
        "--epochs",
        "6",
        "--batch-size",
        "32",
        "--lr",
        "0.05",
        "--synthetic-train-size",
        "400",
        "--synthetic-test-size",
        "100",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    finished = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "resuming after epoch" in finished.stderr
    reference = subprocess.run(
        [*cmd[:5], str(tmp_path / "ref"), *cmd[6:]], env=env, capture_output=True, text=True, timeout=300
    )
    assert reference.returncode == 0, reference.stderr
    assert results(io.read_json(out / "metrics.json")) == results(
        io.read_json(tmp_path / "ref" / "metrics.json")
    )


def test_divergence_is_a_result_not_a_traceback(tmp_path):
    cfg = tiny_run(lr=1e30, momentum=0.0, weight_decay=0.0, label_smoothing=0.0, epochs=3)
    metrics = train(cfg, tmp_path / "run", log_progress=False)
    on_disk = io.read_json(tmp_path / "run" / "metrics.json")
    assert metrics["diverged"] and on_disk["diverged"] and on_disk["status"] == "diverged"
    assert on_disk["diverged_epoch"] == on_disk["epochs_completed"] <= 3
    assert on_disk["final_train_loss"] is None  # non-finite values become null in JSON
    # no numbers of a non-finite model: every result is null, in the file and in what train returns
    from sampa.rundir import RESULT_KEYS

    assert all(on_disk[k] is None and metrics[k] is None for k in RESULT_KEYS)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_finished_run_is_not_retrained(tmp_path):
    cfg = tiny_run(epochs=1)
    first = train(cfg, tmp_path / "run", log_progress=False)
    stamp = (tmp_path / "run" / "metrics.json").stat().st_mtime_ns
    again = train(cfg, tmp_path / "run", log_progress=False)
    assert again["test_acc"] == first["test_acc"]
    assert (tmp_path / "run" / "metrics.json").stat().st_mtime_ns == stamp


def test_directory_of_another_run_is_refused(tmp_path):
    train(tiny_run(epochs=2), tmp_path / "run", stop_after=1, log_progress=False)
    with pytest.raises(RunError, match=r"holds a different run \(lr: 0.05 there, 0.1 now\)"):
        train(tiny_run(epochs=2, lr=0.1), tmp_path / "run", log_progress=False)
    # settings that do not change results may differ on restart
    done = train(tiny_run(epochs=2, threads=2), tmp_path / "run", log_progress=False)
    with pytest.raises(RunError, match="holds a different run"):  # also once the run is complete
        train(tiny_run(epochs=2, seed=1), tmp_path / "run", log_progress=False)
    assert done["status"] == "complete"


def test_threads_of_a_run_are_restored_however_it_ends(tmp_path, monkeypatch):
    """An API user's session keeps its thread count after train(threads=N): a normal end, an error
    and Ctrl-C (KeyboardInterrupt) all put it back."""
    torch.set_num_threads(2)  # the session's own count (conftest restores the suite's after the test)
    seen = []
    monkeypatch.setattr("sampa.train._Run._train_epoch", _spy(seen))
    assert train(tiny_run(epochs=1, threads=1), tmp_path / "done", log_progress=False)["status"] == "complete"
    assert seen == [1] and torch.get_num_threads() == 2  # set during the run only
    with pytest.raises(RunError, match="holds a different run"):
        train(tiny_run(epochs=1, threads=1, lr=0.1), tmp_path / "done", log_progress=False)
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("SAMPA_KILL_AT", "epoch1:step")
    monkeypatch.setenv("SAMPA_KILL_SIGNAL", "INT")  # Ctrl-C: KeyboardInterrupt in this process
    with pytest.raises(KeyboardInterrupt):
        train(tiny_run(epochs=1, threads=1), tmp_path / "interrupted", log_progress=False)
    assert seen == [1, 1] and torch.get_num_threads() == 2


def _spy(seen: list[int]):
    """_Run._train_epoch recording the thread count each epoch ran with."""
    from sampa.train import _Run

    original = _Run._train_epoch

    def train_epoch(self, epoch):
        seen.append(torch.get_num_threads())
        return original(self, epoch)

    return train_epoch


def test_label_noise_and_adamw_runs(tmp_path):
    cfg = tiny_run(
        optimizer="sam",
        base_optimizer="adamw",
        lr=1e-3,
        weight_decay=0.05,
        label_noise=0.4,
        epochs=1,
        hparams={"rho": 0.05},
    )
    metrics = train(cfg, tmp_path / "run", log_progress=False)
    assert metrics["config"]["label_noise"] == 0.4 and metrics["status"] == "complete"


def test_smoke_task_is_learnable(tmp_path):
    cfg = tiny_run(epochs=6, synthetic_train_size=1000, synthetic_test_size=200, batch_size=50)
    metrics = train(cfg, tmp_path / "run", log_progress=False)
    assert metrics["test_acc"] > 0.3  # chance is 0.1
