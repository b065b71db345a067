"""Locate, verify, extract and read the official CIFAR-10 / CIFAR-100 python archives."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sampa.faults import kill_point
from sampa.io import build_folder_once, first_line
from sampa.paths import ENV_VAR, data_root

OFFLINE_HINT = "snakemake --cores all --configfile configs/smoke.yaml"


class DataUnavailableError(RuntimeError):
    """The requested dataset is not on disk and could not be downloaded."""

    plain_message = True  # a launcher reports it by its message (sampa.rundir.one_line)


class WeightsUnavailableError(DataUnavailableError):
    """Pretrained weights are not on disk (message: one line naming what to put where)."""


def unreadable_weights(what: str, where: str, err: Exception) -> WeightsUnavailableError:
    """Weights (or their tokenizer) that are on disk but cannot be loaded, e.g. after an interrupted
    download: one line naming them and what to do."""
    return WeightsUnavailableError(
        f"{what} at {where} cannot be loaded ({type(err).__name__}: {first_line(err)[:200]}); an "
        f"interrupted download leaves such files: delete {where} and download it again"
    )


@contextlib.contextmanager
def damaged_files(error: Callable[[Exception], Exception]) -> Iterator[None]:
    """Raise ``error(err)`` (one line) for anything a loader of files on disk raises in the block (the
    libraries raise OSError, ValueError, their own errors, ...); a MemoryError is not the files' fault."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as err:
        raise error(err) from None


class ChecksumError(DataUnavailableError):
    """A dataset file on disk does not have the expected MD5 checksum."""


@dataclass(frozen=True)
class CifarSource:
    """Where an official CIFAR archive comes from and what it must contain."""

    url: str
    archive: str
    archive_md5: str
    folder: str
    train_files: tuple[tuple[str, str], ...]  # (file name inside folder, MD5)
    test_files: tuple[tuple[str, str], ...]
    label_key: bytes
    num_classes: int


# Official checksums (the same as torchvision's CIFAR10/CIFAR100 tables); tests monkeypatch this table.
CIFAR_SOURCES: dict[str, CifarSource] = {
    "cifar10": CifarSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        archive="cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_files=(
            ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            ("data_batch_4", "634d18415352ddfa80567beed471001a"),
            ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
        ),
        test_files=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
        label_key=b"labels",
        num_classes=10,
    ),
    "cifar100": CifarSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        archive="cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_files=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
        test_files=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
        label_key=b"fine_labels",
        num_classes=100,
    ),
}

Arrays = tuple[torch.Tensor, torch.Tensor]


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """Data root: explicit ``root`` > environment variable ``SAMPA_DATA`` > ``./data``."""
    return data_root(root)


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str, fix: str) -> None:
    """Raise ``ChecksumError`` (one line) unless ``path`` has MD5 ``expected``."""
    actual = file_md5(path)
    if actual != expected:
        raise ChecksumError(f"MD5 mismatch for {path}: expected {expected}, got {actual}; {fix}")


def _folder_complete(folder: Path, src: CifarSource) -> bool:
    return all((folder / name).is_file() for name, _ in src.train_files + src.test_files)


def _verify_folder(folder: Path, src: CifarSource) -> None:
    fix = f"delete {folder} and put a fresh {src.archive} ({src.url}) next to it"
    for name, md5 in src.train_files + src.test_files:
        verify_md5(folder / name, md5, fix)


def _check_member(member: tarfile.TarInfo, folder: str, archive: Path) -> None:
    """Reject archive members outside ``folder/`` or that are not plain files/directories."""
    parts = Path(member.name).parts
    inside = bool(parts) and parts[0] == folder and ".." not in parts
    if not inside or not (member.isfile() or member.isdir()):
        raise ChecksumError(f"unsafe member {member.name!r} in {archive}; only files under {folder}/ allowed")


def safe_extract(archive: Path, root: Path, folder: str) -> None:
    """Extract a verified tar.gz into ``root``, refusing path traversal, links and devices."""
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member, folder, archive)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(root, members=members, filter="data")
        else:  # Python < 3.10.12 / 3.11.4: members were checked above
            tar.extractall(root, members=members)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _unavailable(src: CifarSource, root: Path, reason: str) -> DataUnavailableError:
    return DataUnavailableError(
        f"{src.folder}/ or {src.archive} not found in {root} ({reason}); put {src.archive} from {src.url} "
        f"into {root} or set {ENV_VAR} to a folder holding it, or run offline on synthetic data: "
        f"{OFFLINE_HINT}"
    )


def download_and_extract_archive(url: str, root: str, md5: str) -> None:
    """torchvision's downloader, imported on first use (importing torchvision costs about 2 s)."""
    from torchvision.datasets.utils import download_and_extract_archive as download

    download(url, root, md5=md5)


