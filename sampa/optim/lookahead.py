r"""The point a base optimizer *would* reach, without changing its state (SAMPa Algorithm 2, line 6).

SAMPa's extrapolated point is y_{t+1} = ModelUpdate_{m_t}(x_t, g_t): the base optimizer's update
rule applied to x_t with gradient g_t = \nabla f(y_t) and its current state m_t, but the state is
not advanced. This module computes that point for

* ``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay): with momentum buffer b_t,
  d = g + wd x_t,  b' = mu b_t + (1 - dampening) d  (b' = d before the first step),
  y = x_t - lr (d + mu b' if nesterov else b').  This is the official SAMPa code's
  y = x_t - lr (g + wd x_t + mu b_t) for dampening 0.
* ``torch.optim.AdamW`` / ``Adam``: the step AdamW would take with its moments (m_t, v_t) advanced
  by g_t and bias correction for step t+1, i.e.
  y = x_t (1 - lr wd) - lr/(1 - beta1^{t+1}) * m' / (sqrt(v' / (1 - beta2^{t+1})) + eps),
  m' = beta1 m_t + (1 - beta1) g,  v' = beta2 v_t + (1 - beta2) g^2  (AMSGrad: max(v_max, v')).
  The paper releases no AdamW code; this is our definition, the exact analogue of the SGD case.
* any other optimizer: a generic fallback that snapshots the state, steps and restores.

The explicit forms are written with foreach kernels (a few launches per parameter group instead of
several per tensor) in the operation order of torch's for-loop and foreach implementations, so the
result equals what ``optimizer.step()`` produces with ``foreach=False`` or ``True`` (tested, to the
last bit); ``fused=True`` kernels agree to round-off (tested). When Adam's step counts live on the
device (``fused``/``capturable``), the bias corrections are computed there, as torch's capturable
implementation does, so no value is read back to the host.

``lookahead`` is never compiled (``torch.compiler.disable``, applied on first use by
``sampa.optim.eager``): it reads the learning rate and step counts as Python numbers, and a compiled copy
would be specialised to them and recompiled at every change.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor

from sampa.optim.eager import never_compiled

TensorList = list[Tensor]


@never_compiled
def lookahead(
    optimizer: torch.optim.Optimizer, params: Sequence[Tensor], grads: Sequence[Tensor]
) -> list[Tensor]:
    """Return the points (aligned with ``params``) the optimizer would step to with ``grads``."""
    if type(optimizer) is torch.optim.SGD:
        rule = _sgd_points
    elif type(optimizer) in (torch.optim.AdamW, torch.optim.Adam):
        rule = _adam_points
    else:
        return _generic_lookahead(optimizer, params, grads)
    grad_of = {id(p): g for p, g in zip(params, grads, strict=True)}
    decoupled = type(optimizer) is torch.optim.AdamW
    out: dict[int, Tensor] = {}
    with torch.no_grad():
        for group in optimizer.param_groups:
            ps = [p for p in group["params"] if id(p) in grad_of]
            if not ps:
                continue
            states = [optimizer.state.get(p, {}) for p in ps]
            points = rule([p.detach() for p in ps], [grad_of[id(p)] for p in ps], states, group, decoupled)
            out.update((id(p), y) for p, y in zip(ps, points, strict=True))
    return [out[id(p)] for p in params]


def _sgd_points(
    xs: TensorList, gs: TensorList, states: list[dict], group: dict, decoupled: bool
) -> TensorList:
    lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
    d = torch._foreach_neg(gs) if group.get("maximize", False) else list(gs)
    if wd != 0:
        d = torch._foreach_add(d, xs, alpha=wd)
    if mu != 0:
        bufs = [state.get("momentum_buffer") for state in states]
        if all(b is not None for b in bufs):
            bufs = torch._foreach_add(torch._foreach_mul(bufs, mu), d, alpha=1 - group["dampening"])
        else:  # before the first step: b' = d (torch clones the gradient)
            bufs = [
                di.clone() if b is None else torch.add(b.mul(mu), di, alpha=1 - group["dampening"])
                for b, di in zip(bufs, d, strict=True)
            ]
        d = torch._foreach_add(d, bufs, alpha=mu) if group["nesterov"] else bufs
    return torch._foreach_add(xs, d, alpha=-lr)


def _adam_points(
    xs: TensorList, gs: TensorList, states: list[dict], group: dict, decoupled: bool
) -> TensorList:
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    gs = torch._foreach_neg(gs) if group.get("maximize", False) else list(gs)
    xs = [x.clone() for x in xs]
    if wd != 0:
        if decoupled or group.get("decoupled_weight_decay", False):
            torch._foreach_mul_(xs, 1 - lr * wd)
        else:
            gs = torch._foreach_add(gs, xs, alpha=wd)
    m = torch._foreach_lerp([_state(s, "exp_avg", x) for s, x in zip(states, xs, strict=True)], gs, 1 - beta1)
    v = torch._foreach_mul([_state(s, "exp_avg_sq", x) for s, x in zip(states, xs, strict=True)], beta2)
    torch._foreach_addcmul_(v, gs, gs, 1 - beta2)
    if group.get("amsgrad", False):
        v = [
            v_i if "max_exp_avg_sq" not in s else torch.maximum(s["max_exp_avg_sq"], v_i)
            for s, v_i in zip(states, v, strict=True)
        ]
    steps = [s.get("step") for s in states]
    if group.get("fused") or group.get("capturable"):  # step counts on the device: no host read
        return _adam_update_on_device(xs, m, v, steps, lr, beta1, beta2, eps)
    next_steps = [1.0 if step is None else float(step) + 1 for step in steps]
    bias_correction1 = [1 - beta1**step for step in next_steps]
    bias_correction2_sqrt = [(1 - beta2**step) ** 0.5 for step in next_steps]
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(xs, m, denom, [-lr / bc for bc in bias_correction1])
    return xs


def _adam_update_on_device(
    xs: TensorList,
    m: TensorList,
    v: TensorList,
    steps: list,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
) -> TensorList:
    """The Adam update with tensor step counts (torch's capturable formula), for fused/capturable Adam."""
    next_steps = [
        torch.ones((), device=x.device) if t is None else t + 1 for t, x in zip(steps, xs, strict=True)
    ]
    step_size = torch._foreach_pow(beta1, next_steps)
    bias_correction2_sqrt = torch._foreach_pow(beta2, next_steps)
    torch._foreach_sub_(step_size, 1)
    torch._foreach_div_(step_size, lr)
    torch._foreach_reciprocal_(step_size)  # -lr / (1 - beta1^t)
    torch._foreach_sub_(bias_correction2_sqrt, 1)
    torch._foreach_neg_(bias_correction2_sqrt)
    torch._foreach_sqrt_(bias_correction2_sqrt)  # sqrt(1 - beta2^t)
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_div_(denom, step_size)
    torch._foreach_addcdiv_(xs, m, denom)
    return xs


def _state(state: dict, key: str, like: Tensor) -> Tensor:
    """An optimizer state tensor, zeros before the first step."""
    return state[key] if key in state else torch.zeros_like(like)


def _generic_lookahead(
    optimizer: torch.optim.Optimizer, params: Sequence[Tensor], grads: Sequence[Tensor]
) -> list[Tensor]:
    """Snapshot state and parameters, take the step, read the point, restore everything."""
    saved_state = copy.deepcopy(optimizer.state_dict())
    saved_grads = [p.grad for p in params]
    with torch.no_grad():
        saved_params = [p.detach().clone() for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        optimizer.step()
        points = [p.detach().clone() for p in params]
        for p, x in zip(params, saved_params, strict=True):
            p.copy_(x)
    optimizer.load_state_dict(saved_state)
    for p, g in zip(params, saved_grads, strict=True):
        p.grad = g
    return points
