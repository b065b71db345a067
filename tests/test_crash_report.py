"""Crash consistency of the presentation side: every file a command writes (plan, aggregate, table,
figure, scorecard, toy, doctor) is written atomically, so a process killed while writing it leaves the
previous file whole (or none), never a half-written one that a later step would read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_report import ACC, CONFIG, write_run

from sampa import experiments as ex
from sampa import io
from sampa.cli import main
from sampa.doctor import write_report
from sampa.faults import ENV_VAR

ROOT = Path(__file__).resolve().parents[1]

OLD = "the previous version\n"


class Killed(BaseException):
    """The process dies at the kill point (raised there instead of SIGKILL, so the test can look)."""


@pytest.fixture
def kill_at(monkeypatch):
    """``kill_at(name)``: die inside the atomic write of any file called ``name``; records each write."""
    written: list[str] = []

    def arm(name: str) -> list[str]:
        def point(where: str) -> None:
            written.append(where)
            if where == f"write:{name}":
                raise Killed(where)

        monkeypatch.setattr(io, "kill_point", point)
        return written

    return arm


@pytest.fixture
def inputs(tmp_path):
    """A planned config, its run directories and their runs table."""
    plan = ex.plan(CONFIG)
    root = tmp_path / "runs"
    for run in plan.runs["t1"]:
        write_run(root, run, ACC[(run.cell["arm"], run.settings.get("model", "resnet56"))][run.seed])
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    runs_csv = tmp_path / "runs.csv"
    dirs = [str(root / p) for p in plan.unique_runs()]
    assert main(["aggregate", "--runs-root", str(root), "--out", str(runs_csv), *dirs]) == 0
    return plan, root, config, runs_csv, dirs


def commands(tmp_path: Path, inputs) -> dict[str, tuple[list[str], list[Path]]]:
    """Each presentation command with the files it writes."""
    plan, root, config, runs_csv, dirs = inputs
    out = tmp_path / "out"
    figure = {**plan.specs["t1"], "kind": "figure", "figure": {"plot": "bars", "metrics": ["test_acc"]}}
    files = {
        "plan": [out / "plan.csv"],
        "aggregate": [out / "runs.csv"],
        "table": [out / f"t1.{e}" for e in ("md", "tex", "csv")],
        "figure": [out / f"f1.{e}" for e in ("pdf", "png", "csv")],
        "scorecard": [out / "card.md", out / "card.tex"],
        "toy": [out / "toy.csv", out / "toy-summary.csv"],
    }
    args = {
        "plan": ["plan", "--config", str(config), "--out"],
        "aggregate": ["aggregate", "--runs-root", str(root), *dirs, "--out"],
        "table": ["table", "--spec", ex.spec_json(plan.specs["t1"]), "--runs", str(runs_csv)],
        "figure": ["figure", "--spec", json.dumps(figure), "--data", str(runs_csv), "--runs-root", str(root)],
        "scorecard": ["scorecard", "--runs", str(runs_csv), "--config", str(config)],
        "toy": ["toy", "--steps", "20", "--out"],
    }
    flags = {
        "table": ["--md", "--tex", "--csv"],
        "figure": ["--pdf", "--png", "--csv"],
        "scorecard": ["--md", "--tex"],
        "toy": ["", "--summary"],
    }
    made = {}
    for name, written in files.items():
        names = flags.get(name, [""])
        argv = list(args[name])
        for flag, path in zip(names, written, strict=True):
            argv += [flag, str(path)] if flag else [str(path)]
        made[name] = (argv, written)
    return made


@pytest.mark.parametrize("command", ["plan", "aggregate", "table", "figure", "scorecard", "toy"])
def test_a_command_killed_while_writing_leaves_each_previous_file_whole(tmp_path, inputs, kill_at, command):
    argv, files = commands(tmp_path, inputs)[command]
    written = kill_at("no file")  # first an uninterrupted run: every output goes through an atomic write
    assert main(argv) == 0
    assert sorted(written) == sorted(f"write:{p.name}" for p in files)
    for victim in files:
        for path in files:
            path.write_text(OLD)
        kill_at(victim.name)
        with pytest.raises(Killed):
            main(argv)
        assert victim.read_text() == OLD  # the previous file, not a half-written new one
        assert io.stale_temp_files(victim.parent) == []  # (a SIGKILL would leave the hidden temporary file)


def test_the_doctor_report_killed_while_writing_keeps_the_previous_report(tmp_path, kill_at):
    write_report(tmp_path, "cpu", [], {"quick": 1.0}, 60.0, finished=True)
    before = (tmp_path / "doctor.json").read_bytes()
    kill_at("doctor.json")
    with pytest.raises(Killed):
        write_report(tmp_path, "cpu", [], {"quick": 2.0}, 60.0, finished=False)
    assert (tmp_path / "doctor.json").read_bytes() == before
    assert io.stale_temp_files(tmp_path) == []


def test_a_temporary_file_of_a_sigkilled_writer_is_removed_by_the_next_write_of_its_file(tmp_path):
    """Only a dead writer's, told by the PID and PID namespace in its name: a live writer's, one from
    another machine or container and one without an owner are left alone."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "out" / "plan.csv"
    argv = ["plan", "--config", str(config), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), ENV_VAR: "write:plan.csv"}
    killed = subprocess.run([sys.executable, "-m", "sampa", *argv], env=env, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (leftover,) = io.stale_temp_files(out.parent)
    owner = io.pid_namespace()
    assert leftover.name.startswith(f".plan.csv.{owner}-") and not out.exists()
    dead_pid = leftover.name.removeprefix(f".plan.csv.{owner}-").split(".")[0]
    other = "f" * 16 if owner != "f" * 16 else "e" * 16
    kept = [
        out.parent / f".plan.csv.{owner}-{os.getpid()}.writing.tmp",  # a live writer (this process)
        out.parent / f".plan.csv.{other}-{dead_pid}.elsewhere.tmp",  # its PID means nothing here
        out.parent / ".plan.csv.noowner.tmp",  # written before temporary names had owners
        out.parent / f".other.csv.{owner}-{dead_pid}.killed.tmp",  # another file's: its own write tidies it
    ]
    for path in kept:
        path.write_text("partial")
    assert main(argv) == 0
    assert io.stale_temp_files(out.parent) == sorted(kept) and out.read_text().startswith("experiment")
