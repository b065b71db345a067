"""The two-device backend on CPU with gloo.

* Task mode: SAMPa on two ranks equals single-device SAMPa (lambda = 0, 0.2, 1; SGD and AdamW; a
  BatchNorm CNN), parameters and BatchNorm statistics included.
* Data mode: SGD and SAM on two ranks equal full-batch single-device SGD and SAM on a model without
  BatchNorm (odd batches included); mSAM on two ranks equals single-process mSAM with two micro-batches.
* Replica check, BatchNorm averaging, the launcher's one-line errors, a rank killed or frozen mid-run,
  and a complete ``python -m sampa train --devices 2`` run directory.
* Four ranks: SAMPa and its combinations as two groups of two equal single-device SAMPa up to the fp32
  reduction order, with bit-identical replicas and group 1's averaged BatchNorm statistics; SGD, mSAM,
  MESA and SAF data parallel on four ranks equal their single-device runs; communication per kind; a
  killed rank of a ``--devices 4`` run and its resume (slow).

All ranks of the equality scenarios run in one spawn (``_scenario_results``); the single-device
references run in the test process with the same code and ``SingleDevice``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from problems import FINISHED_RUN_FILES, process_alive
from torch import nn

from sampa import io
from sampa.backends.pair import (
    DATA,
    TASK,
    PairBackend,
    ReplicaMismatchError,
    assign_owners,
    mode_for,
    parameter_checksums,
)
from sampa.backends.single import SingleDevice
from sampa.cli import main
from sampa.config import config_from_dict
from sampa.launch import Rendezvous, external_launcher
from sampa.losses import make_loss
from sampa.models import build_model
from sampa.optim import METHODS, GradJob
from sampa.optim.flat import flatten_parameters
from sampa.train import train

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Scenarios: the same training loop on a pair or on one device


class PlainCNN(nn.Module):
    """No BatchNorm: data-parallel gradients equal full-batch gradients up to round-off."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


