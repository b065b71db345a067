"""SGD, SAM, SAMPa, RandSAM, OptSAM against hand computations on small problems."""

from __future__ import annotations

import copy

import pytest
import torch
from problems import (
    BNNet,
    LeastSquares,
    RecordingExecutor,
    ce,
    class_batches,
    ls_grad,
    sgd,
    squared_error,
)
from problems import ls_batches as batches

from sampa.optim import build_method
from sampa.optim.lookahead import lookahead
from sampa.optim.tensors import global_norm

pytestmark = pytest.mark.usefixtures("float64")


# ----------------------------------------------------------------------------------------------
# Small problems


# ----------------------------------------------------------------------------------------------
# SAM


def test_sam_perturbation_is_rho_times_normalised_global_gradient():
    model = BNNet()
    rec = RecordingExecutor()
    method = build_method("sam", model, ce, sgd(model), executor=rec, rho=0.05)
    x, y = class_batches(1)[0]
    reference = copy.deepcopy(model)
    grads = torch.autograd.grad(ce(reference(x), y).mean(), list(reference.parameters()))
    method.step(x, y)
    clean_job, perturbed_job = rec.calls[0][0], rec.calls[1][0]
    assert clean_job.point is None and clean_job.update_bn
    assert not perturbed_job.update_bn
    norm = torch.sqrt(sum((g**2).sum() for g in grads))  # global norm over all tensors
    for p0, g, pt in zip(reference.parameters(), grads, perturbed_job.point, strict=True):
        torch.testing.assert_close(pt, p0.detach() + 0.05 * g / norm)
    e_norm = global_norm(
        [pt - p0.detach() for pt, p0 in zip(perturbed_job.point, reference.parameters(), strict=True)]
    )
    torch.testing.assert_close(e_norm, torch.tensor(0.05))


def test_sam_update_matches_hand_computation():
    model = LeastSquares()
    w0 = model.w.detach().clone()
    lr, rho, wd = 0.1, 0.05, 1e-2
    method = build_method(
        "sam", model, squared_error, torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd), rho=rho
    )
    batch = batches(1)[0]
    method.step(*batch)
    g = ls_grad(w0, batch)
    g_sam = ls_grad(w0 + rho * g / g.norm(), batch)
    torch.testing.assert_close(model.w.detach(), w0 - lr * (g_sam + wd * w0))


def test_sam_perturbed_pass_leaves_bn_running_stats_alone():
    model = BNNet()
    x, y = class_batches(1)[0]
    expected = copy.deepcopy(model).train()
    expected(x)  # one clean forward at x_t on the same batch
    method = build_method("sam", model, ce, sgd(model), rho=0.5)
    method.step(x, y)
    torch.testing.assert_close(model.bn.running_mean, expected.bn.running_mean)
    torch.testing.assert_close(model.bn.running_var, expected.bn.running_var)
    assert int(model.bn.num_batches_tracked) == 1


def test_sam_with_zero_gradient_gives_zero_perturbation():
    model = LeastSquares()
    rec = RecordingExecutor()
    method = build_method(
        "sam", model, squared_error, torch.optim.SGD(model.parameters(), lr=0.1), executor=rec, rho=0.05
    )
    x = torch.randn(4, 3)
    method.step(x, x @ model.w.detach())  # residual 0 -> gradient 0
    torch.testing.assert_close(rec.calls[1][0].point[0], model.w.detach())


# ----------------------------------------------------------------------------------------------
# SAMPa


