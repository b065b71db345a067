"""The generated toy ImageFolder (``imagefolder-toy``): written once, atomically, in ImageNet's layout
but never at ImageNet's place, and read by the ImageNet loading code."""

from __future__ import annotations

import json

import pytest
import torch

from sampa import cli, extras, jobs, requirements
from sampa.config import RunConfig
from sampa.data import imagefolder, imagenet
from sampa.data.imagefolder import TOY_CROP, TOY_PER_CLASS, ensure_toy_imagefolder, toy_classes
from sampa.data.sources import TRAIN_SIZES, ImageNetSource, load_source
from sampa.paths import TOY_IMAGEFOLDER, generated_data
from sampa.train import train


def test_toy_folder_is_generated_beside_imagenet_never_as_it(tmp_path):
    folder = ensure_toy_imagefolder(tmp_path)
    assert folder == tmp_path / "imagefolder-toy" and not (tmp_path / "imagenet").exists()
    assert "NOT ImageNet" in (folder / imagefolder.NOTE).read_text()
    for split, count in TOY_PER_CLASS.items():
        assert sorted(d.name for d in (folder / split).iterdir()) == toy_classes()
        assert {len(list(d.glob("*.JPEG"))) for d in (folder / split).iterdir()} == {count}
    assert generated_data(TOY_IMAGEFOLDER) and not generated_data("imagenet")  # no verdict vs the paper


def test_toy_folder_loads_through_the_imagenet_loader(tmp_path, monkeypatch):
    decoded: list[str] = []
    real = imagenet.decode
    monkeypatch.setattr(imagenet, "decode", lambda path: decoded.append(path) or real(path))
    source = load_source(TOY_IMAGEFOLDER, root=tmp_path, workers=0)
    assert isinstance(source, ImageNetSource) and source.num_classes == 10
    assert source.train_size == TRAIN_SIZES[TOY_IMAGEFOLDER] == 10 * TOY_PER_CLASS["train"]
    assert len(source.data.val) == 10 * TOY_PER_CLASS["val"]
    images, labels, indices = next(source.train_batches(16, seed=0, epoch=0))
    assert images.shape == (16, 3, TOY_CROP, TOY_CROP) and images.dtype == torch.float32
    assert decoded == [source.data.train.samples[i][0] for i in indices.tolist()]  # JPEGs decoded
    assert torch.equal(labels, torch.tensor([source.data.train.samples[i][1] for i in indices.tolist()]))
    val_images, _, _ = next(source.eval_batches(100))
    assert val_images.shape == (100, 3, TOY_CROP, TOY_CROP)


def test_an_existing_folder_is_reused_not_regenerated(tmp_path, monkeypatch):
    folder = ensure_toy_imagefolder(tmp_path)
    monkeypatch.setattr(imagefolder, "write_image_folder", lambda *a, **kw: pytest.fail("regenerated"))
    assert ensure_toy_imagefolder(tmp_path) == folder


def test_an_interrupted_generation_leaves_no_folder_that_looks_complete(tmp_path, monkeypatch):
    real = imagefolder.write_image_folder

    def interrupted(folder, classes, per_class, **kw):
        real(folder, classes[:3], per_class, **kw)  # some classes written, then the job is killed
        raise KeyboardInterrupt

    monkeypatch.setattr(imagefolder, "write_image_folder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_toy_imagefolder(tmp_path)
    assert not (tmp_path / TOY_IMAGEFOLDER).exists()
    assert [p.name for p in tmp_path.iterdir()] == [f".{TOY_IMAGEFOLDER}.lock"]  # no partial folder left
    monkeypatch.setattr(imagefolder, "write_image_folder", real)
    assert len(list(ensure_toy_imagefolder(tmp_path).glob("train/*"))) == 10


def test_the_data_step_generates_it_and_records_ready(tmp_path):
    record = tmp_path / "records" / f"{TOY_IMAGEFOLDER}.json"
    root = tmp_path / "data"
    assert jobs.main(["prepare-data", TOY_IMAGEFOLDER, "--record", str(record), "--root", str(root)]) == 0
    data = json.loads(record.read_text())
    assert data == {"status": jobs.DATA_READY, "folder": str((root / TOY_IMAGEFOLDER).resolve())}
    assert len(list((root / TOY_IMAGEFOLDER).glob("val/*/*.JPEG"))) == 10 * TOY_PER_CLASS["val"]


def test_it_needs_no_data_folder_and_no_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(extras, "available", lambda extra: False)
    assert requirements.missing(TOY_IMAGEFOLDER, "tinycnn", tmp_path / "empty") == []


def test_a_data_root_it_cannot_write_makes_its_runs_need_data(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")  # the data root is a file: nothing can be written under it
    record = jobs.prepare_data(TOY_IMAGEFOLDER, str(blocker / "data"))
    assert record["status"] == jobs.NEEDS_DATA and str(blocker) in record["reason"]


def toy_run(tmp_path) -> RunConfig:
    return RunConfig(model="tinycnn", dataset=TOY_IMAGEFOLDER, optimizer="sgd", epochs=2, batch_size=32,
                     lr=0.05, data_root=str(tmp_path / "data"), device="cpu", threads=1,
                     num_workers=1)  # fmt: skip


def train_command(cfg: RunConfig, out) -> int:
    settings = json.dumps({k: v for k, v in cfg.to_dict().items() if k != "data_root"})
    return cli.main(["train", "--settings", settings, "--data-root", cfg.data_root, "--out", str(out)])


def test_a_cut_off_jpeg_ends_the_run_in_one_line_and_the_replaced_file_resumes_it(tmp_path, capsys):
    cfg = toy_run(tmp_path)
    bad = ensure_toy_imagefolder(cfg.data_root) / "train" / "class03" / "class03_5.JPEG"
    intact = bad.read_bytes()
    bad.write_bytes(intact[: len(intact) // 2])  # an interrupted copy
    new = tmp_path / "new"
    assert train_command(cfg, new) == 1  # a run error (decoding workers), as a damaged run file is
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sampa train: error: {bad} cannot be decoded"), err
    assert "replace it" in err and not new.exists()  # failed in its first epoch: as if never started

    run = tmp_path / "run"
    bad.write_bytes(intact)
    train(cfg, run, stop_after=1, log_progress=False)
    after_one = sorted(p.name for p in run.iterdir())
    bad.write_bytes(intact[: len(intact) // 2])
    assert train_command(cfg, run) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"sampa train: error: {bad} cannot be decoded")
    assert "Traceback" not in err and "resuming after epoch 1/2" in err
    assert sorted(p.name for p in run.iterdir()) == after_one and "metrics.json" not in after_one
    assert len((run / "log.jsonl").read_text().splitlines()) == 1  # epoch 1 recorded, epoch 2 not

    bad.write_bytes(intact)  # replaced: the same command resumes and finishes
    assert train_command(cfg, run) == 0
    assert "resuming after epoch 1/2" in capsys.readouterr().err
    assert len((run / "log.jsonl").read_text().splitlines()) == 2 and (run / "metrics.json").is_file()
