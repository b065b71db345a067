"""``python -m sampa doctor``: the CPU subset end to end, and the runner's time limits and failure rows.

The GPU checks themselves run only where a GPU is (README "GPU acceptance"); here the CPU subset proves the
same code: fp32 vs float64, fused vs sequential SAMPa, bf16, two ranks over gloo with a killed rank.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict

import pytest
import torch

from sampa import doctor, io
from sampa.backends.fastpath import FastPath
from sampa.cli import main as cli_main
from sampa.doctor import DEFAULT_BUDGET_S, GROUPS, Group, format_table, run_group, selected_groups
from sampa.doctor.common import (
    FAIL,
    PASS,
    SKIP,
    Machine,
    Row,
    Setup,
    Trajectory,
    guarded,
    loss_band,
    relative_distance,
    trajectory,
)
from sampa.doctor.numerics import FIRST_STEP_TOL
from sampa.doctor.suite import smoke_config


def hang(machine: Machine) -> list[Row]:
    time.sleep(600)
    return []


def crash(machine: Machine) -> list[Row]:
    raise ValueError("the device is on fire\nsecond line")


def die(machine: Machine) -> list[Row]:
    print("last words")
    os._exit(3)


def hang_with_a_child(machine: Machine) -> list[Row]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(f"child {child.pid}", flush=True)
    time.sleep(600)
    return []


def two_rows_then_hang(machine: Machine) -> Iterator[Row]:
    yield Row("first", "done", "1", PASS)
    yield Row("second", "done", "2", FAIL)
    time.sleep(600)


def one_row_then_die(machine: Machine) -> Iterator[Row]:
    yield Row("first", "done", "1", PASS)
    print("last words", flush=True)
    os._exit(3)


def one_row_then_raise(machine: Machine) -> Iterator[Row]:
    yield Row("first", "done", "1", PASS)
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


LAUNCHERS = pytest.mark.parametrize("forked", [False, True], ids=["fresh", "forked"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU this is the 8-minute acceptance run")
def test_cpu_subset_passes_and_skips_the_gpu_only_groups_with_a_reason(tmp_path, capsys):
    code = cli_main(["doctor", "--out", str(tmp_path / "doc")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines()[0].startswith("no GPU")
    rows = [Row(**r) for r in json.loads((tmp_path / "doc" / "doctor.json").read_text())["rows"]]
    status = {r.check: r.status for r in rows}
    for label in ("SGD", "SAM", "SAMPa-0.2"):
        assert status[f"1 cpu fp32 vs CPU float64: {label}"] == PASS
    assert status["2 fused SAMPa vs sequential"] == PASS
    assert status["2 bf16+channels_last fused SAMPa"] == PASS
    for label in ("SAMPa-0.2", "mSAM m=2"):
        assert status[f"4 pair {label} vs one device"] == status[f"4 pair {label} replicas"] == PASS
    assert status["4 pair killed rank"] == PASS
    skipped = [r for r in rows if r.status == SKIP]
    assert {r.check.split("]")[0].strip("[") for r in skipped} == {
        name for name, group in GROUPS.items() if group.cpu_skip
    }
    assert all(r.result for r in skipped)  # each says why
    assert format_table(rows) in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc"]  # nothing written beside --out


def test_outside_a_checkout_its_checks_skip_and_the_doctor_says_so(tmp_path, monkeypatch, capsys):
    """An installed package has no benchmarks/, tests/ or configs/ beside it: on a GPU machine the checks
    that read them skip and say why (not a crashed group), and the doctor says so in one line."""
    from sampa.doctor import common, speed, suite

    monkeypatch.setattr(common, "ROOT", tmp_path / "site-packages")
    gpu = Machine("cuda", 2, "NVIDIA H200")
    rows = [*suite.check_cuda_tests(gpu), *suite.check_workflow(gpu), *speed.check_speed(gpu)]
    assert [r.status for r in rows] == [SKIP] * 3
    assert all(r.result.startswith("needs a checkout of sampa-bench: ") for r in rows)
    assert "configs/gpu-smoke.yaml not found in" in rows[1].result
    monkeypatch.setattr(doctor, "run_group", lambda *args, **kwargs: [])
    assert cli_main(["doctor", "--out", str(tmp_path / "doc"), "--only", "fused"]) == 0
    said = capsys.readouterr().out.splitlines()[1]
    assert said.startswith("installed package: the speed, CUDA-tests and workflow checks are skipped (")


@LAUNCHERS
def test_a_hanging_group_fails_alone_within_its_limit(tmp_path, forked):
    (tmp_path / "logs").mkdir()
    start = time.monotonic()
    group = Group("tests.test_doctor:hang", 3, "hangs")
    [row] = run_group("hang", group, tmp_path, limit_s=3, forked=forked)
    assert time.monotonic() - start < 30
    assert row.status == FAIL and "timed out" in row.result and row.figure == "limit 3 s"


@pytest.mark.parametrize(("forked", "limit_s"), [(False, 15), (True, 8)], ids=["fresh", "forked"])
def test_a_timed_out_group_takes_the_processes_it_started_with_it(tmp_path, forked, limit_s):
    """(The limit leaves a fresh interpreter the time to import torch on a loaded machine.)"""
    from problems import process_alive  # here: the groups import this module without tests/ on the path

    (tmp_path / "logs").mkdir()
    group = Group("tests.test_doctor:hang_with_a_child", limit_s, "hangs")
    [row] = run_group("hang", group, tmp_path, limit_s=limit_s, forked=forked)
    assert "timed out" in row.result
    [pid] = re.findall(r"child (\d+)", (tmp_path / "logs" / "hang.log").read_text())
    deadline = time.monotonic() + 10
    while process_alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_alive(int(pid))


@LAUNCHERS
def test_a_raising_group_is_one_failed_row_with_the_first_line_of_its_error(tmp_path, forked):
    (tmp_path / "logs").mkdir()
    group = Group("tests.test_doctor:crash", 60, "crashes")
    [row] = run_group("crash", group, tmp_path, limit_s=60, forked=forked)
    assert (row.status, row.figure) == (FAIL, "ValueError: the device is on fire")
    assert "Traceback" in (tmp_path / "logs" / "crash.log").read_text()


@LAUNCHERS
def test_a_dying_group_reports_its_exit_status_and_last_output_line(tmp_path, forked):
    (tmp_path / "logs").mkdir()
    [row] = run_group("die", Group("tests.test_doctor:die", 60, "dies"), tmp_path, limit_s=60, forked=forked)
    assert (row.status, row.result, row.figure) == (FAIL, "dies: crashed (exit 3)", "last words")


def test_a_spent_budget_fails_the_group_without_running_it(tmp_path):
    [row] = run_group("hang", Group("tests.test_doctor:hang", 3, "hangs"), tmp_path, limit_s=0)
    assert row.status == FAIL and "budget" in row.result


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--only", "float64,nope"], "unknown group 'nope'; choose from: float64, fused, pair"),
        (["--budget-s", "0"], "--budget-s must be a positive number of seconds (got 0)"),
    ],
)
def test_bad_input_is_one_line_before_anything_runs(tmp_path, capsys, flags, message):
    assert cli_main(["doctor", "--out", str(tmp_path / "doc"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "doc").exists()
    assert selected_groups("") == list(GROUPS) and selected_groups(" pair, fused") == ["pair", "fused"]


@pytest.mark.parametrize("out", ["", " ", "{tmp}/file.txt", "{tmp}/doc\0"])
def test_an_out_that_is_no_folder_is_one_line_before_anything_runs(tmp_path, capsys, monkeypatch, out):
    """Not the working directory for an empty --out; not a file's "File exists" after the work began."""
    import sampa.doctor

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sampa.doctor, "machine_line", lambda: pytest.fail("the doctor started"))
    (tmp_path / "file.txt").write_text("x")
    out = out.replace("{tmp}", str(tmp_path))
    assert cli_main(["doctor", "--out", out]) == 2
    assert capsys.readouterr().err == f"sampa doctor: error: --out must name a folder (got {out!r})\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_row_status_must_be_known():
    with pytest.raises(ValueError, match="unknown status 'ok'; choose one of: pass, fail, skip, info"):
        Row("c", "r", "f", "ok")