class DropoutCNN(PlainCNN):
    """PlainCNN with dropout before its classifier: every gradient job draws masks."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(self.drop(x.mean(dim=(2, 3))))


MODELS = {"plain": PlainCNN, "dropout": DropoutCNN}


@dataclass(frozen=True)
class Scenario:
    method: str | type
    model: str  # "tinycnn" (BatchNorm), "plain" or "dropout"
    base: str = "sgd"
    hparams: dict[str, Any] = field(default_factory=dict)
    sizes: tuple[int, ...] = (32,) * 12
    lr: float = 0.05
    flat: bool = False  # flat buffers (sampa.optim.flat)
    epoch_per_step: bool = False  # every step is an epoch, its samples a new permutation (SAF's table)
    channels_last: bool = False  # parameters in channels_last memory format


ODD_SIZES = (32, 37, 32, 31, 1, 32, 33, 32, 32, 32)  # odd halves; a one-sample batch leaves rank 1 empty
SCENARIOS = {
    "sampa-0-sgd": Scenario("sampa", "tinycnn", hparams={"lam": 0.0, "rho": 0.05}),
    "sampa-0.2-sgd": Scenario("sampa", "tinycnn", hparams={"lam": 0.2, "rho": 0.1}),
    "sampa-1-sgd": Scenario("sampa", "tinycnn", hparams={"lam": 1.0, "rho": 0.1}),
    "sampa-0.2-adamw": Scenario("sampa", "tinycnn", base="adamw", hparams={"lam": 0.2}, lr=1e-3),
    "sampa-probe": Scenario("sampa", "tinycnn", hparams={"diagnostics_every": 3}, sizes=(32,) * 6),
    "sgd-plain": Scenario("sgd", "plain", sizes=ODD_SIZES),
    "sam-plain": Scenario("sam", "plain", hparams={"rho": 0.1}, sizes=ODD_SIZES),
    "msam-tinycnn": Scenario("msam", "tinycnn", hparams={"rho": 0.1, "micro_batch_size": 16}),
    "sampa-bisam-sgd": Scenario("sampa-bisam", "tinycnn", sizes=(32,) * 6),  # jobs with two losses
    "bisam-plain": Scenario("bisam", "plain", hparams={"rho": 0.1}, sizes=ODD_SIZES),
    "esam-plain": Scenario("esam", "plain", hparams={"rho": 0.1}, sizes=ODD_SIZES),  # partial backward
    "bn-average": Scenario("sgd", "tinycnn", lr=1e-30, sizes=(32,) * 4),
    "sampa-0.2-dropout": Scenario("sampa", "dropout", hparams={"lam": 0.2, "rho": 0.1}, sizes=(32,) * 6),
}
#: the same scenarios with flat buffers, compared with the per-tensor single-device runs
FLAT = ("sampa-0.2-sgd", "sampa-bisam-sgd", "sgd-plain", "msam-tinycnn")
SCENARIOS |= {f"{name}-flat": dataclasses.replace(SCENARIOS[name], flat=True) for name in FLAT}
#: channels_last parameters with torch's fused SGD (reads gradients in the parameters' memory order)
FUSED_CL = ("sampa-0.2-sgd", "sgd-plain")
SCENARIOS |= {
    f"{name}-cl-fused": dataclasses.replace(SCENARIOS[name], base="sgd-fused", channels_last=True)
    for name in FUSED_CL
}


def run_scenario(sc: Scenario, backend: Any) -> dict[str, Any]:
    """Train a fresh model on deterministic batches through ``backend``; final state and step losses."""
    torch.manual_seed(0)
    model = MODELS[sc.model]() if sc.model in MODELS else build_model(sc.model, 10)
    if sc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = list(model.parameters())
    if sc.base == "adamw":
        base = torch.optim.AdamW(params, lr=sc.lr, weight_decay=0.05)
    else:
        fused = {"fused": True} if sc.base == "sgd-fused" else {}
        base = torch.optim.SGD(params, lr=sc.lr, momentum=0.9, weight_decay=5e-4, **fused)
    cls = METHODS[sc.method] if isinstance(sc.method, str) else sc.method
    method = cls(model, make_loss(0.1), base, executor=backend.executor, **sc.hparams)
    if sc.flat:
        flatten_parameters(method)
    gen = torch.Generator().manual_seed(1)
    losses, depth = [], []
    for epoch, n in enumerate(sc.sizes):
        x, y = torch.randn(n, 3, 16, 16, generator=gen), torch.randint(0, 10, (n,), generator=gen)
        indices = torch.arange(n)
        if sc.epoch_per_step:
            method.start_epoch(epoch, len(sc.sizes), 1)
            indices = torch.randperm(n, generator=gen)  # sample i lands on another rank each epoch
        record = method.step(*backend.shard(x, y, indices))
        losses.append(float(record.loss))
        depth.append(record.sequential)
    backend.check_replicas(model, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    backend.before_eval(model)
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "buffers_before_sync": {k: v for k, v in before.items() if "running" in k},
        "losses": losses,
        "sequential": depth,
        "stats": backend.stats(),
    }


def _rank_scenarios(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=60))
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60)
    )
    results: dict[str, Any] = {}
    for name, sc in SCENARIOS.items():
        cls = METHODS[sc.method] if isinstance(sc.method, str) else sc.method
        results[name] = run_scenario(sc, PairBackend(rank, torch.device("cpu"), mode_for(cls)))
    results["mismatch"] = _mismatch_message(rank)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(0)
        PairBackend(rank, torch.device("cpu"), TASK).check_replicas(build_model("tinycnn", 10), 1)
    results["replica_check_warnings"] = [str(w.message) for w in caught]
    results["sums"] = PairBackend(rank, torch.device("cpu"), DATA).sum_over_replicas([1.0 + rank, 10.0])
    torch.save(results, f"{out}.{rank}")
    dist.destroy_process_group()


def _mismatch_message(rank: int, moved: int = 1) -> str:
    """Replica check after one rank's parameter moved by one ulp."""
    torch.manual_seed(0)
    model = build_model("tinycnn", 10)
    if rank == moved:
        with torch.no_grad():
            w = model.fc.weight
            w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(math.inf))
    try:
        PairBackend(rank, torch.device("cpu"), TASK).check_replicas(model, 7)
    except ReplicaMismatchError as err:
        return str(err)
    return ""


@pytest.fixture(scope="module")
def pair_results(tmp_path_factory) -> list[dict[str, Any]]:
    """Both ranks' results of every scenario (one spawn for the whole module)."""
    out = tmp_path_factory.mktemp("pair") / "results"
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    mp.start_processes(_rank_scenarios, args=(store.port, str(out)), nprocs=2, start_method="spawn")
    return [torch.load(f"{out}.{rank}", weights_only=True) for rank in (0, 1)]


