"""Gradient clipping by global norm and the per-step learning-rate schedules."""

from __future__ import annotations

import pytest
import torch
from problems import LeastSquares, ls_batches, ls_grad, squared_error

from sampa.config import ConfigError, RunConfig, validate
from sampa.optim import build_method
from sampa.optim.clipping import clip_by_global_norm, clip_by_global_norm_
from sampa.optim.tensors import global_norm
from sampa.schedules import linear_warmup_decay
from sampa.train import SCHEDULE_FACTORS, lr_at, steps_per_epoch


def _vectors(scale: float) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [scale * torch.randn(3, 4, generator=gen), scale * torch.randn(5, generator=gen)]


def test_global_norm_is_the_norm_of_the_concatenation():
    vs = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]
    assert float(global_norm(vs)) == pytest.approx(5.0)


def test_clipping_scales_to_max_norm_and_keeps_direction():
    vs = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]
    clipped, norm = clip_by_global_norm(vs, 1.0)
    assert float(norm) == pytest.approx(5.0)
    assert float(global_norm(clipped)) == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(clipped[0], torch.tensor([0.6, 0.0]), atol=1e-6)
    assert torch.equal(vs[0], torch.tensor([3.0, 0.0]))  # inputs untouched


def test_clipping_leaves_small_vectors_unchanged():
    vs = _vectors(1e-3)
    clipped, _ = clip_by_global_norm(vs, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(clipped, vs, strict=True))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 100.0])
def test_in_place_clipping_equals_torch_clip_grad_norm(scale):
    vs = _vectors(scale)
    params = [torch.nn.Parameter(torch.zeros_like(v)) for v in vs]
    for p, v in zip(params, vs, strict=True):
        p.grad = v.clone()
    torch_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    ours = [v.clone() for v in vs]
    our_norm = clip_by_global_norm_(ours, 1.0)
    assert torch.equal(our_norm, torch_norm)
    assert all(torch.equal(p.grad, o) for p, o in zip(params, ours, strict=True))


@pytest.mark.parametrize("bad", [0.0, -1.0, True, "1"])
def test_clipping_rejects_bad_max_norm(bad):
    with pytest.raises(ValueError, match="max_norm must be a number > 0"):
        clip_by_global_norm(_vectors(1.0), bad)


def test_linear_warmup_decay_values():
    lrs = [linear_warmup_decay(1.0, s, total_steps=10, warmup_steps=2) for s in range(11)]
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0])


def test_linear_without_warmup_starts_at_peak():
    assert linear_warmup_decay(2e-5, 0, total_steps=4) == 2e-5
    assert linear_warmup_decay(2e-5, 3, total_steps=4) == pytest.approx(0.5e-5)


def test_linear_matches_transformers_schedule():
    transformers = pytest.importorskip("transformers")  # the nlp extra; the values above test the math
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=3.0)
    sched = transformers.get_linear_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=17)
    for step in range(17):
        assert opt.param_groups[0]["lr"] == pytest.approx(linear_warmup_decay(3.0, step, 17, 3))
        opt.step()
        sched.step()


def test_linear_rejects_bad_warmup():
    with pytest.raises(ValueError, match="warmup_steps=11 total_steps=10"):
        linear_warmup_decay(1.0, 0, total_steps=10, warmup_steps=11)


def _text_run(**changes) -> RunConfig:
    """A synthetic-text run: 512 training samples, no held-out split (batches of 32: 16 steps)."""
    return RunConfig(model="bert-tiny", dataset="synthetic-text", **changes)


def test_lr_at_linear_matches_transformers_schedule():
    transformers = pytest.importorskip("transformers")  # the nlp extra; the next test checks the math
    cfg = _text_run(schedule="linear", warmup=0.1, epochs=3, batch_size=32, lr=2e-5, base_optimizer="adamw")
    n = steps_per_epoch(cfg)
    assert n == 16
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=2e-5)
    sched = transformers.get_linear_schedule_with_warmup(opt, num_warmup_steps=5, num_training_steps=48)
    for epoch in range(3):  # round(0.1 * 48) = 5 warm-up steps
        for step in range(n):
            assert lr_at(cfg, epoch, step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-20)
            opt.step()
            sched.step()


