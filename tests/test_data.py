"""Tests for sampa.data: CIFAR archives (faked in the real on-disk format), splits, noise, batching."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sampa.data as D
from sampa.data import cifar
from sampa.data.dataset import corrupt_labels, split_indices
from sampa.data.synthetic import make_synthetic

# ---------------------------------------------------------------------------------------------------------
# Fake CIFAR archives in the official format
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FakeCifar:
    archive: Path
    source: D.CifarSource
    train_data: np.ndarray  # [N, 3072] uint8, as stored in the pickles
    train_labels: np.ndarray
    test_data: np.ndarray
    test_labels: np.ndarray


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _decode(data: np.ndarray) -> np.ndarray:
    """Independent decoding of CIFAR rows: 3 planes (R, G, B) of 1024 bytes, each 32 rows of 32 pixels."""
    planes = [data[:, c * 1024 : (c + 1) * 1024].reshape(-1, 32, 32) for c in range(3)]
    return np.stack(planes, axis=1)


def _batch(name: str, data: np.ndarray, labels: np.ndarray) -> dict:
    batch = {
        b"batch_label": b"fake batch",
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(data))],
    }
    if name == "cifar10":
        batch[b"labels"] = [int(v) for v in labels]
    else:
        batch[b"fine_labels"] = [int(v) for v in labels]
        batch[b"coarse_labels"] = [int(v) // 5 for v in labels]
    return batch


def _file_table(name: str, n_train: int, n_test: int, rng: np.random.Generator) -> tuple[dict, FakeCifar]:
    """Pickled file contents (name -> bytes) of a fake CIFAR folder, and the expected arrays."""
    classes = 10 if name == "cifar10" else 100
    tr_x = rng.integers(0, 256, (n_train, 3072), dtype=np.uint8)
    te_x = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    tr_y, te_y = rng.integers(0, classes, n_train), rng.integers(0, classes, n_test)
    src = D.CIFAR_SOURCES[name]
    names = [f for f, _ in src.train_files]
    files = {
        f: pickle.dumps(_batch(name, x, y))
        for f, x, y in zip(
            names, np.array_split(tr_x, len(names)), np.array_split(tr_y, len(names)), strict=True
        )
    }
    files[src.test_files[0][0]] = pickle.dumps(_batch(name, te_x, te_y))
    files["batches.meta" if name == "cifar10" else "meta"] = pickle.dumps({b"label_names": []})
    fake = FakeCifar(Path(), src, tr_x, tr_y, te_x, te_y)
    return files, fake


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for arcname, payload in members.items():
            info = tarfile.TarInfo(arcname)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def make_fake_cifar(
    root: Path, name: str, monkeypatch: pytest.MonkeyPatch, n_train: int = 50, n_test: int = 20, seed: int = 0
) -> FakeCifar:
    """Write ``<root>/<archive>.tar.gz`` in the official layout and point the checksum table at it."""
    files, fake = _file_table(name, n_train, n_test, np.random.default_rng(seed))
    src = fake.source
    blob = _tar_gz({f"{src.folder}/{f}": payload for f, payload in files.items()})
    root.mkdir(parents=True, exist_ok=True)
    archive = root / src.archive
    archive.write_bytes(blob)
    table = {f: _md5(payload) for f, payload in files.items()}
    source = dataclasses.replace(
        src,
        archive_md5=_md5(blob),
        train_files=tuple((f, table[f]) for f, _ in src.train_files),
        test_files=tuple((f, table[f]) for f, _ in src.test_files),
    )
    monkeypatch.setitem(D.CIFAR_SOURCES, name, source)
    return dataclasses.replace(fake, archive=archive, source=source)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every test is offline: the download function records its calls and raises OSError."""
    calls: list = []

    def offline(*args: object, **kwargs: object) -> None:
        calls.append((args, kwargs))
        raise OSError("[Errno -3] Temporary failure in name resolution\n(offline test)")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    return calls


