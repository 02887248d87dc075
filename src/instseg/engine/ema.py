"""Exponential moving average of weights, on ``torch.optim.swa_utils.AveragedModel``.

The decay ramps up as ``decay * (1 - exp(-n / 2000))`` so that a short
from-scratch run is not dominated by its random initial weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def build_ema(model: nn.Module, decay: float, ramp: float = 2000.0) -> AveragedModel:
    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        d = decay * (1.0 - math.exp(-float(num_averaged) / ramp))
        return averaged * d + current * (1.0 - d)

    return AveragedModel(model, avg_fn=avg_fn, use_buffers=True)
