"""Ranks never outlive their launcher (issue 17, item 3), and the launcher's failure line.

The launcher of a ``--devices 2`` run is SIGKILLed at several moments of the ranks' start-up: right
after the rank processes appear (before they import torch), while they import torch and meet, and
while they train. No rank may survive it by more than a few seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from problems import process_alive

from sampa.launch import failure_summary, gloo_on_loopback
from sampa.rank import ORPHANED, one_line

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
LINUX_PROC = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the ranks through /proc")
DIE_WITHIN_S = 5.0


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _rank_children(launcher: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _parent(int(entry.name)) == launcher:
            try:
                cmdline = (entry / "cmdline").read_text(errors="replace")
            except OSError:
                continue
            if "sampa.rank" in cmdline:
                pids.append(int(entry.name))
    return pids


def _loaded_torch(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text(errors="replace")
    except OSError:
        return False


def _train_command(out: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "sampa", "train", "--model", "tinycnn", "--dataset", "synthetic"),
        *("--devices", "2", "--device", "cpu", "--optimizer", "sampa", "--epochs", "2"),
        *("--synthetic-train-size", "400", "--synthetic-test-size", "100", "--out", str(out)),
    ]


@LINUX_PROC
@pytest.mark.parametrize("delay_s", [0.0, 1.5, "training"])
def test_ranks_die_with_a_killed_launcher_at_every_moment_of_start_up(tmp_path, delay_s):
    out = tmp_path / "run"
    launcher = subprocess.Popen(
        _train_command(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 120
        ranks: list[int] = []
        while len(ranks) < 2 and launcher.poll() is None and time.time() < deadline:
            ranks = _rank_children(launcher.pid)
        assert len(ranks) == 2, launcher.stderr.read() if launcher.poll() is not None else "no ranks"
        if delay_s == "training":
            while not (out / "config.json").exists() and time.time() < deadline:
                time.sleep(0.01)
        else:
            time.sleep(delay_s)
        with_torch = [_loaded_torch(pid) for pid in ranks]
        launcher.kill()
        launcher.wait()
        killed = time.time()
        while any(process_alive(pid) for pid in ranks) and time.time() < killed + DIE_WITHIN_S:
            time.sleep(0.05)
        survivors = [pid for pid in ranks if process_alive(pid)]
        assert not survivors, f"orphaned ranks {survivors} (torch loaded at the kill: {with_torch})"
    finally:
        launcher.kill()
        for pid in _rank_children(launcher.pid):
            os.kill(pid, signal.SIGKILL)


def test_a_rank_whose_launcher_is_already_gone_exits_at_once():
    """The parent-death signal only covers a parent that dies after it is armed: the rank checks."""
    gone = subprocess.run(
        [sys.executable, "-c", "from sampa.rank import die_with_parent; die_with_parent(1); print('alive')"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (gone.returncode, gone.stdout) == (ORPHANED, "")
    present = subprocess.run(
        [sys.executable, "-c", "import os, sampa.rank as r; r.die_with_parent(os.getppid()); print(1)"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (present.returncode, present.stdout) == (0, "1\n")


def test_rank_entry_imports_no_torch_before_arming():
    """``python -m sampa.rank`` arms the signal before importing torch (module-level imports are light)."""
    probe = "import sys, sampa.rank; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_failure_line_names_each_failed_rank_and_leaves_out_the_stopped_ones():
    codes = [1, -9, 1, -15]
    errors = ["Connection closed by peer", None, "Connection closed by peer", None]
    line = failure_summary(codes, errors, first=1, stopped={3}, timeout_s=30)
    assert line == "4-device run failed: rank 1: killed by SIGKILL; ranks 0 and 2: Connection closed by peer"
    line = failure_summary([1, 0], ["Timed out waiting 5000ms", None], first=0, stopped=set(), timeout_s=5)
    assert line == (
        "two-device run failed: rank 0: Timed out waiting 5000ms (collective timeout dist_timeout_s=5)"
    )


def test_rank_error_is_one_line():
    assert one_line(ValueError("bad\nsecond line")) == "ValueError: bad"
    from sampa.train import RunError

    assert one_line(RunError("resume refused")) == "resume refused"


@pytest.mark.parametrize("error", ["UnreadableImageError", "DamagedFileError"])
def test_a_run_error_subclass_reads_the_same_on_two_devices_as_on_one(tmp_path, monkeypatch, capsys, error):
    import sampa.launch
    import sampa.train
    from sampa import cli, rank
    from sampa.data.imagenet import UnreadableImageError
    from sampa.launch import _read_error
    from sampa.rundir import DamagedFileError

    cls = {"UnreadableImageError": UnreadableImageError, "DamagedFileError": DamagedFileError}[error]
    message = "x/y.JPEG cannot be decoded (truncated): replace it"

    def fail(*args: object, **kwargs: object) -> None:
        raise cls(message)

    monkeypatch.setattr(sampa.train, "train", fail)  # one device: the command's own line
    assert cli.main(["train", "--optimizer", "sgd", "--device", "cpu", "--out", str(tmp_path / "r")]) == 1
    assert capsys.readouterr().err.strip() == f"sampa train: error: {message}"
    monkeypatch.setattr(sampa.launch, "spawned_rank", fail)  # two devices: rank 0's error file, joined
    monkeypatch.setattr(rank, "die_with_parent", lambda launcher_pid: None)
    error_file = tmp_path / "rank0.txt"
    assert rank.main(["0", str(os.getppid()), str(error_file), "{}"]) == 1
    line = failure_summary([1, 0], [_read_error(str(error_file)), None], first=0, stopped=set(), timeout_s=30)
    assert line == f"two-device run failed: rank 0: {message}"


def test_gloo_is_bound_to_loopback_unless_the_user_chose_an_interface(monkeypatch):
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    gloo_on_loopback()
    assert os.environ["GLOO_SOCKET_IFNAME"] == "lo"
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth7")
    gloo_on_loopback()
    assert os.environ["GLOO_SOCKET_IFNAME"] == "eth7"
