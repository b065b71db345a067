"""The public Python API as a researcher uses it in a training loop of their own (README "Use it in your
own training loop", docs/methods.md, the docstrings): the README's code runs as written, every method
builds with its defaults on SGD and AdamW, misuse is a one-line error before any work (or works and is
documented), and the package surface names the contract."""

from __future__ import annotations

import pytest
import torch
from problems import BNNet, ce

from sampa.losses import make_loss
from sampa.optim import HyperparameterError, build_method


def sgd(model: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


@pytest.mark.parametrize("smoothing", [1.0, -0.1, 1.5, float("nan"), "0.1", True])
def test_make_loss_rejects_smoothing_outside_zero_one(smoothing):
    with pytest.raises(ValueError, match=r"label smoothing must be a number in \[0, 1\) \(got "):
        make_loss(smoothing)


def test_make_loss_accepts_its_range():
    logits, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    assert make_loss(0)(logits, y).shape == (5,) and make_loss(0.99)(logits, y).shape == (5,)


@pytest.mark.parametrize(
    ("hp", "match"),
    [
        ({"rho": float("inf")}, r"rho must be a finite number \(got inf\)"),
        ({"lam": float("-inf")}, r"lam must be a finite number \(got -inf\)"),
        ({"rho": "0.1"}, r"rho must be a finite number \(got '0.1'\)"),
    ],
)
def test_non_finite_hyperparameters_are_errors(hp, match):
    model = BNNet()
    with pytest.raises(HyperparameterError, match=match):
        build_method("sampa", model, ce, sgd(model), **hp)


def test_arguments_of_the_wrong_kind_are_one_line_errors():
    model = BNNet()
    opt = sgd(model)
    cases = [
        ((opt, ce, model), r"model must be a torch.nn.Module \(got SGD\)"),
        ((model, ce, model.parameters()), r"base_optimizer must be a torch.optim.Optimizer \(got gen"),
        ((model, 0.1, opt), r"loss_fn must be callable as loss_fn\(logits, targets\).*\(got float\)"),
    ]
    for args, match in cases:
        with pytest.raises(TypeError, match=match) as info:
            build_method("sam", *args)
        assert "\n" not in str(info.value)
