"""ImageNet-1K pipeline on a tiny generated ImageFolder (real JPEGs, :mod:`sampa.data.imagefolder`), top-k
accuracy and ResNet-50."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.io import decode_image

from sampa.backends.pair import shard_start
from sampa.data import imagenet
from sampa.data.cifar import DataUnavailableError
from sampa.data.imagefolder import write_image_folder
from sampa.data.imagenet import (
    MEAN,
    STD,
    UnreadableImageError,
    eval_transform,
    load_imagenet,
    loader_workers,
    normalise,
)
from sampa.metrics.scores import evaluate_topk, topk_correct
from sampa.models.resnet50 import resnet50

CLASSES = ("n01440764", "n01443537", "n01484850")


def _write_folder(root: Path, per_class: dict[str, int], *, grey_first: bool = False) -> None:
    write_image_folder(root / "imagenet", CLASSES, per_class, grey_first=grey_first)


@pytest.fixture
def tiny_imagenet(tmp_path: Path) -> Path:
    _write_folder(tmp_path, {"train": 4, "val": 2}, grey_first=True)
    return tmp_path


def test_missing_data_names_what_to_put_where(tmp_path):
    with pytest.raises(
        DataUnavailableError, match=r"put the ImageFolder layout at .*imagenet/train/<class>"
    ) as err:
        load_imagenet(tmp_path)
    assert "\n" not in str(err.value)


def test_unsorted_validation_images_are_a_one_line_error(tmp_path):
    _write_folder(tmp_path, {"train": 1, "val": 1})
    val = tmp_path / "imagenet" / "val"
    for image in list(val.glob("*/*.JPEG")):
        image.rename(val / image.name)  # as ILSVRC2012's validation archive unpacks
    with pytest.raises(
        DataUnavailableError, match=r"val holds 3 images directly, not in class folders: sort"
    ):
        load_imagenet(tmp_path, workers=0)


def test_classes_labels_and_shapes(tiny_imagenet):
    data = load_imagenet(tiny_imagenet, workers=0, crop=32)
    assert data.classes == list(CLASSES) and data.num_classes == 3
    assert len(data.train) == 12 and len(data.val) == 6
    batches = list(data.train_batches(5, seed=0, epoch=0))
    assert [b[0].shape for b in batches] == [(5, 3, 32, 32), (5, 3, 32, 32), (2, 3, 32, 32)]
    assert all(b[0].dtype == torch.float32 for b in batches)
    indices = torch.cat([b[2] for b in batches])
    assert sorted(indices.tolist()) == list(range(12))  # every sample once
    labels = torch.cat([b[1] for b in batches])
    assert torch.equal(labels, torch.tensor([data.train.samples[i][1] for i in indices.tolist()]))


def test_epoch_is_deterministic_whatever_the_workers(tiny_imagenet):
    one = load_imagenet(tiny_imagenet, workers=0, crop=32)
    two = load_imagenet(tiny_imagenet, workers=2, crop=32)
    a = list(one.train_batches(4, seed=3, epoch=1))
    b = list(two.train_batches(4, seed=3, epoch=1))
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[2], y[2]) for x, y in zip(a, b, strict=True))
    other = torch.cat([x[2] for x in one.train_batches(4, seed=3, epoch=2)])
    assert not torch.equal(torch.cat([x[2] for x in a]), other)  # a new order each epoch


def rank_rows(parts: int, index: int):
    """Part ``index`` of ``parts`` near-equal consecutive parts (as a data-parallel backend shards)."""
    return lambda size: slice(shard_start(size, parts, index), shard_start(size, parts, index + 1))


def _decoded_indices(monkeypatch, data) -> list[int]:
    """The train indices ``decode`` is called with from now on (workers=0: in this process)."""
    where = {path: i for i, (path, _) in enumerate(data.train.samples)}
    decoded: list[int] = []
    real = imagenet.decode
    monkeypatch.setattr(imagenet, "decode", lambda path: decoded.append(where[path]) or real(path))
    return decoded


@pytest.mark.parametrize("parts", [2, 3])
def test_each_rank_decodes_only_its_rows_and_they_equal_the_one_process_rows(
    tiny_imagenet, monkeypatch, parts
):
    """12 images in batches of 5 (5, 5, 2): with 3 ranks the last batch leaves rank 2 nothing to decode."""
    data = load_imagenet(tiny_imagenet, workers=0, crop=32)
    whole = list(data.train_batches(5, seed=3, epoch=1))
    seen = []
    for index in range(parts):
        decoded = _decoded_indices(monkeypatch, data)
        rows = rank_rows(parts, index)
        batches = list(data.train_batches(5, seed=3, epoch=1, rows=rows))
        assert decoded == [i for b in whole for i in b[2][rows(len(b[2]))].tolist()]  # its rows, once
        for (images, labels, indices), (ref_images, ref_labels, ref_indices) in zip(
            batches, whole, strict=True
        ):
            mine = rows(len(indices))
            assert torch.equal(labels, ref_labels) and torch.equal(indices, ref_indices)  # whole batch
            assert torch.equal(images[mine], ref_images[mine])  # bit for bit, augmentation included
            others = torch.ones(len(indices), dtype=torch.bool)
            others[mine] = False
            assert images[others].isnan().all()  # never decoded: NaN, not plausible pixels
        seen += decoded
    assert sorted(seen) == list(range(12))  # the ranks together decode every image once


def test_rank_rows_with_workers_equal_the_one_process_rows(tiny_imagenet):
    data = load_imagenet(tiny_imagenet, workers=2, crop=32)
    whole = list(load_imagenet(tiny_imagenet, workers=0, crop=32).train_batches(4, seed=0, epoch=2))
    rows = rank_rows(2, 1)
    for (images, _, indices), (ref_images, _, ref_indices) in zip(
        data.train_batches(4, seed=0, epoch=2, rows=rows), whole, strict=True
    ):
        assert torch.equal(indices, ref_indices)
        assert torch.equal(images[rows(4)], ref_images[rows(4)]) and images[: rows(4).start].isnan().all()


def test_loader_workers_default_to_at_most_eight_cpus(monkeypatch):
    for cpus, want in ((64, 8), (8, 8), (2, 2), (None, 1)):  # os.cpu_count() may be None
        monkeypatch.setattr("os.cpu_count", lambda cpus=cpus: cpus)
        assert loader_workers(None) == want
    assert loader_workers(0) == 0 and loader_workers(12) == 12  # an explicit count is taken as it is
    with pytest.raises(ValueError, match=r"num_workers must be >= 0 or None \(got -1\)"):
        loader_workers(-1)


def test_training_rng_is_not_disturbed(tiny_imagenet):
    data = load_imagenet(tiny_imagenet, workers=0, crop=32)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    list(data.train_batches(4, seed=0, epoch=0))
    assert torch.equal(torch.rand(3), expected)


def test_eval_batches_are_resized_centre_crops(tiny_imagenet):
    data = load_imagenet(tiny_imagenet, workers=0, crop=32)
    images, labels, _ = next(data.eval_batches(6))
    path, label = data.val.samples[0]
    raw = decode_image(path)
    assert raw.shape[0] == 1 and images.shape == (6, 3, 32, 32)  # greyscale file, RGB batch
    expected = normalise(eval_transform(32, round(32 * 256 / 224))(raw.expand(3, -1, -1))[None])
    assert torch.allclose(images[0], expected[0]) and labels[0] == label


def truncate(path: Path) -> None:
    """Cut ``path`` off halfway, as an interrupted copy or download leaves it."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_cut_off_jpeg_is_one_line_naming_it_whatever_the_workers(tiny_imagenet, workers, split):
    data = load_imagenet(tiny_imagenet, workers=workers, crop=32)
    files = data.train if split == "train" else data.val
    bad = Path(files.samples[len(files) - 1][0])
    truncate(bad)
    with pytest.raises(UnreadableImageError, match=f"^{bad} cannot be decoded .+ replace it") as err:
        if split == "train":
            list(data.train_batches(4, seed=0, epoch=0))
        else:
            list(data.eval_batches(4))
    assert "\n" not in str(err.value) and "truncated" in str(err.value)  # the decoder's reason
    assert ".cpp" not in str(err.value)  # not torchvision's source location


