"""The workflow's job wrappers (sampa.jobs): a failed run is a record that is retried, never a result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from sampa import jobs
from sampa.report.runs import collect_runs

REPO = Path(__file__).resolve().parents[1]


def run_job(*args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m sampa.jobs ...`` with stdout/stderr appended to ``log``, as the rule runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    with open(log, "a") as handle:
        return subprocess.run(
            [sys.executable, "-m", "sampa.jobs", *args], stdout=handle, stderr=handle, env=env, timeout=300
        )


def test_a_failed_run_is_recorded_with_its_error_and_the_job_succeeds(tmp_path):
    out, log = tmp_path / "runs/r", tmp_path / "r.log"
    settings = json.dumps({"optimizer": "sam", "dataset": "synthetic", "model": "tinycnn", "epochs": "two"})
    proc = run_job("train", "--out", str(out), "--", "--settings", settings, log=log)
    assert proc.returncode == 0, log.read_text()
    record = json.loads((out / jobs.OUTCOME).read_text())
    assert record["status"] == "failed" and record["returncode"] == 2
    assert "epochs" in record["reason"] and "two" in record["reason"]  # the engine's one-line error
    assert record["shared"]["samples"] >= 1 and record["shared"]["other_training_jobs_max"] >= 0
    assert not (out / "metrics.json").exists()
    # the runs table says failed; planning again forgets the record, so the run is retried
    assert collect_runs([out], tmp_path / "runs").loc[0, "status"] == "failed"
    assert jobs.forget_failures([out], []) == 1 and not (out / jobs.OUTCOME).exists()


TINY = {"dataset": "synthetic", "model": "tinycnn", "synthetic_train_size": 200, "synthetic_test_size": 50}


def test_a_run_killed_by_sigkill_is_recorded_as_failed_and_the_job_succeeds(tmp_path):
    # the out-of-memory killer's SIGKILL (here a fault point): a failure of the run, not an interruption
    out, log = tmp_path / "runs/r", tmp_path / "r.log"
    settings = json.dumps(TINY | {"epochs": 2})
    env = {"SAMPA_KILL_AT": "epoch1:checkpoint"}
    proc = run_job("train", "--out", str(out), "--", "--settings", settings, log=log, env=env)
    assert proc.returncode == 0, log.read_text()
    record = json.loads((out / jobs.OUTCOME).read_text())
    assert record["status"] == "failed" and record["returncode"] == -signal.SIGKILL
    assert record["reason"].startswith("killed by SIGKILL")
    assert (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()  # resumable
    # the next invocation resumes it, and its closing summary says so
    jobs.forget_failures([out], [])
    proc = run_job("train", "--out", str(out), "--", "--settings", settings, log=log)
    assert proc.returncode == 0, log.read_text()
    record = json.loads((out / jobs.OUTCOME).read_text())
    assert record["status"] == "complete" and record["resumed"] is True
    assert "resuming after epoch 1/2" in log.read_text()
    text = jobs.summary({"r": out}, {"r": str(log)})
    assert text == "sampa workflow: 1 of 1 runs finished (1 resumed from a checkpoint)"


@pytest.mark.parametrize("last_attempt", [0, 1])
def test_an_interrupted_job_fails_unless_it_is_the_last_attempt(tmp_path, last_attempt):
    out, log = tmp_path / "runs/r", tmp_path / "r.log"
    settings = json.dumps(TINY | {"epochs": 100})
    args = ["train", "--out", str(out), "--last-attempt", str(last_attempt), "--", "--settings", settings]
    with open(log, "a") as handle:
        job = subprocess.Popen(
            [sys.executable, "-m", "sampa.jobs", *args],
            stdout=handle,
            stderr=handle,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    deadline = time.monotonic() + 120
    while "epoch 1/100" not in log.read_text():  # training has started
        assert job.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    job.send_signal(signal.SIGTERM)  # a user or a time limit stops the job
    assert job.wait(timeout=120) == (0 if last_attempt else 128 + signal.SIGTERM), log.read_text()
    if last_attempt:  # no retries left: a failed run, so the tables are still made
        record = json.loads((out / jobs.OUTCOME).read_text())
        assert record["status"] == "failed" and "interrupted by SIGTERM" in record["reason"]
    else:  # Snakemake retries the job, which resumes the run
        assert not (out / jobs.OUTCOME).exists()
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize(("signal_name", "last_attempt"), [("INT", 1), ("INT", 0), ("KILL", 0)])
def test_a_run_stopped_after_its_metrics_is_recorded_complete(tmp_path, signal_name, last_attempt):
    """Ctrl-C (or a kill) just after metrics.json is written: the run is done, so the job records it
    complete and succeeds; never "failed" (nor an interrupted job) beside a complete metrics.json."""
    out, log = tmp_path / "runs/r", tmp_path / "r.log"
    settings = json.dumps(TINY | {"epochs": 1})
    args = ["train", "--out", str(out), "--last-attempt", str(last_attempt), "--", "--settings", settings]
    env = {"SAMPA_KILL_AT": "final:metrics", "SAMPA_KILL_SIGNAL": signal_name}
    proc = run_job(*args, log=log, env=env)
    assert proc.returncode == 0, log.read_text()
    record = json.loads((out / jobs.OUTCOME).read_text())
    assert record["status"] == "complete" and record["returncode"] != 0, record  # it was stopped
    assert json.loads((out / "metrics.json").read_text())["status"] == "complete"
    assert jobs.forget_failures([out], []) == 0
    assert jobs.summary({"r": out}, {"r": str(log)}) == "sampa workflow: 1 of 1 runs finished"


def test_a_failed_record_beside_a_finished_run_is_forgotten(tmp_path):
    """An older version's record of such a stop: planning forgets it, so the run is recorded again."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.json").write_text('{"status": "complete"}')
    (run / jobs.OUTCOME).write_text('{"status": "failed", "reason": "interrupted by SIGINT"}')
    assert jobs.forget_failures([run], []) == 1 and not (run / jobs.OUTCOME).exists()


