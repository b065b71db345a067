"""Throughput of the ImageNet training pipeline (sampa.data.imagenet) on this machine's CPUs.

    python benchmarks/imagenet_loader.py                      # 320 generated JPEGs, workers 0,1,2
    python benchmarks/imagenet_loader.py --root /data --workers 8,16   # a real ImageNet copy
    python benchmarks/imagenet_loader.py --ranks 2 --workers 1        # one rank of two: before/after

Without ``--root``, writes ``--images`` random JPEGs of ImageNet's typical size (500x375, quality 90,
about 110 kB like ImageNet's) into a temporary ImageFolder. Times full training epochs (decode,
RandomResizedCrop 224, flip, collate; normalisation on the device) after one untimed batch, and prints
images/s per worker count with the worker cores a GPU needs at given training rates (the run setting
``num_workers``, per training process). The main process uses ``--threads`` torch threads (1, as the
workflow's jobs): with workers=0 the augmentation runs there, and on a busy 2-core machine torch's
intra-op threads made it 28x slower (2 threads: 56 transforms/s, 1 thread: 1590/s).

``--ranks R`` (> 1) times one data-parallel rank of R (rank 0, in this process, no process group): the
images it decodes per step and the global batches per second it delivers when it decodes the whole
global batch (as before: every rank did) and when it decodes only its shard (``Backend.input_rows``).

``--eval-ranks 1,2`` times one evaluation of ``val/`` (as the engine runs it every epoch:
``sampa.train.evaluate_sharded``, decode + resize + centre crop + forward of ``--eval-model``, results
gathered) on R CPU processes joined by gloo, each evaluating its slice of ``val/``; ``--workers`` (first
value) decoding processes per rank (0: the rank itself decodes, so its CPU seconds are all the work).
Before sharding every rank evaluated all of ``val/``: R = 1's time. Wall and CPU seconds of the second
of two evaluations; the wall time only falls with R where R free cores exist.
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sampa.backends.pair import DATA, PairBackend, shard_start
from sampa.data.imagenet import BatchRows, all_rows, load_imagenet
from sampa.data.sources import ImageNetSource
from sampa.models import build_model

# images/s one training process consumes: ResNet-50 in bf16 on one H100 trains ~2500-3000 images/s
# with one gradient per image (SGD; SAMPa's two ranks each compute one gradient per step, and each
# rank decodes the whole batch itself: k = 1); SAM computes two gradients per image: about half
TARGETS = {
    "ResNet-50 bf16, one H100, SGD or SAMPa (per rank)": (2500, 3000),
    "ResNet-50 bf16, SAM": (1250, 1500),
}


def write_fake_imagenet(root: Path, images: int, classes: int = 8) -> None:
    from torchvision.io import write_jpeg

    gen = torch.Generator().manual_seed(0)
    for i in range(images):
        folder = root / "imagenet" / ("train" if i % 8 else "val") / f"n{(i // 8) % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 47, 63, generator=gen), size=(375, 500))
        noise = 0.1 * torch.rand(1, 3, 375, 500, generator=gen)
        image = ((smooth + noise).clamp(0, 1) * 255).to(torch.uint8)[0]
        write_jpeg(image, str(folder / f"img_{i}.JPEG"), quality=90)


def images_per_second(
    root: Path, workers: int, batch_size: int, rows: Callable[[int], slice] = all_rows
) -> float:
    """Global-batch images delivered per second (the decoded ones: only ``rows`` of each batch)."""
    data = load_imagenet(root, workers=workers)
    batches = data.train_batches(batch_size, seed=0, epoch=0, rows=rows)
    next(batches)  # start the workers
    start, count = time.perf_counter(), 0
    for images, _, _ in batches:
        count += images.shape[0]
    return count / (time.perf_counter() - start)


def shard_of(ranks: int, rank: int) -> Callable[[int], slice]:
    """A data-parallel rank's rows (as ``PairBackend.input_rows``)."""
    return lambda size: slice(shard_start(size, ranks, rank), shard_start(size, ranks, rank + 1))


def decoded_per_step(root: Path, batch_size: int, rows: Callable[[int], slice]) -> float:
    """Images the batch sampler hands this rank's workers per step (each is decoded once)."""
    order = torch.arange(len(load_imagenet(root, workers=0).train))
    batches = list(BatchRows(order, batch_size, rows))
    return sum(map(len, batches)) / len(batches)