@pytest.fixture(autouse=True)
def one_thread():
    """Single-device references with one thread, like each rank."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def single(name: str) -> dict[str, Any]:
    return run_scenario(SCENARIOS[name], SingleDevice(torch.device("cpu")))


def assert_states_close(a: dict, b: dict, rtol: float, atol: float, keys: str = "") -> None:
    for key in a:
        if keys in key:
            torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=lambda m, k=key: f"{k}: {m}")


# ----------------------------------------------------------------------------------------------
# Task mode: SAMPa


@pytest.mark.parametrize(
    "name",
    [
        "sampa-0-sgd",
        "sampa-0.2-sgd",
        "sampa-1-sgd",
        "sampa-0.2-adamw",
        "sampa-bisam-sgd",
        "sampa-0.2-dropout",
    ],
)
def test_pair_sampa_equals_single_device_sampa(pair_results, name):
    """... with dropout too: each job draws its masks from its own seed, wherever it runs."""
    reference = single(name)
    steps = len(reference["sequential"])
    for rank in (0, 1):
        got = pair_results[rank][name]
        # same passes on the same inputs with one thread each: equal to fp32 round-off (in practice bitwise)
        assert_states_close(got["state"], reference["state"], rtol=1e-6, atol=1e-7)
        assert got["losses"] == pytest.approx(reference["losses"], rel=1e-6)
    assert pair_results[0][name]["sequential"][1:] == [1] * (steps - 1)  # the two gradients side by side
    assert reference["sequential"][1:] == [2] * (steps - 1)


@pytest.mark.parametrize("name", FLAT)
def test_pair_with_flat_buffers_equals_the_per_tensor_pair(pair_results, name):
    """Gradients exchanged as flat buffers (no per-tensor gathering); norms over one buffer (round-off)."""
    for rank in (0, 1):
        got, per_tensor = pair_results[rank][f"{name}-flat"], pair_results[rank][name]
        assert_states_close(got["state"], per_tensor["state"], rtol=1e-5, atol=1e-6)
        assert got["sequential"] == per_tensor["sequential"]


@pytest.mark.parametrize("name", FUSED_CL)
def test_channels_last_with_fused_sgd_equals_the_plain_single_device_run(pair_results, name):
    """Exchanged gradients come back with the parameters' strides: a fused optimizer kernel (raw memory)
    then applies them to the right elements."""
    reference = single(name)
    for rank in (0, 1):
        got = pair_results[rank][f"{name}-cl-fused"]["state"]
        assert_states_close(got, reference["state"], rtol=1e-5, atol=1e-6)


def test_pair_sampa_bn_statistics_are_the_single_device_ones(pair_results):
    reference = single("sampa-0.2-sgd")["state"]
    got = pair_results[0]["sampa-0.2-sgd"]
    assert_states_close(got["state"], reference, rtol=1e-6, atol=1e-7, keys="running")
    assert torch.equal(
        got["state"]["features.1.num_batches_tracked"], reference["features.1.num_batches_tracked"]
    )
    # before the synchronisation rank 0 never updated its statistics (rank 1 ran every update_bn pass)
    untouched = build_model("tinycnn", 10).state_dict()
    assert torch.equal(
        got["buffers_before_sync"]["features.1.running_mean"], untouched["features.1.running_mean"]
    )


def test_pair_sampa_with_probe_job_spreads_three_jobs(pair_results):
    reference = single("sampa-probe")
    got = pair_results[1]["sampa-probe"]
    assert_states_close(got["state"], reference["state"], rtol=1e-6, atol=1e-7)
    assert got["sequential"] == [1, 1, 1, 2, 1, 1]  # step 3 adds the probe: 3 jobs on 2 ranks


def test_owner_assignment_puts_bn_pass_on_the_statistics_rank():
    x, y = torch.zeros(1, 1), torch.zeros(1, dtype=torch.long)
    perturbed, extrapolated, probe = GradJob(x, y), GradJob(x, y, update_bn=True), GradJob(x, y)
    assert assign_owners([perturbed, extrapolated]) == [0, 1]  # Algorithm 2: GPU1 x~_t, GPU2 y_{t+1}
    assert assign_owners([extrapolated]) == [1]
    assert assign_owners([perturbed, extrapolated, probe]) == [0, 1, 0]
    assert assign_owners([perturbed]) == [0]
    assert mode_for(METHODS["sampa"]) == TASK and mode_for(METHODS["sam"]) == DATA


# ----------------------------------------------------------------------------------------------
# Data mode: SGD, SAM, mSAM


@pytest.mark.parametrize("name", ["sgd-plain", "sam-plain", "bisam-plain", "esam-plain"])
def test_data_parallel_equals_full_batch_single_device(pair_results, name):
    reference = single(name)
    for rank in (0, 1):
        assert_states_close(pair_results[rank][name]["state"], reference["state"], rtol=1e-5, atol=1e-6)
    assert pair_results[0][name]["state"]["fc.weight"].equal(pair_results[1][name]["state"]["fc.weight"])


def test_data_parallel_msam_equals_two_micro_batches_on_one_device(pair_results):
    reference = single("msam-tinycnn")
    for rank in (0, 1):
        got = pair_results[rank]["msam-tinycnn"]["state"]
        assert_states_close(got, reference["state"], rtol=1e-5, atol=1e-6, keys="weight")
        assert_states_close(got, reference["state"], rtol=1e-5, atol=1e-6, keys="bias")


def test_data_parallel_bn_statistics_are_averaged(pair_results):
    """lr ~ 0: the parameters stay put, so the averaged running mean is the full-batch running mean."""
    rank0, rank1 = (pair_results[r]["bn-average"] for r in (0, 1))
    key = "features.1.running_mean"
    expected = (rank0["buffers_before_sync"][key] + rank1["buffers_before_sync"][key]) / 2
    torch.testing.assert_close(rank0["state"][key], expected)
    assert torch.equal(rank0["state"][key], rank1["state"][key])
    full_batch = single("bn-average")["state"][key]
    torch.testing.assert_close(rank0["state"][key], full_batch, rtol=1e-5, atol=1e-6)


def test_data_parallel_sums_epoch_totals(pair_results):
    assert pair_results[0]["sums"] == [3.0, 20.0] == pair_results[1]["sums"]


def test_backend_measures_compute_and_communication(pair_results):
    stats = pair_results[0]["sampa-0.2-sgd"]["stats"]
    assert stats["compute_s"] > 0 and stats["comm_s"] >= 0
    assert stats["comm_share"] == pytest.approx(stats["comm_s"] / (stats["comm_s"] + stats["compute_s"]))
    assert stats["exchanges"] == 1 + 2 * 11  # one broadcast per job


# ----------------------------------------------------------------------------------------------
# Four ranks: SAMPa as two groups of two, every other method data parallel on four

QUAD_SIZES = (32, 37, 1, 31, 32)  # odd shards; a one-sample batch leaves a shard empty
QUAD = {
    "sampa-0.2-plain": Scenario("sampa", "plain", hparams={"lam": 0.2, "rho": 0.1}, sizes=QUAD_SIZES),
    "sampa-probe-plain": Scenario("sampa", "plain", hparams={"diagnostics_every": 2}, sizes=(32,) * 4),
    "sampa-msam-plain": Scenario("sampa-msam", "plain", hparams={"micro_batch_size": 8}, sizes=(32,) * 4),
    "sampa-bisam-plain": Scenario("sampa-bisam", "plain", sizes=(32,) * 4),  # jobs with two losses
    "sampa-bn": Scenario("sampa", "tinycnn", sizes=(32,) * 4),
    "sgd-plain": Scenario("sgd", "plain", sizes=QUAD_SIZES),
    "msam-plain": Scenario("msam", "plain", hparams={"rho": 0.1, "micro_batch_size": 8}, sizes=(32,) * 4),
    "mesa-plain": Scenario("mesa", "plain", hparams={"e_start": 0, "beta": 0.5}, sizes=(32,) * 4),
    "saf-plain": Scenario(
        "saf", "plain", hparams={"e_start": 1, "lag": 1, "lam": 1.0}, sizes=(32,) * 4, epoch_per_step=True
    ),
}


def _quad_rank(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=120))
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=4, timeout=datetime.timedelta(seconds=120)
    )
    results: dict[str, Any] = {}
    for name, sc in QUAD.items():
        results[name] = run_scenario(sc, PairBackend(rank, torch.device("cpu"), mode_for(METHODS[sc.method])))
    results["mismatch"] = _mismatch_message(rank, moved=3)
    torch.save(results, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def quad_results(tmp_path_factory) -> list[dict[str, Any]]:
    """Four ranks' results of every QUAD scenario (one spawn)."""
    out = tmp_path_factory.mktemp("quad") / "results"
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    mp.start_processes(_quad_rank, args=(store.port, str(out)), nprocs=4, start_method="spawn")
    return [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(4)]


