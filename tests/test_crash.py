"""Crash consistency: a run killed at any point and restarted ends with the same directory as an
uninterrupted one; damaged files and failed writes are one-line errors naming the file."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from problems import FINISHED_RUN_FILES, tiny_run

from sampa import io
from sampa.faults import ENV_VAR
from sampa.report.metrics import read_run_metrics
from sampa.rundir import METRICS_KEYS, DamagedFileError, RunError
from sampa.train import train

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
_slow = pytest.mark.slow
#: every named point of sampa.faults, in run order (epoch 1 always improves, so best.pt is written);
#: four in the fast suite, all with -m slow
KILL_POINTS = [
    "epoch1:step",
    pytest.param("epoch1:best", marks=_slow),
    pytest.param("write:log.jsonl", marks=_slow),  # the first log write: temp file complete, not renamed
    pytest.param("epoch2:log", marks=_slow),
    "write:checkpoint.pt",
    pytest.param("epoch2:checkpoint", marks=_slow),
    "epoch3:log",  # issue 17: the last epoch's line must not be lost
    pytest.param("epoch3:checkpoint", marks=_slow),
    pytest.param("final:eval", marks=_slow),
    pytest.param("final:log", marks=_slow),
    pytest.param("write:metrics.json", marks=_slow),
    "final:metrics",  # metrics.json written, checkpoint still there
]
TIMING_KEYS = ("epoch_time_s", "eval_time_s")
_DRIVER = "import sys, test_crash; test_crash.train(test_crash.config(), sys.argv[1], log_progress=False)"


def config():
    return tiny_run(epochs=EPOCHS, optimizer="sampa", hparams={"rho": 0.1})


def killed_run(out: Path, point: str) -> int:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", ENV_VAR: point}
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(out)], env=env, capture_output=True, timeout=300
    )
    return proc.returncode


def log_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if k not in TIMING_KEYS and not k.startswith("backend_")} for r in rows
    ]


def outcome(run: Path) -> dict:
    metrics = io.read_json(run / "metrics.json")
    return {k: metrics[k] for k in METRICS_KEYS if k not in ("time", "provenance", "memory", "backend")}


def assert_same_run_directory(run: Path, reference: Path) -> None:
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert (run / "config.json").read_bytes() == (reference / "config.json").read_bytes()
    assert log_rows(run) == log_rows(reference)
    assert outcome(run) == outcome(reference)
    best, best_ref = io.load_torch(run / "best.pt"), io.load_torch(reference / "best.pt")
    assert all(torch.equal(best[k], best_ref[k]) for k in best_ref)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    train(config(), out, log_progress=False)
    return out


@pytest.mark.parametrize("point", KILL_POINTS)
def test_restart_after_a_kill_converges_to_the_uninterrupted_run(tmp_path, reference, point):
    out = tmp_path / "run"
    assert killed_run(out, point) == -9, f"the run never reached {point}"
    assert not (out / "metrics.json").exists() or point == "final:metrics"
    train(config(), out, log_progress=False)
    assert_same_run_directory(out, reference)
    assert sorted(p.name for p in out.iterdir()) == FINISHED_RUN_FILES


def test_a_finished_run_without_its_last_log_line_is_repaired(tmp_path, reference):
    """The log is rewritten from the checkpoint on resume, and from the history before metrics.json."""
    out = tmp_path / "run"
    train(config(), out, stop_after=EPOCHS - 1, log_progress=False)
    (out / "log.jsonl").write_text((out / "log.jsonl").read_text().splitlines()[0] + "\n")  # a line lost
    metrics = train(config(), out, log_progress=False)
    assert [r["epoch"] for r in log_rows(out)] == [1, 2, 3] and metrics["status"] == "complete"
    assert_same_run_directory(out, reference)


def test_restart_removes_stale_temporary_files(tmp_path):
    out = tmp_path / "run"
    train(config(), out, stop_after=1, log_progress=False)
    stale = out / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert io.stale_temp_files(out) == [stale]
    train(config(), out, stop_after=1, log_progress=False)
    assert io.stale_temp_files(out) == []


# ----------------------------------------------------------------------------------------------
# Damaged files: one line naming the file and what to do


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "cause"),
    [
        (_truncate, r"checkpoint.pt is damaged \(.+\); delete it to restart this run from scratch"),
        (lambda p: p.write_bytes(b"\x00garbage" * 100), r"checkpoint.pt is damaged"),
        (lambda p: p.write_bytes(b""), r"checkpoint.pt is damaged"),
        (lambda p: torch.save({"model": {}}, p), r"checkpoint.pt is damaged \(no 'method'\)"),
        (lambda p: torch.save({"model": {}, "method": {}, "torch_rng": torch.zeros(1), "engine": {}}, p),
         r"checkpoint.pt is damaged \(.+\)"),
    ],
)  # fmt: skip
def test_damaged_checkpoint_is_one_line_and_deleting_it_restarts(tmp_path, damage, cause):
    out = tmp_path / "run"
    train(config(), out, stop_after=1, log_progress=False)
    damage(out / "checkpoint.pt")
    with pytest.raises(DamagedFileError, match=cause) as err:
        train(config(), out, log_progress=False)
    assert "\n" not in str(err.value) and str(out / "checkpoint.pt") in str(err.value)
    (out / "checkpoint.pt").unlink()
    assert train(config(), out, log_progress=False)["status"] == "complete"


@pytest.mark.parametrize("name", ["config.json", "metrics.json"])
@pytest.mark.parametrize("content", [b"", b'{"status": "comp', b"[1, 2]", b"\xff\xfe not utf-8"])
def test_damaged_json_file_is_one_line(tmp_path, name, content):
    out = tmp_path / "run"
    train(config(), out, log_progress=False)
    (out / name).write_bytes(content)
    with pytest.raises(
        DamagedFileError, match=rf"{name} is damaged \(.+\); delete .+ to train this run again"
    ) as err:
        train(config(), out, log_progress=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b"{", "not JSON"),
        (b"{}", "no 'status'"),
        (b'{"status": "running", "diverged": false}', "no 'diverged_epoch'"),
    ],
)
def test_report_reader_raises_one_error_type_for_a_damaged_metrics_file(tmp_path, content, cause):
    path = tmp_path / "metrics.json"
    path.write_bytes(content)
    with pytest.raises(DamagedFileError, match=cause):
        read_run_metrics(path)


def test_report_reader_returns_a_finished_runs_metrics(tmp_path, reference):
    assert sorted(read_run_metrics(reference / "metrics.json")) == sorted(METRICS_KEYS)


def test_damaged_checkpoint_on_the_command_line(tmp_path, capsys):
    from sampa.cli import main

    out = tmp_path / "run"
    train(config(), out, stop_after=1, log_progress=False)
    _truncate(out / "checkpoint.pt")
    settings = json.dumps({k: v for k, v in config().to_dict().items() if k != "data_root"})
    assert main(["train", "--settings", settings, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out / 'checkpoint.pt'} is damaged" in err, err


# ----------------------------------------------------------------------------------------------
# Write failures: one line with the path and the cause, nothing half-written left behind


def test_out_that_is_a_file_or_under_a_file(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(RunError, match=r"afile is not a directory"):
        train(config(), afile, log_progress=False)
    with pytest.raises(RunError, match=r"afile/run.*: Not a directory$") as err:
        train(config(), afile / "run", log_progress=False)
    assert "\n" not in str(err.value) and afile.read_text() == "x"


def test_empty_out_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunError, match="output directory is empty"):
        train(config(), "", log_progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("code", "cause"), [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied")]
)
def test_failed_write_is_one_line_with_path_and_cause(tmp_path, monkeypatch, code, cause):
    out = tmp_path / "run"
    train(config(), out, stop_after=1, log_progress=False)

    def fail(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(io.os, "fsync", fail)  # every atomic write fails, as on a full or read-only disk
    with pytest.raises(RunError, match=rf"run/log.jsonl: {cause}$") as err:
        train(config(), out, log_progress=False)
    assert "\n" not in str(err.value)
    assert io.stale_temp_files(out) == []  # the failed write removed its temporary file


# ----------------------------------------------------------------------------------------------
# Two devices: rank 0 writes the run directory; a kill at any of its points resumes as one device does

#: every point of sampa.faults that a two-device run passes (``epoch<N>:step``: every rank kills itself;
#: the others: the writer, rank 0, and the other rank fails at its next collective)
PAIR_KILL_POINTS = [
    pytest.param("epoch2:step", marks=_slow),
    pytest.param("epoch1:best", marks=_slow),
    "epoch2:log",
    pytest.param("write:checkpoint.pt", marks=_slow),
    pytest.param("final:log", marks=_slow),
    pytest.param("final:metrics", marks=_slow),
]


def pair_run(out: Path, point: str | None = None) -> subprocess.CompletedProcess:
    """``python -m sampa train --devices 2`` of :func:`config` (SAMPa, task mode) on the CPU."""
    settings = config().to_dict() | {"devices": 2}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(ENV_VAR, None)
    if point is not None:
        env[ENV_VAR] = point
    cmd = [sys.executable, "-m", "sampa", "train", "--settings", json.dumps(settings), "--out", str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def pair_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("pair-reference") / "run"
    done = pair_run(out)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("point", PAIR_KILL_POINTS)
def test_two_device_restart_after_a_kill_converges_to_the_uninterrupted_run(tmp_path, pair_reference, point):
    out = tmp_path / "run"
    killed = pair_run(out, point)
    line = killed.stderr.strip().splitlines()[-1]
    assert killed.returncode == 1 and line.startswith("sampa train: error: two-device run failed: rank")
    assert "0: killed by SIGKILL" in line or "0 and 1: killed by SIGKILL" in line, line
    assert not (out / "metrics.json").exists() or point == "final:metrics"
    done = pair_run(out)
    assert done.returncode == 0, done.stderr
    assert_same_run_directory(out, pair_reference)
    assert sorted(p.name for p in out.iterdir()) == FINISHED_RUN_FILES
