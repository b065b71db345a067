"""Tests for the CIFAR model zoo ``sampa.models``."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from sampa.models import DISPLAY_NAMES, MODEL_NAMES, build_model, count_parameters

# name -> (trainable parameters for 10 classes, classifier input features).
EXPECTED: dict[str, tuple[int, int]] = {
    # He et al. 2016 report 0.27M / 0.46M / 0.85M; the exact option-A (parameter-free shortcut)
    # counts are 269,722 / 464,154 / 853,018. 272,474 (sometimes quoted for ResNet-20) is the
    # option-B count: 1x1 conv + BN projections add 16*32+2*32 + 32*64+2*64 = 2,752 parameters.
    "resnet20": (269_722, 64),
    "resnet32": (464_154, 64),
    "resnet56": (853_018, 64),
    # Zagoruyko & Komodakis 2016 (36.5M / 1.5M); exact counts of the n = 4 blocks-per-stage WRN.
    "wrn28-10": (36_479_194, 640),
    "wrn28-2": (1_467_610, 128),
    # VGG19-BN, conv with bias: sum over the 16 convs of 9*c_in*c_out + c_out (bias)
    #   = 20,018,880 weights + 5,504 biases = 20,024,384;
    # BN: 2 * 5,504 = 11,008; classifier 512*10 + 10 = 5,130; total 20,040,522 (~20.04M).
    "vgg19bn": (20_040_522, 512),
    # Widely used CIFAR DenseNet-121 (growth 32, 64-channel 3x3 stem): 6,956,298.
    "densenet121": (6_956_298, 1024),
    # ResNet-18 with CIFAR stem and 1x1-conv+BN projections: 11,173,962.
    "resnet18": (11_173_962, 512),
    # PyramidNet-110, alpha = 270, basic blocks: Han et al. 2017 (Table 4) report 28.3M. Our exact
    # count is 28,485,477 (+0.66%), which matches the counts of common reimplementations
    # (e.g. osmr/imgclsmob pyramidnet110_a270_cifar10); checked below with a 1% tolerance of 28.3M.
    "pyramidnet110": (28_485_477, 286),
    # Not a published model; derivation in test_tinycnn_parameter_breakdown.
    "tinycnn": (14_746, 32),
}
PYRAMIDNET_PAPER_COUNT = 28_300_000
PYRAMIDNET_TOLERANCE = 0.01  # relative; the paper rounds to 0.1M and counts its own Torch model.

SMALL_MODELS = ("tinycnn", "resnet20")


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    """Run this module on one intra-op thread: batch-2 forwards gain nothing from threads, and on
    a busy 2-core runner the thread pool's contention made big-model forwards 10-80x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module", params=MODEL_NAMES)
def model_pair(request: pytest.FixtureRequest) -> Iterator[tuple[str, nn.Module, nn.Module]]:
    """Each registry model built for 10 and 100 classes (one model name alive at a time)."""
    torch.manual_seed(0)
    yield request.param, build_model(request.param, 10), build_model(request.param, 100)


def _seeded(name: str, seed: int, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, num_classes).eval()


def test_registry_is_complete() -> None:
    assert tuple(sorted(EXPECTED)) == MODEL_NAMES
    assert set(DISPLAY_NAMES) == set(MODEL_NAMES)
    assert DISPLAY_NAMES["resnet56"] == "ResNet-56"
    assert DISPLAY_NAMES["wrn28-10"] == "WRN-28-10"
    assert DISPLAY_NAMES["vgg19bn"] == "VGG19-BN"
    assert DISPLAY_NAMES["densenet121"] == "DenseNet-121"


def test_parameter_counts(model_pair: tuple[str, nn.Module, nn.Module]) -> None:
    name, model10, model100 = model_pair
    params10, features = EXPECTED[name]
    assert count_parameters(model10) == params10
    # 90 extra classes: 90 more rows of the classifier weight and 90 more biases.
    assert count_parameters(model100) - count_parameters(model10) == 90 * (features + 1)
    last_linear = [m for m in model10.modules() if isinstance(m, nn.Linear)][-1]
    assert last_linear.in_features == features


def test_pyramidnet_close_to_paper() -> None:
    params10, _ = EXPECTED["pyramidnet110"]
    assert abs(params10 - PYRAMIDNET_PAPER_COUNT) <= PYRAMIDNET_TOLERANCE * PYRAMIDNET_PAPER_COUNT


def test_tinycnn_parameter_breakdown() -> None:
    convs = 9 * (3 * 16 + 16 * 32 + 32 * 32)  # 14,256 conv weights (no bias)
    batchnorms = 2 * (16 + 32 + 32)  # 160 BN affine parameters
    classifier = 32 * 10 + 10  # 330
    assert convs + batchnorms + classifier == EXPECTED["tinycnn"][0]


def test_count_parameters_ignores_frozen() -> None:
    model = build_model("tinycnn", 10)
    model.fc.weight.requires_grad_(False)
    assert count_parameters(model) == EXPECTED["tinycnn"][0] - 320


@torch.no_grad()
def test_output_shapes(model_pair: tuple[str, nn.Module, nn.Module]) -> None:
    _, model10, model100 = model_pair
    x = torch.randn(2, 3, 32, 32)
    assert model10.eval()(x).shape == (2, 10)
    assert model100.eval()(x).shape == (2, 100)