def _row_index(originals: np.ndarray | torch.Tensor) -> dict[bytes, int]:
    rows = np.asarray(originals).reshape(len(originals), -1)
    index = {row.tobytes(): i for i, row in enumerate(rows)}
    assert len(index) == len(rows), "test data must have unique images"
    return index


def _source_ids(split: D.ImageSplit, index: dict[bytes, int]) -> list[int]:
    rows = split.images.cpu().numpy().reshape(len(split), -1)
    return [index[row.tobytes()] for row in rows]


def _np_stats(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = images.numpy().astype(np.float64) / 255.0
    return x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))


# ---------------------------------------------------------------------------------------------------------
# CIFAR reading
# ---------------------------------------------------------------------------------------------------------


def test_cifar10_archive_decodes_exact_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = make_fake_cifar(tmp_path / "data", "cifar10", monkeypatch)
    ds = D.load_dataset("cifar10", seed=0, root=tmp_path / "data")
    assert (ds.name, ds.num_classes, ds.synthetic) == ("cifar10", 10, False)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (45, 5, 20)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    np.testing.assert_array_equal(ds.test.images.numpy(), _decode(fake.test_data))
    np.testing.assert_array_equal(ds.test.labels.numpy(), fake.test_labels)
    assert ds.test.images[3, 1, 2, 7].item() == fake.test_data[3, 1024 + 2 * 32 + 7]
    index = _row_index(_decode(fake.train_data))
    ids = _source_ids(ds.train, index) + _source_ids(ds.val, index)
    assert sorted(ids) == list(range(50))
    np.testing.assert_array_equal(torch.cat([ds.train.labels, ds.val.labels]).numpy(), fake.train_labels[ids])
    mean, std = _np_stats(ds.train.images)
    np.testing.assert_allclose(ds.mean, mean, rtol=1e-9)
    np.testing.assert_allclose(ds.std, std, rtol=1e-9)
    assert (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_5").is_file()


def test_cifar100_fine_labels_and_own_statistics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = make_fake_cifar(tmp_path, "cifar100", monkeypatch, seed=1)
    ds = D.load_dataset("cifar100", seed=0, root=tmp_path)
    assert ds.num_classes == 100 and (len(ds.train), len(ds.val)) == (45, 5)
    np.testing.assert_array_equal(ds.test.images.numpy(), _decode(fake.test_data))
    np.testing.assert_array_equal(ds.test.labels.numpy(), fake.test_labels)  # fine, not coarse labels
    mean, std = _np_stats(ds.train.images)
    np.testing.assert_allclose(ds.mean, mean, rtol=1e-9)
    np.testing.assert_allclose(ds.std, std, rtol=1e-9)
    cifar10_stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert not np.allclose(ds.mean, cifar10_stats[0], atol=1e-3)


def test_extracted_folder_is_used_and_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = make_fake_cifar(tmp_path, "cifar10", monkeypatch)
    first = D.load_dataset("cifar10", seed=0, root=tmp_path)
    fake.archive.unlink()
    again = D.load_dataset("cifar10", seed=0, root=tmp_path, download=False)
    assert torch.equal(first.train.images, again.train.images)
    assert torch.equal(first.test.labels, again.test.labels)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:-1] + b"!")
    with pytest.raises(D.ChecksumError, match="data_batch_2") as err:
        D.load_dataset("cifar10", seed=0, root=tmp_path)
    assert "\n" not in str(err.value) and "expected" in str(err.value)


