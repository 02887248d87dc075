"""BatchNorm statistics recomputed over many training batches once training ends ("precise BN").

During training a BatchNorm's running statistics are an exponential average
with momentum 0.1, so they are mostly the last ~10 batches. With the small
batches a CPU budget allows (2 crops of 256 px) those batches vary a lot, and
a final checkpoint can score well below a snapshot taken a few steps earlier
at a learning rate near zero (BENCHMARKS.md shows it on DSB2018). Averaging
the statistics over many batches with the weights frozen removes that
lottery, as detectron2's PreciseBN hook does. torch's
``swa_utils.update_bn`` does the same but calls ``model(input)``; a training
forward here needs its targets, so the loop is written out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from instseg.data.datasets import batch_to

Batch = tuple[list[torch.Tensor], list[dict[str, Any]]]


def _frozen(norm: nn.modules.batchnorm._BatchNorm) -> bool:
    return norm.weight is not None and not norm.weight.requires_grad


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorms that keep running statistics and whose weights train."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and not _frozen(m)
    ]


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, but a BatchNorm whose weights are frozen stays in eval mode: a frozen part
    keeps its statistics too, so that what it computes is what the loaded model computed."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and _frozen(m):
            m.eval()
    return model


@torch.no_grad()
def recompute_batch_norm_statistics(
    model: nn.Module,
    batches: Iterator[Batch],
    count: int,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> int:
    """Replace every BatchNorm's running mean and variance by their average over ``count`` batches.

    The batches go through the training forward (train mode, so each
    BatchNorm normalises by the batch's own statistics as it did in
    training); weights are not touched. Returns the number of batches used
    (0 when the model has no BatchNorm).
    """
    norms = batch_norms(model)
    if not norms or count <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was_training = model.training
    train_mode(model)
    try:
        for _ in tqdm(range(count), desc="BatchNorm statistics", disable=not progress, unit="batch"):
            model(*batch_to(*next(batches), device))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        if was_training:
            train_mode(model)
        else:
            model.eval()
    return count
