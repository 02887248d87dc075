"""Geometry of binary masks: their boxes, centres, emptiness, RLE, and their coverage of a coarser grid.

Plain functions on tensors, with no model in sight, so that data loading,
target building, postprocessing and evaluation all use the same arithmetic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch
import torch.nn.functional as F
from torch import Tensor

from instseg.cropped_masks import CroppedMasks


def encode_masks(masks: Tensor | CroppedMasks, chunk_bytes: int = 2**27) -> list[dict[str, Any]]:
    """Compressed RLE of each bool mask ``[N, H, W]`` (or of ``CroppedMasks``, from their crops); counts
    are str so the result is JSON-ready. Dense masks are encoded a chunk of about ``chunk_bytes`` at a
    time (pycocotools wants a Fortran-ordered copy)."""
    if isinstance(masks, CroppedMasks):
        return masks.to_rle()
    rles: list[dict[str, Any]] = []
    chunk = max(1, chunk_bytes // max(masks.shape[-2] * masks.shape[-1], 1))
    for start in range(0, masks.shape[0], chunk):
        block = masks[start : start + chunk].cpu().numpy().astype(np.uint8)
        for rle in mask_utils.encode(np.asfortranarray(block.transpose(1, 2, 0))):
            rle["counts"] = rle["counts"].decode("ascii")
            rles.append(rle)
    return rles


def any_pixel(masks: Tensor) -> Tensor:
    """Which of the bool masks ``[N, H, W]`` have a pixel set, ``[N]``.

    Read as bytes: on CPU a uint8 ``amax`` is much faster than ``any`` over the same memory.
    """
    if masks.numel() == 0:
        return torch.zeros(len(masks), dtype=torch.bool, device=masks.device)
    return masks.flatten(1).view(torch.uint8).amax(1) > 0


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight xyxy boxes of bool masks, with the exclusive right/bottom edge COCO uses; empty -> zeros."""
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    if masks.numel() == 0:
        return boxes
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    nonempty = rows.any(dim=1)
    if nonempty.any():
        boxes[nonempty] = boxes_from_extents(rows[nonempty], cols[nonempty]).cpu()
    return boxes


def boxes_from_extents(rows: Tensor, cols: Tensor) -> Tensor:
    """xyxy boxes (exclusive right/bottom edge) of masks given which of their rows ``[N, H]`` and
    columns ``[N, W]`` hold a pixel; every mask must hold one. No branch, so graphs export it."""
    ys = torch.arange(rows.shape[1], dtype=torch.float32, device=rows.device)
    xs = torch.arange(cols.shape[1], dtype=torch.float32, device=cols.device)
    y0 = torch.where(rows, ys, float("inf")).amin(1)
    y1 = torch.where(rows, ys, -1.0).amax(1) + 1
    x0 = torch.where(cols, xs, float("inf")).amin(1)
    x1 = torch.where(cols, xs, -1.0).amax(1) + 1
    return torch.stack([x0, y0, x1, y1], 1)


def mass_centres(masks: Tensor, boxes: Tensor) -> Tensor:
    """(x, y) centre of mass of each mask, in pixel-centre coordinates; the box centre for empty masks."""
    if len(masks) == 0:
        return boxes.new_zeros((0, 2))
    m = masks.float()
    area = m.sum((1, 2))
    ys = torch.arange(m.shape[1], device=m.device, dtype=m.dtype) + 0.5
    xs = torch.arange(m.shape[2], device=m.device, dtype=m.dtype) + 0.5
    cy = (m.sum(2) * ys).sum(1) / area.clamp(min=1)
    cx = (m.sum(1) * xs).sum(1) / area.clamp(min=1)
    centre = torch.stack([cx, cy], 1)
    box_centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    return torch.where(area[:, None] > 0, centre, box_centre)