def test_corrupted_archive_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = make_fake_cifar(tmp_path, "cifar10", monkeypatch)
    actual = fake.source.archive_md5
    monkeypatch.setitem(D.CIFAR_SOURCES, "cifar10", dataclasses.replace(fake.source, archive_md5="0" * 32))
    with pytest.raises(D.ChecksumError) as err:
        D.load_dataset("cifar10", seed=0, root=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(fake.archive) in msg and "0" * 32 in msg and actual in msg
    assert not (tmp_path / "cifar-10-batches-py").exists()  # nothing extracted before verification


def test_unsafe_archive_member_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = D.CIFAR_SOURCES["cifar10"]
    blob = _tar_gz({f"{src.folder}/../../evil.txt": b"x"})
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / src.archive).write_bytes(blob)
    monkeypatch.setitem(D.CIFAR_SOURCES, "cifar10", dataclasses.replace(src, archive_md5=_md5(blob)))
    with pytest.raises(D.ChecksumError, match="unsafe member"):
        D.load_dataset("cifar10", seed=0, root=tmp_path / "root")
    assert not (tmp_path / "evil.txt").exists()


def test_missing_data_offline_raises_one_line_error(tmp_path: Path, no_network: list) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(D.DataUnavailableError) as err:
        D.load_dataset("cifar100", seed=0, root=root)
    msg = str(err.value)
    assert "\n" not in msg and str(root) in msg and "SAMPA_DATA" in msg and "configs/smoke.yaml" in msg
    assert D.CIFAR_SOURCES["cifar100"].url in msg and "offline test" in msg
    assert len(no_network) == 1
    url, where = no_network[0][0]
    assert url == D.CIFAR_SOURCES["cifar100"].url
    assert Path(where).parent == root and Path(where).name.startswith(".cifar-100-python.")  # temporary
    assert not Path(where).exists()  # removed with what the failed download left there
    assert no_network[0][1]["md5"] == D.CIFAR_SOURCES["cifar100"].archive_md5
    with pytest.raises(D.DataUnavailableError, match="download=False"):
        D.load_dataset("cifar100", seed=0, root=root, download=False)
    assert len(no_network) == 1


def test_download_path_uses_downloaded_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = make_fake_cifar(tmp_path / "mirror", "cifar10", monkeypatch)

    def fake_download(url: str, root: str, md5: str | None = None) -> None:
        assert md5 == fake.source.archive_md5
        with tarfile.open(fake.archive) as tar:
            tar.extractall(root, filter="data")

    monkeypatch.setattr(cifar, "download_and_extract_archive", fake_download)
    ds = D.load_dataset("cifar10", seed=0, root=tmp_path / "fresh")
    np.testing.assert_array_equal(ds.test.labels.numpy(), fake.test_labels)


def test_root_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = make_fake_cifar(tmp_path / "env", "cifar10", monkeypatch)
    monkeypatch.setenv("SAMPA_DATA", str(tmp_path / "env"))
    ds = D.load_dataset("cifar10", seed=0)
    np.testing.assert_array_equal(ds.test.labels.numpy(), fake.test_labels)
    assert cifar.resolve_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert cifar.resolve_root() == tmp_path / "env"
    monkeypatch.delenv("SAMPA_DATA")
    monkeypatch.chdir(tmp_path)
    assert cifar.resolve_root().resolve() == (tmp_path / "data").resolve()


# ---------------------------------------------------------------------------------------------------------
# Split, label noise, synthetic data
# ---------------------------------------------------------------------------------------------------------


def _synthetic(seed: int, **kw: object) -> D.Dataset:
    return D.load_dataset("synthetic", seed=seed, synthetic_train_size=1000, synthetic_test_size=200, **kw)


def test_split_is_seeded_disjoint_and_covering() -> None:
    index = _row_index(make_synthetic(10, 1000, "train")[0])
    a, a2, b = _synthetic(0), _synthetic(0), _synthetic(1)
    assert torch.equal(a.train.images, a2.train.images) and torch.equal(a.val.labels, a2.val.labels)
    train_ids, val_ids = _source_ids(a.train, index), _source_ids(a.val, index)
    assert len(val_ids) == 100 and len(train_ids) == 900
    assert not set(train_ids) & set(val_ids) and sorted(train_ids + val_ids) == list(range(1000))
    assert set(_source_ids(b.val, index)) != set(val_ids)
    tr, va = split_indices(1000, 0.1, seed=5)
    assert torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(1000))


