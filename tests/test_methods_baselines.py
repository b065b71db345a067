"""SAM-db, gradient penalization, ASAM, SAM-ON, VaSSO, BiSAM and their SAMPa combinations against hand
computations on small problems (the generic tests over every method are in test_methods.py)."""

from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch
from problems import (
    BNNet,
    LeastSquares,
    RecordingExecutor,
    ce,
    class_batches,
    ls_batches,
    ls_grad,
    sgd,
    squared_error,
)
from torch import nn

from sampa.optim import GradJob, build_method
from sampa.optim import method_class as registered
from sampa.optim.bisam import GAMMA, bisam_log_loss
from sampa.optim.evaluation import evaluate_job
from sampa.optim.samon import normalization_indices
from sampa.optim.tensors import global_norm

pytestmark = pytest.mark.usefixtures("float64")


# ----------------------------------------------------------------------------------------------
# Small problems


class NormOnly(nn.Module):
    """A classifier whose only parameters belong to a LayerNorm (logits = LN(x))."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(3)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x[:, :3])


class LinearClassifier(nn.Module):
    """logits = x W^T (no bias), for hand-computed gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(3, 4, generator=torch.Generator().manual_seed(5)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W.T


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def offset(point, model: nn.Module) -> list[torch.Tensor]:
    """point - current parameters, per tensor."""
    return [pt - p.detach() for pt, p in zip(point, model.parameters(), strict=True)]


def autograd_grads(model: nn.Module, loss_fn, batch) -> list[torch.Tensor]:
    """Reference gradient of the mean loss at the model's current parameters (on a copy: BN untouched)."""
    ref = copy.deepcopy(model)
    x, y = batch
    return list(torch.autograd.grad(loss_fn(ref(x), y).mean(), list(ref.parameters())))


# ----------------------------------------------------------------------------------------------
# Reductions: with their rule made the identity, the methods are SAM, SAMPa or SGD


def _bias_only() -> nn.Module:
    return LeastSquares(param_name="bias")  # ASAM's T is the identity on biases


def _one_batch_repeated(n: int) -> list:
    return [ls_batches(1)[0]] * n


REDUCTIONS = [
    # (method, hparams, reference, reference hparams, model factory, loss, data)
    ("samdb", {"rho": 0.2}, "sam", {"rho": 0.2}, LeastSquares, squared_error, _one_batch_repeated),
    ("gnp", {"rho": 0.2, "alpha": 1.0}, "sam", {"rho": 0.2}, LeastSquares, squared_error, ls_batches),
    ("gnp", {"rho": 0.2, "alpha": 0.0}, "sgd", {}, LeastSquares, squared_error, ls_batches),
    ("asam", {"rho": 0.2}, "sam", {"rho": 0.2}, _bias_only, squared_error, ls_batches),
    ("sampa-asam", {"rho": 0.2}, "sampa", {"rho": 0.2}, _bias_only, squared_error, ls_batches),
    ("samon", {"rho": 0.2}, "sam", {"rho": 0.2}, NormOnly, ce, class_batches),
    ("sampa-samon", {"rho": 0.2}, "sampa", {"rho": 0.2}, NormOnly, ce, class_batches),
    ("vasso", {"rho": 0.2, "theta": 1.0}, "sam", {"rho": 0.2}, BNNet, ce, class_batches),
    ("sampa-vasso", {"rho": 0.2, "theta": 1.0}, "sampa", {"rho": 0.2}, BNNet, ce, class_batches),
    ("bisam", {"rho": 0.2}, "sam", {"rho": 0.2}, BNNet, bisam_log_loss, class_batches),
    ("sampa-bisam", {"rho": 0.2}, "sampa", {"rho": 0.2}, BNNet, bisam_log_loss, class_batches),
]


@pytest.mark.parametrize(
    ("name", "hp", "ref", "ref_hp", "make_model", "loss", "make_data"),
    REDUCTIONS,
    ids=[f"{r[0]}-is-{r[2]}" for r in REDUCTIONS],
)
def test_identity_rule_reduces_to_the_host(name, hp, ref, ref_hp, make_model, loss, make_data):
    """SAM-db on one repeated batch, GNP with alpha 1/0, ASAM on biases only, SAM-ON on a norm-only
    model, VaSSO with theta 1 and BiSAM trained on its own surrogate are SAM / SAMPa / SGD."""
    data = make_data(4)
    finals = []
    for method_name, method_hp in ((name, hp), (ref, ref_hp)):
        torch.manual_seed(0)
        model = make_model()
        method = build_method(method_name, model, loss, sgd(model, lr=0.05), **method_hp)
        for batch in data:
            method.step(*batch)
        finals.append(flat(model.parameters()))
    torch.testing.assert_close(finals[0], finals[1], rtol=1e-12, atol=1e-12)
    assert not torch.equal(finals[0], flat(make_model().parameters()))  # it did move


# ----------------------------------------------------------------------------------------------
# SAM-db


def test_samdb_ascends_on_the_previous_batch_and_updates_on_the_current_one():
    model = BNNet()
    rec = RecordingExecutor()
    method = build_method("samdb", model, ce, sgd(model), executor=rec)
    b0, b1, b2 = class_batches(3)
    for batch in (b0, b1, b2):
        method.step(*batch)
    used = [(call[0].inputs, call[0].update_bn, call[0].point is None) for call in rec.calls]
    expected_inputs = [b0[0], b0[0], b0[0], b1[0], b1[0], b2[0]]  # (ascent, update) per step; B_{-1} := B_0
    assert all(u[0] is x for u, x in zip(used, expected_inputs, strict=True))
    assert [u[1:] for u in used] == [(True, True), (False, False)] * 3  # clean pass at x_t updates BN


def test_samdb_matches_hand_computation():
    model = LeastSquares()
    w = model.vector.detach().clone()
    lr, mu, wd, rho = 0.05, 0.9, 1e-2, 0.1
    method = build_method("samdb", model, squared_error, sgd(model, lr, mu, wd), rho=rho)
    prev, buf = None, None
    for batch in ls_batches(4):
        g = ls_grad(w, prev or batch)  # ascent on the previous batch (B_0 at the first step)
        G = ls_grad(w + rho * g / g.norm(), batch)  # update gradient on the current batch
        d = G + wd * w
        buf = d if buf is None else mu * buf + d
        w, prev = w - lr * buf, batch
        method.step(*batch)
        torch.testing.assert_close(model.vector.detach(), w, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Gradient penalization


@pytest.mark.parametrize("normalized_clean", [False, True])
def test_gnp_interpolates_clean_and_perturbed_gradients(normalized_clean):
    model = LeastSquares()
    w = model.vector.detach().clone()
    lr, r, alpha = 0.1, 0.1, 0.8
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    method = build_method(
        "gnp", model, squared_error, opt, rho=r, alpha=alpha, normalized_clean=normalized_clean
    )
    for batch in ls_batches(3):
        g = ls_grad(w, batch)
        g_p = ls_grad(w + r * g / g.norm(), batch)
        clean = g / g.norm() if normalized_clean else g
        w = w - lr * ((1 - alpha) * clean + alpha * g_p)
        method.step(*batch)
        torch.testing.assert_close(model.vector.detach(), w, rtol=1e-12, atol=1e-12)


def test_gnp_default_is_sampa_0_2s_setting():
    """App. B.6: "the same hyperparameters as SAMPa-0.2": r = SAMPa's rho, alpha = 1 - lambda."""
    gnp, sampa = registered("gnp").Hparams(), registered("sampa").Hparams()
    assert gnp.rho == sampa.rho and gnp.alpha == pytest.approx(1 - sampa.lam)


# ----------------------------------------------------------------------------------------------
# ASAM


def _asam_e(model: nn.Module, g: list[torch.Tensor], rho: float, eta: float) -> list[torch.Tensor]:
    """e = rho T^2 g / ||T g|| with T = |w| + eta on non-bias tensors, written out per tensor."""
    ts = [
        torch.ones_like(p) if name.endswith("bias") else p.detach().abs() + eta
        for name, p in model.named_parameters()
    ]
    norm = torch.sqrt(sum(((t * gi) ** 2).sum() for t, gi in zip(ts, g, strict=True)))
    return [rho * t * t * gi / norm for t, gi in zip(ts, g, strict=True)]


def test_asam_perturbation_is_t_squared_g_over_norm_of_t_g():
    model = BNNet()
    rec = RecordingExecutor()
    method = build_method("asam", model, ce, sgd(model), executor=rec, rho=0.5, eta=0.01)
    batch = class_batches(1)[0]
    expected = _asam_e(model, autograd_grads(model, ce, batch), 0.5, 0.01)
    before = copy.deepcopy(model)
    method.step(*batch)
    e = offset(rec.calls[1][0].point, before)
    for got, want in zip(e, expected, strict=True):
        torch.testing.assert_close(got, want)
    # e lies on the sphere of the T-scaled norm: ||T^{-1} e|| = rho
    ts = [
        p.abs() + 0.01 if not n.endswith("bias") else torch.ones_like(p) for n, p in before.named_parameters()
    ]
    torch.testing.assert_close(global_norm([ei / t for ei, t in zip(e, ts, strict=True)]), torch.tensor(0.5))


def test_sampa_asam_scales_grad_f_y_with_t_at_x_t():
    model = BNNet()
    rec = RecordingExecutor()
    method = build_method("sampa-asam", model, ce, sgd(model), executor=rec, rho=1.0, eta=0.01)
    b0, b1 = class_batches(2)
    method.step(*b0)
    g_y = [g.clone() for g in method.g_y]
    expected = _asam_e(model, g_y, 1.0, 0.01)  # T taken at x_t (the current parameters)
    before = copy.deepcopy(model)
    method.step(*b1)
    perturbed = rec.calls[1][0]
    assert perturbed.inputs is b0[0]  # SAMPa's batch indexing is kept
    for got, want in zip(offset(perturbed.point, before), expected, strict=True):
        torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------------------------
# SAM-ON


class MixedNorms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.ln = nn.LayerNorm(4)
        self.gn = nn.GroupNorm(2, 4)
        self.frozen_bn = nn.BatchNorm1d(4, affine=False)
        self.fc = nn.Linear(4, 2)


def test_normalisation_parameters_are_selected_by_module_type():
    model = MixedNorms()
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    chosen = {names[i] for i in normalization_indices(model, params)}
    assert chosen == {"features.1.weight", "features.1.bias", "ln.weight", "ln.bias", "gn.weight", "gn.bias"}
    # the official substring rule ("norm" or "bn" in the name) would miss the BatchNorm in nn.Sequential
    assert not any(("norm" in n or "bn" in n) for n in ("features.1.weight", "features.1.bias"))


def test_samon_needs_normalisation_layers():
    model = LeastSquares()
    with pytest.raises(ValueError, match="'samon' perturbs only normalisation layers, but the model has no"):
        build_method("samon", model, squared_error, torch.optim.SGD(model.parameters(), lr=0.1))


def test_samon_perturbs_only_normalisation_parameters():
    model = BNNet()
    rec = RecordingExecutor()
    method = build_method("samon", model, ce, sgd(model), executor=rec, rho=0.5)
    batch = class_batches(1)[0]
    g = autograd_grads(model, ce, batch)
    norm = [i for i, (n, _) in enumerate(model.named_parameters()) if n.startswith("bn.")]
    g_norm = torch.sqrt(sum((g[i] ** 2).sum() for i in norm))
    before = copy.deepcopy(model)
    method.step(*batch)
    clean, perturbed = rec.calls[0][0], rec.calls[1][0]
    assert list(clean.wrt) == norm  # the first backward differentiates only the BN parameters
    for i, e_i in enumerate(offset(perturbed.point, before)):
        if i in norm:
            torch.testing.assert_close(e_i, 0.5 * g[i] / g_norm)
        else:
            assert torch.equal(e_i, torch.zeros_like(e_i))


def test_sampa_samon_perturbs_normalisation_parameters_along_grad_f_y():
    model = BNNet()
    rec = RecordingExecutor()
    method = build_method("sampa-samon", model, ce, sgd(model), executor=rec, rho=1.0)
    b0, b1 = class_batches(2)
    method.step(*b0)
    g_y = [g.clone() for g in method.g_y]
    norm = [i for i, (n, _) in enumerate(model.named_parameters()) if n.startswith("bn.")]
    g_norm = torch.sqrt(sum((g_y[i] ** 2).sum() for i in norm))
    before = copy.deepcopy(model)
    method.step(*b1)
    perturbed, extrapolated = rec.calls[1]
    assert extrapolated.wrt is None  # the y-pass needs the full gradient (lambda term, next y)
    for i, e_i in enumerate(offset(perturbed.point, before)):
        expected = 1.0 * g_y[i] / g_norm if i in norm else torch.zeros_like(e_i)
        torch.testing.assert_close(e_i, expected)


# ----------------------------------------------------------------------------------------------
# VaSSO


def test_vasso_perturbs_along_an_ema_of_gradients():
    model = LeastSquares()
    w = model.vector.detach().clone()
    lr, rho, theta = 0.1, 0.2, 0.4
    method = build_method(
        "vasso", model, squared_error, torch.optim.SGD(model.parameters(), lr=lr), rho=rho, theta=theta
    )
    d = None
    for batch in ls_batches(4):
        g = ls_grad(w, batch)
        d = g if d is None else (1 - theta) * d + theta * g  # d_0 = g_0, then the EMA
        w = w - lr * ls_grad(w + rho * d / d.norm(), batch)
        method.step(*batch)
        torch.testing.assert_close(model.vector.detach(), w, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(method.d[0], d, rtol=1e-12, atol=1e-12)


def test_sampa_vasso_keeps_an_ema_of_grad_f_y():
    model = BNNet()
    rec = RecordingExecutor()
    method = build_method("sampa-vasso", model, ce, sgd(model), executor=rec, rho=0.1, theta=0.4)
    data = class_batches(4)
    method.step(*data[0])
    assert method.d is None  # the first step (a base step) does not touch d
    d = None
    for t, batch in enumerate(data[1:], start=1):
        g_y = flat(method.g_y)
        d = g_y if d is None else 0.6 * d + 0.4 * g_y
        before = copy.deepcopy(model)
        method.step(*batch)
        e = flat(offset(rec.calls[t][0].point, before))
        torch.testing.assert_close(e, 0.1 * d / d.norm())
        torch.testing.assert_close(flat(method.d), d)


# ----------------------------------------------------------------------------------------------
# BiSAM


def test_bisam_surrogate_matches_its_definition_and_the_official_form():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 3.0, -2.0]])
    targets = torch.tensor([0, 2])
    phi = lambda m: 1 - math.log(1 + math.exp(GAMMA - m))  # noqa: E731
    assert phi(0.0) == pytest.approx(0.0, abs=1e-15)
    expected = [
        math.log(sum(math.exp(phi(m)) for m in (0.0, -2.0, -3.0))),
        math.log(sum(math.exp(phi(m)) for m in (2.5, 5.0, 0.0))),
    ]
    torch.testing.assert_close(bisam_log_loss(logits, targets), torch.tensor(expected))
    # the official code writes phi as 1 + softplus(m - gamma, beta=-1)
    margins = logits - logits.gather(1, targets[:, None])
    official = torch.logsumexp(2.0 * (1 + nn.functional.softplus(margins - GAMMA, beta=-1)), dim=1)
    torch.testing.assert_close(bisam_log_loss(logits, targets, mu=2.0), official)


