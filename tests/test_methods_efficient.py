"""Efficient SAM variants (LookSAM, AE-SAM, SAF, MESA, ESAM, mSAM, vSAM, mSAM+SAMPa) against hand
computations on small float64 problems (the generic tests over every method are in test_methods.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from problems import (
    STEPS_PER_EPOCH,
    BNNet,
    LeastSquares,
    RecordingExecutor,
    ce,
    indexed_batches,
    ls_batches,
    ls_grad,
    run_steps,
    sgd,
    squared_error,
)
from torch import nn

from sampa.optim import build_method
from sampa.optim.tensors import global_norm
from sampa.optim.trajectory import trajectory_kl
from sampa.optim.vsam import SamplingSchedule, blocked_variance, mean_relative_change

pytestmark = pytest.mark.usefixtures("float64")


# ----------------------------------------------------------------------------------------------
# Small problems


def split(batch: tuple[torch.Tensor, torch.Tensor], size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """ceil(n / size) consecutive parts of near-equal sizes, larger parts first."""
    n = len(batch[1])
    count = math.ceil(n / size)
    sizes = [n // count + (1 if i < n % count else 0) for i in range(count)]
    return list(zip(batch[0].split(sizes), batch[1].split(sizes), strict=True))


def plain_gd(model: nn.Module, lr: float) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr)


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params])


def autograd_grad(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Gradient of the mean loss on a copy of the model (train mode; the original is untouched)."""
    clone = copy.deepcopy(model)
    return list(torch.autograd.grad(loss_fn(clone(x), y).mean(), list(clone.parameters())))


# ----------------------------------------------------------------------------------------------
# LookSAM


def reference_looksam(w0, data, lr, rho, k, alpha, eps=1e-12):
    """LookSAM's box by hand (global projection), plain gradient descent."""
    w, g_v, out = w0.clone(), None, []
    for t, batch in enumerate(data):
        g = ls_grad(w, batch)
        if t % k == 0:
            g_s = ls_grad(w + rho * g / (g.norm() + eps), batch)
            g_v = g_s - (g_s @ g) / (g @ g) * g
            G = g_s
        else:
            G = g + alpha * g.norm() / (g_v.norm() + eps) * g_v
        w = w - lr * G
        out.append(w.clone())
    return out


def test_looksam_matches_hand_computation():
    model = LeastSquares()
    w0 = model.w.detach().clone()
    lr, rho, k, alpha = 0.05, 0.2, 3, 0.7
    method = build_method("looksam", model, squared_error, plain_gd(model, lr), rho=rho, k=k, alpha=alpha)
    data = ls_batches(8)
    for batch, w_ref in zip(data, reference_looksam(w0, data, lr, rho, k, alpha), strict=True):
        method.step(*batch)
        torch.testing.assert_close(model.w.detach(), w_ref, rtol=1e-12, atol=1e-12)


def test_looksam_reuse_step_adds_alpha_scaled_orthogonal_component():
    model = BNNet()
    method = build_method("looksam", model, ce, sgd(model), k=5, alpha=0.7, rho=0.1)
    (x0, y0, _), (x1, y1, _) = indexed_batches(2)
    method.step(x0, y0)  # t = 0: SAM step, keeps g_v
    g_v = method.g_v
    g = autograd_grad(model, ce, x1, y1)
    G, _, stats = method.direction(x1, y1)  # t = 1: reuse step
    assert stats["sam_step"] == 0.0
    added = [Gi - gi for Gi, gi in zip(G, g, strict=True)]
    torch.testing.assert_close(global_norm(added), 0.7 * global_norm(g))  # norm alpha ||g||
    unit = global_norm(g_v)
    for a, v in zip(added, g_v, strict=True):  # along g_v
        torch.testing.assert_close(a, 0.7 * global_norm(g) / unit * v)


def test_looksam_direction_g_v_is_orthogonal_to_the_clean_gradient():
    model = BNNet()
    x, y, _ = indexed_batches(1)[0]
    g = autograd_grad(model, ce, x, y)
    method = build_method("looksam", model, ce, sgd(model), rho=0.1)
    method.step(x, y)
    dot = sum((a * b).sum() for a, b in zip(method.g_v, g, strict=True))
    assert abs(float(dot)) < 1e-12 * float(global_norm(g) * global_norm(method.g_v))
    assert float(global_norm(method.g_v)) > 0


