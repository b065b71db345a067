"""Flat buffers (``flat_buffers``): the same math as per-tensor lists, on one contiguous buffer per vector."""

from __future__ import annotations

import copy

import pytest
import torch
from methods_table import ROW_IDS
from problems import assert_resume_is_exact, tiny_run
from test_fastpath import assert_same_state, reference
from test_fastpath import build as build_fast
from test_fastpath import run as run_fast
from test_fused import SmallBNNet, image_batches  # tests/ is on sys.path under pytest
from torch import nn

from sampa.backends.fastpath import FastPath
from sampa.backends.fused import FusedExecutor
from sampa.cli import _parser as cli_parser
from sampa.cli import config_from_args
from sampa.config import ConfigError, RunConfig, validate
from sampa.losses import make_loss
from sampa.optim import Method, build_method, tensors
from sampa.optim.flat import FlatLayout, FlatVector, flatten_parameters, plain
from sampa.train import train


def odd_tensors() -> list[torch.Tensor]:
    """Contiguous, channels_last (with size-1 dims too), 0-d and non-dense (expanded) tensors."""
    gen = torch.Generator().manual_seed(0)
    conv = torch.randn(4, 3, 2, 2, generator=gen).contiguous(memory_format=torch.channels_last)
    pointwise = torch.randn(5, 3, 1, 1, generator=gen).contiguous(memory_format=torch.channels_last)
    expanded = torch.randn(3, 1, generator=gen).expand(3, 4)
    return [torch.randn(7, generator=gen), conv, pointwise, torch.randn((), generator=gen), expanded]


# ----------------------------------------------------------------------------------------------
# Layout and vectors


def test_layout_round_trips_values_and_keeps_memory_formats():
    ts = odd_tensors()
    layout = FlatLayout(ts)
    flat = layout.flatten(ts)
    assert flat.shape == (sum(t.numel() for t in ts),)
    views = layout.views(flat)
    for view, t in zip(views, ts, strict=True):
        assert torch.equal(view, t)
        assert view.data_ptr() >= flat.data_ptr()  # a view of the buffer, not a copy
    assert views[1].stride() == ts[1].stride() and views[2].is_contiguous(memory_format=torch.channels_last)
    assert views[4].is_contiguous()  # a non-dense tensor is stored contiguous


def test_views_are_differentiable_as_one_concatenation():
    ts = odd_tensors()
    layout = FlatLayout(ts)
    leaf = layout.flatten(ts).requires_grad_(True)
    loss = sum((k + 1) * v.sum() for k, v in enumerate(layout.views(leaf)))
    (grad,) = torch.autograd.grad(loss, leaf)
    expected = torch.cat([torch.full((t.numel(),), float(k + 1)) for k, t in enumerate(ts)])
    assert torch.equal(grad, expected)


def test_stacked_buffers_give_stacked_views():
    ts = odd_tensors()
    layout = FlatLayout(ts)
    stacked = torch.stack([layout.flatten(ts), 2 * layout.flatten(ts)])
    for view, t in zip(layout.views(stacked), ts, strict=True):
        assert view.shape == (2, *t.shape)
        assert torch.equal(view[1], 2 * t)


def test_flat_vector_is_a_read_only_sequence_that_torch_list_functions_refuse():
    ts = odd_tensors()
    layout = FlatLayout(ts)
    v = FlatVector(layout.flatten(ts), layout)
    assert len(v) == len(ts) and torch.equal(v[1], ts[1]) and len(v[1:3]) == 2
    assert all(torch.equal(a, b) for a, b in zip(v, ts, strict=True))
    with pytest.raises(TypeError):
        v[0] = ts[0]  # type: ignore[index]
    with pytest.raises(TypeError):  # loud, never a silently empty list
        torch._foreach_mul(v, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"1-d buffer of 83 elements, not \(3,\)"):
        FlatVector(torch.zeros(3), layout)
    assert plain({"g": v, "rest": [v, None]})["rest"][0].__class__ is list