def _download(src: CifarSource, root: Path, into: Path) -> None:
    """Download and extract ``src`` into the temporary folder ``into`` (errors name the data ``root``)."""
    try:
        download_and_extract_archive(src.url, str(into), md5=src.archive_md5)
    except (OSError, RuntimeError) as exc:
        raise _unavailable(src, root, f"download failed: {_one_line(exc)}") from exc


def check_present(name: str, root: Path) -> None:
    """Without downloading, ``name`` must be under ``root`` (its folder or archive; nothing is read):
    :class:`DataUnavailableError` before a run directory is written."""
    src = CIFAR_SOURCES[name]
    if not _folder_complete(root / src.folder, src) and not (root / src.archive).is_file():
        raise _unavailable(src, root, "download=False")


def ensure_extracted(name: str, root: Path, download: bool) -> Path:
    """The verified extracted folder of ``name`` under ``root``, extracting or downloading it if needed.

    Extraction and download happen under a lock (``<root>/.<name>.lock``), into a temporary folder
    (``.<folder>.<random>.tmp``) renamed into place once complete, so an interrupted one never leaves a
    folder that passes for the dataset: the next call removes its temporary folder and starts again. A
    damaged folder is extracted again from its archive; without one it is a one-line error naming it."""
    src = CIFAR_SOURCES[name]
    folder, archive = root / src.folder, root / src.archive
    if _intact(folder, src):
        return folder
    if not archive.is_file() and _folder_complete(folder, src):
        _verify_folder(folder, src)  # damaged, no archive to extract again: one line, what to delete
        return folder
    if not archive.is_file() and not download:
        raise _unavailable(src, root, "download=False")
    build_folder_once(
        root, name, src.folder, lambda: _intact(folder, src), lambda tmp: _extract(name, src, tmp)
    )
    _verify_folder(folder, src)
    return folder


def _intact(folder: Path, src: CifarSource) -> bool:
    """Whether ``folder`` holds every file of ``src`` with its checksum."""
    if not _folder_complete(folder, src):
        return False
    try:
        _verify_folder(folder, src)
    except ChecksumError:
        return False
    return True


def _extract(name: str, src: CifarSource, tmp: Path) -> None:
    """Extract (or download) ``src`` into the temporary folder ``tmp``, then rename its folder into place."""
    root = tmp.parent
    folder, archive = root / src.folder, root / src.archive
    if archive.is_file():
        verify_md5(archive, src.archive_md5, f"delete it and download it again from {src.url}")
        safe_extract(archive, tmp, src.folder)
    else:
        _download(src, root, tmp)
        if (tmp / src.archive).is_file():  # kept beside the folder, as an extraction finds it
            os.replace(tmp / src.archive, archive)
    if not _folder_complete(tmp / src.folder, src):
        raise ChecksumError(f"{archive} does not contain the expected files of {src.folder}/; replace it")
    kill_point(f"data:{name}")
    if folder.exists():  # incomplete or damaged: moved into the temporary folder, removed with it
        os.rename(folder, tmp / "replaced")
    os.rename(tmp / src.folder, folder)


def _read_batch(path: Path, label_key: bytes) -> Arrays:
    """Read one pickled CIFAR batch: b"data" [N, 3072] uint8 (R, G, B planes, row-major) and labels."""
    with path.open("rb") as fh:
        batch = pickle.load(fh, encoding="bytes")  # only called after the MD5 check
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    labels = torch.as_tensor(np.asarray(batch[label_key], dtype=np.int64))
    return images, labels


def _read_files(folder: Path, files: tuple[tuple[str, str], ...], src: CifarSource) -> Arrays:
    parts = [_read_batch(folder / name, src.label_key) for name, _ in files]
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    if labels.numel() != images.shape[0] or labels.numel() == 0:
        raise ChecksumError(f"{folder} has {images.shape[0]} images but {labels.numel()} labels; replace it")
    if labels.min() < 0 or labels.max() >= src.num_classes:
        raise ChecksumError(f"{folder} has labels outside [0, {src.num_classes}); replace it")
    return images, labels


def read_cifar(
    name: str, root: str | os.PathLike | None = None, download: bool = True
) -> tuple[Arrays, Arrays]:
    """Load ``(train_images, train_labels), (test_images, test_labels)`` of ``cifar10``/``cifar100`` on CPU.

    Images are uint8 [N, 3, 32, 32]; labels int64 [N] (fine labels for CIFAR-100).
    """
    if name not in CIFAR_SOURCES:
        raise ValueError(f"unknown CIFAR dataset {name!r}; choose one of {sorted(CIFAR_SOURCES)}")
    src = CIFAR_SOURCES[name]
    folder = ensure_extracted(name, resolve_root(root), download)
    return _read_files(folder, src.train_files, src), _read_files(folder, src.test_files, src)