def quad_single(name: str) -> dict[str, Any]:
    return run_scenario(QUAD[name], SingleDevice(torch.device("cpu")))


def assert_replicas_identical(results: list[dict[str, Any]], name: str) -> None:
    for rank in range(1, len(results)):
        for key, value in results[0][name]["state"].items():
            assert torch.equal(results[rank][name]["state"][key], value), (rank, key)


@pytest.mark.parametrize(
    "name", ["sampa-0.2-plain", "sampa-probe-plain", "sampa-msam-plain", "sampa-bisam-plain"]
)
def test_two_groups_of_two_equal_single_device_sampa(quad_results, name):
    """Each group splits its job over two ranks and sums the halves: the same math up to the order of
    the fp32 reduction (n_0 g_0 + n_1 g_1) / n, so 1e-5 relative after a few steps."""
    reference = quad_single(name)
    for rank in range(4):
        got = quad_results[rank][name]
        assert_states_close(got["state"], reference["state"], rtol=1e-5, atol=1e-6)
        assert got["losses"] == pytest.approx(reference["losses"], rel=1e-5)  # full-batch losses
        assert got["sequential"][1:] == [(d + 1) // 2 for d in reference["sequential"][1:]]
    assert_replicas_identical(quad_results, name)


def test_two_groups_bn_statistics_are_group_one_averaged(quad_results):
    """Group 1 (ranks 2, 3) runs the passes that update BatchNorm statistics, each on its half of the
    batch; before evaluation their average goes to every rank."""
    key = "features.1.running_mean"
    before = [quad_results[rank]["sampa-bn"]["buffers_before_sync"][key] for rank in range(4)]
    untouched = build_model("tinycnn", 10).state_dict()[key]
    assert torch.equal(before[0], untouched) and torch.equal(before[1], untouched)
    assert not torch.equal(before[2], before[3])  # each half has its own statistics
    torch.testing.assert_close(quad_results[0]["sampa-bn"]["state"][key], (before[2] + before[3]) / 2)
    assert_replicas_identical(quad_results, "sampa-bn")


@pytest.mark.parametrize("name", ["sgd-plain", "msam-plain", "mesa-plain", "saf-plain"])
def test_data_parallel_on_four_ranks_equals_single_device(quad_results, name):
    """SGD on four shards = full-batch SGD; mSAM with m = shard size = one-device mSAM with four
    micro-batches; MESA's teacher targets per shard; SAF's per-sample table holds every rank's samples
    (a sample's rank changes every epoch)."""
    reference = quad_single(name)
    for rank in range(4):
        assert_states_close(quad_results[rank][name]["state"], reference["state"], rtol=1e-5, atol=1e-6)
    assert_replicas_identical(quad_results, name)


def test_communication_is_measured_per_kind(quad_results):
    task = quad_results[0]["sampa-0.2-plain"]["stats"]
    assert task["comm_group_mib"] > 0 and task["comm_cross_mib"] > 0
    assert task["comm_s"] == pytest.approx(task["comm_group_s"] + task["comm_cross_s"])
    data = quad_results[0]["sgd-plain"]["stats"]
    assert data["comm_group_mib"] > 0 and data["comm_cross_mib"] == 0 and data["comm_cross_s"] == 0
    # rank 0 (group 0) all-reduces the perturbed job of steps 2.. (on the previous batch B_t): gradient,
    # loss, correct, flag and per-sample losses, in fp32
    params = sum(p.numel() for p in PlainCNN().parameters())
    assert task["comm_group_mib"] * 2**20 == sum(4 * (params + 3 + n) for n in QUAD_SIZES[:-1])
    assert task["comm_cross_mib"] == task["comm_group_mib"]  # then sent whole to the partner


def test_replica_mismatch_names_the_rank(quad_results):
    for rank in range(4):
        message = quad_results[rank]["mismatch"]
        assert "differ after epoch 7" in message and "'fc.weight'" in message and "rank 3" in message


# ----------------------------------------------------------------------------------------------
# Replica check


def test_replica_mismatch_is_a_clear_error_on_both_ranks(pair_results):
    for rank in (0, 1):
        message = pair_results[rank]["mismatch"]
        assert "differ after epoch 7" in message and "'fc.weight'" in message


def test_the_replica_check_warns_nothing(pair_results):
    """It runs after every epoch on every rank: a deprecation warning there is noise in every log."""
    assert [r["replica_check_warnings"] for r in pair_results] == [[], []]


def test_checksum_sees_one_ulp_and_nan():
    torch.manual_seed(0)
    model = build_model("tinycnn", 10)
    before = parameter_checksums(model)
    with torch.no_grad():
        model.fc.bias[0] = torch.nextafter(model.fc.bias[0], torch.tensor(math.inf))
    after = parameter_checksums(model)
    assert (before != after).sum() == 1
    with torch.no_grad():
        model.fc.bias[0] = math.nan
    assert torch.equal(parameter_checksums(model), parameter_checksums(model))


# ----------------------------------------------------------------------------------------------
# Launcher: bad input before anything starts


PAIR = [
    "train",
    "--model",
    "tinycnn",
    "--dataset",
    "synthetic",
    "--epochs",
    "1",
    "--devices",
    "2",
    "--synthetic-train-size",
    "200",
    "--synthetic-test-size",
    "100",
    "--batch-size",
    "32",
]


def _one_line_error(capsys, code: int, pattern: str, out: Path) -> None:
    import re

    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("sampa train: error: "), err
    assert re.search(pattern, err), err
    assert not out.exists()


def test_busy_master_port_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        monkeypatch.setenv("MASTER_PORT", str(busy.getsockname()[1]))
        code = main([*PAIR, "--device", "cpu", "--out", str(tmp_path / "run")])
    _one_line_error(capsys, code, r"MASTER_PORT \d+ is already in use on 127.0.0.1", tmp_path / "run")


@pytest.mark.parametrize(
    ("env", "pattern"),
    [
        ({"RANK": "0", "WORLD_SIZE": "3"}, "needs exactly 2 processes, but torchrun started 3"),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, "needs exactly 2 processes, but SLURM started 4"),
        ({"MASTER_PORT": "http"}, "MASTER_PORT must be an integer"),
        ({"RANK": "0"}, r"environment variable WORLD_SIZE must be an integer \(it is not set\)"),
        ({"RANK": "x", "WORLD_SIZE": "2"}, r"environment variable RANK must be an integer \(got 'x'\)"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": ""}, r"LOCAL_RANK must be an integer \(got ''\)"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, r"rank must be in \[0, 1\] \(got 2 from torchrun\)"),
        ({"SLURM_PROCID": "a", "SLURM_NTASKS": "2"}, r"SLURM_PROCID must be an integer \(got 'a'\)"),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "two"}, r"SLURM_NTASKS must be an integer \(got 'two'\)"),
        ({"MASTER_PORT": "70000"}, r"MASTER_PORT must be a port number in \[0, 65535\] \(got 70000\)"),
    ],
)
def test_launcher_environment_errors(tmp_path, capsys, monkeypatch, env, pattern):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = main([*PAIR, "--device", "cpu", "--out", str(tmp_path / "run")])
    _one_line_error(capsys, code, pattern, tmp_path / "run")


