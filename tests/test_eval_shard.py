"""Sharded evaluation (``sampa.train.evaluate_sharded``): each rank evaluates its slice of the eval set.

On two CPU ranks (gloo, data mode) every rank evaluates a disjoint, near-equal slice (odd sizes: one
row more on rank 0), and every rank ends with the scores of one device evaluating every row: an image
split (top-1 and loss), and text tasks scored by Matthews correlation (CoLA), accuracy and F1 (MRPC)
and Pearson/Spearman (STS-B, a regression), which need every row's prediction, not a sum. Scores of
counts (accuracy, F1, MCC; Spearman's ranks) are compared exactly, scores of float values (mean loss,
Pearson, STS-B's task score) to 1e-6 relative: a row's float32 outputs may differ in the last bits with
the batch it is computed in (measured: loss 2e-9 relative on CoLA, Pearson 1e-7 on STS-B, 0 on images).
ImageNet runs through the engine are in tests/test_imagenet_ranks.py.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from problems import TinyText
from torch import nn

from sampa.backends.pair import DATA, PairBackend
from sampa.backends.single import SingleDevice
from sampa.data import load_dataset
from sampa.data.glue import TextData, TextSplit, synthetic_text_data
from sampa.data.sources import TextSource
from sampa.metrics.scores import merge_columns
from sampa.models import build_model
from sampa.train import evaluate, evaluate_sharded

IMAGES, TEXTS, BATCH = 101, 37, 16  # odd: rank 0 evaluates one row more
TASKS = ("cola", "mrpc", "stsb")
FLOAT_SCORES = ("loss", "pearson", "task_score")  # task_score: STS-B's is (pearson + spearman) / 2


def _counting(model: nn.Module, rows: list[int]) -> nn.Module:
    """``model``, appending the rows of every forward pass in eval mode to ``rows``."""

    def count(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not module.training:
            rows.append(len(args[0] if args else kwargs["input_ids"]))

    model.register_forward_pre_hook(count, with_kwargs=True)
    return model


def _text(task: str) -> TextSource:
    """The synthetic text task as CoLA/MRPC (two classes) or STS-B (float scores 0-5)."""
    data = synthetic_text_data(num_labels=2, train_size=8, eval_size=TEXTS)
    if task == "stsb":
        scores = data.eval.labels.float() * 2.5 + torch.linspace(0, 2.5, TEXTS)
        data = TextData("stsb", 1, data.train, TextSplit(data.eval.tokens, scores))
    return TextSource(data, task)


def _scores(backend: Any) -> tuple[dict[str, dict[str, Any]], dict[str, list[int]]]:
    """Scores of fixed models on every eval set through ``backend``, and the rows each evaluated."""
    scores, rows = {}, {}
    data = load_dataset("synthetic", seed=0, synthetic_train_size=20, synthetic_test_size=IMAGES)
    torch.manual_seed(0)
    model = _counting(build_model("tinycnn", 10), rows.setdefault("images", []))
    scores["images"] = evaluate_sharded(model, data, "test", BATCH, backend)
    for task in TASKS:
        torch.manual_seed(1)
        model = _counting(TinyText(vocab=64, classes=1 if task == "stsb" else 2), rows.setdefault(task, []))
        scores[task] = evaluate_sharded(model, _text(task), "val", BATCH, backend)
    return scores, rows


def _rank(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=60))
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60)
    )
    torch.save(_scores(PairBackend(rank, torch.device("cpu"), DATA, 2)), f"{out}/{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[tuple[dict, dict]]:
    out = tmp_path_factory.mktemp("eval")
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    mp.start_processes(_rank, args=(store.port, str(out)), nprocs=2, start_method="spawn")
    return [torch.load(Path(out) / f"{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def one_device() -> tuple[dict, dict]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _scores(SingleDevice(torch.device("cpu")))
    finally:
        torch.set_num_threads(previous)


def assert_scores_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Equal keys; scores of float outputs to 1e-6 relative, scores of counts exactly."""
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key in FLOAT_SCORES and value is not None:
            assert got[key] == pytest.approx(value, rel=1e-6), key
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("name", ["images", *TASKS])
def test_two_ranks_evaluate_disjoint_halves_and_equal_one_device(two_ranks, one_device, name):
    want, rows = one_device
    size = IMAGES if name == "images" else TEXTS
    assert sum(rows[name]) == size  # one device: every row once
    for rank, (scores, seen) in enumerate(two_ranks):
        assert sum(seen[name]) == ((size + 1) // 2 if rank == 0 else size // 2)
        assert_scores_equal(scores[name], want[name])


def test_the_text_metrics_compared_are_informative(one_device):
    """A constant prediction would make MCC and F1 zero on both sides: the comparison would be empty."""
    scores, _ = one_device
    assert scores["cola"]["mcc"] != 0 and 0 < scores["mrpc"]["f1"] < 1
    assert 0 < abs(scores["stsb"]["spearman"]) < 1 and scores["stsb"]["acc"] is None


def test_one_device_sharded_evaluation_is_the_plain_one():
    data = load_dataset("synthetic", seed=0, synthetic_train_size=20, synthetic_test_size=IMAGES)
    torch.manual_seed(0)
    model = build_model("tinycnn", 10)
    got = evaluate_sharded(model, data, "test", BATCH, SingleDevice(torch.device("cpu")))
    assert got == evaluate(model, data, "test", IMAGES)  # one batch of all rows: the same sums


def _columns(*indices: list[int]) -> list[dict[str, torch.Tensor]]:
    return [{"index": torch.tensor(i), "loss": torch.zeros(len(i), dtype=torch.float64)} for i in indices]


def test_merge_puts_rows_in_eval_order_and_skips_empty_parts():
    parts = _columns([3, 4], [], [0, 1, 2])
    parts[0]["loss"] += torch.tensor([3.0, 4.0], dtype=torch.float64)
    merged = merge_columns(parts)
    assert merged["index"].tolist() == [0, 1, 2, 3, 4]
    assert merged["loss"].tolist() == [0, 0, 0, 3, 4]


@pytest.mark.parametrize("parts", [([0, 1], [1, 2]), ([0, 1], [3]), ([1], [2])])
def test_merge_refuses_rows_missing_or_evaluated_twice(parts):
    with pytest.raises(RuntimeError, match="not each eval row exactly once"):
        merge_columns(_columns(*parts))
