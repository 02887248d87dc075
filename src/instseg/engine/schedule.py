"""Learning-rate factor: linear warm-up, then cosine/step/constant over training progress.

Progress is a fraction, not a step count, so one schedule serves both a fixed
number of steps and a wall-clock budget (progress = elapsed / budget).
"""

from __future__ import annotations

import math


def lr_factor(step: int, progress: float, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        decay = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "step":
        decay = 1.0 if progress < 2 / 3 else 0.1 if progress < 8 / 9 else 0.01
    elif schedule == "constant":
        decay = 1.0
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return warm * decay