@pytest.mark.parametrize(
    ("device", "visible", "pattern"),
    [
        ("auto", 1, "needs two CUDA devices but 1 is visible; use --device cpu"),
        ("cuda", 0, "needs two CUDA devices but 0 is visible"),
        ("cuda:1", 2, "uses cuda:0 and cuda:1; use --device cuda"),
    ],
)
def test_too_few_gpus_is_a_one_line_error(tmp_path, capsys, monkeypatch, device, visible, pattern):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    code = main([*PAIR, "--device", device, "--out", str(tmp_path / "run")])
    _one_line_error(capsys, code, pattern, tmp_path / "run")


def test_missing_cifar_is_a_one_line_error_before_the_ranks_start(tmp_path, capsys):
    data = tmp_path / "data"
    args = [
        *PAIR,
        "--device",
        "cpu",
        "--no-download",
        "--data-root",
        str(data),
        "--out",
        str(tmp_path / "run"),
    ]
    code = main([a if a != "synthetic" else "cifar10" for a in args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(data) in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None),  # one task: this launcher starts both ranks
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1"}, Rendezvous(1, 2, 1, "SLURM")),
        (
            {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "2"},
            Rendezvous(0, 2, 0, "SLURM"),
        ),
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, Rendezvous(1, 2, 1, "torchrun")),
    ],
)
def test_external_launchers_are_recognised(env, expected):
    assert external_launcher(env) == expected