def test_label_noise_is_exact_seeded_and_changes_class() -> None:
    labels = torch.arange(10_000) % 10
    noisy, count = corrupt_labels(labels, 10, 0.3, seed=2)
    changed = noisy != labels
    assert count == 3000 and int(changed.sum()) == 3000
    assert noisy.min() >= 0 and noisy.max() < 10 and torch.equal(labels, torch.arange(10_000) % 10)
    assert torch.equal(noisy, corrupt_labels(labels, 10, 0.3, seed=2)[0])
    assert not torch.equal(noisy, corrupt_labels(labels, 10, 0.3, seed=3)[0])
    targets = torch.bincount(noisy[changed & (labels == 0)], minlength=10)
    assert targets[0] == 0 and targets[1:].min() > 0.5 * targets[1:].float().mean()  # uniform over others
    assert torch.equal(corrupt_labels(labels, 10, 0.0, seed=2)[0], labels)


def test_label_noise_in_dataset_hits_train_and_val_not_test() -> None:
    clean, noisy = _synthetic(3), _synthetic(3, label_noise=0.25)
    assert clean.noisy_train_labels == 0 and noisy.noisy_train_labels == 250 and noisy.label_noise == 0.25
    assert torch.equal(clean.train.images, noisy.train.images)  # the split does not depend on the noise
    diff = torch.cat([clean.train.labels != noisy.train.labels, clean.val.labels != noisy.val.labels])
    assert int(diff.sum()) == 250 and bool((clean.val.labels != noisy.val.labels).any())
    assert torch.equal(clean.test.labels, noisy.test.labels)
    other = _synthetic(4, label_noise=0.25)
    assert other.noisy_train_labels == 250


@pytest.mark.parametrize("rate", [1.0, 1.5, -0.1, float("nan")])
def test_bad_noise_rates_rejected(rate: float) -> None:
    with pytest.raises(ValueError, match="label_noise"):
        _synthetic(0, label_noise=rate)


def test_synthetic_images_independent_of_run_seed() -> None:
    x1, y1 = make_synthetic(10, 300, "train")
    x2, y2 = make_synthetic(10, 300, "train")
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.dtype == torch.uint8
    assert x1.shape == (300, 3, 32, 32) and torch.equal(torch.bincount(y1), torch.full((10,), 30))
    a, b = _synthetic(0), _synthetic(7)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    index = _row_index(make_synthetic(10, 1000, "train")[0])  # the same 1000 images, split differently
    ids_a, ids_b = (_source_ids(ds.train, index) + _source_ids(ds.val, index) for ds in (a, b))
    assert sorted(ids_a) == sorted(ids_b) == list(range(1000)) and ids_a != ids_b
    big = D.load_dataset("synthetic100", seed=0, synthetic_train_size=500, synthetic_test_size=100)
    assert big.num_classes == 100 and big.synthetic and int(big.test.labels.max()) == 99


def _nearest_mean_accuracy(ds: D.Dataset) -> float:
    """Test accuracy of the nearest class mean in raw pixels (a measure of how hard the data are)."""
    x = ds.train.images.flatten(1).float() / 255
    means = torch.stack([x[ds.train.labels == c].mean(0) for c in range(ds.num_classes)])
    pred = torch.cdist(ds.test.images.flatten(1).float() / 255, means).argmin(1)
    return float((pred == ds.test.labels).float().mean())


def test_synthetic_is_learnable_but_not_trivial() -> None:
    acc = _nearest_mean_accuracy(D.load_dataset("synthetic", seed=0))
    assert 0.35 < acc < 0.95, acc


