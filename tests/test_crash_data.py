"""Crash consistency outside the epoch loop: a run that cannot start (its data or weights fail) leaves no
run directory, whichever way it is started; a killed or failed data preparation is redone by the next
call, never read half-written."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from problems import tiny_run
from test_data import make_fake_cifar

from sampa import cli, io, jobs
from sampa.data import cifar
from sampa.data.cifar import DataUnavailableError, ensure_extracted, read_cifar
from sampa.data.imagefolder import ensure_toy_imagefolder
from sampa.faults import ENV_VAR
from sampa.paths import TOY_IMAGEFOLDER
from sampa.rundir import RunError
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


def test_half_downloaded_bert_weights_are_one_line_naming_them_and_no_run_directory(tmp_path, capsys):
    pytest.importorskip("transformers", reason="BERT needs the nlp extra")
    root, out = tmp_path / "data", tmp_path / "r"
    cola = root / "glue" / "CoLA"
    cola.mkdir(parents=True)
    rows = "".join(f"gj04\t{i % 2}\t\tsentence number {i} .\n" for i in range(8))
    for split in ("train", "dev"):
        (cola / f"{split}.tsv").write_text(rows)
    weights = root / "weights" / "bert-base-uncased"
    weights.mkdir(parents=True)
    (weights / "config.json").write_text("{}")  # the first file of a download, the rest never came
    args = ["train", "--dataset", "glue-cola", "--model", "bert-base", "--epochs", "1", "--device", "cpu",
            "--data-root", str(root), "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be loaded" in err and f"delete {weights} and download" in err
    assert not out.exists()


def test_a_truncated_vit_weights_file_is_one_line_naming_it_and_no_run_directory(tmp_path, capsys):
    pytest.importorskip("timm", reason="ViT needs the vision extra")
    root, out = tmp_path / "data", tmp_path / "r"
    weights = root / "weights" / "vit-b16-imagenet21k" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b'\x40\x00\x00\x00\x00\x00\x00\x00{"__metadata__": ')  # cut off in its header
    args = ["train", "--dataset", "synthetic", "--model", "vit-b16", "--epochs", "1", "--device", "cpu",
            "--data-root", str(root), "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"delete {weights} and download it again" in err
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


def test_a_new_run_whose_first_write_fails_leaves_no_run_directory(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(RunError, match=r"r/config.json: No space left on device$"):
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


# ----------------------------------------------------------------------------------------------
# Data preparation killed or failed midway: the next call redoes it

_DRIVER = """
import pickle, sys
from pathlib import Path
from sampa.data import cifar, imagefolder
root, source = Path(sys.argv[1]), sys.argv[2]
if source == "toy":
    imagefolder.ensure_toy_imagefolder(root)
else:
    src = pickle.loads(Path(source).read_bytes())
    cifar.CIFAR_SOURCES["cifar10"] = src
    cifar.ensure_extracted("cifar10", root, download=False)
"""


def killed_preparation(root: Path, source: str, point: str) -> int:
    """Prepare the data in a child process that SIGKILLs itself at ``point``; its exit status."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), ENV_VAR: point}
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(root), source], env=env, timeout=300)
    return proc.returncode


def temporary_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".tmp"))


def assert_reads_the_archive(root: Path, fake) -> None:
    """The folder holds exactly the archive's images and labels."""
    (train_x, train_y), (test_x, test_y) = read_cifar("cifar10", root, download=False)
    for images, labels, data, expected in (
        (train_x, train_y, fake.train_data, fake.train_labels),
        (test_x, test_y, fake.test_data, fake.test_labels),
    ):
        np.testing.assert_array_equal(images.reshape(len(images), -1).numpy(), data)
        np.testing.assert_array_equal(labels.numpy(), expected)


def test_a_killed_cifar_extraction_is_redone_by_the_data_step(tmp_path, monkeypatch):
    root = tmp_path / "data"
    fake = make_fake_cifar(root, "cifar10", monkeypatch)
    (tmp_path / "source.pkl").write_bytes(pickle.dumps(fake.source))
    assert killed_preparation(root, str(tmp_path / "source.pkl"), "data:cifar10") == -signal.SIGKILL
    assert not (root / fake.source.folder).exists()  # every file extracted, none where a reader looks
    assert len(temporary_folders(root)) == 1
    record = jobs.prepare_data("cifar10", str(root))
    assert record["status"] == jobs.DATA_READY, record
    assert temporary_folders(root) == []
    assert_reads_the_archive(root, fake)