def test_relative_distance_is_the_error_over_the_distance_travelled():
    t = torch.tensor
    reference = Trajectory([t([0.0, 0.0])], [t([3.0, 4.0])], [2.0, 1.0], first=[t([0.0, 1.0])])
    got = Trajectory([t([0.0, 0.0])], [t([3.0, 4.5])], [2.2, 1.0], first=[t([0.0, 1.25])])
    assert relative_distance(got, reference) == pytest.approx(0.5 / 5)
    assert relative_distance(got, reference, after_first=True) == pytest.approx(0.25)
    assert relative_distance(reference, reference) == 0.0
    assert loss_band(got, reference) == pytest.approx(0.1)


def test_first_step_tolerance_tells_fp32_from_reduced_precision():
    """Check 1 must catch lost precision (TF32, bf16), not only wrong results."""
    setup, cpu = Setup(batch_size=4, steps=1), torch.device("cpu")
    reference = trajectory("sgd", {}, setup, cpu, torch.float64)
    fp32 = trajectory("sgd", {}, setup, cpu)
    bf16 = trajectory("sgd", {}, setup, cpu, fast=FastPath(amp="bf16"))
    assert relative_distance(fp32, reference, after_first=True) < FIRST_STEP_TOL / 10
    assert relative_distance(bf16, reference, after_first=True) > FIRST_STEP_TOL * 3