def test_lr_at_linear_warmup_values():
    cfg = _text_run(schedule="linear", warmup=0.25, epochs=1, batch_size=128, lr=1.0)  # 4 steps, 1 warm-up
    assert [lr_at(cfg, 0, s) for s in range(4)] == pytest.approx([0.0, 1.0, 2 / 3, 1 / 3])
    assert SCHEDULE_FACTORS["linear"][1]  # stepped every iteration


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"warmup": 0.1},
            r"^warmup 0.1 is not read by schedule 'cosine' \(only the linear schedule warms up\); "
            r"remove it or use schedule 'linear'$",
        ),
        ({"schedule": "linear", "warmup": 1.0}, r"warmup must be in \[0, 1\) \(got 1.0\)"),
        ({"clip_norm": 0.0}, r"clip_norm must be in \(0, inf\) \(got 0.0\)"),
        ({"clip_norm": float("inf")}, "clip_norm must be a finite number"),
        ({"clip_norm": "1"}, "clip_norm must be a number"),
    ],
)
def test_schedule_and_clipping_settings_are_validated(changes, message):
    with pytest.raises(ConfigError, match=message):
        validate(_text_run(batch_size=32, **changes))


# ----------------------------------------------------------------------------------------------
# Clipping inside the methods (Method.clip_norm): G, and the look-ahead gradient of SAMPa


def _clip(v: torch.Tensor, max_norm: float) -> torch.Tensor:
    return v * min(1.0, max_norm / (float(v.norm()) + 1e-6))


def _least_squares_method(name: str, clip_norm: float | None, **hparams):
    model = LeastSquares(dim=3, seed=0)
    method = build_method(name, model, squared_error, torch.optim.SGD(model.parameters(), lr=0.1), **hparams)
    method.clip_norm = clip_norm
    return model, method


@pytest.mark.usefixtures("float64")
def test_sgd_step_clips_the_update_direction():
    batch = ls_batches(1, seed=4)[0]
    model, method = _least_squares_method("sgd", 0.1)
    w0 = model.w.detach().clone()
    assert float(ls_grad(w0, batch).norm()) > 0.1  # clipping is active
    method.step(*batch)
    assert torch.allclose(model.w, w0 - 0.1 * _clip(ls_grad(w0, batch), 0.1))


@pytest.mark.usefixtures("float64")
def test_sampa_clips_g_t_for_the_look_ahead_and_the_update():
    rho, lam, clip = 0.05, 0.2, 0.1
    b0, b1 = ls_batches(2, seed=5)
    model, method = _least_squares_method("sampa", clip, rho=rho, lam=lam)
    w0 = model.w.detach().clone()
    method.step(*b0)  # first call: base step with g_0 = grad f(x_0; B_0)
    g0 = ls_grad(w0, b0)
    w1 = w0 - 0.1 * _clip(g0, clip)
    assert torch.allclose(model.w, w1)
    method.step(*b1)
    x_tilde = w1 + rho * g0 / (g0.norm() + 1e-12)  # normalised: clipping g_t would not change it
    y_next = w1 - 0.1 * _clip(g0, clip)  # the look-ahead predicts the clipped update
    direction = (1 - lam) * ls_grad(x_tilde, b0) + lam * ls_grad(y_next, b1)
    assert torch.allclose(model.w, w1 - 0.1 * _clip(direction, clip))
    unclipped_y = w1 - 0.1 * g0
    other = (1 - lam) * ls_grad(x_tilde, b0) + lam * ls_grad(unclipped_y, b1)
    assert not torch.allclose(model.w, w1 - 0.1 * _clip(other, clip))  # the choice is visible


@pytest.mark.usefixtures("float64")
def test_without_clip_norm_nothing_is_clipped():
    batch = ls_batches(1, seed=4)[0]
    model, method = _least_squares_method("sgd", None)
    w0 = model.w.detach().clone()
    method.step(*batch)
    assert torch.allclose(model.w, w0 - 0.1 * ls_grad(w0, batch))