def test_a_run_without_its_data_needs_data_and_does_not_start(tmp_path):
    out, log = tmp_path / "runs/r", tmp_path / "r.log"
    record = tmp_path / "data/cifar10.json"
    env_root = tmp_path / "empty"
    prep = subprocess.run(
        [sys.executable, "-m", "sampa.jobs", "prepare-data", "cifar10", "--record", str(record)],
        env={**os.environ, "PYTHONPATH": str(REPO), "SAMPA_DATA": str(env_root), "SAMPA_DOWNLOAD": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert prep.returncode == 0, prep.stderr
    data = json.loads(record.read_text())
    assert data["status"] == "needs data" and "cifar-10-python.tar.gz" in data["reason"]
    proc = run_job("train", "--out", str(out), f"--data={record}", "--", "--settings", "{}", log=log)
    assert proc.returncode == 0
    outcome = json.loads((out / jobs.OUTCOME).read_text())
    assert outcome["status"] == "needs data" and "$ " not in log.read_text()  # never started training
    assert jobs.forget_failures([out], [record]) == 2 and not record.exists()


@pytest.mark.parametrize("content", ["", '{"status": "rea', "[1]"])
def test_a_damaged_data_record_is_named_not_called_absent(tmp_path, content):
    """Was "<record> not found" for a record that is there."""
    record = tmp_path / "data/cifar10.json"
    record.parent.mkdir()
    record.write_text(content)
    outcome = jobs.run_training([], tmp_path / "runs/r", [record, tmp_path / "data/absent.json"])
    assert outcome == {
        "status": jobs.NEEDS_DATA,
        "reason": f"{record} is damaged (not a data record); delete it to check the data again; "
        f"{tmp_path / 'data/absent.json'} not found",
    }
    assert jobs.forget_failures([], [record]) == 1 and not record.exists()


def test_finished_runs_are_kept_and_a_deleted_result_is_retried(tmp_path):
    done, gone = tmp_path / "done", tmp_path / "gone"
    for run in (done, gone):
        run.mkdir()
        (run / jobs.OUTCOME).write_text('{"status": "complete"}')
    (done / "metrics.json").write_text('{"status": "complete"}')
    ready = tmp_path / "cifar10.json"
    ready.write_text('{"status": "ready"}')
    assert jobs.forget_failures([done, gone], [ready]) == 1
    assert (done / jobs.OUTCOME).exists() and not (gone / jobs.OUTCOME).exists() and ready.exists()


def test_summary_counts_runs_and_names_the_logs_of_failures(tmp_path):
    runs = {}
    for name, status in (("a", "complete"), ("b", "diverged"), ("c", "failed"), ("d", None)):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        if status:
            record = {"status": status, "reason": "boom"} if status == "failed" else {"status": status}
            (runs[name] / jobs.OUTCOME).write_text(json.dumps(record))
        if status in ("complete", "diverged"):
            (runs[name] / "metrics.json").write_text("{}")
    logs = {n: str(tmp_path / f"{n}.log") for n in runs}
    lines = jobs.summary(runs, logs).splitlines()
    assert lines[0] == "sampa workflow: 2 of 4 runs finished, 1 diverged, 1 failed, 1 not run"
    assert f"  failed: {logs['c']}  (boom)" in lines
    assert f"  not run: {runs['d']}  (not started)" in lines  # no log to point at: its run directory
    assert "retries them" in lines[-1]
    Path(logs["d"]).write_text("started, then killed before it recorded anything\n")
    assert f"  not run: {logs['d']}" in jobs.summary(runs, logs).splitlines()


def test_summary_mentions_the_runs_the_invocation_did_not_need(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / jobs.OUTCOME).write_text('{"status": "complete"}')
    (tmp_path / "a" / "metrics.json").write_text("{}")
    text = jobs.summary({"a": tmp_path / "a"}, {"a": "logs/runs/a.log"}, others=3)
    assert text == "sampa workflow: 1 of 1 runs finished (3 other runs of the config not needed here)"


def test_a_target_the_config_does_not_make_is_one_line_naming_the_valid_ones():
    outputs = ["results/smoke/runs.csv", "figures/smoke/figure1.png"]
    outputs += [f"results/smoke/tables/table{n}.md" for n in (1, 2, 10)]
    for valid in ("results/smoke/tables/table10.md", "./results/smoke/runs.csv", "figures/smoke/figure1.png"):
        assert jobs.target_error(valid, "smoke", outputs) is None
    # Snakemake answers for the rest: run directories, data records, toy files, rule names, other trees
    for other in ("results/runs/x/seed0/outcome.json", "results/data/synthetic.json", "all", "logs/x.log"):
        assert jobs.target_error(other, "smoke", outputs) is None
    assert jobs.target_error("results/smoke/toy/figure1/summary.csv", "smoke", outputs) is None
    error = jobs.target_error("results/smoke/tables/table99.md", "smoke", outputs)
    assert error.startswith("unknown target 'results/smoke/tables/table99.md'; config 'smoke' makes ")
    assert "tables/<table>.{md,tex,csv} for table1, table2, table10 " in error
    assert "figures/smoke/<figure>.{pdf,png,csv} for figure1" in error
    assert jobs.target_error("results/smoke/table1.md", "smoke", outputs).startswith("unknown target")
    assert jobs.target_error("results/paper/tables/table1.md", "smoke", outputs) == (
        "target 'results/paper/tables/table1.md' is an output of config 'paper', but the config is 'smoke' "
        "(targets go before --configfile; without it: configs/smoke.yaml)"
    )


def test_other_training_jobs_count_each_job_once_and_not_the_own():
    table = {
        1: (0, "init"),
        10: (1, "python -m sampa.jobs train --out a"),  # me
        11: (10, "python -m sampa train --settings x"),  # my child
        12: (11, "python -m sampa train rank"),  # my grandchild
        20: (1, "python -m sampa.jobs train --out b"),  # another job ...
        21: (20, "python -m sampa train --settings y"),  # ... and its child
        30: (1, "python -m sampa train --settings z"),  # a run started by hand
        40: (1, "python -m pytest"),
    }
    assert jobs.other_training_jobs(10, table) == 2


def test_code_dependencies_are_derived_from_imports():
    tables = {
        Path(f).relative_to(REPO / "sampa").as_posix() for f in jobs.module_files("sampa.report.tables")
    }
    assert {"experiments.py", "config.py", "report/tables.py", "report/paper/results.csv"} <= tables
    assert "report/style.py" not in tables and "train.py" not in tables
    figures = {Path(f).name for f in jobs.module_files("sampa.report.figures")}
    assert "style.py" in figures


@pytest.mark.parametrize("content", ['{"status": "comp', "\x00\x01", "[1, 2]"])
def test_a_damaged_metrics_file_is_skipped_with_a_warning(tmp_path, capsys, content):
    good, bad = tmp_path / "good", tmp_path / "bad"
    for run in (good, bad):
        run.mkdir()
    (good / "metrics.json").write_text(json.dumps({"status": "complete", "test_acc": 0.5}))
    (bad / "metrics.json").write_text(content)
    frame = collect_runs([good, bad], tmp_path).set_index("run")
    assert frame.loc["good", "status"] == "complete" and frame.loc["bad", "status"] == "missing"
    warning = capsys.readouterr().err.strip()
    assert warning.startswith(f"warning: {bad / 'metrics.json'} is damaged") and "\n" not in warning


@pytest.mark.parametrize(
    ("name", "content", "cause"),
    [
        ("metrics.json", {"status": "complete", "config": "oops"}, "AttributeError"),
        ("metrics.json", {"status": "complete", "memory": [1]}, "AttributeError"),
        ("metrics.json", {"test_acc": 0.5}, "no 'status'"),
        ("metrics.json", {"status": "complete", "test_task_score": "x"}, "a score is not a number"),
        ("outcome.json", {"status": "failed", "shared": 5}, "AttributeError"),
        ("config.json", {"hparams": 5}, "AttributeError"),
    ],
)
def test_a_run_file_of_the_wrong_shape_is_skipped_with_a_warning(tmp_path, capsys, name, content, cause):
    """Valid JSON of the wrong shape (a section that is not a mapping, no status): a warning, not a
    traceback; the run is not counted as finished."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    for run in (good, bad):
        run.mkdir()
    (good / "metrics.json").write_text(json.dumps({"status": "complete", "test_acc": 0.5}))
    (bad / name).write_text(json.dumps(content))
    frame = collect_runs([good, bad], tmp_path).set_index("run")
    assert frame.loc["good", "status"] == "complete"
    assert frame.loc["bad", "status"] == ("failed" if name == "outcome.json" else "missing")
    warning = capsys.readouterr().err.strip()
    assert warning.startswith(f"warning: {bad / name} is damaged ({cause}") and "\n" not in warning


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b'{"epoch": 1, "train_loss": 0.5}\n{"epoch": 2', "line 2: not a JSON object"),
        (b"[1, 2]\n", "line 1: not a JSON object"),
        (b'{"train_loss": 0.5}\n', "line 1: no integer 'epoch'"),
        (b"\xff\xfe\n", "UnicodeDecodeError"),
    ],
)
def test_a_damaged_log_is_skipped_with_a_warning(tmp_path, capsys, content, cause):
    """The per-epoch table (aggregate --epochs-out, Figure 4, the scorecard) leaves a damaged log out."""
    from sampa.report.runs import collect_epochs

    good, bad = tmp_path / "good", tmp_path / "bad"
    for run in (good, bad):
        run.mkdir()
    (good / "log.jsonl").write_text('{"epoch": 1, "train_loss": 0.5}\n')
    (bad / "log.jsonl").write_bytes(content)
    epochs = collect_epochs([good, bad], tmp_path)
    assert epochs["run"].tolist() == ["good"] and epochs["epoch"].tolist() == [1]
    warning = capsys.readouterr().err.strip()
    assert warning == f"warning: {bad / 'log.jsonl'} is damaged ({cause}): its epochs are skipped"


def test_timing_caveats_name_mixed_devices_commits_dirty_trees_and_shared_machines():
    from sampa.report.runs import timing_caveats

    runs = pd.DataFrame(
        {
            "run": ["a", "b", "c", "other"],
            "provenance.device_name": ["NVIDIA A100", "NVIDIA A100", "NVIDIA H100", "NVIDIA V100"],
            "provenance.git_sha": ["abc", "abc", "abc", "def"],
            "provenance.git_dirty": [False, True, False, True],
            "shared.other_training_jobs_max": [0, 0, 2, 5],
        }
    )
    assert timing_caveats(runs, ["a", "b", "c"]) == [
        "Caution, times and memory of runs: 2 devices (NVIDIA A100: 2 runs, NVIDIA H100: 1 runs); "
        "1 runs from a checkout with uncommitted changes; 1 runs beside other training jobs."
    ]
    clean = runs.assign(**{"provenance.git_dirty": False, "shared.other_training_jobs_max": 0})
    assert timing_caveats(clean, ["a", "b"]) == []  # one device, one commit, alone: nothing to say


# ----------------------------------------------------------------------------------------------
# Placement of a run on a cluster


@pytest.mark.parametrize(
    ("devices", "gpus", "per_node", "nodes", "tasks", "prefix"),
    [
        (8, True, 4, 2, 8, "srun --nodes=2 --ntasks=8 --ntasks-per-node=4 --gpus-per-task=1 --cpus-per-task"),
        (8, True, 8, 1, 1, ""),  # fits one node: one task, the run's own launcher starts the ranks
        (8, True, None, 1, 1, ""),  # no gpus_per_node (local workflow): one node, as before
        (8, True, 3, 4, 8, "srun --nodes=4 --ntasks=8 --ntasks-per-node=2 "),  # fewest equal nodes
        (2, True, 1, 2, 2, "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 "),
        (8, False, 4, 1, 1, ""),  # CPU ranks are processes of one node
    ],
)
def test_placement_puts_a_run_on_one_node_or_several(devices, gpus, per_node, nodes, tasks, prefix):
    placed = jobs.placement(devices, gpus, per_node, 4)
    assert (placed.nodes, placed.tasks) == (nodes, tasks)
    assert placed.launcher().startswith(prefix) and bool(placed.launcher()) == bool(prefix)
    resources = placed.resources()
    if nodes == 1:
        assert resources == {
            "nodes": None,
            "tasks": None,
            "tasks_per_gpu": None,
            "mpi": None,
            "cpus_per_task": 4 * devices,
        }
    else:
        assert resources == {
            "nodes": nodes,
            "tasks": devices,
            "tasks_per_gpu": 1,
            "mpi": placed.launcher(),
            "cpus_per_task": 4,
        }
        assert "--kill-on-bad-exit=1" in placed.launcher()


@pytest.mark.parametrize("value", [0, -4, True, "4", 2.0])
def test_bad_gpus_per_node_is_one_line(value):
    with pytest.raises(jobs.JobError) as err:
        jobs.placement(8, True, value)
    message = f"gpus_per_node must be a positive integer, or unset for one node (got {value!r})"
    assert str(err.value) == message


def test_the_slurm_plugin_submits_the_placement():
    """The sbatch line the installed executor plugin builds from a run's resources."""
    submit = pytest.importorskip("snakemake_executor_plugin_slurm.submit_string", reason="needs the plugin")
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    def sbatch(devices: int, per_node: int) -> list[str]:
        placed = jobs.placement(devices, True, per_node, 4)
        given = {k: v for k, v in placed.resources().items() if v is not None}
        job = SimpleNamespace(resources=Resources(given, gpu=devices, runtime=60), threads=devices)
        params = {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "c", "account": "", "partition": ""}
        return (submit.get_submit_command(job, {**params, "workdir": ""}) + set_gres_string(job)).split()

    wide = sbatch(8, 4)
    assert {"--nodes=2", "--ntasks=8", "--ntasks-per-gpu=1", "--gpus=8", "--cpus-per-task=4"} <= set(wide)
    narrow = sbatch(8, 8)
    assert {"--gpus=8", "--cpus-per-task=32"} <= set(narrow)
    assert not [flag for flag in narrow if flag.startswith(("--nodes", "--ntasks"))]


def test_the_launcher_prefix_starts_the_run(tmp_path):
    """`--launcher` puts its words before the training command (here a stand-in that records them)."""
    out, log = tmp_path / "runs/r", tmp_path / "r.log"
    fake = tmp_path / "fake-srun"
    fake.write_text('#!/bin/sh\necho "launched with: $*" >&2\nexit 3\n')
    fake.chmod(0o755)
    proc = run_job("train", "--out", str(out), f"--launcher={fake} --ntasks=8 'a b'", "--", "--x", log=log)
    assert proc.returncode == 0, log.read_text()
    assert f"launched with: --ntasks=8 a b {sys.executable} -m sampa train --x --out {out}" in log.read_text()
    assert json.loads((out / jobs.OUTCOME).read_text())["status"] == "failed"
    bad = run_job("train", "--out", str(out), "--launcher='srun", "--", log=log)
    assert bad.returncode == 2
    assert log.read_text().strip().splitlines()[-1].startswith("sampa.jobs train: error: --launcher is not")


@pytest.mark.parametrize("value", ["no", "false", "2", " 0"])
def test_a_bad_sampa_download_is_one_line_before_data_is_touched(tmp_path, monkeypatch, capsys, value):
    monkeypatch.setenv("SAMPA_DOWNLOAD", value)
    record, root = tmp_path / "cifar10.json", tmp_path / "data"
    assert jobs.main(["prepare-data", "cifar10", "--record", str(record), "--root", str(root)]) == 2
    want = f"environment variable SAMPA_DOWNLOAD must be 0 or 1 (got {value!r})"
    assert capsys.readouterr().err == f"sampa.jobs prepare-data: error: {want}\n"
    assert not record.exists() and not root.exists()
    assert jobs.download_allowed({}) and jobs.download_allowed({"SAMPA_DOWNLOAD": "1"})
    assert not jobs.download_allowed({"SAMPA_DOWNLOAD": "0"})


def test_the_retry_count_from_the_main_process_is_read_or_a_one_line_error():
    assert jobs.retries_of({}, 3) == 3
    assert jobs.retries_of({jobs.RETRIES_ENV: "2"}, 0) == 2
    with pytest.raises(jobs.JobError, match=r"SAMPA_WORKFLOW_RETRIES must be an integer >= 0 \(got 'two'\)"):
        jobs.retries_of({jobs.RETRIES_ENV: "two"}, 0)


def test_a_run_path_split_at_its_commas_on_the_way_to_a_node_is_joined_back():
    """Snakemake sends a cluster job its target as `--target-jobs` and splits that at every comma
    (snakemake#2366): the round trip through Snakemake's own encoder and parser, then the repair."""
    from snakemake.target_jobs import parse_target_jobs_cli_args
    from snakemake_interface_executor_plugins.utils import TargetSpec, encode_target_jobs_cli_args

    for run in (
        "cifar10/resnet56/sam/rho=0.05/epochs=2,lr=0.1,synthetic_noise=0.15/seed0",
        "a/b/sgd/default/c/seed1",
    ):
        sent = encode_target_jobs_cli_args([TargetSpec("train_run", {"run": run})])
        (got,) = parse_target_jobs_cli_args(sent)
        assert jobs.rejoin_run_wildcard(got.wildcards_dict) == {"run": run}
    assert jobs.rejoin_run_wildcard({"dataset": "cifar10"}) == {"dataset": "cifar10"}


@pytest.mark.parametrize("last_attempt", [0, 1])
def test_a_slurm_job_stops_its_run_before_the_time_limit(tmp_path, last_attempt):
    """SLURM reports a job still running at its limit as TIMEOUT, a failed job whatever it recorded: the
    job asks squeue for its time left and stops the run itself before (here 4 s left, stop 2 s before)."""
    out, log = tmp_path / "runs/r", tmp_path / "r.log"
    squeue = tmp_path / "bin/squeue"
    squeue.parent.mkdir()
    squeue.write_text('#!/bin/sh\n[ "$*" = "--noheader --jobs 77 --format=%L" ] && echo 0:04\n')
    squeue.chmod(0o755)
    env = {
        "SLURM_JOB_ID": "77",
        jobs.STOP_ENV: "2",
        "PATH": f"{squeue.parent}{os.pathsep}{os.environ['PATH']}",
    }
    settings = json.dumps(TINY | {"epochs": 1000})
    args = ["train", "--out", str(out), "--last-attempt", str(last_attempt), "--", "--settings", settings]
    start = time.monotonic()
    proc = run_job(*args, log=log, env=env)
    assert time.monotonic() - start < 60, log.read_text()
    assert "stopping the run before the job's time limit" in log.read_text()
    assert proc.returncode == (0 if last_attempt else 128 + signal.SIGTERM), log.read_text()
    if last_attempt:
        reason = json.loads((out / jobs.OUTCOME).read_text())["reason"]
        assert reason == "stopped before the job's time limit on its last attempt (no retries left)"
    assert not (out / "metrics.json").exists()


def test_the_time_a_slurm_job_has_left_and_a_bad_stop_setting():
    assert jobs._slurm_duration("1-02:03:04") == 93784 and jobs._slurm_duration("4:05") == 245
    assert jobs._slurm_duration("UNLIMITED") is None and jobs._slurm_duration("NOT_SET") is None
    assert jobs.slurm_time_left({}) is None  # not a SLURM job: no stop of its own
    with pytest.raises(
        jobs.JobError, match=r"SAMPA_STOP_BEFORE_LIMIT_S must be a number of seconds >= 0 \(got '-1'\)"
    ):
        jobs._stop_time({jobs.STOP_ENV: "-1"})


def test_a_signal_while_the_child_starts_is_passed_on_once_it_exists():
    """The job's handlers are installed before the run's process starts: a SIGTERM that arrives in
    between is neither lost (an orphaned run) nor a default death of the job (no record)."""
    saved = {signum: signal.getsignal(signum) for signum in jobs.INTERRUPTS}
    try:
        forward = jobs._SignalForwarder()
        os.kill(os.getpid(), signal.SIGTERM)  # before the child exists
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            assert forward.to(child) == [signal.SIGTERM]
            assert child.wait(timeout=30) == -signal.SIGTERM
        finally:
            child.kill()
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