@pytest.mark.usefixtures("float64")
def test_vector_helpers_on_flat_vectors_equal_the_per_tensor_helpers():
    gen = torch.Generator().manual_seed(1)
    shapes = [(4, 3, 2, 2), (3,), (2, 5)]
    xs, ys, zs = ([torch.randn(s, generator=gen) for s in shapes] for _ in range(3))
    layout = FlatLayout(xs)
    fx, fy, fz = (FlatVector(layout.flatten(v), layout) for v in (xs, ys, zs))
    scale = torch.tensor(0.3)
    cases = {
        "global_norm": (lambda a, b, c: tensors.global_norm(a)),
        "dot": (lambda a, b, c: tensors.dot(a, b)),
        "scaled": (lambda a, b, c: tensors.scaled(a, scale)),
        "add": (lambda a, b, c: tensors.add(a, b, alpha=-0.5)),
        "add_tensor_alpha": (lambda a, b, c: tensors.add(a, b, alpha=scale)),
        "combine": (lambda a, b, c: tensors.combine(a, b, 0.8, 0.2)),
        "normalized": (lambda a, b, c: tensors.normalized(a, 0.1, 1e-12)),
        "clone": (lambda a, b, c: tensors.clone(a)),
        "cosine": (lambda a, b, c: tensors.cosine(a, b)),
        "distance": (lambda a, b, c: tensors.distance(a, b)),
        "reject": (lambda a, b, c: tensors.reject(a, b)),
        "weighted_sum": (lambda a, b, c: tensors.weighted_sum([a, b, c], [0.5, 0.25, 0.25])),
    }
    for name, fn in cases.items():
        expected, got = fn(xs, ys, zs), fn(fx, fy, fz)
        if isinstance(expected, torch.Tensor):
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=name)
            continue
        assert isinstance(got, FlatVector), name
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    mixed = tensors.add(fx, ys)  # a flat and a plain vector: per tensor, no FlatVector
    assert not isinstance(mixed, FlatVector) and torch.equal(mixed[0], xs[0] + ys[0])


# ----------------------------------------------------------------------------------------------
# Parameters


def test_flatten_parameters_keeps_values_formats_and_identities():
    model = SmallBNNet().to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = [id(p) for p in model.parameters()]
    method = build_method("sam", model, make_loss(0.0), torch.optim.SGD(model.parameters(), lr=0.1))
    flat = flatten_parameters(method)
    assert [id(p) for p in model.parameters()] == ids
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    storage = flat.buffer.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == storage for p in model.parameters())
    point = method.current_point()
    assert isinstance(point, FlatVector) and point.flat is flat.buffer
    model.float().to(torch.float64)  # parameters moved out of the buffer: a clear error, not stale values
    with pytest.raises(RuntimeError, match="no longer live in the flat buffer"):
        method.current_point()


def test_flatten_parameters_needs_one_dtype():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[1].double()
    method = build_method("sgd", model, make_loss(0.0), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r"one parameter dtype and device, got torch\.float32 on cpu, torch"):
        flatten_parameters(method)


# ----------------------------------------------------------------------------------------------
# Methods: flat buffers follow the per-tensor reference


def build(
    name: str, *, flat: bool, fast: FastPath | None = None, fused: bool = False, seed: int = 0
) -> Method:
    torch.manual_seed(seed)
    fast = fast or FastPath()
    model = fast.prepare_model(SmallBNNet().train())
    base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    method = build_method(name, model, make_loss(0.1), base, executor=FusedExecutor() if fused else None)
    if flat:
        flatten_parameters(method)
    return method