def test_synthetic_difficulty_is_set_by_the_distractor_and_noise_weights() -> None:
    default = make_synthetic(10, 300, "train")
    spelled = make_synthetic(10, 300, "train", distractor=0.8, noise=1.0)
    easy = make_synthetic(10, 300, "train", distractor=0.0, noise=0.15)
    assert torch.equal(default[0], spelled[0]) and torch.equal(default[1], easy[1])  # same labels
    assert not torch.equal(default[0], easy[0])
    hard = _nearest_mean_accuracy(D.load_dataset("synthetic", seed=0))
    smoke = _nearest_mean_accuracy(
        D.load_dataset("synthetic", seed=0, synthetic_distractor=0.0, synthetic_noise=0.15)
    )
    assert smoke > hard + 0.2 and smoke > 0.9, (smoke, hard)  # measured 0.96 against 0.65
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="distractor and noise must be finite and >= 0"):
            make_synthetic(10, 10, "train", noise=bad)


# ---------------------------------------------------------------------------------------------------------
# Batching and augmentation
# ---------------------------------------------------------------------------------------------------------


def _dataset(images: torch.Tensor, stats: tuple | None = None) -> D.Dataset:
    """A dataset whose labels are the sample ids (so batches reveal which samples they hold)."""
    split = D.ImageSplit(images, torch.arange(len(images)))
    mean, std = stats or D.channel_stats(images)
    return D.Dataset("test", 10, split, split, split, mean, std, True, 0.0, 0)


@pytest.fixture(scope="module")
def small() -> D.Dataset:
    return _dataset(make_synthetic(10, 300, "train")[0])


def _epoch(ds: D.Dataset, aug: D.Augment, seed: int = 0, epoch: int = 0, bs: int = 64) -> list:
    return list(D.train_batches(ds, bs, seed=seed, epoch=epoch, augment=aug))


def _manual(ds: D.Dataset, sample: int, dy: int, dx: int, flip: bool, pad: int) -> torch.Tensor:
    """Reference crop with torch.roll and explicit zeroing of the wrapped border, then flip + normalise."""
    img = torch.roll(ds.train.images[sample], shifts=(-dy, -dx), dims=(1, 2)).clone()
    if dy > 0:
        img[:, -dy:] = 0
    elif dy < 0:
        img[:, :-dy] = 0
    if dx > 0:
        img[:, :, -dx:] = 0
    elif dx < 0:
        img[:, :, :-dx] = 0
    if flip:
        img = img.flip(-1)
    return _normalised(ds, img)


def _normalised(ds: D.Dataset, images: torch.Tensor) -> torch.Tensor:
    """(x / 255 - mean) / std in float64, returned as float32; works for [3, H, W] and [N, 3, H, W]."""
    mean, std = torch.tensor(ds.mean).view(3, 1, 1), torch.tensor(ds.std).view(3, 1, 1)
    return ((images.double() / 255 - mean) / std).float()


def test_train_batches_deterministic_per_seed_and_epoch(small: D.Dataset) -> None:
    aug = D.Augment(cutout=8)
    first = _epoch(small, aug, epoch=3)
    torch.manual_seed(1234)  # the global RNG plays no role
    again = _epoch(small, aug, epoch=3)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0][0], _epoch(small, aug, epoch=4)[0][0])
    assert not torch.equal(first[0][0], _epoch(small, aug, seed=1, epoch=3)[0][0])


