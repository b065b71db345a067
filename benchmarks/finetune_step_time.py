"""Step time of AdamW, SAM and SAMPa on the fine-tuning models of Tables 5 and 6, side by side.

    python benchmarks/finetune_step_time.py          # paper sizes: ViT-B/16 batch 128, BERT-base 32x128
    python benchmarks/finetune_step_time.py --device cuda --backend fused
    python benchmarks/finetune_step_time.py --small  # CPU-sized: batch 4 (ViT) and 4x128 (BERT)

Models are randomly initialised at their full size (the step costs the same as with pretrained weights):
timm's ViT-B/16 on CIFAR-shaped 32x32 batches resized to 224 inside the model, and BERT-base-uncased's
architecture on random token ids of ``--seq-len`` tokens (mappings of input_ids, attention_mask,
token_type_ids). Base optimizer AdamW, global-norm clipping is not included (one fused pass over the
gradients, the same for every method). Methods are timed in interleaved rounds: ``--warmup`` untimed
steps, then ``--steps`` steps between two device synchronisations; the table shows the median over rounds
of the mean step time and the ratio to AdamW. SAMPa on one device computes its two gradients one after
the other (``--backend single``) or in one batched pass (``--backend fused``); on two GPUs they run at
the same time (the paper's setting, not measured here).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from sampa.backends.fused import FusedExecutor
from sampa.backends.single import resolve_device
from sampa.metrics import synchronize
from sampa.optim import build_method

METHODS = {"adamw": ("sgd", {}), "sam": ("sam", {"rho": 0.05}), "sampa": ("sampa", {"rho": 0.1, "lam": 0.2})}
PAPER_BATCH = {"vit": 128, "bert": 32}  # Section 5.1 (batch 128) for ViT; Table 6 for BERT


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vit,bert", help="comma-separated from: vit, bert")
    p.add_argument("--methods", default="adamw,sam,sampa", help=f"comma-separated from: {', '.join(METHODS)}")
    p.add_argument("--vit-batch", type=int, default=PAPER_BATCH["vit"])
    p.add_argument("--bert-batch", type=int, default=PAPER_BATCH["bert"])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--small", action="store_true", help="batch 4 for both models (CPU)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default="single", choices=("single", "fused"))
    p.add_argument("--threads", type=int, default=0)
    return p.parse_args()


def vit_problem(batch: int, device: torch.device) -> tuple[Callable[[], torch.nn.Module], Any]:
    from sampa.models.vit import vit_b16

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 32, 32, generator=gen).to(device)
    labels = torch.randint(0, 100, (batch,), generator=gen).to(device)
    return lambda: vit_b16(100, weights=None), (images, labels)


def bert_problem(batch: int, seq_len: int, device: torch.device) -> tuple[Callable[[], torch.nn.Module], Any]:
    from transformers import BertConfig, BertForSequenceClassification

    from sampa.models.bert import BertClassifier

    gen = torch.Generator().manual_seed(0)
    tokens = {
        "input_ids": torch.randint(1000, 30522, (batch, seq_len), generator=gen).to(device),
        "attention_mask": torch.ones(batch, seq_len, dtype=torch.long, device=device),
        "token_type_ids": torch.zeros(batch, seq_len, dtype=torch.long, device=device),
    }
    labels = torch.randint(0, 2, (batch,), generator=gen).to(device)
    return lambda: BertClassifier(BertForSequenceClassification(BertConfig(num_labels=2))), (tokens, labels)


def build(make_model: Callable[[], torch.nn.Module], method: str, device: torch.device, backend: str):
    name, hparams = METHODS[method]
    torch.manual_seed(0)
    model = make_model().to(device)
    loss = lambda logits, y: torch.nn.functional.cross_entropy(logits, y, reduction="none")  # noqa: E731
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    executor = FusedExecutor() if backend == "fused" else None
    return build_method(name, model, loss, opt, executor=executor, **hparams)


def time_steps(method: Any, batch: Any, steps: int, device: torch.device) -> float:
    """Mean seconds per step over ``steps`` steps between two synchronisations."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        method.step(*batch)
    synchronize(device)
    return (time.perf_counter() - start) / steps


def bench_model(label: str, make_model, batch, args: argparse.Namespace, device: torch.device) -> None:
    methods = {m: build(make_model, m, device, args.backend) for m in args.methods.split(",")}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.rounds):
        for name, method in methods.items():
            for _ in range(args.warmup):
                method.step(*batch)
            times[name].append(time_steps(method, batch, args.steps, device))
    base = statistics.median(times["adamw"]) if "adamw" in times else None
    print(f"\n{label}")
    print(f"{'method':<8} {'step s':>9} {'x AdamW':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        ratio = f"{median / base:8.2f}" if base else f"{'-':>8}"
        print(f"{name:<8} {median:9.3f} {ratio}")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    vit_batch, bert_batch = (4, 4) if args.small else (args.vit_batch, args.bert_batch)
    print(f"device {device}, backend {args.backend}, torch threads {torch.get_num_threads()}")
    for model in args.models.split(","):
        if model == "vit":
            make, batch = vit_problem(vit_batch, device)
            bench_model(f"ViT-B/16 (224 px), batch {vit_batch}", make, batch, args, device)
        elif model == "bert":
            make, batch = bert_problem(bert_batch, args.seq_len, device)
            bench_model(f"BERT-base, batch {bert_batch} x {args.seq_len} tokens", make, batch, args, device)
        else:
            raise SystemExit(f"unknown model {model!r}; choose from: vit, bert")


if __name__ == "__main__":
    main()
