"""ImageNet runs on several CPU ranks (gloo) through the engine: each rank decodes only its rows.

* Data parallel (SAM) on two ranks: rank r decodes shard r of every global batch, the two together every
  image once per epoch, and the final parameters equal the single-device run.
* SAMPa on two groups of two: rank i of either group decodes part i of every batch (ranks 0 and 2 the
  same rows), and the parameters equal single-device SAMPa.
* SAMPa on two ranks (k = 1): each rank computes on whole batches, so it decodes them all.
* Evaluation (every run above): rank r of R decodes and evaluates only slice r of ``val/`` (5 images:
  3 + 2 on two ranks, 2 + 1 + 1 + 1 on four), and ``metrics.json`` equals the single-device run's:
  accuracies exactly, losses to 1e-6 relative (SAMPa k = 1, whose weights are bit-identical: only the
  batching of the eval rows differs) or 1e-5 (data-parallel SAM and 2 x 2 SAMPa, whose weights equal
  the single-device ones up to reduction-order round-off).
* Every task-parallel method that claims ``Method.whole_batch_jobs`` gives its jobs whole batches.

The model is a BatchNorm-free CNN (patched into the engine's model builder), so data-parallel gradients
equal full-batch ones up to round-off (tests/test_pair.py's tolerance). The ranks decode in their own
process (``num_workers=0``) so a patched ``decode`` sees every image they decode.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torchvision.io import write_jpeg

from sampa import train as engine
from sampa.backends.pair import shard_start
from sampa.config import RunConfig
from sampa.data import imagenet
from sampa.launch import rank_backend
from sampa.losses import make_loss
from sampa.models import build_model
from sampa.optim import METHODS, GradJob, SequentialExecutor
from sampa.train import train

CLASSES, IMAGES_PER_CLASS = 5, 3  # 15 images in batches of 4 (4, 4, 4, 3): odd shards in the last one
BATCH = 4


class PlainCNN(nn.Module):
    """No BatchNorm (as tests/test_pair.py's): shards' gradients average to the full-batch gradient."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def plain_model(_name: str, num_classes: int) -> nn.Module:
    return PlainCNN(num_classes)


def _config(root: Path, optimizer: str, devices: int) -> RunConfig:
    hparams = {"rho": 0.1, "lam": 0.2} if optimizer == "sampa" else {"rho": 0.1}
    return RunConfig(model="tinycnn", dataset="imagenet", optimizer=optimizer, hparams=hparams, epochs=1,
                     batch_size=BATCH, lr=0.05, data_root=str(root), device="cpu", threads=1,
                     eval_batch_size=8, num_workers=0, devices=devices)  # fmt: skip


def _count_decodes() -> dict[str, list[str]]:
    """Paths of the training and of the validation images ``decode`` reads from now on in this process."""
    decoded: dict[str, list[str]] = {"train": [], "val": []}
    real = imagenet.decode
    imagenet.decode = lambda path: decoded["train" if "/train/" in path else "val"].append(path) or real(path)
    return decoded


def _metrics(out: Path) -> dict[str, Any]:
    return json.loads((out / "metrics.json").read_text())


def _rank(rank: int, port: int, configs: list[RunConfig], out: str) -> None:
    torch.set_num_threads(1)
    engine.build_model = plain_model
    world = configs[0].devices
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=60))
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    for cfg in configs:
        decoded = _count_decodes()
        train(cfg, f"{out}/{cfg.optimizer}", rank_backend(cfg, rank, torch.device("cpu")), log_progress=False)
        torch.save(decoded, f"{out}/{cfg.optimizer}.decoded.{rank}")
    dist.destroy_process_group()


def _multi_rank(configs: list[RunConfig], out: Path) -> dict[str, dict[str, Any]]:
    """Per optimizer: the final weights of its run on ``devices`` ranks, its metrics and the training
    and validation images each rank decoded (all runs in one spawn)."""
    world = configs[0].devices
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    mp.start_processes(_rank, args=(store.port, configs, str(out)), nprocs=world, start_method="spawn")
    results = {}
    for cfg in configs:
        decoded = [torch.load(out / f"{cfg.optimizer}.decoded.{r}", weights_only=True) for r in range(world)]
        results[cfg.optimizer] = {
            "weights": torch.load(out / cfg.optimizer / "best.pt", weights_only=True),
            "metrics": _metrics(out / cfg.optimizer),
            "train": [d["train"] for d in decoded],
            "val": [d["val"] for d in decoded],
        }
    return results


def _single(cfg: RunConfig, out: Path, monkeypatch) -> dict[str, Any]:
    monkeypatch.setattr(engine, "build_model", plain_model)
    monkeypatch.setattr(imagenet, "decode", imagenet.decode)  # restored after the test
    decoded = _count_decodes()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(dataclasses.replace(cfg, devices=1), out, log_progress=False)
    finally:
        torch.set_num_threads(previous)
    weights = torch.load(out / "best.pt", weights_only=True)
    return {"weights": weights, "metrics": _metrics(out), "train": decoded["train"], "val": decoded["val"]}


def _order(decoded: list[str]) -> list[list[str]]:
    """The one-device decode sequence cut into the epoch's global batches."""
    return [decoded[i : i + BATCH] for i in range(0, len(decoded), BATCH)]