@pytest.mark.parametrize(("gpus", "arms"), [(1, 4), (2, 5)])
def test_gpu_smoke_config_gets_a_two_device_arm_only_with_two_gpus(tmp_path, capsys, gpus, arms):
    path = smoke_config(Machine("cuda", gpus, "test"), tmp_path / "smoke.yaml")
    assert cli_main(["plan", "--config", str(path)]) == 0
    plan = capsys.readouterr().out
    assert f"{arms} runs" in plan and ("x 2" in plan) == (gpus == 2)


@pytest.mark.parametrize(("forked", "limit_s"), [(False, 20), (True, 8)], ids=["fresh", "forked"])
def test_a_group_cut_off_or_dying_halfway_keeps_the_rows_it_finished(tmp_path, forked, limit_s):
    """(The limit leaves a fresh interpreter the time to import torch on a loaded machine.)"""
    (tmp_path / "logs").mkdir()
    group = Group("tests.test_doctor:two_rows_then_hang", limit_s, "hangs")
    hung = run_group("hang", group, tmp_path, limit_s, forked=forked)
    assert [(r.check, r.status) for r in hung] == [("first", PASS), ("second", FAIL), ("[hang]", FAIL)]
    assert "timed out" in hung[-1].result
    died = run_group(
        "die", Group("tests.test_doctor:one_row_then_die", 60, "dies"), tmp_path, 60, forked=forked
    )
    assert [r.check for r in died] == ["first", "[die]"]
    assert (died[-1].result, died[-1].figure) == ("dies: crashed (exit 3)", "last words")
    raised = run_group("raise", Group("tests.test_doctor:one_row_then_raise", 60, "raises"), tmp_path, 60)
    assert [r.status for r in raised] == [PASS, FAIL]
    assert raised[-1].figure == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert not list((tmp_path / "logs").glob("*.json"))  # the rows went to the caller


def test_the_group_limits_fit_the_default_budget():
    """Each group gets its whole limit on a GPU machine whatever the groups before it took."""
    assert sum(group.limit_s for group in GROUPS.values()) <= DEFAULT_BUDGET_S == 480


def test_doctor_json_is_written_after_every_group(tmp_path, monkeypatch):
    """A doctor killed from outside (the window's time limit) leaves the rows of the groups it finished."""
    seen = []

    def fake_group(name, group, out, limit_s, *, forked=False):
        if seen:  # the previous group's rows are on disk before the next group starts
            report = json.loads((out / "doctor.json").read_text())
            assert [r["check"] for r in report["rows"]] == seen and report["finished"] is False
        seen.append(name)
        return [Row(name, "ran", "-", PASS)]

    monkeypatch.setattr(doctor, "run_group", fake_group)
    assert cli_main(["doctor", "--out", str(tmp_path), "--only", "float64,fused,pair"]) == 0
    report = json.loads((tmp_path / "doctor.json").read_text())
    assert [r["check"] for r in report["rows"]] == ["float64", "fused", "pair"] and report["finished"]


@pytest.mark.slow  # two fresh interpreters: ~30 s on two loaded cores
def test_the_gpu_way_of_starting_the_ranks_works_on_the_cpu(tmp_path):
    """Check 4 starts its ranks as fresh interpreters at a TCP store where they use CUDA (a forked process
    cannot); the CPU subset forks them. The GPU way, here with CPU ranks: both report, then rank 1 dies
    and rank 0 ends within the limit."""
    from sampa.doctor.pair import KILL_GRACE_S, TIMEOUT_S, run_ranks

    ended_s = run_ranks(Machine("cpu", 0, "test"), tmp_path, fresh=True)
    assert ended_s is not None and ended_s <= TIMEOUT_S + KILL_GRACE_S
    assert {p.name for p in tmp_path.iterdir()} >= {"rank0.pt", "rank1.pt"}


def test_a_raising_check_is_one_failed_row_and_the_group_goes_on():
    def broken() -> Row:
        raise RuntimeError("CUDA error: out of memory\nmore detail")

    rows = [*guarded("5 NVML memory cuda:0", broken), *guarded("5 NVML memory cuda:1", lambda: ok_row)]
    assert rows == [
        Row("5 NVML memory cuda:0", "raised", "RuntimeError: CUDA error: out of memory", FAIL),
        ok_row,
    ]


