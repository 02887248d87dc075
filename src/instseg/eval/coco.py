"""COCO mask/box AP, Boundary AP and LVIS federated AP, with faster-coco-eval as the engine.

Results are given per iou type the fields that type should see: segm and
boundary results lose their ``bbox`` (otherwise the engine takes a detection's
area from its box and files it under the wrong S/M/L range), bbox results lose
their mask. Boundary AP runs on box crops (:mod:`instseg.eval.boundary`).

One known disagreement with pycocotools: with custom ``max_dets`` that do not
include 100, pycocotools reports ``AP`` (and AP50, AP75, APs/m/l) as -1,
because its summary looks up maxDets=100; faster-coco-eval, and so instseg,
report them at the largest ``max_dets``. Everything else matches exactly.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faster_coco_eval.faster_eval_api_cpp as _engine
import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from instseg.errors import DataError
from instseg.eval.boundary import BoundaryEval

log = logging.getLogger(__name__)

IOU_TYPES = ("segm", "bbox", "boundary")
LVIS_MAX_DETS = 300
_ENGINE_NAMES = {
    "AP_all": "AP",
    "AP_50": "AP50",
    "AP_75": "AP75",
    "AP_small": "APs",
    "AP_medium": "APm",
    "AP_large": "APl",
    "AR_small": "ARs",
    "AR_medium": "ARm",
    "AR_large": "ARl",
    "AR_50": "AR50",
    "AR_75": "AR75",
}


def stat_names(max_dets: Sequence[int], lvis: bool = False) -> list[str]:
    """Names of the summary stats: the 12 of pycocotools in its order, then AR50/AR75 (and APr/c/f)."""
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    names += [f"AR{d}" for d in sorted(max_dets)] + ["ARs", "ARm", "ARl", "AR50", "AR75"]
    return names + (["APr", "APc", "APf"] if lvis else [])


@dataclass
class CocoResult:
    """One iou type's evaluation: summary stats plus what a user inspects next."""

    iou_type: str
    stats: dict[str, float]
    per_class: list[dict[str, Any]] = field(default_factory=list)  # id, name, gt, AP, AP50 (-1: no GT)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # "0.5"/"0.75" -> tp, fp, fn
    precision: np.ndarray | None = None  # [T, R] over classes with GT, area all, largest maxDets
    iou_thresholds: list[float] = field(default_factory=list)
    recall_thresholds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"stats": self.stats, "per_class": self.per_class, "counts": self.counts}


def load_ground_truth(gt: str | Path | dict[str, Any] | COCO) -> COCO:
    """A COCO index of the ground truth; a dict is copied one level deep, enough that the engine's
    per-annotation keys (``rle``, ``ignore``) never land in the caller's data."""
    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, dict):
        if not isinstance(gt.get("annotations", []), list):
            raise DataError("ground truth: 'annotations' must be a list")
        return COCO({**gt, "annotations": [dict(a) for a in gt.get("annotations", [])]})
    path = Path(gt)
    if not path.is_file():
        raise DataError(f"{path}: ground-truth annotations not found")
    return load_ground_truth(checked_ground_truth(path))


