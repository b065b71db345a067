"""Crash consistency outside the epoch loop: a run that cannot start (its data or weights fail) leaves no
run directory, whichever way it is started; a killed or failed data preparation is redone by the next
call, never read half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from problems import tiny_run

from sampa import cli, jobs
from sampa.data import cifar
from sampa.data.cifar import DataUnavailableError
from sampa.train import _Run, train

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("n01440764", "n01443537")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads fail as they do without a network."""

    def no_network(*_args: object, **_kwargs: object) -> None:
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", no_network)
    monkeypatch.delenv("SAMPA_DATA", raising=False)


def empty_imagenet(root: Path) -> Path:
    """An ImageNet folder that passes the planner's check (train/ and val/ exist) but holds no images."""
    for split in ("train", "val"):
        (root / "imagenet" / split).mkdir(parents=True)
    return root


def imagenet_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--dataset", "imagenet", "--model", "resnet18", "--epochs", "1", "--device", "cpu",
        "--data-root", str(root), "--out", str(out), *extra,
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------------
# A run that cannot start writes nothing


def test_a_failed_download_leaves_no_run_directory(tmp_path, capsys):
    out = tmp_path / "runs" / "r"
    args = ["train", "--dataset", "cifar10", "--model", "tinycnn", "--download", "--epochs", "1",
            "--device", "cpu", "--data-root", str(tmp_path / "data"), "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 2
    assert "download failed" in capsys.readouterr().err
    assert not out.exists()


def test_an_imagenet_folder_without_images_leaves_no_run_directory(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(imagenet_args(empty_imagenet(tmp_path / "data"), out)) == 2
    assert "no images" in capsys.readouterr().err
    assert not out.exists()


def test_an_existing_empty_directory_is_left_as_it_was(tmp_path):
    out = tmp_path / "r"
    out.mkdir()  # e.g. made by Snakemake for the job's log or output
    with pytest.raises(DataUnavailableError):
        train(tiny_run(dataset="cifar10", download=True, data_root=str(tmp_path / "data")), out)
    assert list(out.iterdir()) == []


def test_a_new_run_failing_in_its_first_epoch_leaves_no_run_directory(tmp_path, monkeypatch):
    def fail(self, epoch):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(_Run, "_train_epoch", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        train(tiny_run(), tmp_path / "r", log_progress=False)
    assert not (tmp_path / "r").exists()


def test_a_resumed_run_that_fails_keeps_its_files(tmp_path, monkeypatch):
    out = tmp_path / "r"
    assert train(tiny_run(), out, stop_after=1, log_progress=False) is None
    before = sorted(p.name for p in out.iterdir())
    monkeypatch.setattr(_Run, "_train_epoch", lambda self, epoch: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train(tiny_run(), out, log_progress=False)
    assert sorted(p.name for p in out.iterdir()) == before
    assert "checkpoint.pt" in before and "config.json" in before


def test_a_workflow_job_whose_data_fails_records_the_failure_and_nothing_else(tmp_path):
    out, log = tmp_path / "runs" / "r", tmp_path / "r.log"
    root = empty_imagenet(tmp_path / "data")
    settings = json.dumps({"dataset": "imagenet", "model": "resnet18", "epochs": 1, "device": "cpu"})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAMPA_DATA": str(root)}
    with open(log, "w") as handle:
        proc = subprocess.run(
            [sys.executable, "-m", "sampa.jobs", "train", "--out", str(out), "--", "--settings", settings],
            stdout=handle, stderr=handle, env=env, timeout=300,
        )  # fmt: skip
    assert proc.returncode == 0, log.read_text()
    record = json.loads((out / jobs.OUTCOME).read_text())
    assert record["status"] == "failed" and "no images" in record["reason"]
    assert sorted(p.name for p in out.iterdir()) == [jobs.OUTCOME]
    assert jobs.forget_failures([out], []) == 1 and list(out.iterdir()) == []


def test_a_two_device_run_whose_data_fails_leaves_no_run_directory(tmp_path, capsys):
    out = tmp_path / "r"
    args = imagenet_args(empty_imagenet(tmp_path / "data"), out, "--devices", "2", "--optimizer", "sgd")
    assert cli.main(args) == 1
    assert "no images" in capsys.readouterr().err
    assert not out.exists()
