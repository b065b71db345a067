"""The fast path: every flag runs the same math as the fp32 eager reference (checked on CPU to tolerance)."""

from __future__ import annotations

import copy

import pytest
import torch
from problems import tiny_run
from test_fused import SmallBNNet, image_batches  # tests/ is on sys.path under pytest
from torch import nn

from sampa import io
from sampa.backends.fastpath import FastPath, optimizer_kwargs
from sampa.backends.fused import FusedExecutor
from sampa.cli import _parser as cli_parser
from sampa.cli import config_from_args, main
from sampa.config import ConfigError, RunConfig, validate
from sampa.losses import make_loss
from sampa.optim import Method, build_method
from sampa.optim.flat import flatten_parameters
from sampa.optim.lookahead import lookahead
from sampa.train import RunError, train

FAST_PATH_KEYS = ("backend", "amp", "channels_last", "cudnn_benchmark", "optimizer_impl", "compile")
SIZES = [16, 16, 16, 5, 16, 16]  # a short batch: SAMPa's fused executor falls back around it


def build(fast: FastPath, name: str = "sampa", *, fused: bool = False, impl: str = "default") -> Method:
    torch.manual_seed(0)
    model = fast.prepare_model(SmallBNNet().train())
    base = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, **optimizer_kwargs(impl)
    )
    executor = FusedExecutor() if fused else None
    hp = {"rho": 0.1, "lam": 0.2} if name == "sampa" else {}
    return build_method(name, model, make_loss(0.1), base, executor=executor, **hp)


def run(method: Method, fast: FastPath, sizes: list[int] = SIZES, seed: int = 0, lr0: float = 0.05) -> list:
    """Steps through the fast path, with a learning rate that changes every step (as ``cosine_iter``)."""
    step = fast.prepare_method(method)
    records = []
    for i, (x, y) in enumerate(image_batches(sizes, seed)):
        for group in method.base_optimizer.param_groups:
            group["lr"] = lr0 / (1 + i)
        records.append(step(fast.prepare_batch(x), y))
    return records


def state(method: Method) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().contiguous() for k, v in method.model.state_dict().items()}


def assert_same_state(got: Method, expected: Method, **tol: float) -> None:
    tol = tol or {"rtol": 1e-5, "atol": 1e-6}
    for (name, x), y in zip(state(got).items(), state(expected).values(), strict=True):
        torch.testing.assert_close(x, y, msg=lambda m, name=name: f"{name}: {m}", **tol)


def reference(name: str = "sampa") -> Method:
    method = build(FastPath(), name)
    run(method, FastPath())
    return method


# ----------------------------------------------------------------------------------------------
# bf16 autocast


@pytest.mark.parametrize("fused", [False, True])
def test_bf16_autocast_computes_forward_in_bf16_and_the_rest_in_fp32(fused):
    fast = FastPath(amp="bf16")
    method = build(fast, fused=fused)
    conv_outputs = []
    method.model.features[0].register_forward_hook(lambda m, i, out: conv_outputs.append(out.dtype))
    records = run(method, fast)
    assert set(conv_outputs) == {torch.bfloat16}
    assert all(r.loss.dtype == torch.float32 for r in records)
    assert all(g.dtype == torch.float32 for g in method.g_y)  # gradients of fp32 parameters
    assert all(p.dtype == torch.float32 for p in method.model.parameters())
    # same math up to bf16 round-off: the whole update x_T - x_0 (all parameters) agrees to ~10 % with the
    # fp32 reference (measured: 4.5 %), and the fused bf16 pass agrees with the sequential one (1.2 %)
    assert relative_update_error(method, reference()) < 0.1
    if fused:
        sequential = build(fast)
        run(sequential, fast)
        assert relative_update_error(method, sequential) < 0.03


def relative_update_error(method: Method, expected: Method) -> float:
    """||u - u_ref|| / ||u_ref|| for the parameter updates u = x_T - x_0 of two runs from the same x_0."""
    x0 = state(build(FastPath()))
    names = [n for n, _ in method.model.named_parameters()]
    got, ref = state(method), state(expected)
    update = torch.cat([(got[n] - x0[n]).flatten() for n in names])
    ref_update = torch.cat([(ref[n] - x0[n]).flatten() for n in names])
    return float(torch.linalg.vector_norm(update - ref_update) / torch.linalg.vector_norm(ref_update))


# ----------------------------------------------------------------------------------------------
# channels_last, optimizer kernels


