"""Boundary IoU (Cheng et al. 2021) on box crops, with the numbers of faster-coco-eval's boundary mode.

faster-coco-eval erodes every ground truth and every detection at full image
size before it knows which pairs can ever match; that makes Boundary AP cost
about 16x mask AP. The boundary band of a mask depends only on the pixels
within ``d`` of it, so it can be computed on the mask's bounding box padded by
one zero pixel (outside the box is background, as the full-image pad is), and
it is only needed for pairs whose mask IoU reaches the lowest IoU threshold:
the evaluator takes ``min(mask IoU, boundary IoU)``, so a pair below every
threshold on mask IoU stays below it. Pairs are matched and accumulated by the
same C++ code as the other iou types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import faster_coco_eval.mask_api_new_cpp as _mask
import numpy as np
from faster_coco_eval import COCOeval_faster
from faster_coco_eval.core import mask as mask_api

_KERNEL = np.ones((3, 3), dtype=np.uint8)


def dilation_pixels(height: int, width: int, ratio: float) -> int:
    """The band width the reference uses: ``round(ratio * diagonal)``, at least 1."""
    return max(1, round(ratio * math.sqrt(height**2 + width**2)))


@dataclass
class Band:
    """A mask's boundary band, cropped to the mask's box at ``(x0, y0)`` and stored transposed ``[w, h]``."""

    x0: int
    y0: int
    pixels: np.ndarray  # bool [h, w]
    area: int


def decode_crop(counts: list[int] | np.ndarray, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Decode an uncompressed RLE inside ``box`` (x0, y0, x1, y1) only, transposed: bool ``[w, h]``.

    Runs are column-major, so the columns x0..x1 are one contiguous slab of
    the run sequence; clipping the runs to it and repeating 0/1 decodes it.
    """
    x0, y0, x1, y1 = box
    ends = np.cumsum(np.asarray(counts, dtype=np.int64))
    lo, hi = x0 * height, x1 * height
    clipped = np.clip(ends, lo, hi)
    lengths = np.diff(clipped, prepend=lo)
    values = np.arange(len(lengths), dtype=np.int64) % 2 == 1
    slab = np.repeat(values, lengths)
    if slab.size < hi - lo:  # the runs may stop short of the last column's end
        slab = np.concatenate([slab, np.zeros(hi - lo - slab.size, dtype=bool)])
    return slab.reshape(x1 - x0, height)[:, y0:y1]


def boundary_band(rle: dict[str, Any], dilation: int) -> Band:
    """``mask minus erode(mask, d)`` with the image border counting as background."""
    height = rle["size"][0]
    x, y, w, h = (int(v) for v in mask_api.toBbox(rle))
    if w == 0 or h == 0:
        return Band(0, 0, np.zeros((0, 0), dtype=bool), 0)
    counts = _mask.toUncompressedRLE([rle])[0]["counts"]
    crop = np.ascontiguousarray(decode_crop(counts, height, (x, y, x + w, y + h))).view(np.uint8)
    padded = cv2.copyMakeBorder(crop, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, _KERNEL, iterations=dilation)[1:-1, 1:-1]
    band = crop.astype(bool) & ~eroded.astype(bool)
    return Band(x, y, band, int(np.count_nonzero(band)))


def band_iou(a: Band, b: Band) -> float:
    """IoU of two bands, computed on the overlap of their boxes."""
    wa, ha = a.pixels.shape
    wb, hb = b.pixels.shape
    x0, y0 = max(a.x0, b.x0), max(a.y0, b.y0)
    x1, y1 = min(a.x0 + wa, b.x0 + wb), min(a.y0 + ha, b.y0 + hb)
    inter = 0
    if x1 > x0 and y1 > y0:
        pa = a.pixels[x0 - a.x0 : x1 - a.x0, y0 - a.y0 : y1 - a.y0]
        pb = b.pixels[x0 - b.x0 : x1 - b.x0, y0 - b.y0 : y1 - b.y0]
        inter = int(np.count_nonzero(pa & pb))
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


class BoundaryEval(COCOeval_faster):
    """faster-coco-eval run as ``segm`` whose IoU is ``min(mask IoU, boundary IoU)`` for non-crowd pairs.

    Crowd ground truth keeps its mask IoU (intersection over detection area),
    as in the reference.
    """

    def __init__(self, coco_gt: Any, coco_dt: Any, dilation_ratio: float = 0.02, **kwargs: Any) -> None:
        kwargs.pop("iouType", None)
        super().__init__(coco_gt, coco_dt, iouType="segm", **kwargs)
        self.dilation_ratio = dilation_ratio
        self.rle_iou_max_workers = 1  # the band work is Python; threads would only contend for the GIL

    def computeIoU(self, imgId: int, catId: int) -> np.ndarray | list:
        p = self.params
        cats = [catId] if p.useCats else p.catIds
        gt = self.gt_dataset.get_instances([imgId], cats, bool(p.useCats))[0][0]
        dt = self.dt_dataset.get_instances([imgId], cats, bool(p.useCats))[0][0]
        if len(gt) == 0 or len(dt) == 0:
            return []
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")[: p.maxDets[-1]]
        dt = [dt[i] for i in order]
        iscrowd = [int(g.get("iscrowd", 0)) for g in gt]
        ious = np.asarray(mask_api.iou([d["rle"] for d in dt], [g["rle"] for g in gt], iscrowd))
        lowest = float(np.min(p.iouThrs))
        candidates = (ious >= lowest) & ~np.asarray(iscrowd, dtype=bool)[None, :]
        if not candidates.any():
            return ious
        height, width = gt[0]["rle"]["size"]
        dilation = dilation_pixels(height, width, self.dilation_ratio)
        bands: dict[tuple[int, int], Band] = {}

        def band(kind: int, i: int) -> Band:
            if (kind, i) not in bands:
                bands[kind, i] = boundary_band((dt if kind == 0 else gt)[i]["rle"], dilation)
            return bands[kind, i]

        for i, j in zip(*np.nonzero(candidates), strict=True):
            ious[i, j] = min(ious[i, j], band_iou(band(0, i), band(1, j)))
        return ious