def test_looksam_with_k_1_is_sam():
    params = {}
    for name, hp in [("looksam", {"k": 1}), ("sam", {})]:
        torch.manual_seed(0)
        model = BNNet()
        method = build_method(name, model, ce, sgd(model), rho=0.1, **hp)
        for x, y, _ in indexed_batches(4):
            method.step(x, y)
        params[name] = flat(model.parameters())
    assert torch.equal(params["looksam"], params["sam"])


# ----------------------------------------------------------------------------------------------
# AE-SAM


def reference_aesam(w0, data, lr, rho, delta, lam1, lam2, total, eps=1e-12):
    """AE-SAM's box by hand: mu/sigma^2 EMAs of ||g||^2, threshold mu + c_t sigma, c_t linear in t/T."""
    w, mu, var, out, decisions = w0.clone(), None, 0.0, [], []
    for t, batch in enumerate(data):
        g = ls_grad(w, batch)
        s = float(g @ g)
        mu = s if mu is None else delta * mu + (1 - delta) * s
        var = delta * var + (1 - delta) * (s - mu) ** 2
        c = (t / total) * lam1 + (1 - t / total) * lam2
        sam = s >= mu + c * math.sqrt(var)
        G = ls_grad(w + rho * g / (g.norm() + eps), batch) if sam else g
        w = w - lr * G
        out.append(w.clone())
        decisions.append(sam)
    return out, decisions