def test_functional_requirements(model_pair: tuple[str, nn.Module, nn.Module]) -> None:
    """Only stock BatchNorm with default momentum, no in-place activations, all state registered."""
    _, model, _ = model_pair
    norm_types = (nn.BatchNorm1d, nn.BatchNorm2d)
    norms = [m for m in model.modules() if isinstance(m, norm_types)]
    assert norms
    assert all(type(m) in norm_types and m.momentum == 0.1 for m in norms)
    assert not [m for m in model.modules() if "Norm" in type(m).__name__ and not isinstance(m, norm_types)]
    assert not [m for m in model.modules() if getattr(m, "inplace", False)]
    # No conv/linear layer can hide weights outside the module tree: every tensor is named.
    assert sum(p.numel() for _, p in model.named_parameters()) == count_parameters(model)


@pytest.mark.parametrize("name", ["resnet57", "", "ResNet20", "wrn28_10"])
def test_unknown_name_raises(name: str) -> None:
    with pytest.raises(ValueError) as info:
        build_model(name, 10)
    message = str(info.value)
    assert "\n" not in message
    assert repr(name) in message
    assert all(valid in message for valid in MODEL_NAMES)


@pytest.mark.parametrize("num_classes", [1, 0, -10, 2.5, True])
def test_bad_num_classes_raises(num_classes: object) -> None:
    with pytest.raises(ValueError) as info:
        build_model("tinycnn", num_classes)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    assert repr(num_classes) in message
    assert all(valid in message for valid in MODEL_NAMES)


def test_two_classes_is_valid() -> None:
    assert build_model("tinycnn", 2)(torch.randn(2, 3, 32, 32)).shape == (2, 2)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_seeded_initialisation(name: str) -> None:
    first, again, other = (_seeded(name, s).state_dict() for s in (0, 0, 1))
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    weights = [k for k, v in first.items() if v.is_floating_point() and v.dim() > 1]
    assert all(not torch.equal(first[k], other[k]) for k in weights)


def test_batchnorm_initialisation() -> None:
    for module in _seeded("resnet20", 0).modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_functional_call_matches_module(name: str) -> None:
    model = _seeded(name, 0)
    x = torch.randn(4, 3, 32, 32)
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with torch.no_grad():
        expected = model(x)
        out = functional_call(model, state, (x,))
        shifted = functional_call(model, {k: v + 0.1 for k, v in model.named_parameters()}, (x,))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert not torch.allclose(shifted, expected)
    torch.testing.assert_close(model(x).detach(), expected)  # the module itself was not modified


def _stacked_call(models: list[nn.Module], x: torch.Tensor, x_dim: int | None) -> torch.Tensor:
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def call(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], inp: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (inp,))

    return vmap(call, in_dims=(0, 0, x_dim))(params, buffers, x)


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_vmap_over_stacked_parameters(name: str) -> None:
    models = [_seeded(name, 0), _seeded(name, 1)]
    for model in models:  # non-trivial running statistics so that stacked buffers matter
        model.train()(torch.randn(8, 3, 32, 32))
        model.eval()
    x = torch.randn(3, 3, 32, 32)
    xs = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        shared = _stacked_call(models, x, None)
        separate = _stacked_call(models, xs, 0)
        for i, model in enumerate(models):
            torch.testing.assert_close(shared[i], model(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(separate[i], model(xs[i]), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(shared[0], shared[1])


def test_vmap_gradients_match_separate_runs() -> None:
    models = [_seeded("tinycnn", 0), _seeded("tinycnn", 1)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))

    def loss(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(base, (p, b), (x,)), y)

    grads = vmap(torch.func.grad(loss))(params, buffers)
    for i, model in enumerate(models):
        nn.functional.cross_entropy(model(x), y).backward()
        for key, param in model.named_parameters():
            torch.testing.assert_close(grads[key][i], param.grad, rtol=1e-4, atol=1e-6)


def test_vmap_train_mode_updates_stacked_buffers() -> None:
    """Training-mode BN under vmap: batch statistics per copy, running stats updated per copy."""
    models = [_seeded("tinycnn", 0).train(), _seeded("tinycnn", 1).train()]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    xs = torch.randn(2, 8, 3, 32, 32)

    def call(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], inp: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (inp,))

    with torch.no_grad():
        out = vmap(call)(params, buffers, xs)
        for i, model in enumerate(models):
            torch.testing.assert_close(out[i], model(xs[i]), rtol=1e-5, atol=1e-5)
            for key, buffer in model.named_buffers():
                torch.testing.assert_close(buffers[key][i], buffer, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_dynamo_captures_full_graph(name: str) -> None:
    """torch.compile can capture each forward without graph breaks (eager backend, no codegen)."""
    model = _seeded(name, 0)
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_vmap_all_models(name: str) -> None:
    """Every model runs under vmap over two stacked parameter/buffer sets (eval mode)."""
    models = [_seeded(name, 0), _seeded(name, 1)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = _stacked_call(models, x, None)
        for i, model in enumerate(models):
            torch.testing.assert_close(out[i], model(x), rtol=1e-4, atol=1e-4)