def _hand_surrogate_grad(W: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mu: float) -> torch.Tensor:
    """dQ/dW for logits = x W^T, written out: dQ_i/dz_ij = s_ij mu phi'(m_ij) for j != y, and for
    j = y minus the sum of those (s = softmax(mu phi(m)))."""
    z = x @ W.T
    m = z - z.gather(1, y[:, None])
    phi = 1 - torch.log1p(torch.exp(GAMMA - m))
    s = torch.softmax(mu * phi, dim=1)
    dphi = torch.sigmoid(GAMMA - m)  # phi'(m)
    dz = s * mu * dphi
    dz[torch.arange(len(y)), y] = 0.0
    dz[torch.arange(len(y)), y] = -dz.sum(dim=1)
    return dz.T @ x / len(y)


def test_bisam_ascends_along_the_hand_computed_surrogate_gradient():
    model = LinearClassifier()
    rec = RecordingExecutor()
    rho, mu = 0.05, 1.0
    method = build_method("bisam", model, ce, torch.optim.SGD(model.parameters(), lr=0.1), executor=rec)
    x, y = class_batches(1)[0]
    q = _hand_surrogate_grad(model.W.detach(), x, y, mu)
    W0 = model.W.detach().clone()
    record = method.step(x, y)
    clean, perturbed = rec.calls[0][0], rec.calls[1][0]
    torch.testing.assert_close(perturbed.point[0] - W0, rho * q / q.norm())
    assert perturbed.losses is None  # the update gradient is that of the training loss f
    torch.testing.assert_close(record.loss, ce(x @ W0.T, y).mean())  # reporting pass: f, not Q
    assert clean.update_bn and len(clean.losses) == 1