def downsample_masks(masks: Tensor, stride: int, size: tuple[int, int]) -> Tensor:
    """Masks at 1/stride as the fraction of each cell they cover, padded to the feature map size."""
    if len(masks) == 0:
        return masks.new_zeros((0, *size), dtype=torch.float32)
    m = masks.float()[:, None]
    pad_h = size[0] * stride - m.shape[-2]
    pad_w = size[1] * stride - m.shape[-1]
    m = F.pad(m, (0, max(pad_w, 0), 0, max(pad_h, 0)))[..., : size[0] * stride, : size[1] * stride]
    return F.avg_pool2d(m, stride)[:, 0]


def class_maps(
    targets: list[dict[str, Tensor]], num_classes: int, stride: int, size: tuple[int, int]
) -> Tensor:
    """``[B, K, h, w]`` fraction of each 1/stride cell that each class's masks cover (their union): the
    targets of the one-stage families' auxiliary semantic losses. The union is taken at full resolution,
    one map per class present, so the cost does not grow with the number of instances."""
    device = targets[0]["masks"].device if targets else None
    maps = torch.zeros((len(targets), num_classes, *size), device=device)
    for b, t in enumerate(targets):
        present = torch.unique(t["labels"])
        if len(present) == 0:
            continue
        unions = torch.stack([t["masks"][t["labels"] == k].amax(0) for k in present])
        maps[b, present - 1] = downsample_masks(unions, stride, size)
    return maps


def box_masks(boxes: Tensor, size: tuple[int, int], stride: int) -> Tensor:
    """``[N, h, w]`` bool: which cells of a 1/stride map have their centre inside each xyxy box."""
    ys = (torch.arange(size[0], device=boxes.device, dtype=boxes.dtype) + 0.5) * stride
    xs = (torch.arange(size[1], device=boxes.device, dtype=boxes.dtype) + 0.5) * stride
    rows = (ys[None] >= boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])
    cols = (xs[None] >= boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])
    return rows[:, :, None] & cols[:, None, :]


def remove_small_regions(masks: Tensor, area: int) -> Tensor:
    """Each bool mask ``[N, H, W]`` without its islands and holes smaller than ``area`` pixels
    (8-connected); a mask made only of small islands keeps its largest. Works on each mask's box."""
    from scipy import ndimage

    eight = np.ones((3, 3), dtype=bool)
    out = masks.clone()
    boxes = masks_to_boxes(masks.cpu()).long().tolist()
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if x1 <= x0:
            continue
        patch = np.pad(masks[i, y0:y1, x0:x1].cpu().numpy(), 1)
        islands, n = ndimage.label(patch, eight)
        if n > 1:
            sizes = np.bincount(islands.ravel())[1:]
            small = sizes < area
            if small.all():
                small[sizes.argmax()] = False
            patch &= ~np.isin(islands, 1 + np.flatnonzero(small))
        gaps, n = ndimage.label(~patch, eight)
        if n > 1:
            sizes = np.bincount(gaps.ravel())[1:]
            border = gaps[0, 0]  # the padding makes the outside one region
            holes = np.flatnonzero((sizes < area) & (np.arange(1, n + 1) != border)) + 1
            patch |= np.isin(gaps, holes)
        out[i, y0:y1, x0:x1] = torch.from_numpy(patch[1:-1, 1:-1]).to(out.device)
    return out


def boundary_distance(masks: Tensor) -> Tensor:
    """``[N, H, W]`` float: each pixel's Euclidean distance to the nearest pixel outside its bool mask
    ``[N, H, W]`` (the image's edge counts as outside), 0 outside. scipy's distance transform, run on
    each mask's box only, so that many small masks on a large image cost what their boxes do."""
    from scipy import ndimage

    out = torch.zeros(masks.shape, dtype=torch.float32)
    boxes = masks_to_boxes(masks.cpu()).long().tolist()
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if x1 <= x0:
            continue
        patch = np.pad(masks[i, y0:y1, x0:x1].cpu().numpy(), 1)
        out[i, y0:y1, x0:x1] = torch.from_numpy(ndimage.distance_transform_edt(patch)[1:-1, 1:-1])
    return out.to(masks.device)