def test_bad_timeout_is_a_config_error(tmp_path, capsys):
    code = main([*PAIR, "--device", "cpu", "--dist-timeout-s", "0", "--out", str(tmp_path / "run")])
    _one_line_error(capsys, code, r"dist_timeout_s must be in \(0, inf\)", tmp_path / "run")


# ----------------------------------------------------------------------------------------------
# End to end: a killed rank, the resumed run's complete directory, a frozen rank


def _cli(out: Path, *flags: str) -> list[str]:
    """A two-device SAMPa run whose epochs take long enough to kill a rank during the second one."""
    run = ["--optimizer", "sampa", "--device", "cpu", "--lr", "0.05", "--out", str(out), *flags]
    return [sys.executable, "-m", "sampa", *PAIR, *run]


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
E2E = ["--epochs", "3", "--synthetic-train-size", "800"]  # 23 steps per epoch


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _ranks(launcher: int) -> list[int]:
    """The launcher's rank processes, in rank order."""
    ranks = {}
    for pid in _descendants(launcher):
        argv = Path(f"/proc/{pid}/cmdline").read_text(errors="replace").split("\0")
        if "sampa.rank" in argv:
            ranks[int(argv[argv.index("sampa.rank") + 1])] = pid
    return [ranks[rank] for rank in sorted(ranks)]


def _start_and_wait_for_first_epoch(
    cmd: list[str], out: Path, count: int = 2
) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "log.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1]
    ranks = _ranks(proc.pid)
    assert len(ranks) == count, ranks
    return proc, ranks