def train_steps(method: Method, sizes: list[int], fast: FastPath | None = None) -> None:
    fast = fast or FastPath()
    batches = image_batches(sizes)
    start = 0
    for epoch in range(2):
        method.start_epoch(epoch, 2, len(batches) // 2)
        for x, y in batches[epoch * len(batches) // 2 : (epoch + 1) * len(batches) // 2]:
            method.step(fast.prepare_batch(x), y, torch.arange(start, start + len(y)) % 64)
            start += len(y)


def assert_same_model(got: nn.Module, expected: nn.Module, rtol: float, atol: float) -> None:
    for (name, x), y in zip(got.state_dict().items(), expected.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("name", ROW_IDS)
def test_every_method_with_flat_buffers_follows_the_reference(name):
    sizes = [16, 16, 16, 16, 5, 16, 16, 16]
    reference, flat = build(name, flat=False), build(name, flat=True)
    train_steps(reference, sizes)
    train_steps(flat, sizes)
    assert_same_model(flat.model, reference.model, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_flat_sampa_follows_the_reference_fused_and_channels_last(fused, channels_last):
    fast = FastPath(channels_last=channels_last, flat_buffers=True)
    sizes = [16, 16, 16, 5, 16, 16]
    method = build("sampa", flat=False, fast=fast, fused=fused)
    step = fast.prepare_method(method)  # flattens
    assert isinstance(method.current_point(), FlatVector)
    for x, y in image_batches(sizes):
        step(fast.prepare_batch(x), y)
    assert isinstance(method.g_y, FlatVector)
    reference = build("sampa", flat=False)
    for x, y in image_batches(sizes):
        reference.step(x, y)
    assert_same_model(method.model, reference.model, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_compiled_flat_step_follows_the_reference(fused):
    """torch.compile of the whole step traces flat vectors without extra graph breaks (aot_eager)."""
    fast = FastPath(compile="step", compile_backend="aot_eager", flat_buffers=True)
    method = build_fast(fast, fused=fused)
    try:
        run_fast(method, fast)
    finally:
        torch._dynamo.reset()
    assert isinstance(method.g_y, FlatVector)
    assert_same_state(method, reference())


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("name", ["sampa", "sampa-msam", "vsam", "looksam", "sampa-vasso", "sampa-bisam"])
def test_resume_with_flat_buffers_is_exact_and_vectors_come_back_flat(name, tmp_path):
    def fresh():
        method = build(name, flat=True)
        return method.model, method

    data = image_batches([16] * 6)
    assert_resume_is_exact(fresh, data, 3, tmp_path / "ckpt.pt")
    _, method = fresh()
    for x, y in data[:2]:
        method.step(x, y)
    state = copy.deepcopy(method.state_dict())
    _, loaded = fresh()
    loaded.load_state_dict(state)
    vectors = [v for v in vars(loaded).values() if isinstance(v, FlatVector)]
    assert vectors or name in ("vsam", "looksam")  # those keep a vector only after a SAM step


# ----------------------------------------------------------------------------------------------
# Runs and configuration


def test_flat_buffers_run_matches_the_reference_run(tmp_path):
    cfg = tiny_run(optimizer="sampa", epochs=2)
    reference = train(cfg, tmp_path / "ref", log_progress=False)
    flat = train(RunConfig(**(cfg.to_dict() | {"flat_buffers": True})), tmp_path / "flat", log_progress=False)
    for key in ("final_train_loss", "final_val_loss", "final_test_loss"):
        assert flat[key] == pytest.approx(reference[key], rel=1e-4), key
    assert flat["config"]["flat_buffers"]


def test_flat_buffers_run_resumes_to_the_uninterrupted_result(tmp_path):
    cfg = tiny_run(optimizer="sampa", epochs=3, flat_buffers=True)
    whole = train(cfg, tmp_path / "whole", log_progress=False)
    assert train(cfg, tmp_path / "cut", log_progress=False, stop_after=1) is None
    resumed = train(cfg, tmp_path / "cut", log_progress=False)
    for key in ("final_train_loss", "final_val_loss", "final_test_loss", "test_acc"):
        assert resumed[key] == whole[key], key


def test_cli_flag_and_bad_value():
    args = cli_parser().parse_args(["train", "--out", "x", "--flat-buffers"])
    assert config_from_args(args).flat_buffers is True
    with pytest.raises(ConfigError, match="flat_buffers must be true or false") as err:
        validate(RunConfig(flat_buffers="yes"))  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