def reference_sampa(w0, data, lr, momentum, wd, rho, lam, eps=1e-12):
    """Algorithm 1/2 written out by hand for least squares with SGD (momentum, coupled wd)."""
    w, buf, g_y, prev, out = w0.clone(), None, None, None, []
    for batch in data:
        if g_y is None:  # first call: g_0 = grad f(x_0; B_0), base step with it
            G = ls_grad(w, batch)
            g_y = G
        else:
            x_tilde = w + rho * g_y / (g_y.norm() + eps)
            d_y = g_y + wd * w
            y = w - lr * (d_y if buf is None else momentum * buf + d_y)  # ModelUpdate_{m_t}, m_t kept
            a, b = ls_grad(x_tilde, prev), ls_grad(y, batch)
            G = (1 - lam) * a + lam * b
            g_y = b
        prev = batch
        d = G + wd * w
        buf = d if buf is None else momentum * buf + d
        w = w - lr * buf
        out.append(w.clone())
    return out


@pytest.mark.parametrize("lam", [0.0, 0.2, 1.0])
def test_sampa_matches_hand_computed_trajectory(lam):
    model = LeastSquares()
    w0 = model.w.detach().clone()
    lr, mu, wd, rho = 0.05, 0.9, 5e-3, 0.1
    data = batches(4)
    method = build_method("sampa", model, squared_error, sgd(model, lr, mu, wd), rho=rho, lam=lam)
    expected = reference_sampa(w0, data, lr, mu, wd, rho, lam)
    for batch, w_ref in zip(data, expected, strict=True):
        method.step(*batch)
        torch.testing.assert_close(model.w.detach(), w_ref, rtol=1e-12, atol=1e-12)


def test_sampa_zero_is_not_sgd():
    data = batches(4)
    runs = {}
    for name, hp in [("sampa", {"lam": 0.0, "rho": 0.1}), ("sgd", {})]:
        model = LeastSquares()
        method = build_method(name, model, squared_error, sgd(model, 0.05), **hp)
        for batch in data:
            method.step(*batch)
        runs[name] = model.w.detach()
    assert not torch.allclose(runs["sampa"], runs["sgd"], atol=1e-6)


def test_sampa_one_is_optimistic_gradient_descent():
    """SAMPa-1, plain GD, fixed batch: y_{t+1} = x_t - eta g(y_t), x_{t+1} = x_t - eta g(y_{t+1})."""
    model = LeastSquares()
    batch = batches(1)[0]
    lr = 0.05
    method = build_method(
        "sampa", model, squared_error, torch.optim.SGD(model.parameters(), lr=lr), rho=0.3, lam=1.0
    )
    y = model.w.detach().clone()  # y_0 = x_0
    method.step(*batch)  # initialisation step: x_1 = x_0 - eta grad(y_0), g_0 kept
    x = model.w.detach().clone()
    for _ in range(5):
        y = x - lr * ls_grad(y, batch)
        x = x - lr * ls_grad(y, batch)
        method.step(*batch)
        torch.testing.assert_close(model.w.detach(), x, rtol=1e-12, atol=1e-12)


def test_sampa_batch_indexing_and_bn_policy():
    model = BNNet()
    rec = RecordingExecutor()
    method = build_method("sampa", model, ce, sgd(model), executor=rec, rho=0.1, lam=0.2)
    b0, b1 = class_batches(2)
    method.step(*b0)
    before = copy.deepcopy(model)
    y_point = method.lookahead(method.g_y)
    method.step(*b1)
    perturbed, extrapolated = rec.calls[1]
    assert perturbed.inputs is b0[0] and not perturbed.update_bn  # x~_t on the previous batch
    assert extrapolated.inputs is b1[0] and extrapolated.update_bn  # y_{t+1} on the new batch
    for pt, y in zip(extrapolated.point, y_point, strict=True):
        torch.testing.assert_close(pt, y)
    # running statistics: exactly one forward at y_{t+1} on B_{t+1} was added
    expected = copy.deepcopy(before).train()
    names = [n for n, _ in before.named_parameters()]
    torch.func.functional_call(expected, dict(zip(names, y_point, strict=True)), (b1[0],))
    torch.testing.assert_close(model.bn.running_mean, expected.bn.running_mean)
    torch.testing.assert_close(model.bn.running_var, expected.bn.running_var)


