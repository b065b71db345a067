"""Throughput of the ImageNet training pipeline (sampa.data.imagenet) on this machine's CPUs.

    python benchmarks/imagenet_loader.py                      # 320 generated JPEGs, workers 0,1,2
    python benchmarks/imagenet_loader.py --root /data --workers 8,16   # a real ImageNet copy

Without ``--root``, writes ``--images`` random JPEGs of ImageNet's typical size (500x375, quality 90,
about 110 kB like ImageNet's) into a temporary ImageFolder. Times full training epochs (decode,
RandomResizedCrop 224, flip, collate; normalisation on the device) after one untimed batch, and prints
images/s per worker count with the worker cores a GPU needs at given training rates (the run setting
``num_workers``, per training process). The main process uses ``--threads`` torch threads (1, as the
workflow's jobs): with workers=0 the augmentation runs there, and on a busy 2-core machine torch's
intra-op threads made it 28x slower (2 threads: 56 transforms/s, 1 thread: 1590/s).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from sampa.data.imagenet import load_imagenet

# images/s one training process consumes: ResNet-50 in bf16 on one H100 trains ~2500-3000 images/s
# with one gradient per image (SGD; SAMPa's two ranks each compute one gradient per step, and each
# rank decodes the whole batch itself); SAM computes two gradients per image: about half
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


def images_per_second(root: Path, workers: int, batch_size: int) -> float:
    data = load_imagenet(root, workers=workers)
    batches = data.train_batches(batch_size, seed=0, epoch=0)
    next(batches)  # start the workers
    start, count = time.perf_counter(), 0
    for images, _, _ in batches:
        count += images.shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", help="data root holding imagenet/train and imagenet/val (default: generated)")
    p.add_argument("--images", type=int, default=320)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        if not args.root:
            write_fake_imagenet(root, args.images)
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
