"""The workflow through the real SLURM executor plugin, on this machine: a fake SLURM
(tests/fake_slurm/) runs each sbatch job here, enforces its time limit as slurmd does (scaled down:
``FAKE_SLURM_MINUTE_S`` seconds a SLURM minute) and answers the plugin's status queries.

The slow test runs three runs in one invocation of ``snakemake --profile profiles/slurm``: one killed
by its time limit in attempt 1 after two epochs (retried with the longer limit, it resumes and ends as
the uninterrupted run), one that no attempt can finish (its last attempt is recorded as a failed run
and the next invocation retries it), and one that fails by itself (recorded at once, not retried).
A second slow test runs a job an admin cancels (sacct: ``CANCELLED by 0``) and one that runs out of
memory (``OUT_OF_MEMORY``): both are retried, the second with more memory. The fast tests check what
the fake prints for such jobs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_crash import log_rows, outcome
from test_workflow import REPO, SNAKEFILE, job_counts, mini_config, snakemake, write_config

from sampa import experiments as ex
from sampa import jobs

pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install snakemake-executor-plugin-slurm")

FAKE_SLURM = Path(__file__).resolve().parent / "fake_slurm"
PROFILE = ["--profile", str(REPO / "profiles" / "slurm")]
MINUTE_S = 2.0  # a 15-minute limit is 30 s here
FAST_POLLING = ["--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1"]


def test_a_job_on_a_cluster_node_trains_the_run_whose_path_has_commas(tmp_path):
    """The node gets its target from `--target-jobs`, which Snakemake splits at commas (snakemake#2366):
    the node must plan the whole run path, not the piece before its first comma."""
    from snakemake_interface_executor_plugins.utils import TargetSpec, encode_target_jobs_cli_args

    config = str(REPO / "configs" / "smoke.yaml")
    run = ex.plan(ex.load_config(config)).runs["table1"][0].path
    assert "," in run
    (target,) = encode_target_jobs_cli_args([TargetSpec("train_run", {"run": run})])
    node = ["--mode", "remote", "--retries", "0", "--attempt", "1", "--target-jobs", target]
    out = snakemake("-n", "-p", "--configfile", config, *node, cwd=tmp_path).stdout
    assert f"--out results/runs/{run} " in out


def test_a_job_on_a_node_keeps_the_failure_records_that_the_tables_wait_for(tmp_path):
    """Forgetting failed runs (so they are retried) is for the start of an invocation: a job that starts
    on a node later must not delete the record of a run that failed earlier in the same invocation."""
    from snakemake_interface_executor_plugins.utils import TargetSpec, encode_target_jobs_cli_args

    config = str(REPO / "configs" / "smoke.yaml")
    failed, other = (run.path for run in ex.plan(ex.load_config(config)).runs["table1"][:2])
    record = tmp_path / "results/runs" / failed / jobs.OUTCOME
    record.parent.mkdir(parents=True)
    record.write_text('{"status": "failed", "reason": "an error"}')
    (target,) = encode_target_jobs_cli_args([TargetSpec("train_run", {"run": other})])
    node = ["--mode", "remote", "--retries", "0", "--attempt", "1", "--target-jobs", target]
    snakemake("-n", "--configfile", config, *node, cwd=tmp_path)
    assert record.exists()
    snakemake("-n", "--configfile", config, cwd=tmp_path)  # a new invocation retries the run
    assert not record.exists()


def fake_job(state: Path, env: dict[str, str], *sbatch_args: str, script: str) -> str:
    """Submit ``script`` to the fake SLURM (job name ``t``); the job id."""
    command = ["sbatch", "--parsable", "--job-name", "t", "--output", str(state / "%j.out"), *sbatch_args]
    submit = subprocess.run([*command, "--wrap", script], env=env, capture_output=True, text=True, check=True)
    return submit.stdout.strip()


def wait_for_state(state: Path, job: str, done: tuple[str, ...], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = (state / job / "state").read_text() if (state / job / "state").exists() else ""
        if current.startswith(done):
            return current
        time.sleep(0.05)
    raise AssertionError(f"job {job} never reached {done}")


def status_lines(env: dict[str, str]) -> tuple[list[str], list[str]]:
    """What the plugin's status queries (sacct, squeue) print for the jobs named ``t``."""
    sacct = ["sacct", "-X", "--parsable2", "--noheader", "--format=JobIdRaw,State", "--name", "t"]
    squeue = ["squeue", "--format=%i|%T", "--states=all", "--noheader", "--name", "t"]
    return tuple(  # type: ignore[return-value]
        subprocess.run(c, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
        for c in (sacct, squeue)
    )


def test_the_fake_slurm_says_who_cancelled_a_job_as_sacct_does(tmp_path):
    """sacct names the canceller's uid (an admin: 0); squeue's %T says CANCELLED alone."""
    state = tmp_path / "slurm"
    env = {**os.environ, **fake_slurm_env(state), "FAKE_SLURM_KILL_WAIT_S": "0.5"}
    mine, admins = (fake_job(state, env, script="sleep 60") for _ in range(2))
    wait_for_state(state, admins, ("RUNNING",))
    wait_for_state(state, mine, ("RUNNING",))
    subprocess.run(["scancel", admins], env={**env, "FAKE_SLURM_UID": "0"}, check=True)
    subprocess.run(["scancel", mine], env=env, check=True)
    for job in (mine, admins):
        wait_for_state(state, job, ("CANCELLED",))
    sacct, squeue = status_lines(env)
    assert sacct == [f"{mine}|CANCELLED by {os.getuid()}", f"{admins}|CANCELLED by 0"]
    assert squeue == [f"{mine}|CANCELLED", f"{admins}|CANCELLED"]


def test_the_fake_slurm_runs_jobs_from_copies_of_its_links(tmp_path):
    """A source release (sdist) stores the command links as copies of the script: sbatch still runs."""
    copies = tmp_path / "bin"
    shutil.copytree(FAKE_SLURM, copies, symlinks=False)
    assert not (copies / "sbatch").is_symlink()
    state = tmp_path / "slurm"
    env = {**os.environ, **fake_slurm_env(state)}
    env["PATH"] = f"{copies}{os.pathsep}{os.environ['PATH']}"
    job = fake_job(state, env, script="true")
    assert wait_for_state(state, job, ("COMPLETED", "FAILED"), timeout=30) == "COMPLETED"


def test_the_fake_slurm_ends_a_job_over_its_memory_limit_as_out_of_memory(tmp_path):
    """A job asking less memory than it uses loses its largest process to the OOM killer and ends as
    OUT_OF_MEMORY although its script exits 0; one asking enough (--mem-per-cpu x CPUs) completes."""
    state = tmp_path / "slurm"
    memory = {"FAKE_SLURM_MEM_USED_MB": "2048", "FAKE_SLURM_MEM_AFTER_S": "2"}  # python runs by then
    env = {**os.environ, **fake_slurm_env(state), **memory}
    hog = f"{sys.executable} -c 'import time; x = bytearray(50 << 20); time.sleep(60)'; echo status $?"
    small = fake_job(state, env, "--mem", "1G", script=hog)
    enough = fake_job(state, env, "--mem-per-cpu", "600", "--cpus-per-task", "4", script="true")
    for job in (small, enough):
        wait_for_state(state, job, ("COMPLETED", "FAILED", "OUT_OF_MEMORY"))
    assert status_lines(env)[0] == [f"{small}|OUT_OF_MEMORY", f"{enough}|COMPLETED"]
    assert (state / small / "exit").read_text() == "0"
    assert (state / f"{small}.out").read_text().splitlines()[-1] == "status 137"  # SIGKILL; the job went on


def slurm_config() -> dict:
    """Three SGD runs of the smoke model with time limits from a minute an epoch (15 minutes at least):
    10 epochs (30 minutes); 3 epochs of one-image steps on 20 times the data (15 minutes, not enough
    here in two attempts); 2 epochs in a broken run directory (15 minutes)."""
    config = mini_config() | {"name": "slurm", "seeds": [0], "runtime": {"tinycnn": 1}}
    table = {"rows": [], "columns": ["arm"], "metrics": ["test_acc"]}
    endless = {"epochs": 3, "batch_size": 1, "synthetic_train_size": 25600}
    arms = [
        {"label": "SGD-10", "optimizer": "sgd", "run": {"epochs": 10}},
        {"label": "SGD-slow", "optimizer": "sgd", "run": endless},
        {"label": "SGD-2", "optimizer": "sgd", "run": {"epochs": 2}},
    ]
    config["experiments"] = {"t": {"kind": "table", "title": "t", "arms": arms, "table": table}}
    return config


def fake_slurm_env(state: Path) -> dict[str, str]:
    state.mkdir()
    return {
        "PATH": f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}",
        "FAKE_SLURM_DIR": str(state),
        "FAKE_SLURM_MINUTE_S": str(MINUTE_S),
        "FAKE_SLURM_KILL_WAIT_S": "3",
        jobs.STOP_ENV: "5",  # the job stops its run 5 s (not 120 s) before its 30-s limit
    }


def submissions(state: Path, run: str) -> list[dict]:
    """The sbatch requests of a run's jobs, in order, with their final state and environment."""
    found = []
    for job in sorted((p for p in state.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        if f'run="{run}"' in (job / "script").read_text():
            request = json.loads((job / "request.json").read_text())
            env = json.loads((job / "env.json").read_text())
            found.append({**request, "id": job.name, "state": (job / "state").read_text(), "env": env})
    return found


def profile_args(config: str) -> list[str]:
    """The SLURM profile with one retry, polling the fake often."""
    return [*PROFILE, "--configfile", config, "--retries", "1", *FAST_POLLING, "--latency-wait", "5"]


def run_through_fake_slurm(
    tmp_path: Path, config: str, work: Path, env: dict[str, str], meanwhile, timeout: float
) -> str:
    """Run the workflow with the SLURM profile (one retry) against the fake, call ``meanwhile(process)``
    while it runs, and return its log once it has succeeded."""
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(work)]
    command += profile_args(config)
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    with open(tmp_path / "snakemake.log", "w") as log:
        workflow = subprocess.Popen(command, cwd=work, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            meanwhile(workflow)
            workflow.wait(timeout=timeout)
        finally:
            workflow.kill()
    out = (tmp_path / "snakemake.log").read_text()
    assert workflow.returncode == 0, out[-6000:]
    return out


def time_out_after_two_epochs(state: Path, work: Path, run: str, env: dict[str, str], workflow) -> None:
    """Once the run has logged two epochs, its job's time is up (`scontrol update ... TimeLimit=0`)."""
    log, deadline = work / "results/runs" / run / "log.jsonl", time.monotonic() + 300
    while workflow.poll() is None and time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            (job,) = submissions(state, run)
            update = ["scontrol", "update", f"JobId={job['id']}", "TimeLimit=0"]
            subprocess.run(update, env={**os.environ, **env}, check=True)
            return
        time.sleep(0.2)
    raise AssertionError("the run never logged two epochs in its first attempt")


@pytest.mark.slow
def test_runs_survive_time_limits_and_failures_of_slurm_jobs(tmp_path):
    config = str(write_config(tmp_path / "slurm.yaml", slurm_config()))
    plan = ex.plan(ex.load_config(config))
    resumed, endless, broken = (run.path for run in plan.runs["t"])
    work, state = tmp_path / "work", tmp_path / "slurm"
    env = fake_slurm_env(state)
    (work / "results/runs" / broken).mkdir(parents=True)
    (work / "results/runs" / broken / "config.json").write_text("{ damaged")  # fails at start

    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    out = run_through_fake_slurm(
        tmp_path, config, work, env, lambda wf: time_out_after_two_epochs(state, work, resumed, env, wf), 600
    )

    # every job learnt the main process's retry count (sbatch --export=ALL)
    assert {job["env"].get(jobs.RETRIES_ENV) for job in submissions(state, resumed)} == {"1"}

    # a: killed in attempt 1, retried with twice the time limit, resumed, same result as without the kill
    first, second = submissions(state, resumed)
    assert (first["time"], first["state"], second["time"], second["state"]) == (
        30,
        "TIMEOUT",
        60,
        "COMPLETED",
    )
    run_dir = work / "results/runs" / resumed
    assert json.loads((run_dir / jobs.OUTCOME).read_text())["status"] == "complete"
    assert [row["epoch"] for row in log_rows(run_dir)] == list(range(1, 11))  # none twice
    assert json.loads((run_dir / "metrics.json").read_text())["provenance"]["resumes"] == 1
    reference = tmp_path / "reference"
    settings = json.dumps(plan.unique_runs()[resumed].settings)
    train = ["-m", "sampa", "train", "--settings", settings, "--gpus", "0", "--threads", "1", "--out"]
    subprocess.run([sys.executable, *train, str(reference)], env=full_env, check=True, capture_output=True)
    assert log_rows(run_dir) == log_rows(reference) and outcome(run_dir) == outcome(reference)

    # b: the run stops itself before the limit in both attempts: attempt 1 fails the job (retried), the
    # last one ends the job normally with the run recorded as failed, so the tables still come
    first, second = submissions(state, endless)
    assert (first["time"], first["state"], second["time"], second["state"]) == (15, "FAILED", 30, "COMPLETED")
    record = json.loads((work / "results/runs" / endless / jobs.OUTCOME).read_text())
    assert record["status"] == "failed" and "time limit on its last attempt" in record["reason"]
    assert not (work / "results/runs" / endless / "metrics.json").exists()
    assert "sampa workflow: 1 of 3 runs finished (1 resumed from a checkpoint), 2 failed" in out
    assert f"  failed: logs/runs/{endless}.log  (stopped before the job's time limit on its last" in out
    assert "— (failed)" in (work / "results/slurm/tables/t.md").read_text()

    # a run failing by itself: recorded at once, the job succeeds, no retry
    (only,) = submissions(state, broken)
    assert only["state"] == "COMPLETED"
    assert json.loads((work / "results/runs" / broken / jobs.OUTCOME).read_text())["status"] == "failed"

    # the next invocation retries both failed runs, not the finished one
    again = snakemake("-n", *profile_args(config), cwd=work, env={**env, "PYTHONPATH": str(REPO)}).stdout
    assert job_counts(again)["train_run"] == 2


def cancel_when_running(state: Path, run: str, env: dict[str, str], workflow) -> None:
    """An admin cancels the run's first job as soon as it runs (sacct: ``CANCELLED by 0``)."""
    deadline = time.monotonic() + 300
    while workflow.poll() is None and time.monotonic() < deadline:
        try:
            jobs_of_run = submissions(state, run)
        except (OSError, ValueError):  # a job being submitted: its files are not all written yet
            jobs_of_run = []
        if jobs_of_run and jobs_of_run[0]["state"] == "RUNNING":
            subprocess.run(["scancel", jobs_of_run[0]["id"]], env={**env, "FAKE_SLURM_UID": "0"}, check=True)
            return
        time.sleep(0.1)
    raise AssertionError("the run's first job never ran")


@pytest.mark.slow
def test_cancelled_and_out_of_memory_jobs_are_retried_the_latter_with_more_memory(tmp_path):
    """Two runs, each job using 40000 MB after 3 s: the profile's 32000 MB in attempt 1 are too few.
    One run's first job is cancelled by an admin before that: the plugin learns it from squeue (the
    profile's status command; sacct's `CANCELLED by 0` it took for a running job, and waited forever),
    the retry asks 64000 MB and finishes. The other's first job ends OUT_OF_MEMORY; its retry asks
    64000 MB and finishes."""
    config = mini_config() | {"name": "slurm", "seeds": [0], "runtime": {"tinycnn": 1}}
    table = {"rows": [], "columns": ["arm"], "metrics": ["test_acc"]}
    arms = [{"label": f"SGD-{n}", "optimizer": "sgd", "run": {"epochs": n}} for n in (2, 3)]
    config["experiments"] = {"t": {"kind": "table", "title": "t", "arms": arms, "table": table}}
    config = str(write_config(tmp_path / "slurm.yaml", config))
    cancelled, hungry = (run.path for run in ex.plan(ex.load_config(config)).runs["t"])
    work, state = tmp_path / "work", tmp_path / "slurm"
    work.mkdir()
    env = fake_slurm_env(state) | {"FAKE_SLURM_MEM_USED_MB": "40000", "FAKE_SLURM_MEM_AFTER_S": "3"}
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    out = run_through_fake_slurm(
        tmp_path, config, work, env, lambda wf: cancel_when_running(state, cancelled, full_env, wf), 400
    )
    assert "sampa workflow: 2 of 2 runs finished" in out

    summary = {
        run: [(job["mem"], job["state"]) for job in submissions(state, run)] for run in (cancelled, hungry)
    }
    assert summary == {
        cancelled: [(32000, "CANCELLED by 0"), (64000, "COMPLETED")],
        hungry: [(32000, "OUT_OF_MEMORY"), (64000, "COMPLETED")],
    }
    for run in (cancelled, hungry):
        assert json.loads((work / "results/runs" / run / jobs.OUTCOME).read_text())["status"] == "complete"
