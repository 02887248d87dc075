"""The recipe the synthetic-data benchmarks (``long_tail.py``, ``hard_cases.py``) train every run with:
whole images, 4 a step, 50 warm-up steps, for a wall-clock budget; the run's own choices come as options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import instseg

RECIPE: dict[str, Any] = {
    "steps": 10**9,  # the budget ends the run
    "batch_size": 4,
    "crop_size": None,
    "warmup_steps": 50,
    "checkpoint_every": 200,
    "overwrite": True,  # a benchmark run again with the same out measures again
}


def train_for_budget(model: str, data: str | Path, out: Path, budget_min: float, **options: Any) -> Any:
    """``instseg.train`` with ``RECIPE`` for ``budget_min`` minutes; returns its result."""
    return instseg.train(
        model, str(data), out=str(out), time_budget_s=budget_min * 60, **{**RECIPE, **options}
    )