def test_a_folder_half_extracted_beside_its_archive_is_extracted_again(tmp_path, monkeypatch):
    root = tmp_path / "data"
    fake = make_fake_cifar(root, "cifar10", monkeypatch)
    folder = ensure_extracted("cifar10", root, download=False)
    last = folder / fake.source.test_files[-1][0]
    last.write_bytes(last.read_bytes()[:100])  # an extraction in place killed in its last file
    assert ensure_extracted("cifar10", root, download=False) == folder
    assert temporary_folders(root) == []
    assert_reads_the_archive(root, fake)


def test_a_damaged_folder_without_its_archive_is_one_line_naming_it(tmp_path, monkeypatch):
    root = tmp_path / "data"
    fake = make_fake_cifar(root, "cifar10", monkeypatch)
    folder = ensure_extracted("cifar10", root, download=False)
    fake.archive.unlink()
    (folder / fake.source.train_files[0][0]).write_bytes(b"")
    with pytest.raises(cifar.ChecksumError, match=f"delete {folder} and put a fresh") as err:
        ensure_extracted("cifar10", root, download=False)
    assert "\n" not in str(err.value)


def test_a_download_cut_off_midway_leaves_no_half_archive(tmp_path, monkeypatch):
    mirror = make_fake_cifar(tmp_path / "mirror", "cifar10", monkeypatch)
    blob = mirror.archive.read_bytes()

    def cut_off(url: str, root: str, md5: str | None = None) -> None:
        (Path(root) / mirror.source.archive).write_bytes(blob[: len(blob) // 2])
        raise OSError("Connection reset by peer")

    def whole(url: str, root: str, md5: str | None = None) -> None:
        (Path(root) / mirror.source.archive).write_bytes(blob)
        cifar.safe_extract(Path(root) / mirror.source.archive, Path(root), mirror.source.folder)

    root = tmp_path / "data"
    monkeypatch.setattr(cifar, "download_and_extract_archive", cut_off)
    with pytest.raises(DataUnavailableError, match="download failed: Connection reset"):
        ensure_extracted("cifar10", root, download=True)
    assert sorted(p.name for p in root.iterdir()) == [".cifar10.lock"]
    monkeypatch.setattr(cifar, "download_and_extract_archive", whole)
    assert ensure_extracted("cifar10", root, download=True) == root / mirror.source.folder
    assert (root / mirror.source.archive).read_bytes() == blob  # kept, as an extraction finds it
    assert temporary_folders(root) == []
    assert_reads_the_archive(root, mirror)


def test_a_cut_off_glue_parquet_file_is_one_line_naming_it(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow", reason="parquet needs the nlp extra")
    from sampa.data.glue import read_glue

    folder = tmp_path / "glue" / "cola"
    folder.mkdir(parents=True)
    whole = folder / "train-00000-of-00001.parquet"
    pd.DataFrame({"sentence": [f"sentence {i} ." for i in range(50)], "label": [i % 2 for i in range(50)],
                  "idx": list(range(50))}).to_parquet(whole)  # fmt: skip
    assert len(read_glue("cola", "train", tmp_path).labels) == 50
    whole.write_bytes(whole.read_bytes()[:-100])  # the hub download cut off before its end
    cause = f"{whole} cannot be read .+ delete it and download"
    with pytest.raises(DataUnavailableError, match=cause) as err:
        read_glue("cola", "train", tmp_path)
    assert "\n" not in str(err.value)


def test_a_killed_toy_imagefolder_generation_is_redone_and_its_leftover_removed(tmp_path):
    point = f"data:{TOY_IMAGEFOLDER}"
    assert killed_preparation(tmp_path, "toy", point) == -signal.SIGKILL
    assert not (tmp_path / TOY_IMAGEFOLDER).exists()
    assert len(temporary_folders(tmp_path)) == 1
    folder = ensure_toy_imagefolder(tmp_path)
    assert len(list(folder.glob("train/*/*.JPEG"))) == 240 and (folder / "GENERATED.txt").is_file()
    assert temporary_folders(tmp_path) == []
