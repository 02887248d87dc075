"""Mask AP and Boundary AP per bin of an object attribute: occlusion, thinness, size, class.

COCO's S/M/L recipe with any attribute in place of area. For one bin, ground
truth outside it is ignored (a detection matched to it is neither a true nor a
false positive) and an unmatched detection counts as a false positive only if
it belongs to the bin; bins include both ends, as COCO's area ranges do.

Which bin a detection belongs to: its own mask area for ``size``, exactly as
COCO (so the size rows equal APs/APm/APl). Occlusion and thinness describe the
object, not the prediction, so a detection takes those of the ground truth
its mask overlaps most; one that overlaps no ground truth is a false positive
in every bin. ``class`` is the per-class table of mask and Boundary AP.

Thinness is width over length: twice the largest inscribed radius (the
maximum of the mask's distance transform) over the longer side of its
minimum-area rectangle, capped at 1. It is near 1 for discs and squares,
about 1/3 for a 1:3 ellipse and w/L for a straight wire w pixels wide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from faster_coco_eval import COCO
from faster_coco_eval.core import mask as mask_api

from instseg.errors import DataError
from instseg.eval.coco import CocoResult, results_for_type, run_engine

INSIDE, OUTSIDE = 1.0, 0.0  # the stand-in "area" of an annotation in or out of the bin
BIN_RANGES = ((0.0, 1e10), (0.5, 1.5))  # all, then the bin


@dataclass(frozen=True)
class Bin:
    """``low <= value <= high``."""

    label: str
    low: float
    high: float

    def holds(self, value: float) -> bool:
        return self.low <= value <= self.high


BINS: dict[str, tuple[Bin, ...]] = {
    # the synthetic generator drops objects more than 65% hidden
    "occlusion": (Bin("0-0.2", 0.0, 0.2), Bin("0.2-0.4", 0.2, 0.4), Bin("0.4-1", 0.4, 1.0)),
    "thinness": (Bin("thin <0.25", 0.0, 0.25), Bin("0.25-0.5", 0.25, 0.5), Bin("compact >0.5", 0.5, 1.0)),
    "size": (Bin("small", 0.0, 32.0**2), Bin("medium", 32.0**2, 96.0**2), Bin("large", 96.0**2, 1e10)),
}
BREAKDOWNS = (*BINS, "class")


def thinness(mask: np.ndarray) -> float:
    """Width over length of a binary mask (see the module's docstring); 0 for an empty mask."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return 0.0
    crop = np.ascontiguousarray(mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], dtype=np.uint8)
    padded = cv2.copyMakeBorder(crop, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    radius = float(cv2.distanceTransform(padded, cv2.DIST_L2, 5).max())
    _, sides, _ = cv2.minAreaRect(np.stack([xs, ys], axis=1).astype(np.float32))
    return min(1.0, 2.0 * radius / (max(sides) + 1.0))


def ground_truth_values(coco_gt: COCO, attribute: str) -> dict[int, float]:
    """The attribute of every ground-truth annotation, by annotation id."""
    out: dict[int, float] = {}
    for ann in coco_gt.anns.values():
        if attribute == "size":
            out[ann["id"]] = float(ann["area"])
        elif attribute == "thinness":
            out[ann["id"]] = thinness(coco_gt.annToMask(ann))
        else:
            value = ann.get("occluded_fraction")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise DataError(
                    f"ground truth: annotation {ann['id']} has no 'occluded_fraction' in [0, 1], which "
                    "the occlusion breakdown needs (the synthetic data writes it)"
                )
            out[ann["id"]] = float(value)
    return out


def detection_values(
    coco_gt: COCO, coco_dt: COCO, attribute: str, gt_values: dict[int, float]
) -> dict[int, float | None]:
    """Each detection's attribute: its own area for size, else that of the ground truth it overlaps
    most (``None``: it overlaps none, so it belongs to every bin)."""
    if attribute == "size":
        return {d["id"]: float(mask_api.area(d["segmentation"])) for d in coco_dt.anns.values()}
    out: dict[int, float | None] = {}
    for image_id in coco_dt.getImgIds():
        dts = coco_dt.loadAnns(coco_dt.getAnnIds(imgIds=[image_id]))
        gts = [g for g in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id])) if not g.get("iscrowd", 0)]
        if not gts:
            out.update(dict.fromkeys((d["id"] for d in dts), None))
            continue
        gt_rles = [coco_gt.annToRLE(g) for g in gts]
        ious = np.asarray(mask_api.iou([d["segmentation"] for d in dts], gt_rles, [0] * len(gts)))
        ious = ious.reshape(len(dts), len(gts))
        best = ious.argmax(axis=1)
        for d, j, iou in zip(dts, best, ious.max(axis=1), strict=True):
            out[d["id"]] = gt_values[gts[j]["id"]] if iou > 0 else None
    return out


