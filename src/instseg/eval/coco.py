"""COCO mask/box AP and Boundary AP, computed by faster-coco-eval.

Results are given per iou type the fields that type should see: segm and
boundary results lose their ``bbox`` (otherwise the engine takes a detection's
area from its box and files it under the wrong S/M/L range), bbox results lose
their mask.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from faster_coco_eval import COCO, COCOeval_faster

from instseg.errors import DataError

log = logging.getLogger(__name__)

AREA_NAMES = ("APs", "APm", "APl")


def stat_names(max_dets: Sequence[int]) -> list[str]:
    """Names of the summary stats in faster-coco-eval's order (12 for the default maxDets)."""
    return ["AP", "AP50", "AP75", *AREA_NAMES] + [f"AR{d}" for d in max_dets] + ["ARs", "ARm", "ARl"]


def load_ground_truth(gt: str | Path | dict[str, Any] | COCO) -> COCO:
    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, dict):
        return COCO(copy.deepcopy(gt))
    path = Path(gt)
    if not path.is_file():
        raise DataError(f"{path}: ground-truth annotations not found")
    return COCO(str(path))


def _for_type(results: Sequence[dict[str, Any]], iou_type: str) -> list[dict[str, Any]]:
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    return [{k: v for k, v in r.items() if k != drop} for r in results]


def coco_evaluate(
    gt: str | Path | dict[str, Any] | COCO,
    results: Sequence[dict[str, Any]],
    iou_types: Sequence[str] = ("segm", "bbox"),
    max_dets: Sequence[int] = (1, 10, 100),
    boundary_dilation_ratio: float = 0.02,
) -> dict[str, dict[str, float]]:
    """Summary stats per iou type (``segm``, ``bbox``, ``boundary``), keyed by :func:`stat_names`."""
    coco_gt = load_ground_truth(gt)
    known = set(coco_gt.getImgIds())
    unknown = {r["image_id"] for r in results} - known
    if unknown:
        raise DataError(
            f"results name {len(unknown)} image ids that are not in the ground truth "
            f"(e.g. {sorted(unknown)[:3]})"
        )
    names = stat_names(max_dets)
    out: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        if not results:
            out[iou_type] = dict.fromkeys(names, 0.0)
            continue
        coco_dt = coco_gt.loadRes(_for_type(results, iou_type))
        evaluator = COCOeval_faster(
            coco_gt,
            coco_dt,
            iouType=iou_type,
            print_function=log.debug,
            boundary_dilation_ratio=boundary_dilation_ratio,
        )
        evaluator.params.maxDets = sorted(max_dets)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        out[iou_type] = {n: float(v) for n, v in zip(names, evaluator.stats, strict=False)}
    return out


def format_table(metrics: dict[str, dict[str, float]]) -> str:
    """A small aligned text table, one row per iou type."""
    if not metrics:
        return ""
    names = list(next(iter(metrics.values())))
    lines = ["type      " + " ".join(f"{n:>6}" for n in names)]
    for iou_type, stats in metrics.items():
        lines.append(f"{iou_type:<9} " + " ".join(f"{stats[n]:6.3f}" for n in names))
    return "\n".join(lines)