def compare_ranks(root: Path, ranks: int, workers: list[int], batch_size: int) -> None:
    print(f"rank 0 of {ranks}, global batch {batch_size}")
    print(f"{'workers':>7} {'rows':>7} {'decoded/step':>12} {'global images/s':>15}")
    for w in workers:
        for label, rows in (("all", all_rows), ("shard", shard_of(ranks, 0))):
            per_step = decoded_per_step(root, batch_size, rows)
            rate = images_per_second(root, w, batch_size, rows)
            print(f"{w:>7} {label:>7} {per_step:12.1f} {rate:15.1f}")


def _eval_rank(rank: int, port: int, ranks: int, root: str, workers: int, model: str, out: str) -> None:
    from sampa.train import evaluate_sharded

    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=120))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=ranks)
    backend = PairBackend(rank, torch.device("cpu"), DATA, ranks)
    source = ImageNetSource(load_imagenet(root, workers=workers))
    torch.manual_seed(0)
    net = build_model(model, source.num_classes)
    times, cpu = [], []
    for _ in range(2):  # the second is the steady state (the first also warms up the allocator)
        dist.barrier()
        start, start_cpu = time.perf_counter(), time.process_time()
        scores = evaluate_sharded(net, source, "val", 64, backend)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    rows = backend.eval_rows(len(source.data.val))
    if rank == 0:
        torch.save({"times": times, "cpu": cpu, "rows": rows.stop - rows.start, "acc": scores["acc"]}, out)
    dist.destroy_process_group()


def compare_eval(root: Path, scratch: Path, ranks_list: list[int], workers: int, model: str) -> None:
    print(f"evaluation of val/ ({model}, {workers} decoding workers per rank, 1 torch thread per rank)")
    print(f"{'ranks':>5} {'rows/rank':>9} {'wall s':>7} {'CPU s (rank 0)':>14} {'acc':>6}")
    for ranks in ranks_list:
        out = scratch / f"eval{ranks}.pt"
        store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        args = (store.port, ranks, str(root), workers, model, str(out))
        mp.start_processes(_eval_rank, args=args, nprocs=ranks, start_method="spawn")
        r = torch.load(out)
        print(f"{ranks:>5} {r['rows']:>9} {r['times'][1]:7.2f} {r['cpu'][1]:14.2f} {r['acc']:6.3f}")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", help="data root holding imagenet/train and imagenet/val (default: generated)")
    p.add_argument("--images", type=int, default=320)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    p.add_argument("--ranks", type=int, default=1, help="> 1: one data-parallel rank of this many")
    p.add_argument("--eval-ranks", help="e.g. 1,2: time evaluating val/ sharded over that many processes")
    p.add_argument("--eval-model", default="tinycnn", help="model evaluated by --eval-ranks (sampa name)")
    args = p.parse_args()
    if args.ranks < 1:
        p.error(f"--ranks must be >= 1 (got {args.ranks})")
    eval_ranks = [int(r) for r in args.eval_ranks.split(",")] if args.eval_ranks else []
    if any(r < 1 for r in eval_ranks):
        p.error(f"--eval-ranks must be counts >= 1 (got {args.eval_ranks})")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        if not args.root:
            write_fake_imagenet(root, args.images)
        if eval_ranks:
            workers = int(args.workers.split(",")[0])
            compare_eval(root, Path(tmp), eval_ranks, workers, args.eval_model)
            return
        if args.ranks > 1:
            compare_ranks(root, args.ranks, [int(w) for w in args.workers.split(",")], args.batch_size)
            return
        print(f"{'workers':>7} {'images/s':>9} {'per worker':>10}")
        per_core = []
        for workers in (int(w) for w in args.workers.split(",")):
            rate = images_per_second(root, workers, args.batch_size)
            per = rate / max(workers, 1)
            per_core.append(per)
            print(f"{workers:>7} {rate:9.1f} {per:10.1f}")
    best = max(per_core)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for label, (low, high) in TARGETS.items():
        need = f"{low / best:.0f}-{high / best:.0f}"
        print(f"{label}: {low}-{high} images/s needs about {need} worker cores at {best:.0f}/core")


if __name__ == "__main__":
    main()