@pytest.mark.parametrize("impl", ["default", "fused"])
@pytest.mark.parametrize("fused", [False, True])
def test_channels_last_follows_the_reference_trajectory(fused, impl):
    fast = FastPath(channels_last=True)
    method = build(fast, fused=fused, impl=impl)
    assert method.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.prepare_batch(torch.zeros(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    run(method, fast)
    assert_same_state(method, reference())


def test_update_gets_the_parameters_strides_whatever_the_direction_has():
    """torch's fused SGD reads gradient and parameter memory alike: a contiguous direction for a
    channels_last weight must be laid out like the weight before the kernel sees it."""
    torch.manual_seed(0)
    models = [nn.Conv2d(3, 4, 2).to(memory_format=torch.channels_last) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    methods = [
        build_method(
            "sgd", m, make_loss(0.0), torch.optim.SGD(m.parameters(), lr=0.1, **optimizer_kwargs(impl))
        )
        for m, impl in zip(models, ("default", "fused"), strict=True)
    ]
    direction = [torch.randn(p.shape) for p in models[0].parameters()]  # contiguous
    assert not direction[0].is_contiguous(memory_format=torch.channels_last)
    for method in methods:
        method.apply_update(direction)
    for p, q in zip(models[1].parameters(), models[0].parameters(), strict=True):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize(("impl", "exact"), [("foreach", True), ("fused", False)])
def test_foreach_and_fused_base_optimizers_follow_the_reference(impl, exact):
    method = build(FastPath(), impl=impl)
    run(method, FastPath())
    if exact:  # the same operations in the same order: bit for bit
        for x, y in zip(state(method).values(), state(reference()).values(), strict=True):
            assert torch.equal(x, y)
    else:
        assert_same_state(method, reference())


def _optimizers():
    return [
        (
            "sgd-momentum-wd",
            lambda ps, **k: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4, **k),
        ),
        ("sgd-nesterov", lambda ps, **k: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, **k)),
        ("sgd-plain", lambda ps, **k: torch.optim.SGD(ps, lr=0.1, **k)),
        ("adamw", lambda ps, **k: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05, **k)),
        (
            "adamw-amsgrad",
            lambda ps, **k: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05, amsgrad=True, **k),
        ),
        ("adam-l2", lambda ps, **k: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.05, **k)),
    ]


@pytest.mark.parametrize("impl", ["default", "foreach", "fused"])
@pytest.mark.parametrize(("label", "make"), _optimizers())
def test_lookahead_matches_every_torch_implementation(label, make, impl):
    """lookahead's explicit formulas == optimizer.step() for the for-loop, foreach and fused kernels
    (float32; for-loop and foreach bit for bit, fused to round-off), and leave the state alone."""
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    opt = make(model.parameters(), **optimizer_kwargs(impl))
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        before = copy.deepcopy(opt.state_dict())
        predicted = lookahead(opt, params, grads)
        after = opt.state_dict()
        assert all(
            torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
            for key in before["state"]
            for a, b in zip(before["state"][key].values(), after["state"][key].values(), strict=True)
        ), f"{label}: state changed at step {step}"
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
        for p, y in zip(params, predicted, strict=True):
            if impl == "fused":
                torch.testing.assert_close(p.detach(), y, rtol=1e-6, atol=1e-7)
            else:
                assert torch.equal(p.detach(), y), f"{label} step {step}"


# ----------------------------------------------------------------------------------------------
# torch.compile


def test_compiled_step_follows_the_reference_and_does_not_recompile_for_lr_changes():
    """The whole fused SAMPa step under torch.compile (aot_eager: dynamo's graphs, with autograd.grad
    traced, run without code generation; the inductor variant is a slow test)."""
    fast = FastPath(compile="step", compile_backend="aot_eager")
    method = build(fast, fused=True)
    # compiles four variants: first step, fused step, the two fallbacks around the short batch
    records = run(method, fast)
    assert [r.sequential for r in records] == [1, 1, 1, 2, 2, 1]
    assert_same_state(method, reference())
    more = build(FastPath(), fused=True)
    more.load_state_dict(copy.deepcopy(method.state_dict()))  # torch.optim would alias the buffers
    more.model.load_state_dict(method.model.state_dict())
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):  # new learning rates, known shapes
            run(method, fast, sizes=[16, 16], seed=5, lr0=0.003)
    finally:
        torch._dynamo.reset()
    run(more, FastPath(), sizes=[16, 16], seed=5, lr0=0.003)
    assert_same_state(method, more)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "fused"), [("sgd", False), ("sam", False), ("sampa", False), ("sampa", True)]
)
def test_inductor_compiled_step_follows_the_reference(name, fused):
    fast = FastPath(compile="step")
    method = build(fast, name, fused=fused)
    run(method, fast)
    assert_same_state(method, reference(name), rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True])