def _assert_failed_cleanly(
    proc: subprocess.Popen, family: list[int], out: Path, within_s: float, prefix: str = "two-device"
) -> str:
    started = time.time()
    _, err = proc.communicate(timeout=within_s + 30)
    assert time.time() - started < within_s, err
    assert proc.returncode == 1, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"sampa train: error: {prefix} run failed: "), err
    deadline = time.time() + 10  # the multiprocessing resource tracker exits once the launcher is gone
    while any(process_alive(pid) for pid in family) and time.time() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in family if process_alive(pid)]
    assert not (out / "metrics.json").exists()
    return line


LINUX_PROC = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the ranks through /proc")


@LINUX_PROC
def test_killed_rank_fails_cleanly_and_the_same_command_resumes_to_the_one_device_result(tmp_path):
    out = tmp_path / "pair"
    cmd = _cli(out, *E2E, "--dist-timeout-s", "30")
    proc, ranks = _start_and_wait_for_first_epoch(cmd, out)
    family = _descendants(proc.pid)
    os.kill(ranks[-1], signal.SIGKILL)
    assert "killed by SIGKILL" in _assert_failed_cleanly(proc, family, out, within_s=30)
    assert (out / "checkpoint.pt").exists()

    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "resuming after epoch" in done.stderr
    metrics = io.read_json(out / "metrics.json")
    assert metrics["status"] == "complete" and metrics["provenance"]["resumes"] == 1
    backend = metrics["backend"]
    assert (backend["mode"], backend["dist_backend"], backend["world_size"]) == ("task", "gloo", 2)
    assert set(backend["seconds"]) == {"comm_s", "comm_group_s", "comm_cross_s", "compute_s"}
    assert 0 <= backend["share_of_train_time"]["comm_s"] < 1
    per_rank = metrics["memory"]["per_rank"]
    assert len(per_rank) == 2 and all(m["cpu_peak_rss_mib"] > 0 for m in per_rank)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all({"backend_comm_s", "backend_compute_s", "backend_comm_share"} <= set(r) for r in rows)
    # no temporary file either: the writer (rank 0) is the only rank that writes here, begin() removes a
    # killed write's leftover on resuming and finish() tidies them after metrics.json, as on one device
    assert sorted(p.name for p in out.iterdir()) == FINISHED_RUN_FILES
    # the same run on one device, uninterrupted: same losses, accuracies and best checkpoint
    cfg = config_from_dict(io.read_json(out / "config.json"))
    cfg.devices, cfg.threads = 1, 1
    reference = train(cfg, tmp_path / "single", log_progress=False)
    single_rows = [json.loads(x) for x in (tmp_path / "single" / "log.jsonl").read_text().splitlines()]
    for a, b in zip(rows, single_rows, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    assert metrics["best_val_acc"] == reference["best_val_acc"]
    assert metrics["final_test_loss"] == pytest.approx(reference["final_test_loss"], rel=1e-5)


@pytest.mark.slow
@LINUX_PROC
def test_frozen_rank_stops_the_run_after_the_collective_timeout(tmp_path):
    out = tmp_path / "run"
    proc, ranks = _start_and_wait_for_first_epoch(_cli(out, *E2E, "--dist-timeout-s", "5"), out)
    family = _descendants(proc.pid)
    os.kill(ranks[0], signal.SIGSTOP)
    assert "dist_timeout_s=5" in _assert_failed_cleanly(proc, family, out, within_s=5 + 20)


@pytest.mark.slow
def test_torchrun_gives_the_self_launched_result(tmp_path):
    flags = ["--optimizer", "sgd", "--device", "cpu", "--lr", "0.05"]
    runs = {}
    for name, prefix in [("self", ["-m", "sampa"]), ("torchrun", TORCHRUN)]:
        cmd = [sys.executable, *prefix, *PAIR, *flags, "--out", str(tmp_path / name)]
        done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        runs[name] = io.read_json(tmp_path / name / "metrics.json")
    for key in ("final_train_loss", "final_val_loss", "final_test_loss", "best_val_acc"):
        assert runs["torchrun"][key] == runs["self"][key]
    assert runs["torchrun"]["backend"]["mode"] == "data"


TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "sampa"]


