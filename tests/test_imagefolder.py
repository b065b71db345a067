"""The generated toy ImageFolder (``imagefolder-toy``): written once, atomically, in ImageNet's layout
but never at ImageNet's place, and read by the ImageNet loading code."""

from __future__ import annotations

import json

import pytest
import torch

from sampa import extras, jobs, requirements
from sampa.data import imagefolder, imagenet
from sampa.data.imagefolder import TOY_CROP, TOY_PER_CLASS, ensure_toy_imagefolder, toy_classes
from sampa.data.sources import TRAIN_SIZES, ImageNetSource, load_source
from sampa.paths import TOY_IMAGEFOLDER, generated_data


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