def test_compiled_model_follows_the_reference(fused):
    fast = FastPath(compile="model")
    method = build(fast, fused=fused)
    run(method, fast)
    assert_same_state(method, reference(), rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------
# Process settings, configuration, runs


def test_cudnn_benchmark_is_set_for_the_run_and_restored():
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        with FastPath(cudnn_benchmark=True).session():
            assert torch.backends.cudnn.benchmark
        assert not torch.backends.cudnn.benchmark
        with FastPath().session():
            assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = previous


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"amp": "fp16"}, "unknown amp 'fp16'; choose one of: off, bf16"),
        ({"compile": "all"}, "unknown compile 'all'; choose one of: off, model, step"),
        ({"optimizer_impl": "apex"}, "unknown optimizer_impl 'apex'; choose one of: default, foreach, fused"),
        ({"backend": "pair"}, "unknown backend 'pair'; choose one of: single, fused"),
        ({"backend": "fused", "devices": 2}, "backend 'fused' runs on one device; devices must be 1"),
        ({"compile": "step", "devices": 2}, "compile 'step' runs on one device; devices must be 1"),
        ({"channels_last": "yes"}, "channels_last must be true or false"),
    ],
)
def test_bad_fast_path_settings_are_one_line_errors(values, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate(RunConfig(**values))
    assert "\n" not in str(err.value)


def test_cli_flags_set_the_fast_path(tmp_path, capsys):
    args = cli_parser().parse_args(
        [
            *("train", "--out", str(tmp_path / "run"), "--backend", "fused", "--amp", "bf16"),
            *("--channels-last", "--cudnn-benchmark", "--optimizer-impl", "fused", "--compile", "step"),
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.backend, cfg.amp, cfg.channels_last, cfg.cudnn_benchmark) == ("fused", "bf16", True, True)
    assert (cfg.optimizer_impl, cfg.compile) == ("fused", "step")
    assert config_from_args(cli_parser().parse_args(["train", "--out", "x"])).backend == "single"
    code = main(["train", "--out", str(tmp_path / "bad"), "--backend", "fuse", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown backend 'fuse'" in err
    assert not (tmp_path / "bad").exists()


def small_run(**overrides) -> RunConfig:
    return tiny_run(**({"optimizer": "sampa", "epochs": 2} | overrides))


def test_fast_path_run_matches_the_reference_run(tmp_path):
    reference_run = train(small_run(), tmp_path / "ref", log_progress=False)
    fast = train(
        small_run(channels_last=True, optimizer_impl="foreach"), tmp_path / "fast", log_progress=False
    )
    bf16 = train(small_run(amp="bf16", backend="fused"), tmp_path / "bf16", log_progress=False)
    for key in ("final_train_loss", "final_val_loss", "final_test_loss"):
        assert fast[key] == pytest.approx(reference_run[key], rel=1e-4), key
        assert bf16[key] == pytest.approx(reference_run[key], rel=0.02), key
    assert fast["config"]["channels_last"] and bf16["config"]["amp"] == "bf16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize(
    ("name", "fused", "dropout"),
    [
        ("sgd", False, False),
        ("sam", False, False),
        ("sampa", False, False),
        ("sampa", True, False),
        ("sam", False, True),  # each job's masks from its own seed (evaluation.mask_stream)
        ("sampa", False, True),
        ("sampa", True, True),  # the fused pass draws each replica's masks under vmap
    ],
)
def test_a_step_never_synchronises_with_the_host(name, fused, dropout, flat):
    torch.manual_seed(0)
    model = SmallBNNet() if not dropout else nn.Sequential(SmallBNNet(), nn.Dropout(0.3))
    model = model.cuda().train()
    base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, fused=True)
    method = build_method(name, model, make_loss(0.1), base, executor=FusedExecutor() if fused else None)
    assert method.masks == dropout
    if flat:
        flatten_parameters(method)
    batches = [(x.cuda(), y.cuda()) for x, y in image_batches([16] * 4)]
    method.step(*batches[0])  # first step: optimizer state is created
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches[1:]:
            method.step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.slow
def test_compiled_fused_run_matches_the_reference_run(tmp_path):
    reference_run = train(small_run(), tmp_path / "ref", log_progress=False)
    compiled = train(small_run(compile="step", backend="fused"), tmp_path / "compiled", log_progress=False)
    torch._dynamo.reset()
    for key in ("final_train_loss", "final_val_loss", "final_test_loss"):
        assert compiled[key] == pytest.approx(reference_run[key], rel=1e-3), key


def test_a_run_directory_from_before_the_fast_path_is_still_the_same_run(tmp_path):
    cfg = small_run(epochs=1)
    train(cfg, tmp_path / "run", log_progress=False)
    config_file = tmp_path / "run" / "config.json"
    old = {k: v for k, v in io.read_json(config_file).items() if k not in FAST_PATH_KEYS}
    io.write_json(config_file, old)  # as written by a version without these keys
    assert train(cfg, tmp_path / "run", log_progress=False)["status"] == "complete"
    with pytest.raises(RunError, match="holds a different run"):
        train(small_run(epochs=1, backend="fused"), tmp_path / "run", log_progress=False)
