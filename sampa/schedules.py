"""Learning-rate schedules as pure functions of the position in training.

``cosine`` is stepped once per epoch (the official SAMPa code: ``CosineAnnealingLR(T_max=epochs)``),
``cosine_iter`` every step, ``linear`` every step with a linear warm-up from 0 to the peak over
``warmup_steps`` and then a linear decay to 0 at ``total_steps`` (the BERT fine-tuning schedule,
the same values as ``transformers.get_linear_schedule_with_warmup``), ``constant`` never changes.
"""

from __future__ import annotations

import math

SCHEDULE_NAMES = ("constant", "cosine", "cosine_iter", "linear")


def cosine(peak: float, progress: float) -> float:
    """``peak`` annealed to 0 along half a cosine; ``progress`` in [0, 1]."""
    return 0.5 * peak * (1 + math.cos(math.pi * progress))


def linear_warmup_decay(peak: float, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Linear warm-up 0 -> ``peak`` over ``warmup_steps`` steps, then linear decay to 0 at ``total_steps``."""
    if not 0 <= warmup_steps <= total_steps or total_steps < 1:
        raise ValueError(
            f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, "
            f"got warmup_steps={warmup_steps} total_steps={total_steps}"
        )
    if step < warmup_steps:
        return peak * step / warmup_steps
    return peak * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def learning_rate(
    schedule: str,
    peak: float,
    epoch: int,
    step: int,
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup_steps: int = 0,
) -> float:
    """The learning rate of step ``step`` (0-based) of epoch ``epoch`` (0-based) under ``schedule``."""
    if schedule not in SCHEDULE_NAMES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULE_NAMES)}")
    global_step, total_steps = epoch * steps_per_epoch + step, epochs * steps_per_epoch
    if schedule == "constant":
        return peak
    if schedule == "cosine":
        return cosine(peak, epoch / epochs)
    if schedule == "cosine_iter":
        return cosine(peak, global_step / total_steps)
    return linear_warmup_decay(peak, global_step, total_steps, warmup_steps)


def changes_every_step(schedule: str) -> bool:
    """Whether ``schedule`` sets a new rate at every step (otherwise once per epoch)."""
    return schedule in ("cosine_iter", "linear")