def checked_ground_truth(path: Path) -> dict[str, Any]:
    """A ground-truth file whose every annotation passed the loaders' checks, so that the engine never
    meets a segmentation it would hang or crash on. Image records need only id, height and width
    (LVIS files have no file_name)."""
    from instseg.data.coco import check_annotation, load_json

    data = load_json(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: missing or invalid '{key}' list")
    images: dict[Any, dict[str, Any]] = {}
    for im in data["images"]:
        size = (im.get("height"), im.get("width")) if isinstance(im, dict) else (None, None)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            raise DataError(
                f"{path}: image {im.get('id', '?') if isinstance(im, dict) else '?'} lacks a size"
            )
        images[im.get("id")] = im
    label_of = {c.get("id"): 1 for c in data["categories"] if isinstance(c, dict)}
    for ann in data["annotations"]:
        _, problem = check_annotation(ann, images, label_of)
        if problem is not None and problem.level == "error":
            raise DataError(f"{path}: {problem.where} {problem.message}")
    return data


def is_lvis(coco_gt: COCO) -> bool:
    """LVIS data: every category has a ``frequency`` tag and images carry ``neg_category_ids``."""
    cats = coco_gt.dataset.get("categories", [])
    images = coco_gt.dataset.get("images", [])
    return bool(cats) and all("frequency" in c for c in cats) and any("neg_category_ids" in i for i in images)


def top_per_image(results: Sequence[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The ``k`` best-scored results of each image across categories (LVIS keeps 300 per image)."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    out: list[dict[str, Any]] = []
    for rs in by_image.values():
        out += sorted(rs, key=lambda r: -r["score"])[:k] if len(rs) > k else rs
    return out


def results_for_type(results: Sequence[dict[str, Any]], iou_type: str) -> list[dict[str, Any]]:
    """Shallow copies (the engine writes ``area``/``id`` into them) without the field this type ignores."""
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    out = [dict(r) for r in results]
    for r in out:
        r.pop(drop, None)
    return out


def _check_results(coco_gt: COCO, results: Sequence[dict[str, Any]], iou_types: Sequence[str]) -> None:
    unknown = {r.get("image_id") for r in results} - set(coco_gt.getImgIds())
    if unknown:
        raise DataError(
            f"results name {len(unknown)} image ids that are not in the ground truth "
            f"(e.g. {sorted(unknown, key=str)[:3]})"
        )
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"unknown iou type {iou_type!r}; choose from {IOU_TYPES}")
        key = "bbox" if iou_type == "bbox" else "segmentation"
        missing = sum(1 for r in results if key not in r)
        if missing:
            raise DataError(f"{missing} results have no {key!r}, which {iou_type} evaluation needs")


def _counts(ev: COCOeval_faster, coco_gt: COCO, coco_dt: COCO) -> dict[str, dict[str, int]]:
    """TP/FP/FN at IoU 0.5 and 0.75 under the engine's own greedy matching (area all, largest maxDets).

    TP and FN come exactly from the accumulated recall (recall x GT count per
    class). A detection that is neither TP nor FP, because it matched a crowd
    region or (LVIS) is an unmatched detection of a not-exhaustively-labelled
    class, can only occur on images with crowd regions or such detections;
    those few images are matched again to count them, so FP = detections
    considered - TP - ignored.
    """
    p = ev._paramsEval
    cats = set(p.catIds)
    images = set(p.imgIds)
    gts = [a for a in coco_gt.anns.values() if a["category_id"] in cats and a["image_id"] in images]
    crowd = {a["id"] for a in gts if a.get("iscrowd", 0)}
    if p.useCats:
        n_gt = Counter(a["category_id"] for a in gts if not a.get("iscrowd", 0))
        gt_per_class = np.array([n_gt.get(c, 0) for c in p.catIds])
    else:
        gt_per_class = np.array([len(gts) - len(crowd)])
    dts = [d for d in coco_dt.anns.values() if not d.get("drop", False) and d["category_id"] in cats]
    per_pair = Counter((d["image_id"], d["category_id"] if p.useCats else -1) for d in dts)
    considered = sum(min(n, p.maxDets[-1]) for n in per_pair.values())
    marked = {d["id"] for d in dts if d.get("lvis_mark", False)}
    special = sorted(
        {a["image_id"] for a in gts if a.get("iscrowd", 0)} | {coco_dt.anns[i]["image_id"] for i in marked}
    )
    out = {}
    for thr in (0.5, 0.75):
        t = int(np.argmin(np.abs(np.asarray(p.iouThrs) - thr)))
        recall = ev.eval["recall"][t, :, 0, -1]
        tp = int(sum(round(r * n) for r, n in zip(recall, gt_per_class, strict=True) if n > 0))
        ignored = 0
        if special:
            q = copy.deepcopy(p)
            q.iouThrs = np.array([thr])
            q.areaRng, q.areaRngLbl = q.areaRng[:1], q.areaRngLbl[:1]
            q.imgIds = special
            ious = [[ev.ious[i, c] for c in (p.catIds if p.useCats else [-1])] for i in special]
            matched = _engine.COCOevalEvaluateAccumulate(
                q, ious, ev.gt_dataset, ev.dt_dataset, special, p.catIds, bool(p.useCats)
            )["matched"]
            pairs = [tuple(int(x) for x in key.split("_", 1)) for key in matched]
            ignored = sum(1 for _, g in pairs if g in crowd) + len(marked - {d for d, _ in pairs})
        out[f"{thr:g}"] = {"tp": tp, "fp": considered - tp - ignored, "fn": int(gt_per_class.sum()) - tp}
    return out


def _per_class(ev: COCOeval_faster, coco_gt: COCO) -> list[dict[str, Any]]:
    p = ev._paramsEval
    if not p.useCats:
        return []
    precision = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K]
    t50 = int(np.argmin(np.abs(np.asarray(p.iouThrs) - 0.5)))
    n_gt = Counter(a["category_id"] for a in coco_gt.anns.values() if not a.get("iscrowd", 0))
    rows = []
    for k, cat_id in enumerate(p.catIds):
        s = precision[:, :, k]
        cat = coco_gt.cats[cat_id]
        rows.append(
            {
                "id": int(cat_id),
                "name": cat.get("name", str(cat_id)),
                "gt": n_gt.get(cat_id, 0),
                "AP": float(s[s > -1].mean()) if (s > -1).any() else -1.0,
                "AP50": float(s[t50][s[t50] > -1].mean()) if (s[t50] > -1).any() else -1.0,
                **({"frequency": cat["frequency"]} if "frequency" in cat else {}),
            }
        )
    return rows


def _mean_precision(ev: COCOeval_faster) -> np.ndarray:
    """Precision per IoU threshold and recall point, averaged over the classes that have GT."""
    s = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K]
    valid = (s > -1).all(axis=1)  # [T, K]
    out = np.full(s.shape[:2], -1.0)
    for t in range(s.shape[0]):
        if valid[t].any():
            out[t] = s[t][:, valid[t]].mean(axis=1)
    return out


