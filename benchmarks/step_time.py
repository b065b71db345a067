"""Per-step time of optimizer methods on one device, side by side, with ratios to SGD.

    python benchmarks/step_time.py               # ResNet-56, batch 128: SGD, SAM, SAMPa, SAMPa (fused)
    python benchmarks/step_time.py --methods sgd,sam,sampa --model resnet56 --steps 20 --device cuda
    python benchmarks/step_time.py --methods all         # every registered method
    python benchmarks/step_time.py --device cuda --amp bf16 --channels-last --cudnn-benchmark \
        --optimizer-impl fused --compile step            # the fast path (sampa.backends.fastpath)

Each method trains a fresh copy of the same model (same seed) on random CIFAR-shaped batches. Methods
are timed in interleaved rounds (so drift of the machine hits all of them alike); each round runs
``--warmup`` untimed steps, then ``--steps`` timed steps between two device synchronisations. The
table reports the median over rounds of the mean step time, the ratio to SGD, and the passes per step
(forward, backward, sequential gradients on this device, ideal sequential gradients), averaged over all
timed steps (LookSAM, AE-SAM and vSAM vary from step to step). Each method starts at epoch 100 of 200
(``start_epoch``), so epoch-dependent methods run in their steady state (SAF/MESA trajectory term on,
vSAM past its warm-up; AE-SAM's and vSAM's SAM-step rates then depend on these random batches, not on
a real training run); methods that need sample indices get them.

``--fused`` methods are timed a second time with the fused single-device executor (``--backend fused``:
SAMPa's two gradients in one batched forward/backward), and ``--flat`` methods once more with flat
buffers (``--flat-buffers``: parameters, points and gradients as one buffer each; a method in both lists
also gets a fused flat row). The fast-path flags apply to every column.
Then one SGD epoch is timed on GPU-resident CIFAR-shaped data (random uint8 images through the engine's
own batching, augmentation and normalisation; ``--epoch-images``, default 45k on CUDA), after
``--warmup`` untimed steps (cudnn autotuning, compilation), between two device synchronisations.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch

from sampa import io
from sampa.backends.fastpath import AMP_MODES, COMPILE_MODES, OPTIMIZER_IMPLS, FastPath, optimizer_kwargs
from sampa.backends.fused import FusedExecutor
from sampa.backends.single import resolve_device
from sampa.data import Augment, Dataset, ImageSplit, train_batches
from sampa.losses import make_loss
from sampa.metrics import Stopwatch, synchronize
from sampa.models import build_model
from sampa.optim import METHOD_NAMES, build_method, method_class


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--methods",
        default="sgd,sam,sampa",
        help=f"comma-separated, from: {', '.join(METHOD_NAMES)}; or 'all'",
    )
    p.add_argument("--model", default="resnet56")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--json", help="also write the results as JSON to this file")
    add_fast_path_args(p)
    return p.parse_args()


def add_fast_path_args(p: argparse.ArgumentParser) -> None:
    """The fused backend, the fast-path flags and the epoch measurement."""
    p.add_argument("--fused", default="sampa", help="methods also timed with the fused executor ('' = none)")
    p.add_argument("--amp", default="off", choices=AMP_MODES)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--cudnn-benchmark", action="store_true")
    p.add_argument("--optimizer-impl", default="default", choices=OPTIMIZER_IMPLS)
    p.add_argument("--compile", default="off", choices=COMPILE_MODES)
    p.add_argument("--flat-buffers", action="store_true", help="flat buffers for every column")
    p.add_argument("--flat", default="", help="methods also timed with flat buffers (e.g. sgd,sam,sampa)")
    p.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend (aot_eager: no codegen)"
    )
    p.add_argument(
        "--epoch-images",
        type=int,
        help="images in the timed SGD epoch (default: 45000 on CUDA, 0 = none on CPU)",
    )


def fast_path(args: argparse.Namespace, flat: bool = False) -> FastPath:
    return FastPath(
        amp=args.amp,
        channels_last=args.channels_last,
        cudnn_benchmark=args.cudnn_benchmark,
        compile=args.compile,
        compile_backend=args.compile_backend,
        flat_buffers=args.flat_buffers or flat,
    )


PASS_KEYS = ("forward", "backward", "sequential", "ideal_sequential")
STEADY_EPOCH, EPOCHS = 100, 200


class Bench:
    """One method on one model (fast path applied, optionally with the fused executor), ready to step."""

    def __init__(
        self,
        name: str,
        args: argparse.Namespace,
        device: torch.device,
        *,
        fused: bool = False,
        flat: bool = False,
    ) -> None:
        fast = fast_path(args, flat)
        torch.manual_seed(0)
        self.model = fast.prepare_model(build_model(args.model, 10).to(device).train())
        base = torch.optim.SGD(
            self.model.parameters(),
            lr=0.01,
            momentum=0.9,
            weight_decay=5e-4,
            **optimizer_kwargs(args.optimizer_impl),
        )
        executor = FusedExecutor() if fused else None
        self.method = build_method(name, self.model, make_loss(0.1), base, executor=executor)
        self.method.start_epoch(STEADY_EPOCH, EPOCHS, steps_per_epoch=352)  # the paper's 45k / 128
        self.step_fn = fast.prepare_method(self.method)
        gen = torch.Generator().manual_seed(1)
        self.batches = [
            (
                fast.prepare_batch(torch.randn(args.batch_size, 3, 32, 32, generator=gen).to(device)),
                torch.randint(0, 10, (args.batch_size,), generator=gen).to(device),
                torch.arange(i * args.batch_size, (i + 1) * args.batch_size, device=device),
            )
            for i in range(2)
        ]
        self.i = 0
        self.passes = dict.fromkeys(PASS_KEYS, 0)
        self.steps = 0

    def step(self, timed: bool = False) -> None:
        record = self.step_fn(*self.batches[self.i % 2])
        self.i += 1
        if timed:
            for key in PASS_KEYS:
                self.passes[key] += getattr(record, key)
            self.steps += 1

    def mean_passes(self) -> dict[str, float]:
        return {key: value / max(self.steps, 1) for key, value in self.passes.items()}


def time_round(bench: Bench, args: argparse.Namespace, device: torch.device) -> float:
    for _ in range(args.warmup):
        bench.step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        bench.step(timed=True)
    synchronize(device)
    return (time.perf_counter() - start) / args.steps


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.compile != "off":  # every column compiles Method.step: room for all their variants
        torch._dynamo.config.recompile_limit = 64
    names = method_names(args.methods)
    benches = {name: Bench(name, args, device) for name in names}
    benches |= fused_benches(args, device)
    times: dict[str, list[float]] = {name: [] for name in benches}
    with fast_path(args).session():
        for _ in range(args.rounds):
            for name, bench in benches.items():
                times[name].append(time_round(bench, args, device))
        results = summarise(benches, times)
        print_table(results, args, device)
        epoch = time_sgd_epoch(args, device)
    if epoch:
        results.append(epoch)
    if args.json:
        io.write_json(args.json, results)


def method_names(spec: str) -> list[str]:
    """'all' or a comma-separated list of registered names; one-line error for an unknown name."""
    names = list(METHOD_NAMES) if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        try:
            method_class(name)
        except ValueError as err:
            raise SystemExit(f"step_time.py: error: {err}") from None
    return list(dict.fromkeys(names))


def summarise(benches: dict[str, Bench], times: dict[str, list[float]]) -> list[dict[str, Any]]:
    reference = statistics.median(times["sgd"]) if "sgd" in times else None
    out = []
    for name, bench in benches.items():
        t = statistics.median(times[name])
        out.append(
            {"method": name, "step_ms": 1e3 * t, "ratio_to_sgd": t / reference if reference else None}
            | bench.mean_passes()
        )
    return out


def print_table(results: list[dict[str, Any]], args: argparse.Namespace, device: torch.device) -> None:
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"{args.model}, batch {args.batch_size}, {name}, torch {torch.__version__}; "
        f"median of {args.rounds} rounds x {args.steps} steps"
    )
    flags = ("amp", "channels_last", "cudnn_benchmark", "optimizer_impl", "compile", "flat_buffers")
    print("fast path: " + ", ".join(f"{flag}={getattr(args, flag)}" for flag in flags))
    print(f"{'method':<20} {'ms/step':>9} {'x SGD':>7} {'fwd':>5} {'bwd':>5} {'seq':>5} {'ideal':>6}")
    for r in results:
        ratio = f"{r['ratio_to_sgd']:.2f}" if r["ratio_to_sgd"] is not None else "-"
        print(
            f"{r['method']:<20} {r['step_ms']:>9.1f} {ratio:>7} {r['forward']:>5.2f} {r['backward']:>5.2f} "
            f"{r['sequential']:>5.2f} {r['ideal_sequential']:>6.2f}"
        )


# ----------------------------------------------------------------------------------------------
# Fused backend and epoch time


FUSED_SUFFIX, FLAT_SUFFIX, FUSED_FLAT_SUFFIX = " (fused)", " (flat)", " (fused, flat)"


def fused_benches(args: argparse.Namespace, device: torch.device) -> dict[str, Bench]:
    """The ``--fused`` methods with the fused single-device executor, the ``--flat`` ones with flat buffers
    (and both for a method in both lists)."""
    fused, flat = method_names(args.fused), method_names(args.flat)
    benches = {name + FUSED_SUFFIX: Bench(name, args, device, fused=True) for name in fused}
    benches |= {name + FLAT_SUFFIX: Bench(name, args, device, flat=True) for name in flat}
    for name in (name for name in flat if name in fused):
        benches[name + FUSED_FLAT_SUFFIX] = Bench(name, args, device, fused=True, flat=True)
    return benches


def random_cifar(n: int, device: torch.device) -> Dataset:
    """CIFAR-shaped random uint8 images and labels on ``device`` (only the train split is used)."""
    gen = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8).to(device)
    labels = torch.randint(0, 10, (n,), generator=gen).to(device)
    empty = ImageSplit(images[:0], labels[:0])
    stats = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    return Dataset("random", 10, ImageSplit(images, labels), empty, empty, *stats, True, 0.0, 0)


def time_sgd_epoch(args: argparse.Namespace, device: torch.device) -> dict[str, Any] | None:
    """One SGD epoch on ``--epoch-images`` CIFAR-shaped images through the engine's batching code."""
    n = args.epoch_images if args.epoch_images is not None else (45_000 if device.type == "cuda" else 0)
    if n <= 0:
        return None
    fast, bench = fast_path(args), Bench("sgd", args, device)
    data = random_cifar(n, device)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in train_batches(data, args.batch_size, seed=0, epoch=epoch, augment=Augment()):
            yield fast.prepare_batch(x), y

    warm = Stopwatch(device)
    with warm:  # cudnn autotuning / compilation, including the epoch's last (short) batch shape
        for step, (x, y) in enumerate(batches(0)):
            if step < args.warmup or x.shape[0] < args.batch_size:
                bench.step_fn(x, y)
    watch, steps = Stopwatch(device), 0
    with watch:
        for x, y in batches(1):
            bench.step_fn(x, y)
            steps += 1
    print(
        f"SGD epoch: {n} images, batch {args.batch_size}, {steps} steps: {watch.seconds:.2f} s "
        f"({1e3 * watch.seconds / steps:.1f} ms/step; warm-up {warm.seconds:.1f} s)"
        + ("" if n == 45_000 else f"; scaled to 45k images: {watch.seconds * 45_000 / n:.2f} s")
    )
    return {
        "method": "sgd epoch",
        "images": n,
        "steps": steps,
        "epoch_s": watch.seconds,
        "warmup_s": warm.seconds,
    }


if __name__ == "__main__":
    main()