def _bin_ap(ev: Any) -> tuple[float, float]:
    """AP and AP50 of the bin (area range 1) at the largest max_dets, as COCO's AP_small is computed."""
    precision = ev.eval["precision"][:, :, :, 1, -1]  # [T, R, K]
    t50 = int(np.argmin(np.abs(np.asarray(ev.params.iouThrs) - 0.5)))
    ap = float(precision[precision > -1].mean()) if (precision > -1).any() else -1.0
    p50 = precision[t50]
    return ap, float(p50[p50 > -1].mean()) if (p50 > -1).any() else -1.0


def attribute_breakdown(
    coco_gt: COCO,
    results: Sequence[dict[str, Any]],
    attribute: str,
    iou_types: Sequence[str] = ("segm", "boundary"),
    max_dets: Sequence[int] = (100,),
    lvis: bool = False,
    boundary_dilation_ratio: float = 0.02,
    class_agnostic: bool = False,
) -> list[dict[str, Any]]:
    """One row per bin: its label, ground-truth count, and AP / AP50 per iou type (-1: no ground truth).

    ``results`` are already cut to what the evaluation keeps (LVIS: the 300
    best per image) and carry masks.
    """
    if attribute not in BINS:
        raise ValueError(f"unknown breakdown {attribute!r}; choose from {BREAKDOWNS}")
    gt_values = ground_truth_values(coco_gt, attribute)
    rows = []
    dt_values: dict[int, float | None] | None = None
    for b in BINS[attribute]:
        inside = {i for i, v in gt_values.items() if b.holds(v)}
        anns = [
            {**a, "area": INSIDE if a["id"] in inside else OUTSIDE} for a in coco_gt.dataset["annotations"]
        ]
        gt = COCO({**coco_gt.dataset, "annotations": anns})
        row: dict[str, Any] = {
            "bin": b.label,
            "gt": sum(1 for a in anns if a["area"] == INSIDE and not a.get("iscrowd", 0)),
        }
        for iou_type in iou_types:
            if not results:
                row[iou_type], row[f"{iou_type}_AP50"] = (0.0, 0.0) if row["gt"] else (-1.0, -1.0)
                continue
            coco_dt = gt.loadRes(results_for_type(results, iou_type))
            if dt_values is None:  # detection ids are the same in every loadRes of the same results
                dt_values = detection_values(coco_gt, coco_dt, attribute, gt_values)
            for d in coco_dt.anns.values():
                value = dt_values[d["id"]]
                d["area"] = INSIDE if value is None or b.holds(value) else OUTSIDE
            ev = run_engine(
                gt,
                coco_dt,
                iou_type,
                sorted(max_dets),
                lvis,
                boundary_dilation_ratio,
                class_agnostic,
                BIN_RANGES,
            )
            row[iou_type], row[f"{iou_type}_AP50"] = _bin_ap(ev)
        rows.append(row)
    return rows


def class_breakdown(coco: dict[str, CocoResult]) -> list[dict[str, Any]]:
    """The per-class rows of every iou type side by side, one row per class."""
    rows: dict[int, dict[str, Any]] = {}
    for iou_type, result in coco.items():
        for r in result.per_class:
            row = rows.setdefault(r["id"], {"bin": r["name"], "gt": r["gt"]})
            row[iou_type], row[f"{iou_type}_AP50"] = r["AP"], r["AP50"]
    return list(rows.values())


def format_breakdown(attribute: str, rows: Sequence[dict[str, Any]]) -> str:
    """A text table: one row per bin, AP per iou type."""
    if not rows:
        return ""
    types = [k for k in rows[0] if k not in ("bin", "gt") and not k.endswith("_AP50")]
    width = max([len(str(r["bin"])) for r in rows] + [len(attribute)])
    head = f"{attribute:<{width}}  {'gt':>6} " + " ".join(f"{t:>9}" for t in types)
    lines = [head]
    for r in rows:
        cells = " ".join(f"{r[t]:9.3f}" if r[t] >= 0 else f"{'-':>9}" for t in types)
        lines.append(f"{r['bin']:<{width}}  {r['gt']:>6} {cells}")
    return "\n".join(lines)