def _named_stats(ev: COCOeval_faster, max_dets: Sequence[int], lvis: bool) -> dict[str, float]:
    raw = ev.stats_as_dict
    names = stat_names(max_dets, lvis)
    out: dict[str, float] = {}
    for key, value in raw.items():
        if key in _ENGINE_NAMES:
            out[_ENGINE_NAMES[key]] = value
        elif key in ("APr", "APc", "APf"):
            out[key] = value
    ar_values = [ev._summarize(0, maxDets=d) for d in ev.params.maxDets]
    out.update({f"AR{d}": float(v) for d, v in zip(ev.params.maxDets, ar_values, strict=True)})
    return {n: float(out[n]) for n in names}


def evaluated_results(
    coco_gt: COCO, results: Sequence[dict[str, Any]], max_dets: Sequence[int], lvis: bool | None
) -> tuple[Sequence[dict[str, Any]], list[int], bool]:
    """What the evaluation scores: LVIS ground truth (detected when ``lvis`` is None) keeps the 300 best
    results per image, unless ``max_dets`` was set; returns the results, sorted max_dets and lvis."""
    lvis = is_lvis(coco_gt) if lvis is None else lvis
    if lvis:
        max_dets = (LVIS_MAX_DETS,) if tuple(max_dets) == (1, 10, 100) else max_dets
        results = top_per_image(results, max(max_dets))
    return results, sorted(max_dets), lvis


