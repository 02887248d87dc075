"""Equalized focal loss (Li et al., CVPR 2022): the one-stage detector's answer to the long tail.

A sigmoid classifier trained with focal loss sees every location of every
image as a negative of every class it does not hold, so a rare class's few
positives are outweighed by its negatives. EFL gives each class ``j`` its own
focusing factor ``gamma_j = gamma + scale * (1 - g_j)``, where ``g_j`` is the
ratio of the gradient its positives have produced to the gradient its
negatives have produced, accumulated over training (1: balanced; near 0: a
rare class). A large ``gamma_j`` mutes the easy negatives that bury a rare
class; the weighting factor ``gamma_j / gamma`` keeps its hard positives'
loss from being muted with them. With every ``g_j = 1`` it is the focal loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg import distributed

SCALE = 8.0  # the paper's s


def equalized_focal_terms(
    logits: Tensor, targets: Tensor, gammas: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Per-term loss ``-alpha_t (gamma_j / gamma) (1 - p_t) ** gamma_j log p_t`` for ``logits [..., K]``
    and 0/1 ``targets``; ``gammas [K]`` are the classes' focusing factors (all ``gamma``: focal loss)."""
    targets = targets.to(logits.dtype)
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    gammas = gammas.to(logits)
    terms = ce * (1 - p_t) ** gammas * (gammas / gamma)
    if alpha >= 0:
        terms = terms * (alpha * targets + (1 - alpha) * (1 - targets))
    return terms


class EqualizedFocalLoss(nn.Module):
    """Summed EFL, and the per-class positive and negative gradient it has seen.

    The gradients are read where they arrive, on the class logits during the
    backward pass (a tensor hook), so they include every weight and
    normaliser the total loss applies. The hook only keeps this rank's sums;
    the next forward pass, which every rank runs in step, adds them over the
    ranks into ``positive`` and ``negative``: buffers, saved and resumed with
    the weights. (A collective inside a backward hook could interleave with
    the data-parallel gradient reduction.)
    """

    counts_while_training = True  # its buffers are counts, not weights (engine/fine_tune.py)

    def __init__(self, num_classes: int, scale: float = SCALE) -> None:
        super().__init__()
        self.scale = scale
        self.register_buffer("positive", torch.zeros(num_classes))
        self.register_buffer("negative", torch.zeros(num_classes))
        self.register_buffer("pending", torch.zeros(2, num_classes), persistent=False)

    def ratio(self) -> Tensor:
        """``g_j`` in ``[0, 1]``; 1 before any gradient has been seen."""
        ratio = self.positive / self.negative.clamp(min=1e-12)
        return torch.where(self.negative > 0, ratio, torch.ones_like(ratio)).clamp(0.0, 1.0)

    def gammas(self, gamma: float) -> Tensor:
        return gamma + self.scale * (1 - self.ratio())

    def accumulate(self, grad: Tensor, targets: Tensor) -> None:
        """Keep a batch's ``|dL/dlogit|`` on positives and negatives, per class (last dimension)."""
        magnitude = grad.detach().abs().float().reshape(-1, grad.shape[-1])
        is_positive = targets.detach().reshape(-1, grad.shape[-1]).to(magnitude)
        batch = torch.stack([(magnitude * is_positive).sum(0), (magnitude * (1 - is_positive)).sum(0)])
        self.pending += batch.to(self.pending)

    def gather(self) -> None:
        """Add every rank's pending sums to the totals (each rank calls it once a step)."""
        batch = distributed.mean_over_ranks(self.pending.clone()) * distributed.world_size()
        self.positive += batch[0].to(self.positive)
        self.negative += batch[1].to(self.negative)
        self.pending.zero_()

    def forward(
        self, logits: Tensor, targets: Tensor, alpha: float, gamma: float, weight: Tensor | None = None
    ) -> Tensor:
        """Summed loss for ``logits [..., K]`` (to be normalised by the caller); ``weight`` scales each
        term (e.g. 0 for a class not to be learnt there), as in ``losses.focal_loss_sum``."""
        if self.training:
            self.gather()
        terms = equalized_focal_terms(logits, targets, self.gammas(gamma), alpha, gamma)
        if weight is not None:
            terms = terms * weight.to(terms)
        if logits.requires_grad and torch.is_grad_enabled():
            logits.register_hook(lambda grad: self.accumulate(grad, targets))
        return terms.sum()
