"""The fused single-device backend: same results as sequential evaluation, BatchNorm policy, fallbacks."""

from __future__ import annotations

import copy

import pytest
import torch
from methods_table import ROW_IDS, ROWS  # tests/ is on sys.path under pytest
from torch import nn

from sampa import io
from sampa.backends.fused import FusedExecutor, FusedSingleDevice
from sampa.config import RunConfig
from sampa.losses import make_loss
from sampa.models.pretrained import TEXT_MODEL_NAMES
from sampa.optim import GradJob, build_method
from sampa.optim.evaluation import evaluate_job
from sampa.train import train


class SmallBNNet(nn.Module):
    """conv-BN-ReLU x2, pooling, linear: a small CNN whose BatchNorm statistics matter."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1, bias=False),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


def image_batches(sizes: list[int], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, 8, 8, generator=gen), torch.randint(0, 5, (n,), generator=gen)) for n in sizes]


def make_base(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def twin_methods(name: str, base: str, **hp):
    """The same method twice from identical models: sequential reference and fused executor."""
    torch.manual_seed(0)
    reference_model = SmallBNNet().train()
    fused_model = copy.deepcopy(reference_model)
    loss = make_loss(0.1)
    reference = build_method(name, reference_model, loss, make_base(base, reference_model), **hp)
    fused = build_method(
        name, fused_model, loss, make_base(base, fused_model), executor=FusedExecutor(), **hp
    )
    return reference, fused


def assert_same_model(a: nn.Module, b: nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


# ----------------------------------------------------------------------------------------------
# SAMPa: fused == sequential


@pytest.mark.parametrize("base", ["sgd", "adamw"])
@pytest.mark.parametrize("lam", [0.0, 0.2, 1.0])
def test_fused_sampa_follows_the_sequential_trajectory(lam, base):
    reference, fused = twin_methods("sampa", base, rho=0.1, lam=lam)
    # 12 steps; a short batch in the middle forces two sequential fallbacks (5 vs 16, then 16 vs 5)
    sizes = [16] * 6 + [5] + [16] * 5
    for step, (x, y) in enumerate(image_batches(sizes)):
        expected, got = reference.step(x, y), fused.step(x, y)
        torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)
        assert torch.equal(got.correct, expected.correct)
        assert (got.forward, got.backward, got.ideal_sequential) == (
            expected.forward,
            expected.backward,
            expected.ideal_sequential,
        )
        fused_pass = step > 0 and step not in (6, 7)  # first step: one job; 6 and 7: unequal batches
        assert got.sequential == (1 if fused_pass else expected.sequential)
        assert_same_model(fused.model, reference.model)  # parameters and BN running statistics
    for g, h in zip(fused.g_y, reference.g_y, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-6)


def test_fused_executor_gives_each_job_its_own_gradient_and_bn_policy():
    torch.manual_seed(1)
    model = SmallBNNet().train()
    method = build_method("sgd", model, make_loss(0.0), make_base("sgd", model))
    x0 = method.current_point()
    points = [None, [p + 0.05 * torch.randn_like(p) for p in x0], [p - 0.03 for p in x0]]
    batches = image_batches([12, 12, 12], seed=2)
    pairs = enumerate(zip(points, batches, strict=True))
    jobs = [GradJob(x, y, point=pt, update_bn=(k == 1)) for k, (pt, (x, y)) in pairs]
    reference_model = copy.deepcopy(model)
    reference = build_method("sgd", reference_model, make_loss(0.0), make_base("sgd", reference_model))
    expected = [evaluate_job(reference, job) for job in jobs]  # sequential: only job 1 updates BN
    got = FusedExecutor().evaluate(method, jobs)
    for e, g in zip(expected, got, strict=True):
        for ge, gg in zip(e.grads, g.grads, strict=True):
            torch.testing.assert_close(gg, ge, rtol=1e-5, atol=1e-6)
            assert gg.stride() == ge.stride()
        torch.testing.assert_close(g.loss, e.loss)
        torch.testing.assert_close(g.per_sample_loss, e.per_sample_loss)
        assert torch.equal(g.correct, e.correct) and g.count == e.count
    assert_same_model(model, reference_model)
    assert int(model.features[1].num_batches_tracked) == 1


def test_fused_executor_without_update_bn_leaves_running_stats_alone():
    model = SmallBNNet().train()
    before = copy.deepcopy(model.state_dict())
    method = build_method("sgd", model, make_loss(0.0), make_base("sgd", model))
    jobs = [GradJob(x, y) for x, y in image_batches([8, 8])]
    FusedExecutor().evaluate(method, jobs)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize(
    ("sizes", "change", "fused"),
    [
        ([8, 8], {}, True),
        ([8], {}, False),  # one job: nothing to fuse
        ([8, 5], {}, False),  # unequal batch sizes
        ([8, 8], {"wrt": [0]}, False),  # restricted gradient
        ([8, 8], {"update_bn": True}, False),  # two jobs would update BN statistics
    ],
)
def test_fused_executor_falls_back_to_sequential(sizes, change, fused):
    model = SmallBNNet().train()
    reference_model = copy.deepcopy(model)
    method = build_method("sgd", model, make_loss(0.0), make_base("sgd", model))
    reference = build_method("sgd", reference_model, make_loss(0.0), make_base("sgd", reference_model))
    jobs = [GradJob(x, y, **change) for x, y in image_batches(sizes)]
    executor = FusedExecutor()
    assert executor.can_fuse(jobs) is fused
    assert executor.depth(jobs) == (1 if fused else len(jobs))
    results = executor.evaluate(method, jobs)
    for job, result in zip(jobs, results, strict=True):
        expected = evaluate_job(reference, job)
        for g, h in zip(result.grads, expected.grads, strict=True):
            torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-6)
    assert_same_model(model, reference_model)


def test_fused_sampa_on_a_model_without_buffers():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))]
    models.append(copy.deepcopy(models[0]))
    methods = [
        build_method("sampa", m, make_loss(0.0), make_base("sgd", m), executor=ex)
        for m, ex in zip(models, (None, FusedExecutor()), strict=True)
    ]
    for x, y in image_batches([8] * 4):
        records = [method.step(x, y) for method in methods]
    assert records[1].sequential == 1
    for p, q in zip(models[1].parameters(), models[0].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_fused_jobs_draw_their_own_dropout_masks():
    """Two jobs at the same point on the same batch differ only by their dropout masks: each replica
    draws its own, as each sequential pass does (vmap's default refused random operations)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(3 * 8 * 8, 5)).train()
    method = build_method("sgd", model, make_loss(0.0), make_base("sgd", model))
    ((x, y),) = image_batches([1])  # one sample: a dropped input gets no weight gradient
    first, second = FusedExecutor().evaluate(method, [GradJob(x, y), GradJob(x, y)])
    dropped = [(result.grads[0] == 0).all(dim=0) for result in (first, second)]
    for mask in dropped:
        assert 0.3 < mask.float().mean() < 0.7  # about half the inputs dropped in each replica
    assert not torch.equal(*dropped)  # ... and not the same ones


@pytest.mark.parametrize("model", TEXT_MODEL_NAMES)
def test_fused_backend_refuses_a_model_vmap_cannot_batch_before_any_work(tmp_path, capsys, model):
    from sampa.cli import main

    out = tmp_path / "run"
    argv = ["train", "--model", model, "--dataset", "synthetic-text", "--backend", "fused"]
    assert main([*argv, "--out", str(out)]) == 2
    assert f"backend 'fused' cannot batch model {model!r}" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("name", ["sgd", "sam"])
def test_methods_without_independent_jobs_run_unchanged(name):
    reference, fused = twin_methods(name, "sgd")
    for x, y in image_batches([16] * 4):
        expected, got = reference.step(x, y), fused.step(x, y)
        assert got.sequential == expected.sequential  # nothing was fused
    for p, q in zip(fused.model.parameters(), reference.model.parameters(), strict=True):
        assert torch.equal(p, q)  # the same code path: bit for bit


#: methods with stackable independent jobs (mSAM+SAMPa has several BN-updating jobs, BiSAM+SAMPa two
#: losses in one job: both fall back)
FUSED = {"sampa", "sampa-asam", "sampa-samon", "sampa-vasso", "msam"}


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_every_method_with_the_fused_executor_follows_the_sequential_one(row):
    """Same passes, never more sequential ones, the same trajectory (a short batch forces fallbacks)."""
    reference, fused = twin_methods(row.name, "sgd", **row.hparams)
    fused_steps, start = 0, 0
    for t, (x, y) in enumerate(image_batches([16, 16, 16, 5, 16, 16])):
        for method in (reference, fused):
            method.start_epoch(t // 3, 2, 3)
        indices = torch.arange(start, start + len(y))
        start += len(y)
        expected, got = reference.step(x, y, indices), fused.step(x, y, indices)
        assert (got.forward, got.backward, got.ideal_sequential) == (
            expected.forward,
            expected.backward,
            expected.ideal_sequential,
        )
        assert got.sequential <= expected.sequential
        fused_steps += got.sequential < expected.sequential
    assert (fused_steps > 0) == (row.name in FUSED)
    reference_state = reference.model.state_dict().values()
    for (name, a), b in zip(fused.model.state_dict().items(), reference_state, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m, name=name: f"{name}: {m}")


def test_jobs_with_several_losses_fall_back_to_the_sequential_path():
    """BiSAM+SAMPa's extrapolated job also differentiates a surrogate: it is not stacked, results equal."""
    reference, fused = twin_methods("sampa-bisam", "sgd")
    for x, y in image_batches([16] * 4):
        expected, got = reference.step(x, y), fused.step(x, y)
        assert got.sequential == expected.sequential
    for p, q in zip(fused.model.parameters(), reference.model.parameters(), strict=True):
        assert torch.equal(p, q)


# ----------------------------------------------------------------------------------------------
# Training runs: same results and the same run outputs


RESULT_KEYS = ("best_val_acc", "test_acc", "final_val_acc", "final_test_acc", "final_train_acc")


def test_fused_backend_run_matches_the_sequential_run(tmp_path):
    def config(backend: str) -> RunConfig:
        return RunConfig(
            model="tinycnn",
            dataset="synthetic",
            optimizer="sampa",
            hparams={"rho": 0.1, "lam": 0.2},
            epochs=2,
            batch_size=32,
            lr=0.05,
            synthetic_train_size=200,  # 180 training samples: 5 full batches and one of 20
            synthetic_test_size=100,
            device="cpu",
            threads=1,
            backend=backend,
        )

    single = train(config("single"), tmp_path / "single", log_progress=False)
    fused = train(config("fused"), tmp_path / "fused", log_progress=False)
    on_disk = io.read_json(tmp_path / "fused" / "metrics.json")
    assert set(on_disk) == set(io.read_json(tmp_path / "single" / "metrics.json"))
    assert on_disk["backend"] == {"name": "FusedSingleDevice", "world_size": 1, "executor": "FusedExecutor"}
    assert on_disk["config"]["backend"] == "fused"
    for key in RESULT_KEYS:  # accuracies on 100-180 samples: equal unless round-off flips a prediction
        assert fused[key] == pytest.approx(single[key], abs=0.02), key
    for key in ("final_train_loss", "final_val_loss", "final_test_loss"):
        assert fused[key] == pytest.approx(single[key], rel=1e-4), key
    # 6 steps per epoch. Epoch 1: the first step has one job (1), four fused steps (1 each), the short
    # last batch falls back (2). Epoch 2: the step after the short batch falls back (2), four fused
    # steps, the short last batch (2).
    assert fused["passes_per_step"]["forward"] == single["passes_per_step"]["forward"]
    assert fused["passes_per_step"]["sequential"] == pytest.approx((7 / 6 + 8 / 6) / 2)
    assert single["passes_per_step"]["sequential"] == single["passes_per_step"]["forward"]


def test_fused_backend_is_a_single_device_backend():
    backend = FusedSingleDevice(torch.device("cpu"))
    assert backend.world_size == 1 and backend.is_writer and isinstance(backend.executor, FusedExecutor)