def coco_report(
    gt: str | Path | dict[str, Any] | COCO,
    results: Sequence[dict[str, Any]],
    iou_types: Sequence[str] = ("segm", "bbox"),
    max_dets: Sequence[int] = (1, 10, 100),
    boundary_dilation_ratio: float = 0.02,
    class_agnostic: bool = False,
    lvis: bool | None = None,
    details: bool = True,
) -> dict[str, CocoResult]:
    """Evaluate COCO results (RLE masks and/or boxes) per iou type.

    ``lvis`` (default: detected from the ground truth) switches on federated
    evaluation: results are cut to the 300 best per image and scored with
    ``neg_category_ids`` / ``not_exhaustive_category_ids``, adding APr/APc/APf.
    ``details`` adds the per-class table, TP/FP/FN counts and PR curves.
    """
    coco_gt = load_ground_truth(gt)
    _check_results(coco_gt, results, iou_types)
    results, max_dets, lvis = evaluated_results(coco_gt, results, max_dets, lvis)
    names = stat_names(max_dets, lvis)
    out: dict[str, CocoResult] = {}
    for iou_type in iou_types:
        if not results:
            out[iou_type] = CocoResult(iou_type, dict.fromkeys(names, 0.0))
            continue
        coco_dt = coco_gt.loadRes(results_for_type(results, iou_type))
        ev = run_engine(coco_gt, coco_dt, iou_type, max_dets, lvis, boundary_dilation_ratio, class_agnostic)
        ev.summarize()
        result = CocoResult(iou_type, _named_stats(ev, max_dets, lvis))
        if details:
            result.per_class = _per_class(ev, coco_gt)
            result.counts = _counts(ev, coco_gt, coco_dt)
            result.precision = _mean_precision(ev)
            result.iou_thresholds = [float(t) for t in ev.params.iouThrs]
            result.recall_thresholds = [float(r) for r in ev.params.recThrs]
        out[iou_type] = result
    return out


def run_engine(
    coco_gt: COCO,
    coco_dt: COCO,
    iou_type: str,
    max_dets: Sequence[int],
    lvis: bool,
    boundary_dilation_ratio: float = 0.02,
    class_agnostic: bool = False,
    area_ranges: Sequence[Sequence[float]] | None = None,
) -> COCOeval_faster:
    """Match and accumulate one iou type; ``area_ranges`` replaces COCO's all/S/M/L (first: all)."""
    kwargs: dict[str, Any] = {"print_function": log.debug, "lvis_style": lvis}
    if iou_type == "boundary":
        ev = BoundaryEval(coco_gt, coco_dt, boundary_dilation_ratio, **kwargs)
    else:
        ev = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, **kwargs)
    ev.params.maxDets = list(max_dets)
    ev.params.useCats = 0 if class_agnostic else 1
    if area_ranges is not None:
        ev.params.areaRng = [list(r) for r in area_ranges]
        ev.params.areaRngLbl = ["all"] + [f"range{i}" for i in range(1, len(area_ranges))]
    ev.evaluate()
    ev.accumulate()
    return ev


def coco_evaluate(
    gt: str | Path | dict[str, Any] | COCO,
    results: Sequence[dict[str, Any]],
    iou_types: Sequence[str] = ("segm", "bbox"),
    max_dets: Sequence[int] = (1, 10, 100),
    boundary_dilation_ratio: float = 0.02,
    class_agnostic: bool = False,
    lvis: bool | None = None,
) -> dict[str, dict[str, float]]:
    """Summary stats per iou type (``segm``, ``bbox``, ``boundary``), keyed by :func:`stat_names`."""
    report = coco_report(
        gt, results, iou_types, max_dets, boundary_dilation_ratio, class_agnostic, lvis, details=False
    )
    return {k: v.stats for k, v in report.items()}


def format_table(metrics: dict[str, dict[str, float]]) -> str:
    """A small aligned text table, one row per iou type."""
    if not metrics:
        return ""
    names = list(next(iter(metrics.values())))
    lines = ["type      " + " ".join(f"{n:>6}" for n in names)]
    for iou_type, stats in metrics.items():
        lines.append(f"{iou_type:<9} " + " ".join(f"{stats[n]:6.3f}" for n in names))
    return "\n".join(lines)


def format_per_class(rows: Sequence[dict[str, Any]], limit: int | None = None) -> str:
    """Per-class AP / AP50 table, worst classes first (those are the ones to look at)."""
    rows = sorted(rows, key=lambda r: (r["AP"] < 0, r["AP"]))[:limit]
    width = max([len(r["name"]) for r in rows] + [5])
    lines = [f"{'class':<{width}}  {'gt':>6} {'AP':>6} {'AP50':>6}"]
    for r in rows:
        lines.append(f"{r['name']:<{width}}  {r['gt']:>6} {r['AP']:6.3f} {r['AP50']:6.3f}")
    return "\n".join(lines)
