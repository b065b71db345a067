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

The explicit forms use the same operation order as torch's single-tensor implementations, so the
result equals what ``optimizer.step()`` would produce (tested).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor


def lookahead(
    optimizer: torch.optim.Optimizer, params: Sequence[Tensor], grads: Sequence[Tensor]
) -> list[Tensor]:
    """Return the points (aligned with ``params``) the optimizer would step to with ``grads``."""
    grad_of = {id(p): g for p, g in zip(params, grads, strict=True)}
    if type(optimizer) is torch.optim.SGD:
        rule = _sgd_point
    elif type(optimizer) in (torch.optim.AdamW, torch.optim.Adam):
        rule = _adam_point
    else:
        return _generic_lookahead(optimizer, params, grads)
    out: dict[int, Tensor] = {}
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) in grad_of:
                    out[id(p)] = rule(
                        p,
                        grad_of[id(p)],
                        optimizer.state.get(p, {}),
                        group,
                        decoupled=type(optimizer) is torch.optim.AdamW,
                    )
    return [out[id(p)] for p in params]


def _sgd_point(p: Tensor, g: Tensor, state: dict, group: dict, decoupled: bool = False) -> Tensor:
    lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
    d = -g if group.get("maximize", False) else g
    if wd != 0:
        d = d.add(p, alpha=wd)
    if mu != 0:
        buf = state.get("momentum_buffer")
        buf = d.clone() if buf is None else torch.add(buf.mul(mu), d, alpha=1 - group["dampening"])
        d = d.add(buf, alpha=mu) if group["nesterov"] else buf
    return p.detach().add(d, alpha=-lr)


def _adam_point(p: Tensor, g: Tensor, state: dict, group: dict, decoupled: bool = True) -> Tensor:
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    g = -g if group.get("maximize", False) else g
    x = p.detach().clone()
    decoupled = decoupled or group.get("decoupled_weight_decay", False)
    if wd != 0:
        if decoupled:
            x.mul_(1 - lr * wd)
        else:
            g = g.add(x, alpha=wd)
    step = float(state["step"]) + 1 if "step" in state else 1.0
    m = state["exp_avg"].lerp(g, 1 - beta1) if "exp_avg" in state else torch.zeros_like(x).lerp_(g, 1 - beta1)
    v = state["exp_avg_sq"].mul(beta2) if "exp_avg_sq" in state else torch.zeros_like(x)
    v = v.addcmul(g, g, value=1 - beta2)
    if group.get("amsgrad", False):
        v = torch.maximum(state["max_exp_avg_sq"], v) if "max_exp_avg_sq" in state else v
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
    return x.addcdiv_(m, denom, value=-lr / bias_correction1)


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
