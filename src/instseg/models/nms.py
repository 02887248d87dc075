"""Suppression of duplicates that needs no per-detection Python loop.

Matrix NMS (SOLOv2, Wang et al. 2020) decays every mask's score at once by
its IoU with the higher-scored masks of its class, compensated by how much
those masks were themselves suppressed. Fast NMS (YOLACT) is its hard cousin,
on boxes: a box is dropped when any higher-scored box of its class overlaps it
more than a threshold. Sequential box NMS is torchvision's ``batched_nms``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou, nms


def mask_iou_matrix(masks: Tensor) -> Tensor:
    """Pairwise IoU of binary masks ``[N, H, W]`` (or ``[N, P]``), as one matrix product."""
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    return inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-6)


def matrix_nms(
    masks: Tensor,
    labels: Tensor,
    scores: Tensor,
    kernel: Literal["gaussian", "linear"] = "gaussian",
    sigma: float = 2.0,
) -> Tensor:
    """Decayed scores for masks sorted by descending ``scores``.

    decay_j = min_i f(iou_ij) / f(max_k iou_ki), over higher-scored masks i of
    the same class and k before i; f(x) = exp(-sigma x^2) or 1 - x.
    """
    iou = mask_iou_matrix(masks).triu(diagonal=1)
    same = (labels[:, None] == labels[None, :]).triu(diagonal=1)
    iou = iou * same
    # row i: how much mask i was overlapped from above (a zero row keeps the maximum defined for no masks)
    compensate = torch.cat([iou, iou.new_zeros((1, iou.shape[1]))]).amax(dim=0)[:, None]
    if kernel == "gaussian":
        decay = torch.exp(-sigma * (iou**2 - compensate**2))
    elif kernel == "linear":
        decay = (1 - iou) / (1 - compensate).clamp(min=1e-6)
    else:
        raise ValueError(f"unknown Matrix NMS kernel {kernel!r}")
    decay = torch.cat([decay, decay.new_ones((1, decay.shape[1]))])  # 1: no decay, for no masks too
    return scores * decay.amin(dim=0).clamp(max=1.0)


def class_wise_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's ``batched_nms``: indices of the kept boxes, best first. Inside an exported graph
    its coordinate trick is written out here (boxes of each class shifted apart, one NMS), because
    torchvision branches on the number of boxes first."""
    if not torch.compiler.is_exporting():
        return batched_nms(boxes, scores, labels, iou_threshold)
    reach = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).amax(dim=0) + 1  # defined for no boxes too
    return nms(boxes + (labels.to(boxes.dtype) * reach)[:, None], scores, iou_threshold)


def fast_nms_boxes(boxes: Tensor, labels: Tensor, iou_threshold: float = 0.5, block: int = 256) -> Tensor:
    """Fast NMS on boxes sorted by descending score (YOLACT's form): which survive, no loop over boxes.

    Up to ``block`` boxes: one IoU matrix. Beyond (dense scenes keep
    thousands of candidates), the boxes are cut into blocks of neighbours by
    their top edge and only blocks whose vertical extents meet are compared:
    the same answer as the full matrix, at a fraction of its N x N cost.
    Degenerate pairs (zero union) count as IoU 0. An exported graph always
    takes the full matrix: the blocks need their sizes in Python.
    """
    if torch.compiler.is_exporting():
        return _fast_nms(graph_box_iou(boxes), labels, iou_threshold)
    n = len(boxes)
    if n <= block:
        if n == 0:
            return torch.zeros(0, dtype=torch.bool, device=boxes.device)
        return _fast_nms(box_iou(boxes, boxes).nan_to_num_(0.0), labels, iou_threshold)
    groups = torch.argsort(boxes[:, 1]).split(block)
    top = torch.stack([boxes[g, 1].min() for g in groups])
    bottom = torch.stack([boxes[g, 3].max() for g in groups])
    meets = (top[:, None] < bottom[None, :]) & (top[None, :] < bottom[:, None])
    meets.fill_diagonal_(True)  # a block of zero-height boxes meets no block, but is compared with itself
    suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    for k, rows in enumerate(groups):
        cols = torch.cat([groups[m] for m in torch.nonzero(meets[k]).flatten().tolist()])
        iou = box_iou(boxes[rows], boxes[cols]).nan_to_num_(0.0)
        above = (cols[None, :] < rows[:, None]) & (labels[cols][None, :] == labels[rows][:, None])
        suppressed[rows] = (iou * above).amax(1) > iou_threshold
    return ~suppressed


def graph_box_iou(boxes: Tensor) -> Tensor:
    """``box_iou(boxes, boxes)`` written for ONNX Runtime: the pairwise maxima and minima of coordinates
    as ``b + relu(a - b)`` and ``a - relu(a - b)``. Its broadcast ``Max`` and ``Min`` kernels took most of
    a trained YOLACT graph's postprocessing on a 1,000-candidate matrix (BENCHMARKS.md, "Through ONNX
    Runtime, trained"); ``Sub``, ``Relu`` and ``Add`` are vectorised. Equal to ``box_iou`` up to float
    rounding, with 0 (not NaN) for pairs of zero union, so no ``nan_to_num`` is needed."""
    x0, y0, x1, y1 = (c[:, None] for c in boxes.unbind(1))
    x0t, y0t, x1t, y1t = (c.T for c in (x0, y0, x1, y1))
    width = torch.relu((x1 - torch.relu(x1 - x1t)) - (x0t + torch.relu(x0 - x0t)))
    height = torch.relu((y1 - torch.relu(y1 - y1t)) - (y0t + torch.relu(y0 - y0t)))
    inter = width * height
    area = (x1 - x0) * (y1 - y0)
    return inter / (area + area.T - inter).clamp(min=1e-12)


def _fast_nms(iou: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Unlike sequential NMS, a box already suppressed can still suppress the ones below it."""
    iou = iou.triu(diagonal=1) * (labels[:, None] == labels[None, :])
    floor = iou.new_zeros((1, iou.shape[1]))  # a row of zeros: the maximum is defined for no boxes too
    return torch.cat([iou, floor]).amax(dim=0) <= iou_threshold