def test_crop_and_flip_match_manual_computation(small: D.Dataset) -> None:
    aug = D.Augment(crop_padding=4, flip=True)
    batches = _epoch(small, aug, seed=5, epoch=2, bs=64)
    draws = D.draw_epoch(len(small.train), seed=5, epoch=2, augment=aug)
    assert draws.shift.min() == -4 and draws.shift.max() == 4 and 0 < int(draws.flip.sum()) < 300
    for pos in [0, 1, 63, 64, 150, 299]:
        x, y = batches[pos // 64][0][pos % 64], batches[pos // 64][1][pos % 64]
        sample = int(draws.order[pos])
        dy, dx = (int(v) for v in draws.shift[pos])
        assert int(y) == sample
        torch.testing.assert_close(x, _manual(small, sample, dy, dx, bool(draws.flip[pos]), 4))
        padded = F.pad(small.train.images[sample], (4, 4, 4, 4))[:, 4 + dy : 36 + dy, 4 + dx : 36 + dx]
        ref = padded.flip(-1) if draws.flip[pos] else padded
        torch.testing.assert_close(x, _normalised(small, ref))


def test_zero_padding_appears_at_borders() -> None:
    ds = _dataset(torch.full((200, 3, 32, 32), 255, dtype=torch.uint8), stats=((0.5,) * 3, (0.25,) * 3))
    aug = D.Augment(crop_padding=4, flip=False)
    x = torch.cat([b[0] for b in _epoch(ds, aug, seed=9)])
    raw = (x * 0.25 + 0.5) * 255  # back to pixels: 255 inside, 0 in the padding
    draws = D.draw_epoch(200, seed=9, epoch=0, augment=aug)
    rows, cols = torch.arange(32), torch.arange(32)
    for pos in range(200):
        dy, dx = (int(v) for v in draws.shift[pos])
        valid_rows, valid_cols = (rows + dy >= 0) & (rows + dy < 32), (cols + dx >= 0) & (cols + dx < 32)
        inside = valid_rows[:, None] & valid_cols[None, :]
        torch.testing.assert_close(raw[pos], 255.0 * inside.float().expand(3, 32, 32), atol=1e-3, rtol=0)
    assert bool((raw == 0).any())


def test_normalisation_uses_train_split_statistics() -> None:
    ds = _synthetic(0)
    mean, std = _np_stats(ds.train.images)
    np.testing.assert_allclose(ds.mean, mean, rtol=1e-9)
    np.testing.assert_allclose(ds.std, std, rtol=1e-9)
    assert not np.allclose(ds.mean, _np_stats(ds.test.images)[0], rtol=1e-6)
    x = torch.cat([b[0] for b in D.train_batches(ds, 256, seed=0, epoch=0, augment=D.Augment(0, False))])
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)


def test_cutout_zeroes_a_patch_after_normalisation(small: D.Dataset) -> None:
    plain = torch.cat([b[0] for b in _epoch(small, D.Augment(0, False), epoch=1)])
    cut = torch.cat([b[0] for b in _epoch(small, D.Augment(0, False, cutout=8, cutout_prob=1.0), epoch=1)])
    draws = D.draw_epoch(300, seed=0, epoch=1, augment=D.Augment(0, False, cutout=8, cutout_prob=1.0))
    for pos in [0, 17, 299]:
        cy, cx = (int(v) for v in draws.cutout_centre[pos])
        mask = torch.zeros(32, 32, dtype=torch.bool)
        mask[max(cy - 4, 0) : cy + 4, max(cx - 4, 0) : cx + 4] = True
        assert bool((cut[pos][:, mask] == 0).all())
        assert torch.equal(cut[pos][:, ~mask], plain[pos][:, ~mask])
    none = torch.cat([b[0] for b in _epoch(small, D.Augment(0, False, cutout=8, cutout_prob=0.0), epoch=1)])
    assert torch.equal(none, plain)
    half = D.draw_epoch(300, seed=0, epoch=1, augment=D.Augment(cutout=16))
    assert 90 < int(half.cutout_on.sum()) < 210


def test_every_sample_once_and_last_partial_batch_kept(small: D.Dataset) -> None:
    batches = _epoch(small, D.Augment(), bs=128)
    assert [len(y) for _, y in batches] == [128, 128, 44] == [x.shape[0] for x, _ in batches]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(300))
    assert all(
        x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) and y.dtype == torch.int64 for x, y in batches
    )
    assert D.num_batches(300, 128) == 3 and D.num_batches(45_000, 128) == 352 and D.num_batches(0, 8) == 0
    with pytest.raises(ValueError, match="batch_size"):
        D.num_batches(10, 0)