def _part(batch: list[str], parts: int, index: int) -> list[str]:
    return batch[shard_start(len(batch), parts, index) : shard_start(len(batch), parts, index + 1)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", IMAGES_PER_CLASS), ("val", 1)):
        for k in range(CLASSES):
            directory = root / "imagenet" / split / f"n{k:08d}"
            directory.mkdir(parents=True)
            for i in range(count):
                image = torch.randint(0, 256, (3, 40 + 4 * i, 52), generator=gen, dtype=torch.uint8)
                write_jpeg(image, str(directory / f"{i}.JPEG"), quality=95)
    return root


def _assert_weights_close(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        message = lambda m, k=key: f"{k}: {m}"  # noqa: E731
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=message)


def _assert_sharded_eval(got: dict[str, Any], want: dict[str, Any], rel: float) -> None:
    """Rank r decoded slice r of ``val/`` at the one evaluation (one epoch; ``test_*`` reuse it), and the
    metrics equal one device's."""
    ranks, evaluations = len(got["val"]), len(want["val"]) // CLASSES
    order = want["val"][:CLASSES]  # one evaluation on one device: every image once, in order
    assert want["val"] == order * evaluations and evaluations == 1  # the epoch's only (test_is_val)
    for rank in range(ranks):
        assert got["val"][rank] == _part(order, ranks, rank) * evaluations
    for key, value in want["metrics"].items():
        if key.endswith("_loss") and value is not None:
            assert got["metrics"][key] == pytest.approx(value, rel=rel), key
        elif key.endswith(("_acc", "_epoch")) or key in ("status", "epochs_completed"):
            assert got["metrics"][key] == value, key


@pytest.fixture(scope="module")
def two_ranks(folder, tmp_path_factory) -> dict[str, dict[str, Any]]:
    """SAM (data parallel) and SAMPa (k = 1) on two ranks."""
    configs = [_config(folder, "sam", devices=2), _config(folder, "sampa", devices=2)]
    return _multi_rank(configs, tmp_path_factory.mktemp("two"))


def test_two_data_parallel_ranks_decode_half_each_and_equal_one_device(
    two_ranks, folder, tmp_path, monkeypatch
):
    got = two_ranks["sam"]
    weights, decoded = got["weights"], got["train"]
    want = _single(_config(folder, "sam", devices=2), tmp_path, monkeypatch)
    reference, one_device = want["weights"], want["train"]
    assert len(one_device) == CLASSES * IMAGES_PER_CLASS
    for rank in (0, 1):  # shard r of every global batch, in the one-device order
        assert decoded[rank] == [p for batch in _order(one_device) for p in _part(batch, 2, rank)]
    assert sorted(decoded[0] + decoded[1]) == sorted(one_device)  # each image once in all
    _assert_weights_close(weights, reference)
    _assert_sharded_eval(got, want, rel=1e-5)


def test_sampa_on_two_ranks_decodes_whole_batches(two_ranks, folder, tmp_path, monkeypatch):
    """k = 1: group 1 computes on B_{t+1}, group 0 on B_t one step later: every rank needs every row."""
    got = two_ranks["sampa"]
    want = _single(_config(folder, "sampa", devices=2), tmp_path, monkeypatch)
    assert got["train"][0] == got["train"][1] == want["train"]
    _assert_weights_close(got["weights"], want["weights"])
    _assert_sharded_eval(got, want, rel=1e-6)


@pytest.mark.slow
def test_sampa_groups_of_two_decode_their_local_part_and_equal_one_device(folder, tmp_path, monkeypatch):
    cfg = _config(folder, "sampa", devices=4)
    got = _multi_rank([cfg], tmp_path / "quad")["sampa"]
    want = _single(cfg, tmp_path / "single", monkeypatch)
    (weights, decoded), (reference, one_device) = (
        (got["weights"], got["train"]),
        (want["weights"], want["train"]),
    )
    for rank in range(4):  # group g = rank // 2 computes its jobs' part rank % 2
        assert decoded[rank] == [p for batch in _order(one_device) for p in _part(batch, 2, rank % 2)]
    assert decoded[0] == decoded[2] and decoded[1] == decoded[3]
    _assert_weights_close(weights, reference)
    _assert_sharded_eval(got, want, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Method.whole_batch_jobs: the claim that lets SAMPa's groups load only part of each batch


class RecordingExecutor(SequentialExecutor):
    """The reference executor, keeping every job it evaluates."""

    def __init__(self) -> None:
        self.jobs: list[GradJob] = []

    def evaluate(self, method: Any, jobs: Any) -> list[Any]:
        self.jobs += jobs
        return super().evaluate(method, jobs)


def _job_inputs(name: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The batches given to four steps of method ``name`` and the inputs of every job it evaluated."""
    torch.manual_seed(0)
    model = build_model("tinycnn", 10)
    executor = RecordingExecutor()
    base = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    cls = METHODS[name]
    micro = (
        {"micro_batch_size": 4}
        if "micro_batch_size" in {f.name for f in dataclasses.fields(cls.Hparams)}
        else {}
    )
    method = cls(model, make_loss(0.0), base, executor=executor, **micro)  # 2 micro-batches of 8 samples
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(8, 3, 16, 16, generator=gen) for _ in range(4)]
    for x in batches:
        method.step(x, torch.randint(0, 10, (8,), generator=gen), torch.arange(8))
    return batches, [job.inputs for job in executor.jobs]


@pytest.mark.parametrize("name", sorted(n for n, cls in METHODS.items() if cls.parallel_jobs >= 2))
def test_whole_batch_jobs_holds_for_every_task_parallel_method_that_claims_it(name):
    """A method claiming ``whole_batch_jobs`` gives every job a batch it was given, never part of one
    (so part i of the job is part i of that batch); mSAM+SAMPa's micro-batches do not, nor claim it."""
    batches, inputs = _job_inputs(name)
    whole = [any(x is batch for batch in batches) for x in inputs]
    assert all(whole) == METHODS[name].whole_batch_jobs, whole