ok_row = Row("5 NVML memory cuda:1", "NVML per-process", "fine", PASS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU subset's way of running a group is patched")
def test_an_interrupted_doctor_still_prints_and_writes_the_table(tmp_path, monkeypatch, capsys):
    """``timeout -s INT ... sampa doctor``: the group running is stopped, its finished rows are kept, and
    the table of everything that ran is printed and written; exit status 130."""
    started = []

    def interrupted_group(target, result, log, limit_s):
        started.append(target)
        io.write_json(result, [asdict(Row("2 fused SAMPa vs sequential", "fp32", "1e-3", PASS))])
        raise KeyboardInterrupt

    monkeypatch.setattr(doctor, "run_forked", interrupted_group)
    assert cli_main(["doctor", "--out", str(tmp_path), "--only", "fused,pair"]) == 130
    report = json.loads((tmp_path / "doctor.json").read_text())
    assert [(r["check"], r["status"]) for r in report["rows"]] == [
        ("2 fused SAMPa vs sequential", PASS),
        ("[fused]", FAIL),
    ]
    assert "interrupted" in report["rows"][1]["result"] and report["finished"] is False
    assert len(started) == 1 and "[fused]" in capsys.readouterr().out


@pytest.fixture
def cuda_on_the_cpu(monkeypatch):
    """A "cuda" machine whose device is the CPU, with tiny setups: runs the checks' CUDA-only branches
    (wiring only, not the device)."""
    from sampa.doctor import numerics

    monkeypatch.setattr(Machine, "device", property(lambda self: torch.device("cpu")))
    monkeypatch.setattr(numerics, "setup_for", lambda m: Setup(model="tinycnn", batch_size=4, steps=2))
    monkeypatch.setattr(numerics, "COMPILE_SETUP", Setup(model="tinycnn", batch_size=4, steps=2))
    monkeypatch.setattr(
        numerics, "compiled_path", lambda: FastPath(compile="step", compile_backend="aot_eager")
    )
    return Machine("cuda", 1, "NVIDIA H200 (the CPU here)")


def test_the_cuda_branches_of_checks_1_and_2_run(cuda_on_the_cpu):
    from sampa.doctor.numerics import check_float64, check_fused_and_bf16

    rows = [*check_float64(cuda_on_the_cpu), *check_fused_and_bf16(cuda_on_the_cpu)]
    assert [(r.check, r.status) for r in rows if r.status != "info"] == [
        ("1 cuda fp32 vs CPU float64: SGD", PASS),
        ("1 cuda fp32 vs CPU float64: SAM", PASS),
        ("1 cuda fp32 vs CPU float64: SAMPa-0.2", PASS),
        ("1 deterministic repeat", PASS),
        ("2 fused SAMPa vs sequential", PASS),
        ("2 bf16+channels_last sequential SAMPa", PASS),
        ("2 bf16+channels_last fused SAMPa", PASS),
    ]
    assert "CPU fp32" in rows[0].figure  # the CUDA-only round-off scale


@pytest.mark.slow  # dynamo's import and trace: ~20 s on two loaded cores
def test_the_cuda_only_compile_check_runs(cuda_on_the_cpu):
    from sampa.doctor.numerics import check_compile

    [row] = check_compile(cuda_on_the_cpu)
    assert (row.check, row.status) == ("3 compile step vs eager: SAMPa-0.2", PASS)
    assert row.result.startswith("aot_eager, tinycnn b4, 2 steps")


@pytest.mark.parametrize(
    ("code", "summary", "status"),
    [
        (0, "9 passed, 412 deselected in 8.31s", PASS),
        (0, "1 passed, 8 skipped, 412 deselected in 2.02s", FAIL),  # a CUDA test that skipped proves nothing
        (1, "1 failed, 8 passed, 412 deselected in 9.10s", FAIL),
        (5, "412 deselected in 1.00s", FAIL),  # none selected
    ],
)
def test_the_cuda_only_tests_pass_only_if_they_all_ran_and_passed(monkeypatch, code, summary, status):
    from sampa.doctor import suite

    def fake_pytest(cmd, **kwargs):
        assert cmd[cmd.index("-k") + 1] == "synchronises or cuda_batches"
        return subprocess.CompletedProcess(cmd, code, stdout=f"....\n{summary}\n", stderr="")

    monkeypatch.setattr(suite.subprocess, "run", fake_pytest)
    [row] = suite.check_cuda_tests(Machine("cuda", 1, "NVIDIA H200"))
    assert (row.figure, row.status) == (summary, status)
