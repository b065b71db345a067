"""Throughput of the ImageNet training pipeline (sampa.data.imagenet) on this machine's CPUs.

    python benchmarks/imagenet_loader.py                      # 320 generated JPEGs, workers 0,1,2
    python benchmarks/imagenet_loader.py --root /data --workers 8,16   # a real ImageNet copy

Without ``--root``, writes ``--images`` random JPEGs of ImageNet's typical size (500x375, quality 90,
about 110 kB like ImageNet's) into a temporary ImageFolder. Times full training epochs (decode,
RandomResizedCrop 224, flip, collate; normalisation on the device) after one untimed batch, and prints
images/s per worker count with the cores a GPU needs at given training rates.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from sampa.data.imagenet import load_imagenet

# images/s a training run consumes (rough A100 numbers for ResNet-50, fp32/TF32): SGD ~1300;
# SAM (two sequential gradients) ~650; SAMPa on two GPUs ~1300 (each GPU reads its own batches)
TARGETS = {"SGD / SAMPa (2 GPUs), ResNet-50": 1300, "SAM, ResNet-50": 650}


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
    args = p.parse_args()
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
    for label, target in TARGETS.items():
        print(f"{label}: {target} images/s needs about {target / best:.0f} worker cores at {best:.0f}/core")


if __name__ == "__main__":
    main()