def test_sampa_bisam_takes_grad_f_and_grad_q_from_the_extrapolated_pass():
    model = LinearClassifier()
    rec = RecordingExecutor()
    rho = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = build_method("sampa-bisam", model, ce, opt, executor=rec, rho=rho, mu=1.0)
    b0, b1, b2 = class_batches(3)
    method.step(*b0)
    method.step(*b1)
    y_point = rec.calls[1][1].point[0]  # y_2, evaluated on B_1
    q_y = _hand_surrogate_grad(y_point, *b1, 1.0)
    g_y = autograd_grads(_with_weight(y_point), ce, b1)[0]
    torch.testing.assert_close(method.q_y[0], q_y)
    torch.testing.assert_close(method.g_y[0], g_y)  # g_y (grad f) still drives the extrapolation
    y_next = method.lookahead(method.g_y)[0]
    W = model.W.detach().clone()
    method.step(*b2)
    perturbed, extrapolated = rec.calls[2]
    torch.testing.assert_close(perturbed.point[0] - W, rho * q_y / q_y.norm())
    torch.testing.assert_close(extrapolated.point[0], y_next)


def _with_weight(W: torch.Tensor) -> nn.Module:
    model = LinearClassifier()
    with torch.no_grad():
        model.W.copy_(W)
    return model


# ----------------------------------------------------------------------------------------------
# The contract addition: several losses from one forward


def test_a_job_with_several_losses_equals_separate_jobs():
    model = BNNet()
    method = build_method("sgd", model, ce, sgd(model))
    x, y = class_batches(1)[0]
    q = partial(bisam_log_loss, mu=1.0)
    both = evaluate_job(method, GradJob(x, y, losses=(ce, q)))
    only_q = evaluate_job(method, GradJob(x, y, losses=(q,)))
    only_f = evaluate_job(method, GradJob(x, y))
    for a, b in zip(both.grads, only_f.grads, strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(both.extra_grads[0], only_q.grads, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(flat(only_q.grads), flat(only_f.grads))
    torch.testing.assert_close(only_q.loss, only_f.loss)  # the reporting loss is always the method's f
    assert GradJob(x, y, losses=(ce, q)).num_backward == 2 and GradJob(x, y).num_backward == 1
    with pytest.raises(ValueError, match=r"GradJob\.losses must name at least one loss"):
        evaluate_job(method, GradJob(x, y, losses=()))
