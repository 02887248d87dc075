"""Losses shared by the families: Dice, sigmoid focal, and the pairwise mask costs of set matching.

Focal loss is torchvision's; Dice is written here because torchvision has none
and the families need it per instance (one value per mask, so a small object
weighs as much as a large one). The pairwise forms score every prediction
against every target with two matrix products, for the Hungarian matcher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss


def dice_loss(logits: Tensor, targets: Tensor, eps: float = 1e-3) -> Tensor:
    """Per-mask ``1 - Dice`` of ``sigmoid(logits)`` against binary ``targets``, shape ``[N]``.

    Uses the squared-denominator form of the SOLO/V-Net papers
    (``2 sum(p t) / (sum(p^2) + sum(t^2))``), which keeps gradients alive on empty predictions.
    """
    p = logits.sigmoid().flatten(1)
    t = targets.flatten(1).to(p.dtype)
    inter = (p * t).sum(1)
    return 1 - (2 * inter + eps) / ((p * p).sum(1) + (t * t).sum(1) + eps)


def focal_loss_sum(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0, weight: Tensor | None = None
) -> Tensor:
    """Summed sigmoid focal loss (torchvision's), to be normalised by the caller's positive count;
    ``weight`` (broadcast to ``logits``) scales each term, e.g. 0 for a class not to be learnt there."""
    if weight is None:
        return sigmoid_focal_loss(logits, targets.to(logits.dtype), alpha=alpha, gamma=gamma, reduction="sum")
    terms = sigmoid_focal_loss(logits, targets.to(logits.dtype), alpha=alpha, gamma=gamma, reduction="none")
    return (terms * weight.to(terms)).sum()


def point_dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-mask ``1 - Dice`` with the linear denominator and +1 smoothing (DETR/Mask2Former), ``[N]``."""
    p = logits.sigmoid().flatten(1)
    t = targets.flatten(1).to(p.dtype)
    return 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)


def pairwise_dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """``point_dice_loss`` of every prediction ``[Q, P]`` against every target ``[G, P]``: ``[Q, G]``."""
    p = logits.sigmoid()
    t = targets.to(p.dtype)
    return 1 - (2 * p @ t.T + 1) / (p.sum(1)[:, None] + t.sum(1)[None] + 1)


def pairwise_sigmoid_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean BCE over points of every prediction ``[Q, P]`` against every target ``[G, P]``: ``[Q, G]``."""
    t = targets.to(logits.dtype)
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ t.T + neg @ (1 - t).T) / logits.shape[1]