def test_sampa_lookahead_does_not_change_base_optimizer_state():
    model = BNNet()
    opt = sgd(model)
    method = build_method("sampa", model, ce, opt, rho=0.1)
    for batch in class_batches(3):
        method.step(*batch)
        buffers = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
        method.lookahead(method.g_y)
        for p, b in zip(model.parameters(), buffers, strict=True):
            assert torch.equal(opt.state[p]["momentum_buffer"], b)


def test_sampa_diagnostics_record_gradient_similarity():
    model = BNNet()
    method = build_method("sampa", model, ce, sgd(model, lr=0.01), rho=0.05, diagnostics_every=1)
    data = class_batches(3)
    records = [method.step(*b) for b in data]
    assert records[0].stats == {}
    cos = float(records[2].stats["grad_cosine"])
    assert -1.0 <= cos <= 1.0 and cos > 0.5  # small lr: y_t is close to x_t
    assert records[2].forward == 3 and records[2].ideal_sequential == 1


# ----------------------------------------------------------------------------------------------
# RandSAM, OptSAM


def test_randsam_perturbation_has_norm_rho_and_follows_the_seed():
    points = []
    for seed in (7, 7, 8):
        torch.manual_seed(0)
        model = BNNet()
        rec = RecordingExecutor()
        method = build_method("randsam", model, ce, sgd(model), executor=rec, seed=seed, rho=0.2)
        x0 = [p.detach().clone() for p in model.parameters()]
        method.step(*class_batches(1)[0])
        job = rec.calls[0][0]
        assert job.update_bn
        e = [pt - p for pt, p in zip(job.point, x0, strict=True)]
        torch.testing.assert_close(global_norm(e), torch.tensor(0.2))
        points.append(torch.cat([t.flatten() for t in e]))
    assert torch.equal(points[0], points[1])
    assert not torch.allclose(points[0], points[2])


def test_optsam_ascends_along_previous_perturbed_gradient():
    model = LeastSquares()
    lr, rho = 0.1, 0.2
    method = build_method("optsam", model, squared_error, torch.optim.SGD(model.parameters(), lr=lr), rho=rho)
    w = model.w.detach().clone()
    g_prev = None
    for batch in batches(3):
        x_tilde = w if g_prev is None else w + rho * g_prev / g_prev.norm()
        g_prev = ls_grad(x_tilde, batch)
        w = w - lr * g_prev
        method.step(*batch)
        torch.testing.assert_close(model.w.detach(), w)


# ----------------------------------------------------------------------------------------------
# Base-optimizer look-ahead


def _optimizers():
    return [
        ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1)),
        ("sgd-momentum-wd", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4)),
        ("sgd-nesterov-dampening", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True)),
        ("sgd-dampening", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.3)),
        ("adamw", lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05)),
        ("adamw-amsgrad", lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05, amsgrad=True)),
        ("adam-l2", lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.05)),
        ("rmsprop-generic", lambda ps: torch.optim.RMSprop(ps, lr=1e-2, momentum=0.5)),
    ]


@pytest.mark.parametrize(("label", "make"), _optimizers())
def test_lookahead_equals_a_real_step_and_keeps_state(label, make):
    model = BNNet()
    opt = make(model.parameters())
    params = list(model.parameters())
    for step in range(3):
        grads = [torch.randn_like(p) for p in params]
        before = copy.deepcopy(opt.state_dict())
        predicted = lookahead(opt, params, grads)
        assert _same_state(opt.state_dict(), before), f"{label}: state changed at step {step}"
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
        for p, y in zip(params, predicted, strict=True):
            torch.testing.assert_close(p.detach(), y, rtol=1e-12, atol=1e-12)


