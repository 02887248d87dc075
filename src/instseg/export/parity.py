"""Are two predictions of one image the same detections? What the export's parity checks measure."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

from instseg.structures import Instances

SAME_IOU, SAME_SCORE = 0.99, 1e-3  # the bar of a detection both sides share: mask IoU, |score difference|


@dataclass(frozen=True)
class Parity:
    same_count: bool
    worst_iou: float  # the lowest mask IoU of a matched pair (1.0 with no pair)
    worst_score_difference: float  # the largest |score difference| of a matched pair (0.0 with no pair)
    labels_agree: bool  # every matched pair has one label
    different: int  # detections of either side without a partner within the bar (unmatched ones too)
    best_different_score: float  # the highest score among those (0.0 when there are none)


def compare_instances(a: Instances, b: Instances) -> Parity:
    """Match ``a``'s detections one to one with ``b``'s (Hungarian, on 1 - mask IoU plus the score
    difference, so that duplicates with equal masks pair by score) and report the worst pair, and which
    detections are not shared within the bar (``SAME_IOU``, ``SAME_SCORE``).

    Near-equal scores may come out in either order, so pairs are not taken by position; where a
    detection cut-off (a top-k or a score threshold) falls between near-equal scores, the two sides
    may keep different detections there, which ``best_different_score`` shows."""
    if len(a) == 0 or len(b) == 0:
        scores = torch.cat([a.scores, b.scores])
        top = float(scores.max()) if len(scores) else 0.0
        return Parity(len(a) == len(b), 1.0, 0.0, True, len(scores), top)
    fa, fb = a.dense_masks().flatten(1).float(), b.dense_masks().flatten(1).float()
    inter = fa @ fb.T
    iou = inter / (fa.sum(1)[:, None] + fb.sum(1)[None] - inter).clamp(min=1)
    score_gap = (a.scores[:, None] - b.scores[None, :]).abs()
    rows, cols = linear_sum_assignment((1 - iou + score_gap).numpy())
    rows, cols = torch.from_numpy(rows), torch.from_numpy(cols)
    shared = (iou[rows, cols] >= SAME_IOU) & (score_gap[rows, cols] <= SAME_SCORE)
    alone_a = torch.ones(len(a), dtype=torch.bool)
    alone_b = torch.ones(len(b), dtype=torch.bool)
    alone_a[rows[shared]], alone_b[cols[shared]] = False, False
    different = torch.cat([a.scores[alone_a], b.scores[alone_b]])
    return Parity(
        len(a) == len(b),
        float(iou[rows, cols].min()),
        float(score_gap[rows, cols].max()),
        bool((a.labels[rows] == b.labels[cols]).all()),
        len(different),
        float(different.max()) if len(different) else 0.0,
    )
