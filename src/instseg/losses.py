"""Losses shared by the families: Dice and sigmoid focal.

Focal loss is torchvision's; Dice is written here because torchvision has none
and the families need it per instance (one value per mask, so a small object
weighs as much as a large one).
"""

from __future__ import annotations

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


def focal_loss_sum(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Summed sigmoid focal loss (torchvision's), to be normalised by the caller's positive count."""
    return sigmoid_focal_loss(logits, targets.to(logits.dtype), alpha=alpha, gamma=gamma, reduction="sum")
