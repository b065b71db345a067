"""Command line: every bad input is a one-line error with exit status 2, before any data is loaded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sampa import io
from sampa.cli import main

BASE = ["train", "--model", "tinycnn", "--dataset", "synthetic", "--epochs", "1", "--device", "cpu"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "resnet57"], "unknown model 'resnet57'; choose one of: .*resnet56"),
        (["--dataset", "cifar11"], "unknown dataset 'cifar11'; choose one of: cifar10, cifar100"),
        (["--optimizer", "adam"], "unknown optimizer 'adam'; choose one of: .*sampa"),
        (["--optimizer", "sam", "--rho", "-0.1"], r"rho must be in \[0, inf\) \(got -0.1\)"),
        (["--optimizer", "sampa", "--lam", "1.2"], r"lam must be in \[0, 1\] \(got 1.2\)"),
        (["--optimizer", "sampa", "--lam", "-0.2"], r"lam must be in \[0, 1\]"),
        (["--lr", "0"], r"lr must be in \(0, inf\) \(got 0.0\)"),
        (["--lr", "-1"], r"lr must be in \(0, inf\)"),
        (["--epochs", "0"], r"epochs must be an integer >= 1 \(got 0\)"),
        (["--label-noise", "1.0"], "label_noise must be in \\[0, 1\\)"),
        (["--label-noise", "-0.1"], "label_noise must be in \\[0, 1\\)"),
        (["--batch-size", "0"], r"batch_size must be an integer >= 1 \(got 0\)"),
        (
            ["--batch-size", "4501", "--synthetic-train-size", "5000"],
            "batch_size 4501 is larger than the training set",
        ),
        (
            ["--optimizer", "sam", "--hp", "k=5"],
            "unknown hyperparameter 'k' for method 'sam'; valid: rho, eps",
        ),
        (["--hp", "oops"], "--hp expects KEY=VALUE"),
        (["--devices", "3"], r"devices must be 1 or an even number \(2, 4, 8, ...\) \(got 3\)"),
        (["--device", "gpu"], "device must be one of auto, cpu, cuda, cuda:N"),
    ],
)
def test_bad_input_is_a_one_line_error(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    code = main([*BASE, "--out", str(out), "--data-root", str(tmp_path / "no-data"), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith("sampa train: error: ")
    import re

    assert re.search(message, err), err
    assert not out.exists()  # nothing was started


def test_config_file_errors(tmp_path, capsys):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("model: tinycnn\nlearning_rate: 0.1\n")
    assert main(["train", "--config", str(bad_key), "--out", str(tmp_path / "r")]) == 2
    assert "unknown config key 'learning_rate'; valid keys: model" in capsys.readouterr().err
    bad_yaml = tmp_path / "broken.yaml"
    bad_yaml.write_text("model: [tinycnn\n")
    assert main(["train", "--config", str(bad_yaml), "--out", str(tmp_path / "r")]) == 2
    assert "is not valid YAML" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "cannot read config file" in capsys.readouterr().err
    workflow = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"  # was: unknown key 'arms'
    assert main(["train", "--config", str(workflow), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"sampa train: error: config file {str(workflow)!r} is a workflow config (it has 'experiments'); "
        "run it with snakemake --configfile or sampa plan --config, or give train a file of run settings "
        "(keys of sampa.config.RunConfig)\n"
    )
    assert not (tmp_path / "r").exists()


def test_missing_cifar_offline_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import sampa.data.cifar as cifar

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    code = main(
        [
            "train",
            "--dataset",
            "cifar10",
            "--model",
            "tinycnn",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--data-root",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "configs/smoke.yaml" in err and str(tmp_path / "data") in err


def test_missing_cifar_without_download_is_refused_before_the_run_directory(tmp_path, capsys):
    from sampa.data.cifar import check_present

    out, data = tmp_path / "run", tmp_path / "data"
    argv = [*BASE, "--dataset", "cifar10", "--no-download", "--data-root", str(data), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cifar-10-python.tar.gz not found in {data} (download=False)" in err
    assert not out.exists() and not data.exists()
    data.mkdir()
    (data / "cifar-10-python.tar.gz").write_bytes(b"")  # present: verified (MD5) when the run reads it
    check_present("cifar10", data)


def test_config_file_with_flag_overrides_trains(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "model: tinycnn\ndataset: synthetic\noptimizer: sampa\nhparams: {rho: 0.05, lam: 0.5}\n"
        "epochs: 5\nbatch_size: 32\nsynthetic_train_size: 200\nsynthetic_test_size: 50\n"
        "device: cpu\n"
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--epochs", "1", "--lam", "0.3", "--out", str(out)]) == 0
    import json

    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 1 and config["hparams"] == {"rho": 0.05, "lam": 0.3}
    assert '"status": "complete"' in capsys.readouterr().out


def test_module_entry_point_exit_status(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "sampa", *BASE, "--out", str(tmp_path / "r"), "--lr", "-1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "sampa train: error: lr must be in (0, inf) (got -1.0)"


def test_ctrl_c_is_one_line_and_the_same_command_resumes(tmp_path):
    """Ctrl-C (SIGINT) during a run: one line saying how to continue, no traceback, status 130, no
    metrics.json; the same command then resumes after the last finished epoch."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = tmp_path / "r"
    command = [sys.executable, "-m", "sampa", *BASE, "--epochs", "2", "--synthetic-train-size", "200"]
    command += ["--synthetic-test-size", "100", "--threads", "1", "--out", str(out)]
    ctrl_c = {**env, "SAMPA_KILL_AT": "epoch2:step", "SAMPA_KILL_SIGNAL": "INT"}
    proc = subprocess.run(command, capture_output=True, text=True, env=ctrl_c, timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "sampa train: interrupted (SIGINT); "
        "run the same command again to resume after the last finished epoch"
    )
    assert (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"[{out}] resuming after epoch 1/2" in proc.stdout + proc.stderr
    assert '"status": "complete"' in proc.stdout


@pytest.mark.parametrize(
    ("point", "hint"),
    [
        ("epoch1:step", "no epoch had finished, so the same command starts the run again"),
        ("final:metrics",
         "the run had finished (its metrics.json is written); the same command prints its results"),
    ],
)  # fmt: skip
def test_ctrl_c_says_what_the_same_command_does(tmp_path, point, hint):
    """Before the first checkpoint nothing resumes; after metrics.json the run is done."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = tmp_path / "r"
    command = [sys.executable, "-m", "sampa", *BASE, "--synthetic-train-size", "200"]
    command += ["--synthetic-test-size", "100", "--threads", "1", "--out", str(out)]
    ctrl_c = {**env, "SAMPA_KILL_AT": point, "SAMPA_KILL_SIGNAL": "INT"}
    proc = subprocess.run(command, capture_output=True, text=True, env=ctrl_c, timeout=120)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"sampa train: interrupted (SIGINT); {hint}"
    assert (out / "metrics.json").exists() == (point == "final:metrics")
    assert not (out / "config.json").exists() or point == "final:metrics"  # an unstarted run left nothing


def test_after_ctrl_c_a_second_one_ends_the_process_at_once(capsys):
    """Not a traceback from the exit handlers it would interrupt (a workflow job passes its SIGINT on to
    the run, which got the terminal's too)."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        assert io.interrupted("plan") == 130
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err == "sampa plan: interrupted (SIGINT)\n"


def test_toy_command_writes_trajectories(tmp_path, capsys):
    out, summary = tmp_path / "toy" / "traj.csv", tmp_path / "toy" / "summary.csv"
    assert (
        main(["toy", "--out", str(out), "--summary", str(summary), "--steps", "50", "--lams", "0,0.2"]) == 0
    )
    lines = out.read_text().splitlines()
    assert lines[0] == "method,step,x0,x1,distance,f,lr"
    assert len(lines) == 1 + 5 * 51  # SAM, RandSAM, OptSAM, SAMPa-0, SAMPa-0.2; steps 0..50
    assert "SAMPa-0.2" in summary.read_text()
    assert main(["toy", "--out", str(out), "--lams", "0,1.5"]) == 2
    assert "--lams[1] must be in [0, 1] (got 1.5)" in capsys.readouterr().err


def test_plan_of_a_run_settings_file_says_what_it_is(tmp_path, capsys):
    """The other way round: `sampa plan` given `sampa train`'s file of run settings names it (was: the
    schema's 'Additional properties are not allowed' with the workflow config's keys)."""
    run_settings = tmp_path / "run.yaml"
    run_settings.write_text("model: tinycnn\nlr: 0.1\n")
    assert main(["plan", "--config", str(run_settings), "--out", str(tmp_path / "plan.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file of run settings" in err and "sampa train --config" in err, err
    assert not (tmp_path / "plan.csv").exists()
