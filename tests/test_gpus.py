"""GPU slot allocator: lock files per GPU, CUDA_VISIBLE_DEVICES per job (fake GPU lists, no CUDA)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sampa import gpus

FAKE = ["GPU-aaaa", "GPU-bbbb"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _release():
    yield
    gpus.release()


def test_two_jobs_get_different_gpus(tmp_path):
    first, second = {}, {}
    assert gpus.claim(1, gpus=FAKE, directory=tmp_path, env=first) == ["GPU-aaaa"]
    assert gpus.claim(1, gpus=FAKE, directory=tmp_path, env=second) == ["GPU-bbbb"]
    assert first[gpus.ENV] == "GPU-aaaa" and second[gpus.ENV] == "GPU-bbbb"
    assert gpus.try_lock(FAKE, 1, tmp_path) is None  # both busy: nothing is taken


def test_a_two_gpu_job_takes_both_or_none(tmp_path):
    env = {}
    assert gpus.claim(2, gpus=FAKE, directory=tmp_path, env=env) == FAKE
    assert env[gpus.ENV] == "GPU-aaaa,GPU-bbbb"
    gpus.release()
    held = gpus.try_lock(FAKE[:1], 1, tmp_path)
    assert held is not None
    assert gpus.try_lock(FAKE, 2, tmp_path) is None  # one free GPU is not enough, and is not kept
    assert gpus.try_lock(FAKE[1:], 1, tmp_path) is not None


def test_waits_for_a_gpu_released_by_another_process(tmp_path):
    holder = textwrap.dedent(
        f"""
        import sys, time
        from sampa import gpus
        gpus.claim(1, gpus={FAKE[:1]!r}, directory={str(tmp_path)!r}, env={{}})
        print("held", flush=True)
        time.sleep(1.0)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.readline().strip() == "held"
    log, env = io.StringIO(), {}
    start = time.monotonic()
    assert gpus.claim(1, gpus=FAKE[:1], directory=tmp_path, env=env, poll_s=0.05, log=log) == FAKE[:1]
    assert time.monotonic() - start > 0.3  # it waited until the other process exited
    assert "waiting for 1 free GPU(s)" in log.getvalue()
    proc.wait(timeout=30)


def test_visible_devices_define_the_pool_and_are_locked_too(tmp_path):
    machine = ["GPU-aaaa", "GPU-bbbb", "GPU-cccc"]
    first, second, third = {gpus.ENV: "1,2"}, {gpus.ENV: "1,2"}, {gpus.ENV: "1,2"}
    assert gpus.claim(1, gpus=machine, directory=tmp_path, env=first) == ["GPU-bbbb"]
    assert gpus.claim(1, gpus=machine, directory=tmp_path, env=second) == ["GPU-cccc"]  # never GPU-aaaa
    assert first[gpus.ENV] == "GPU-bbbb" and second[gpus.ENV] == "GPU-cccc"
    assert gpus.try_lock(gpus.pool(third[gpus.ENV], machine), 1, tmp_path) is None  # both taken: it waits
    with pytest.raises(gpus.GpuError, match="needs 3 GPUs but CUDA_VISIBLE_DEVICES='0,1' names 2"):
        gpus.claim(3, gpus=machine, directory=tmp_path, env={gpus.ENV: "0,1"})


def test_visible_devices_resolve_indices_to_uuids():
    machine = ["GPU-aaaa", "GPU-bbbb"]
    assert gpus.pool("1, 0", machine) == ["GPU-bbbb", "GPU-aaaa"]
    assert gpus.pool("GPU-bbbb,MIG-x", machine) == ["GPU-bbbb", "MIG-x"]  # UUIDs as they are
    assert gpus.pool("0,1", []) == ["0", "1"]  # no driver to ask: the ids themselves are locked


def test_no_gpu_hides_all_and_too_many_is_an_error(tmp_path):
    env = {gpus.ENV: "0"}
    assert gpus.claim(0, gpus=FAKE, env=env) == [] and env[gpus.ENV] == ""
    with pytest.raises(gpus.GpuError, match="needs 3 GPUs but this machine has 2"):
        gpus.claim(3, gpus=FAKE, directory=tmp_path, env={})


def test_train_cli_reports_missing_gpus_in_one_line(tmp_path, capsys, monkeypatch):
    from sampa.cli import main

    monkeypatch.setattr(gpus, "detect_gpus", lambda: [])
    monkeypatch.delenv(gpus.ENV, raising=False)
    args = ["train", "--model", "tinycnn", "--dataset", "synthetic", "--epochs", "1", "--gpus", "1"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == "sampa train: error: this run needs 1 GPUs but this machine has 0\n"
    assert not (tmp_path / "run").exists()


def test_without_pynvml_the_missing_gpus_error_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(gpus, "has_nvml_bindings", lambda: False)
    with pytest.raises(gpus.GpuError) as err:
        gpus.claim(1, gpus=[], directory=tmp_path, env={})
    assert str(err.value) == (
        "this run needs 1 GPUs but this machine has 0 (pynvml is not installed: pip install nvidia-ml-py)"
    )


def test_train_cli_refuses_fewer_gpus_than_devices(tmp_path, capsys):
    from sampa.cli import main

    args = ["train", "--model", "tinycnn", "--dataset", "synthetic", "--devices", "2", "--gpus", "1"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == "sampa train: error: this run needs 2 GPUs but was given 1 (--gpus)\n"


@pytest.mark.parametrize("given", ["flag", "env"])
def test_a_lock_dir_that_is_a_file_is_one_line_naming_where_it_came_from(tmp_path, monkeypatch, given):
    path = tmp_path / "locks"
    path.write_text("not a directory")
    monkeypatch.setenv("SAMPA_GPU_LOCK_DIR", str(path) if given == "env" else "")
    source = "--gpu-lock-dir" if given == "flag" else "$SAMPA_GPU_LOCK_DIR"
    message = f"^{re.escape(source)} '{re.escape(str(path))}' cannot hold the GPU locks: File exists$"
    with pytest.raises(gpus.GpuError, match=message):
        gpus.claim(1, gpus=FAKE, directory=path if given == "flag" else None, env={})