def _same_state(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        if isinstance(a[k], dict):
            if not _same_state(a[k], b[k]):
                return False
        elif isinstance(a[k], torch.Tensor):
            if not torch.equal(a[k], b[k]):
                return False
        elif a[k] != b[k]:
            return False
    return True


def test_sampa_with_adamw_extrapolates_with_the_adamw_step():
    model = BNNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    rec = RecordingExecutor()
    method = build_method("sampa", model, ce, opt, executor=rec, rho=0.05)
    b0, b1 = class_batches(2)
    method.step(*b0)
    clone = copy.deepcopy(model)
    clone_opt = torch.optim.AdamW(clone.parameters(), lr=1e-3, weight_decay=0.01)
    clone_opt.load_state_dict(opt.state_dict())
    for p, g in zip(clone.parameters(), method.g_y, strict=True):
        p.grad = g.clone()
    clone_opt.step()
    method.step(*b1)
    for pt, p in zip(rec.calls[1][1].point, clone.parameters(), strict=True):
        torch.testing.assert_close(pt, p.detach())


# ----------------------------------------------------------------------------------------------
# The contract's sample indices and epochs


def test_methods_that_need_sample_indices_say_so():
    from sampa.optim import SGD

    class NeedsIndices(SGD):
        name = "needs-indices"
        needs_indices = True

    model = BNNet()
    method = NeedsIndices(model, ce, sgd(model))
    x, y = class_batches(1)[0]
    with pytest.raises(ValueError, match="needs the samples' dataset indices"):
        method.step(x, y)
    method.step(x, y, indices=torch.arange(16))
    assert torch.equal(method.batch_indices, torch.arange(16))
    method.start_epoch(3, 10, 7)
    assert (method.epoch, method.epochs, method.steps_per_epoch) == (3, 10, 7)


# ----------------------------------------------------------------------------------------------
# Dropout masks: one seed per gradient job


class RecordingDropout(torch.nn.Dropout):
    """Dropout that remembers the mask of every training forward pass."""

    def __init__(self, p: float) -> None:
        super().__init__(p)
        self.masks: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.training:
            self.masks.append(out != 0)
        return out


def dropout_method(name: str, executor=None, **hp):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), RecordingDropout(0.5), torch.nn.Linear(16, 3)).train()
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = torch.nn.CrossEntropyLoss(reduction="none")
    return build_method(name, model, loss, base, executor=executor, seed=3, **hp), model[1]


def dropout_batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(4)
    return [
        (torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(steps)
    ]


class ReversedExecutor:
    """Evaluates a call's jobs last to first, each with its own stream (as another process would)."""

    def evaluate(self, method, jobs):
        from sampa.optim.evaluation import evaluate_job

        results = {i: evaluate_job(method, jobs[i], stream=(i, 0)) for i in reversed(range(len(jobs)))}
        return [results[i] for i in range(len(jobs))]

    def depth(self, jobs):
        return len(jobs)

    def share_rows(self, indices, rows):
        return indices, rows


def test_dropout_masks_do_not_depend_on_the_order_the_jobs_run_in():
    """SAMPa's two jobs evaluated in reverse order draw the same masks: the same trajectory, bitwise."""
    reference, _ = dropout_method("sampa", lam=0.2)
    reordered, _ = dropout_method("sampa", executor=ReversedExecutor(), lam=0.2)
    for x, y in dropout_batches(5):
        reference.step(x, y)
        reordered.step(x, y)
    for p, q in zip(reference.model.parameters(), reordered.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_each_pass_of_a_step_draws_its_own_masks_and_the_global_generator_is_untouched():
    method, dropout = dropout_method("sam", rho=0.1)
    before = torch.get_rng_state()
    for x, y in dropout_batches(2):
        method.step(x, y)
    assert torch.equal(torch.get_rng_state(), before)
    ascent, descent, next_ascent, _ = dropout.masks
    assert not torch.equal(ascent, descent)  # SAM's two passes: two masks, as two forward passes draw
    assert not torch.equal(ascent, next_ascent)  # the next step: new masks


def test_a_dropout_rate_of_zero_draws_no_masks():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.Dropout(0.0))
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    method = build_method("sam", model, torch.nn.CrossEntropyLoss(reduction="none"), base)
    assert not method.masks
