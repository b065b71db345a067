"""Learning-rate schedules as pure functions of the position in training.

``cosine`` is stepped once per epoch (the official SAMPa code: ``CosineAnnealingLR(T_max=epochs)``),
``cosine_iter`` every step, ``linear`` every step with a linear warm-up from 0 to the peak over
``warmup_steps`` and then a linear decay to 0 at ``total_steps`` (the BERT fine-tuning schedule,
the same values as ``transformers.get_linear_schedule_with_warmup``), ``constant`` never changes.
The engine's ``sampa.train.lr_at`` picks one per run (``train.SCHEDULE_FACTORS``).
"""

from __future__ import annotations

import math


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