def test_eval_batches_in_order_without_augmentation(small: D.Dataset) -> None:
    batches = list(D.eval_batches(small, "test", batch_size=128))
    assert [len(y) for _, y in batches] == [128, 128, 44]
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.arange(300))
    torch.testing.assert_close(x, _normalised(small, small.test.images))
    with pytest.raises(ValueError, match="train, val, test"):
        next(D.eval_batches(small, "valid"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches(small: D.Dataset) -> None:
    gpu = dataclasses.replace(
        small, train=small.train.to("cuda"), val=small.val.to("cuda"), test=small.test.to("cuda")
    )
    aug = D.Augment(cutout=16)
    for (xc, yc), (xg, yg) in zip(_epoch(small, aug, epoch=2), _epoch(gpu, aug, epoch=2), strict=True):
        assert torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xc, xg.cpu(), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------------------------------------


def test_check_dataset_args() -> None:
    D.check_dataset_args("cifar10", 0.1, 0.0)
    with pytest.raises(ValueError) as err:
        D.check_dataset_args("imagenet", 0.1, 0.0)
    assert "imagenet" in str(err.value) and all(n in str(err.value) for n in D.DATASET_NAMES)
    for frac in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="val_fraction"):
            D.check_dataset_args("synthetic", frac, 0.0)
    for rate in (-0.01, 1.0):
        with pytest.raises(ValueError, match="label_noise"):
            D.check_dataset_args("synthetic", 0.1, rate)


@pytest.mark.parametrize("name", D.DATASET_NAMES)
def test_cutout_is_at_most_the_image_side(name: str) -> None:
    side = D.IMAGE_SIZES[name]
    for ok in (0, 1, 16, side):
        D.check_cutout(name, ok)
    with pytest.raises(ValueError, match=rf"^cutout {side + 1} must be 0 \(off\) or .* 1 to {side} pixels"):
        D.check_cutout(name, side + 1)


@pytest.mark.parametrize("name", ["imagenet", "synthetic-text", "sst2"])
def test_cutout_only_on_in_memory_image_datasets(name: str) -> None:
    D.check_cutout(name, 0)
    with pytest.raises(ValueError, match=rf"^cutout 16 does not apply to dataset '{name}'.*use cutout 0$"):
        D.check_cutout(name, 16)


def test_synthetic_image_size_is_the_images_made() -> None:
    images = make_synthetic(100, 100, "train")[0]
    assert tuple(images.shape[2:]) == (D.IMAGE_SIZES["synthetic"], D.IMAGE_SIZES["synthetic100"])


def test_train_batches_refuse_a_cutout_larger_than_the_images(small: D.Dataset) -> None:
    with pytest.raises(ValueError, match=r"cutout 33 is larger than the 32-pixel images; use 0 to 32"):
        next(iter(D.train_batches(small, 10, seed=0, epoch=0, augment=D.Augment(cutout=33))))


def test_augment_and_split_validation() -> None:
    for kwargs in ({"crop_padding": -1}, {"cutout": -2}, {"cutout_prob": 1.5}):
        with pytest.raises(ValueError):
            D.Augment(**kwargs)
    with pytest.raises(ValueError, match="uint8"):
        D.ImageSplit(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        D.ImageSplit(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


def test_train_batches_with_indices_point_at_the_batch_samples():
    ds = D.load_dataset("synthetic", seed=0, synthetic_train_size=300, synthetic_test_size=10)
    seen = []
    for x, y, idx in D.train_batches(ds, 64, seed=0, epoch=2, augment=D.Augment(), with_indices=True):
        assert torch.equal(ds.train.labels[idx], y) and x.shape[0] == idx.shape[0]
        seen.append(idx)
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(len(ds.train)))
    plain = [y for _, y in D.train_batches(ds, 64, seed=0, epoch=2, augment=D.Augment())]
    assert torch.equal(torch.cat(plain), ds.train.labels[torch.cat(seen)])