@pytest.mark.slow
@LINUX_PROC
def test_four_devices_killed_rank_fails_cleanly_and_resumes_to_the_uninterrupted_run(tmp_path):
    """SAMPa on two groups of two: a rank of group 1 dies, the run ends with one line naming it, and the
    same command resumes to the log of a run that was never interrupted."""
    four = ["--devices", "4", "--dist-timeout-s", "30"]
    out = tmp_path / "resumed"
    cmd = _cli(out, *E2E, *four)
    proc, ranks = _start_and_wait_for_first_epoch(cmd, out, count=4)
    family = _descendants(proc.pid)
    os.kill(ranks[3], signal.SIGKILL)
    line = _assert_failed_cleanly(proc, family, out, within_s=30, prefix="4-device")
    assert "rank 3: killed by SIGKILL" in line
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "resuming after epoch" in done.stderr, done.stderr
    whole = subprocess.run(_cli(tmp_path / "whole", *E2E, *four), env=ENV, capture_output=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    metrics = io.read_json(out / "metrics.json")
    assert (metrics["backend"]["groups"], metrics["backend"]["group_size"]) == (2, 2)
    assert {"comm_group_s", "comm_cross_s"} <= set(metrics["backend"]["seconds"])
    keys = ("train_loss", "val_loss", "val_acc")
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    reference = [json.loads(x) for x in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in reference]


# ----------------------------------------------------------------------------------------------
# The workflow's multi-node path on one machine: sampa.jobs starts one rank per task through srun (a
# stand-in, tests/fake_srun.py), and each task joins the group through the SLURM environment


FAKE_SRUN = Path(__file__).with_name("fake_srun.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _four_ranks(*flags: str) -> list[str]:
    """``python -m sampa train`` arguments of a SAMPa run on two groups of two CPU ranks."""
    return [*PAIR[1:], "--devices", "4", "--optimizer", "sampa", "--device", "cpu", "--lr", "0.05", *flags]


def _srun_job(out: Path, *flags: str) -> list[str]:
    """The training job of a run wider than one node, as the workflow's rule runs it."""
    srun = f"{sys.executable} {FAKE_SRUN} --nodes=2 --ntasks=4 --ntasks-per-node=2 --gpus-per-task=1"
    job = [sys.executable, "-m", "sampa.jobs", "train", "--out", str(out), f"--launcher={srun}", "--"]
    return [*job, *_four_ranks(*flags)]


@pytest.mark.slow
def test_srun_tasks_give_the_self_launched_four_device_result(tmp_path):
    env = {**ENV, "MASTER_PORT": str(_free_port())}
    job = subprocess.run(_srun_job(tmp_path / "srun"), env=env, capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr
    assert json.loads((tmp_path / "srun" / "outcome.json").read_text())["status"] == "complete", job.stderr
    own = [sys.executable, "-m", "sampa", "train", *_four_ranks(), "--out", str(tmp_path / "self")]
    done = subprocess.run(own, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    runs = {name: io.read_json(tmp_path / name / "metrics.json") for name in ("srun", "self")}
    for key in ("final_train_loss", "final_val_loss", "final_test_loss", "best_val_acc"):
        assert runs["srun"][key] == runs["self"][key]
    backend = runs["srun"]["backend"]
    assert (backend["mode"], backend["world_size"]) == ("task", 4)
    assert (backend["groups"], backend["group_size"]) == (2, 2)


@pytest.mark.slow
@LINUX_PROC
def test_a_dead_srun_task_of_the_second_group_ends_the_job_and_the_rerun_resumes(tmp_path):
    """Rank 3 (group 1) dies mid-run; no srun --kill-on-bad-exit here: the three others end on their own
    within the collective timeout, each with one line, and the job records a failed run (no metrics.json)
    that the same command resumes."""
    out, pids = tmp_path / "run", tmp_path / "pids"
    env = {**ENV, "MASTER_PORT": str(_free_port()), "FAKE_SRUN_PIDS": str(pids)}
    cmd = _srun_job(out, *E2E, "--dist-timeout-s", "30")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "log.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    ranks = [int(pid) for pid in pids.read_text().split()]
    os.kill(ranks[3], signal.SIGKILL)
    killed = time.time()
    _, err = proc.communicate(timeout=120)
    assert time.time() - killed < 30 + 15, err
    assert proc.returncode == 0, err  # a failed run is a record, not a failed job
    outcome = json.loads((out / "outcome.json").read_text())
    assert outcome["status"] == "failed" and "\n" not in outcome["reason"], outcome
    errors = [line for line in err.splitlines() if line.startswith("sampa train: error: rank ")]
    assert sorted(line.split()[4] for line in errors) == ["0:", "1:", "2:"], err
    assert not [pid for pid in ranks if process_alive(pid)] and not (out / "metrics.json").exists()
    rerun = subprocess.run(cmd, env={**env, "MASTER_PORT": str(_free_port())}, capture_output=True, text=True)
    assert rerun.returncode == 0 and "resuming after epoch" in rerun.stderr, rerun.stderr
    assert json.loads((out / "outcome.json").read_text())["status"] == "complete"
