"""Are two predictions of one image the same detections? What the export's parity checks measure."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

from instseg.structures import Instances


@dataclass(frozen=True)
class Parity:
    same_count: bool
    worst_iou: float  # the lowest mask IoU of a matched pair (1.0 with no detections)
    worst_score_difference: float  # the largest |score difference| of a matched pair
    labels_agree: bool


def compare_instances(a: Instances, b: Instances) -> Parity:
    """Match ``a``'s detections one to one with ``b``'s (Hungarian, on 1 - mask IoU plus the score
    difference, so that duplicates with equal masks pair by score) and report the worst pair.

    Near-equal scores may come out in either order, so pairs are not taken by position."""
    if len(a) != len(b):
        return Parity(False, 0.0, float("inf"), False)
    if len(a) == 0:
        return Parity(True, 1.0, 0.0, True)
    fa, fb = a.dense_masks().flatten(1).float(), b.dense_masks().flatten(1).float()
    inter = fa @ fb.T
    iou = inter / (fa.sum(1)[:, None] + fb.sum(1)[None] - inter).clamp(min=1)
    score_gap = (a.scores[:, None] - b.scores[None, :]).abs()
    rows, cols = linear_sum_assignment((1 - iou + score_gap).numpy())
    rows, cols = torch.from_numpy(rows), torch.from_numpy(cols)
    return Parity(
        True,
        float(iou[rows, cols].min()),
        float(score_gap[rows, cols].max()),
        bool((a.labels[rows] == b.labels[cols]).all()),
    )