def test_aesam_matches_hand_computation_including_the_threshold_schedule():
    model = LeastSquares()
    w0 = model.w.detach().clone()
    lr, rho, delta = 0.05, 0.2, 0.6
    data = [(x * (1 + i % 3), y) for i, (x, y) in enumerate(ls_batches(12))]  # varying ||g||
    epochs, per_epoch = 3, 4
    method = build_method("aesam", model, squared_error, plain_gd(model, lr), rho=rho, delta=delta)
    expected, decisions = reference_aesam(w0, data, lr, rho, delta, -1.0, 1.0, epochs * per_epoch)
    for t, (batch, w_ref) in enumerate(zip(data, expected, strict=True)):
        if t % per_epoch == 0:
            method.start_epoch(t // per_epoch, epochs, per_epoch)
        record = method.step(*batch)
        assert record.stats["sam_step"] == float(decisions[t])
        torch.testing.assert_close(model.w.detach(), w_ref, rtol=1e-12, atol=1e-12)
    assert 0 < sum(decisions) < len(decisions)  # the problem exercises both branches


def test_aesam_takes_a_sam_step_exactly_when_the_statistic_crosses_the_threshold():
    torch.manual_seed(0)
    model = BNNet()
    rec = RecordingExecutor()
    method = build_method("aesam", model, ce, sgd(model, lr=0.3), executor=rec)
    method.start_epoch(0, 1, 30)
    gen = torch.Generator().manual_seed(0)
    sam_steps = 0
    for _ in range(30):
        x = torch.randn(16, 4, generator=gen) * (1 + 2 * torch.rand(1, generator=gen))
        y = torch.randint(0, 3, (16,), generator=gen)
        n_calls = len(rec.calls)
        record = method.step(x, y)
        crossed = record.stats["grad_norm_sq"] >= record.stats["threshold"]
        assert record.stats["sam_step"] == float(crossed)
        perturbed_jobs = len(rec.calls) - n_calls - 1
        assert perturbed_jobs == int(crossed)
        if crossed:
            assert rec.calls[-1][0].point is not None and not rec.calls[-1][0].update_bn
        sam_steps += int(crossed)
    assert 0 < sam_steps < 30


def test_aesam_threshold_coefficient_goes_linearly_from_lam2_to_lam1():
    model = BNNet()
    method = build_method("aesam", model, ce, sgd(model), lam1=-1.0, lam2=1.0)
    assert method.threshold_coefficient() == 1.0  # start_epoch never called: T unknown, c = lam2
    method.start_epoch(0, 10, 10)
    for t, c in [(0, 1.0), (25, 0.5), (50, 0.0), (100, -1.0), (150, -1.0)]:
        method.step_count = t
        assert method.threshold_coefficient() == pytest.approx(c)


# ----------------------------------------------------------------------------------------------
# SAF and MESA


def sgd_direction(model_before: nn.Module, model_after: nn.Module, lr: float) -> torch.Tensor:
    """G from plain gradient descent: (x_t - x_{t+1}) / lr."""
    return (flat(model_before.parameters()) - flat(model_after.parameters())) / lr


def test_saf_gradient_adds_kl_to_the_outputs_recorded_lag_epochs_ago():
    lr, lam, tau = 0.1, 0.3, 5.0
    torch.manual_seed(0)
    model = BNNet()
    method = build_method("saf", model, ce, plain_gd(model, lr), lam=lam, temperature=tau, e_start=1, lag=1)
    x, y, idx = indexed_batches(1)[0]
    recorded = copy.deepcopy(model)(x).detach()  # epoch 0's train-mode outputs of these samples
    method.start_epoch(0, 3, 1)
    method.step(x, y, indices=idx)
    torch.testing.assert_close(method.table[idx, 0], recorded)
    method.start_epoch(1, 3, 1)
    before = copy.deepcopy(model)
    record = method.step(x, y, indices=idx)
    assert (record.forward, record.backward) == (1, 1)  # no extra pass

    def saf_loss(logits, targets):
        return ce(logits, targets) + lam * tau**2 * trajectory_kl(logits, recorded, tau)

    expected = torch.cat([g.flatten() for g in autograd_grad(before, saf_loss, x, y)])
    torch.testing.assert_close(sgd_direction(before, model, lr), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(record.loss, ce(before(x), y).mean())  # the reported loss is the data loss
    assert float(record.stats["trajectory_kl"]) > 0


def test_saf_sample_without_an_output_from_lag_epochs_ago_gets_no_term():
    lr = 0.1
    torch.manual_seed(0)
    model = BNNet()
    method = build_method("saf", model, ce, plain_gd(model, lr), e_start=1, lag=2)
    (x0, y0, i0), (x1, y1, i1) = indexed_batches(2)
    method.start_epoch(0, 4, 1)
    method.step(x0, y0, indices=i0)  # epoch 0 records batch 0 only
    method.start_epoch(1, 4, 1)
    method.step(x0, y0, indices=i0)  # epoch 1: the target would be epoch -1: none
    method.start_epoch(2, 4, 1)
    before = copy.deepcopy(model)
    record = method.step(x1, y1, indices=i1)  # batch 1 was never seen in epoch 0
    expected = torch.cat([g.flatten() for g in autograd_grad(before, ce, x1, y1)])
    torch.testing.assert_close(sgd_direction(before, model, lr), expected, rtol=1e-10, atol=1e-12)
    assert float(record.stats["trajectory_kl"]) == 0.0


def test_saf_and_mesa_before_e_start_are_the_base_optimizer():
    params = {}
    for name in ("saf", "mesa", "sgd"):
        torch.manual_seed(0)
        model = BNNet()
        hp = {"e_start": 5} if name != "sgd" else {}
        method = build_method(name, model, ce, sgd(model), **hp)
        run_steps(method, indexed_batches(), 3 * STEPS_PER_EPOCH, epochs=10)
        params[name] = flat(model.parameters())
    assert torch.equal(params["saf"], params["sgd"]) and torch.equal(params["mesa"], params["sgd"])


def test_saf_table_grows_with_the_largest_index():
    model = BNNet()
    method = build_method("saf", model, ce, sgd(model), lag=2)
    x, y, _ = indexed_batches(1)[0]
    method.step(x, y, indices=torch.arange(16) + 100)
    assert method.table.shape == (116, 3, 3) and method.recorded_epoch.shape == (116, 3)
    assert (method.recorded_epoch[:100] == -1).all() and (method.recorded_epoch[100:, 0] == 0).all()
    with pytest.raises(ValueError, match="needs the samples' dataset indices"):
        method.step(x, y)


def test_mesa_teacher_is_the_ema_of_parameters_and_buffers():
    beta = 0.7
    torch.manual_seed(0)
    model = BNNet()
    method = build_method("mesa", model, ce, sgd(model), beta=beta)
    expected = {k: v.clone() for k, v in model.state_dict().items()}  # v = x_0
    for x, y, _ in indexed_batches(4):
        method.step(x, y)
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                expected[key] = beta * expected[key] + (1 - beta) * value
            else:
                expected[key] = value.clone()
    for key, value in method.teacher.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-12, atol=1e-12)
    assert not method.teacher.training


def test_mesa_gradient_adds_kl_to_the_teacher_outputs_in_eval_mode():
    lr, lam, tau = 0.1, 0.8, 5.0
    torch.manual_seed(0)
    model = BNNet()
    method = build_method(
        "mesa", model, ce, plain_gd(model, lr), lam=lam, temperature=tau, e_start=1, beta=0.5
    )
    data = indexed_batches(2)
    method.start_epoch(0, 2, 2)
    for x, y, _ in data:
        method.step(x, y)
    method.start_epoch(1, 2, 2)
    x, y, _ = data[0]
    teacher_out = copy.deepcopy(method.teacher).eval()(x).detach()
    before = copy.deepcopy(model)
    record = method.step(x, y)
    assert (record.forward, record.backward, record.sequential) == (2, 1, 1)

    def mesa_loss(logits, targets):
        return ce(logits, targets) + lam * tau**2 * trajectory_kl(logits, teacher_out, tau)

    expected = torch.cat([g.flatten() for g in autograd_grad(before, mesa_loss, x, y)])
    torch.testing.assert_close(sgd_direction(before, model, lr), expected, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# ESAM


def test_esam_perturbs_only_the_sampled_tensors():
    torch.manual_seed(0)
    model = BNNet()
    rec = RecordingExecutor()
    method = build_method("esam", model, ce, sgd(model), executor=rec, rho=0.1, beta=0.5, seed=1)
    params = list(model.parameters())
    for x, y, _ in indexed_batches(3):
        x_t = [p.detach().clone() for p in params]
        grads = autograd_grad(model, ce, x, y)
        calls_before = len(rec.calls)
        method.step(x, y)
        clean, perturbed = rec.calls[calls_before][0], rec.calls[calls_before + 1][0]
        kept = list(clean.wrt)
        assert 0 < len(kept) <= len(params) and clean.update_bn and not perturbed.update_bn
        g_norm = torch.sqrt(sum((grads[i] ** 2).sum() for i in kept))
        for i, (point, x_i) in enumerate(zip(perturbed.point, x_t, strict=True)):
            if i in kept:
                torch.testing.assert_close(point, x_i + 0.1 / 0.5 * grads[i] / g_norm)
            else:
                assert torch.equal(point, x_i)  # not perturbed


def test_esam_masks_follow_the_seed_and_keep_about_beta_of_the_tensors():
    def masks(seed: int) -> list[list[int]]:
        model = BNNet()
        method = build_method("esam", model, ce, sgd(model), seed=seed, beta=0.5)
        return [method.swp_mask() for _ in range(400)]

    first = masks(1)
    assert first == masks(1) and first != masks(2)
    assert all(len(m) >= 1 for m in first)
    kept = sum(len(m) for m in first) / (400 * 6)
    expected = 0.5 / (1 - 0.5**6)  # 6 tensors kept with probability 1/2, conditioned on >= 1 kept
    assert abs(kept - expected) < 0.04


def test_esam_sds_descends_on_the_samples_whose_loss_rises_most():
    torch.manual_seed(0)
    model = BNNet()
    rec = RecordingExecutor()
    method = build_method("esam", model, ce, sgd(model), executor=rec, rho=0.5, beta=1.0, gamma=0.25)
    x, y, _ = indexed_batches(1)[0]
    reference = copy.deepcopy(model)
    loss_before = ce(copy.deepcopy(reference)(x), y).detach()
    record = method.step(x, y)
    assert (record.forward, record.backward) == (3, 2)
    perturbed = rec.calls[1][0]
    names = [n for n, _ in reference.named_parameters()]
    with torch.no_grad():
        probe = copy.deepcopy(reference)
        for m in probe.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.track_running_stats = False
        out = torch.func.functional_call(probe, dict(zip(names, perturbed.point, strict=True)), (x,))
    sharpness = ce(out, y) - loss_before
    chosen = torch.topk(sharpness, 4).indices.sort().values
    assert torch.equal(perturbed.inputs, x[chosen]) and torch.equal(perturbed.targets, y[chosen])
    assert record.stats["sds_kept"] == 0.25


def test_esam_without_swp_and_sds_is_sam():
    params = {}
    for name, hp in [("esam", {"beta": 1.0, "gamma": 1.0}), ("sam", {})]:
        torch.manual_seed(0)
        model = BNNet()
        method = build_method(name, model, ce, sgd(model), rho=0.1, **hp)
        for x, y, _ in indexed_batches(4):
            method.step(x, y)
        params[name] = flat(model.parameters())
    assert torch.equal(params["esam"], params["sam"])


def test_esam_sds_needs_a_per_sample_loss():
    """Every method needs one (the contract's check); ESAM's sample selection reads them."""
    model = BNNet()
    method = build_method("esam", model, lambda out, y: ce(out, y).mean(), sgd(model), gamma=0.5, beta=1.0)
    x, y, _ = indexed_batches(1)[0]
    with pytest.raises(ValueError, match=r"loss_fn must return one loss per sample, shape \(16,\)"):
        method.step(x, y)


# ----------------------------------------------------------------------------------------------
# mSAM and mSAM+SAMPa


def reference_msam(w0, data, lr, rho, m, eps=1e-12):
    w, out = w0.clone(), []
    for batch in data:
        parts = split(batch, m)
        G = torch.zeros_like(w)
        for xb, yb in parts:
            g = ls_grad(w, (xb, yb))
            G += len(yb) / len(batch[1]) * ls_grad(w + rho * g / (g.norm() + eps), (xb, yb))
        w = w - lr * G
        out.append(w.clone())
    return out


@pytest.mark.parametrize(("size", "m"), [(6, 2), (7, 3)])  # 3 equal micro-batches; 3 + 2 + 2
def test_msam_matches_hand_computation(size, m):
    model = LeastSquares()
    w0 = model.w.detach().clone()
    lr, rho = 0.05, 0.2
    method = build_method("msam", model, squared_error, plain_gd(model, lr), rho=rho, micro_batch_size=m)
    data = ls_batches(4, size=size)
    for batch, w_ref in zip(data, reference_msam(w0, data, lr, rho, m), strict=True):
        clean_loss = squared_error(model(batch[0]), batch[1]).mean().detach()
        record = method.step(*batch)
        torch.testing.assert_close(model.w.detach(), w_ref, rtol=1e-12, atol=1e-12)
        assert record.stats["micro_batches"] == 3.0 and record.count == size
        torch.testing.assert_close(record.loss, clean_loss)  # size-weighted mean of the clean passes


def test_msam_ascent_jobs_are_local_and_perturbed_jobs_are_averaged():
    model = BNNet()
    rec = RecordingExecutor()
    method = build_method("msam", model, ce, sgd(model), executor=rec, micro_batch_size=6)
    x, y, _ = indexed_batches(1)[0]
    record = method.step(x, y)
    ascent, perturbed = rec.calls
    assert [len(j.targets) for j in ascent] == [6, 5, 5]  # ceil(16 / 6) = 3 near-equal parts
    assert all(j.local and j.update_bn and j.point is None for j in ascent)
    assert all(not j.local and not j.update_bn and j.point is not None for j in perturbed)
    assert record.count == 16 and record.stats["micro_batches"] == 3.0


@pytest.mark.parametrize(("name", "reference"), [("msam", "sam"), ("sampa-msam", "sampa")])
def test_one_micro_batch_is_the_plain_method(name, reference):
    params = {}
    for method_name, hp in [(name, {"micro_batch_size": 16}), (reference, {})]:
        for label, base in [("sgd", sgd), ("adamw", lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2))]:
            torch.manual_seed(0)
            model = BNNet()
            method = build_method(method_name, model, ce, base(model), rho=0.1, **hp)
            for x, y, _ in indexed_batches(5):
                method.step(x, y)
            params[method_name, label] = flat(model.parameters())
    for label in ("sgd", "adamw"):
        assert torch.equal(params[name, label], params[reference, label])


def reference_msampa(w0, data, lr, momentum, wd, rho, lam, m, eps=1e-12):
    """mSAM+SAMPa by hand for least squares with SGD (momentum, coupled wd)."""
    w, buf, g_micro, g_y, prev, out = w0.clone(), None, None, None, None, []

    def weighted(grads, parts):
        n = sum(len(p[1]) for p in parts)
        return sum(len(p[1]) / n * g for g, p in zip(grads, parts, strict=True))

    for batch in data:
        new = split(batch, m)
        if g_micro is None:
            g_micro = [ls_grad(w, part) for part in new]
            G = g_y = weighted(g_micro, new)
        else:
            old = split(prev, m)
            h = [
                ls_grad(w + rho * gj / (gj.norm() + eps), part) for gj, part in zip(g_micro, old, strict=True)
            ]
            d_y = g_y + wd * w
            y = w - lr * (d_y if buf is None else momentum * buf + d_y)
            g_micro = [ls_grad(y, part) for part in new]
            g_y = weighted(g_micro, new)
            G = (1 - lam) * weighted(h, old) + lam * g_y
        prev = batch
        d = G + wd * w
        buf = d if buf is None else momentum * buf + d
        w = w - lr * buf
        out.append(w.clone())
    return out


def test_msampa_matches_hand_computation():
    model = LeastSquares()
    w0 = model.w.detach().clone()
    lr, mu, wd, rho, lam, m = 0.05, 0.9, 5e-3, 0.1, 0.2, 3
    data = ls_batches(5, size=8)  # micro-batches 3 + 3 + 2
    method = build_method(
        "sampa-msam", model, squared_error, sgd(model, lr, mu, wd), rho=rho, lam=lam, micro_batch_size=m
    )
    for batch, w_ref in zip(data, reference_msampa(w0, data, lr, mu, wd, rho, lam, m), strict=True):
        method.step(*batch)
        torch.testing.assert_close(model.w.detach(), w_ref, rtol=1e-12, atol=1e-12)


def test_msampa_perturbs_each_micro_batch_with_its_own_y_gradient():
    model = BNNet()
    rec = RecordingExecutor()
    method = build_method("sampa-msam", model, ce, sgd(model), executor=rec, micro_batch_size=8, rho=0.1)
    (x0, y0, _), (x1, y1, _) = indexed_batches(2)
    method.step(x0, y0)
    g_micro = method.g_y_micro
    x_t = [p.detach().clone() for p in model.parameters()]
    method.step(x1, y1)
    jobs = rec.calls[1]
    assert len(jobs) == 4
    for j, (job, g_j) in enumerate(zip(jobs[:2], g_micro, strict=True)):
        assert torch.equal(job.inputs, x0[8 * j : 8 * (j + 1)]) and not job.update_bn
        norm = global_norm(g_j)
        for point, x_i, g in zip(job.point, x_t, g_j, strict=True):
            torch.testing.assert_close(point, x_i + 0.1 * g / norm)
    assert all(
        job.update_bn and torch.equal(job.inputs, x1[8 * j : 8 * (j + 1)]) for j, job in enumerate(jobs[2:])
    )


# ----------------------------------------------------------------------------------------------
# vSAM


def test_vsam_reuses_the_last_psf_with_decaying_weight_on_non_sampling_steps():
    """Warm-up epoch 0 samples; afterwards (S = 1, c = 1) no step samples before the window boundary."""
    model = LeastSquares()
    w = model.w.detach().clone()
    lr, rho, gamma, reuse = 0.05, 0.2, 0.7, 3
    method = build_method(
        "vsam",
        model,
        squared_error,
        plain_gd(model, lr),
        rho=rho,
        gamma=gamma,
        reuse_steps=reuse,
        warmup_epochs=1,
        window=50,
        last_layers=1,
    )
    data = ls_batches(7)
    method.start_epoch(0, 2, 1)
    g = ls_grad(w, data[0])
    g_s = ls_grad(w + rho * g / (g.norm() + 1e-12), data[0])
    psf = g_s - g
    record = method.step(*data[0])
    assert record.stats["sam_step"] == 1.0 and record.stats["sampling_rate"] == 1.0
    w = w - lr * g_s
    torch.testing.assert_close(method.psf[0], psf)
    method.start_epoch(1, 2, 6)
    for j, batch in enumerate(data[1:], start=1):
        record = method.step(*batch)
        weight = gamma**j if j <= reuse else 0.0
        w = w - lr * (ls_grad(w, batch) + weight * psf)  # G = g + gamma^j PSF, then plain g
        torch.testing.assert_close(model.w.detach(), w, rtol=1e-12, atol=1e-12)
        assert record.stats["sam_step"] == 0.0 and record.stats["reuse_weight"] == pytest.approx(weight)
        assert (record.forward, record.backward) == (1, 1)


def test_vsam_records_psf_statistics_on_the_last_tensors():
    torch.manual_seed(0)
    model = BNNet()
    method = build_method("vsam", model, ce, sgd(model), last_layers=2)
    x, y, _ = indexed_batches(1)[0]
    g = autograd_grad(model, ce, x, y)
    record = method.step(x, y)  # warm-up: a sampling step
    psf_last, g_last = method.psf[-2:], g[-2:]
    ratio = float(global_norm(psf_last) / global_norm(g_last))
    assert record.stats["psf_norm_ratio"] == pytest.approx(ratio, rel=1e-12)
    assert method.schedule.norms == [pytest.approx(float(global_norm(psf_last)), rel=1e-12)]


def schedule(**overrides) -> SamplingSchedule:
    values = dict(window=10, var_blocks=2, max_rate=0.8, alpha_norm=0.5, alpha_var=0.25)
    values.update(overrides)
    return SamplingSchedule(**values)


def test_vsam_rate_update_follows_the_trends_of_ratio_and_variance():
    s = schedule(rate=4.0, ratios=[1.0, 1.2, 1.5], variances=[2.0, 1.0, 1.5])
    s.update_rate()
    r_norm = ((1.2 - 1.0) / 1.0 + (1.5 - 1.2) / 1.2) / 2
    r_var = ((1.0 - 2.0) / 2.0 + (1.5 - 1.0) / 1.0) / 2
    assert s.rate == pytest.approx(4.0 * (1 + 0.5 * r_norm + 0.25 * r_var))
    assert s.probability == pytest.approx(s.rate / 10) and s.sampled_in_window == 0
    high = schedule(rate=7.9, ratios=[1.0, 3.0], variances=[1.0, 3.0])  # trends clipped to +1
    high.update_rate()
    assert high.rate == 8.0  # floor(K p_max)
    low = schedule(rate=1.2, ratios=[3.0, 1.0], variances=[3.0, 0.0])
    low.update_rate()
    assert low.rate == 1.0


def test_vsam_schedule_meets_its_quota_in_every_window():
    s = schedule(rate=3.0, probability=0.3)
    taken = []
    for _ in range(9):  # u = 0: never sampled at random
        sample = s.decide(warmup=False, u=0.0)
        s.sampled_in_window += int(sample)  # as record() does on a sampling step
        taken.append(sample)
    # the quota floor(S) = 3 is forced into the last steps before the boundary at n = K = 10
    assert taken == [False] * 6 + [True] * 3


def test_vsam_schedule_samples_at_random_up_to_the_quota():
    s = schedule(rate=2.0, probability=0.2)
    taken = []
    for u in [0.9, 0.5, 0.95, 0.99, 0.1, 0.1, 0.1, 0.1, 0.1]:  # sample when u >= 1 - p = 0.8
        sample = s.decide(warmup=False, u=u)
        s.sampled_in_window += int(sample)
        taken.append(sample)
    assert taken == [True, False, True] + [False] * 6  # quota of 2 reached: no more samples


def test_vsam_window_helpers():
    assert mean_relative_change([2.0, 3.0, 0.0, 1.0]) == pytest.approx((0.5 - 1.0) / 2)  # 0 skipped
    assert mean_relative_change([1.0]) == 0.0
    values = [5.0, 1.0, 2.0, 4.0, 3.0, 10.0]
    # sorted: [1, 2, 3 | 4, 5, 10] -> variances 1 and 10.333...
    assert blocked_variance(values, 2) == pytest.approx((1.0 + 31 / 3) / 2)
    assert blocked_variance([1.0], 2) == 0.0


def test_vsam_warm_up_samples_every_step_and_leaves_one_sample_in_the_window():
    torch.manual_seed(0)
    model = BNNet()
    method = build_method("vsam", model, ce, sgd(model), warmup_epochs=2, window=4, var_blocks=2)
    records = run_steps(method, indexed_batches(), 2 * STEPS_PER_EPOCH, epochs=4)
    assert [r.stats["sam_step"] for r in records] == [1.0] * 6
    assert method.schedule.sampled_in_window == 1 and len(method.schedule.norms) == 4