def test_max_classes_keeps_a_subset(tiny_imagenet):
    data = load_imagenet(tiny_imagenet, workers=0, max_classes=2, crop=32)
    assert data.classes == list(CLASSES[:2]) and len(data.train) == 8 and len(data.val) == 4


def test_normalise_uses_imagenet_statistics():
    pixel = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    out = normalise(pixel).flatten()
    expected = [(v / 255 - m) / s for v, m, s in zip((0, 128, 255), MEAN, STD, strict=True)]
    assert out.tolist() == pytest.approx(expected, rel=1e-5)


def test_topk_correct_on_a_small_example():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    targets = torch.tensor([2, 0, 0])
    counts = topk_correct(logits, targets, ks=(1, 2, 3))
    assert {k: int(v) for k, v in counts.items()} == {1: 1, 2: 2, 3: 3}
    with pytest.raises(ValueError, match="1 <= k <= 3"):
        topk_correct(logits, targets, ks=(5,))


def test_evaluate_topk_reports_top1_and_top5():
    model = torch.nn.Linear(6, 6, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(6))
    inputs = torch.eye(6)[[0, 1, 2, 3]] + torch.tensor([0, 0, 0, 0, 0, 0.5])
    targets = torch.tensor([0, 1, 5, 5])  # rows 2, 3 are wrong at top-1, right at top-2
    out = evaluate_topk(model, [(inputs, targets, torch.arange(4))], ks=(1, 5))
    assert out["acc"] == 0.5 and out["top5_acc"] == 1.0 and out["loss"] > 0


def test_resnet50_is_torchvisions_without_in_place_ops():
    model = resnet50(num_classes=7)
    assert sum(p.numel() for p in model.parameters()) == 23_522_375  # 25,557,032 - 2048*993 - 993
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
