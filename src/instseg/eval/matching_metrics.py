"""The matching metrics of cell and nucleus segmentation papers (StarDist, Cellpose), and a confusion matrix.

These score one final label set per image, not a ranked list: predictions
below ``score_threshold`` are dropped, then ground truth and predictions are
paired one to one at each IoU threshold. The pairing maximises the number of
pairs with IoU >= threshold first and their summed IoU second (as StarDist
does), solved with scipy's ``linear_sum_assignment``. Counts are summed over
the dataset before the ratios are taken.

Crowd regions are not objects to find: a prediction that lies mostly (>= 50%
of its area) inside one is left out, neither TP nor FP.

``accuracy`` = TP / (TP + FP + FN) is what Cellpose calls "average precision".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from scipy.optimize import linear_sum_assignment

from instseg.data.coco import to_rle
from instseg.eval.coco import load_ground_truth

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))


def match_pairs(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs (rows, cols) with IoU >= threshold: most pairs, then highest summed IoU."""
    valid = iou >= threshold
    if not valid.any():
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    sub_valid = valid[np.ix_(rows, cols)]
    k = min(len(rows), len(cols))
    # A pair is worth 1 plus less than 1/(2k) for its IoU: the IoU terms of a whole matching sum to
    # under 1/2, so they only break ties between matchings of the same size.
    weight = sub_valid * (1.0 + iou[np.ix_(rows, cols)] / (2.0 * k))
    r, c = linear_sum_assignment(weight, maximize=True)
    ok = sub_valid[r, c]
    return rows[r[ok]], cols[c[ok]]


@dataclass
class ThresholdCounts:
    threshold: float
    tp: int = 0
    fp: int = 0
    fn: int = 0
    matched_iou: float = 0.0  # sum of the IoUs of the TP pairs

    def metrics(self) -> dict[str, float]:
        tp, fp, fn, s = self.tp, self.fp, self.fn, self.matched_iou

        def ratio(a: float, b: float) -> float:
            return a / b if b > 0 else 0.0

        return {
            "threshold": self.threshold,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "precision": ratio(tp, tp + fp),
            "recall": ratio(tp, tp + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "accuracy": ratio(tp, tp + fp + fn),
            "mean_matched_iou": ratio(s, tp),
            "mean_true_iou": ratio(s, tp + fn),
            "panoptic_quality": ratio(s, tp + fp / 2 + fn / 2),
        }


@dataclass
class MatchingReport:
    score_threshold: float
    class_aware: bool
    images: int
    n_true: int
    n_pred: int
    rows: list[dict[str, float]]  # one per IoU threshold, see ThresholdCounts.metrics
    confusion_labels: list[str] = field(default_factory=list)  # categories, then "background"
    confusion: list[list[int]] = field(default_factory=list)  # [true][predicted] at IoU 0.5, class-agnostic

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def row(self, threshold: float) -> dict[str, float]:
        return next(r for r in self.rows if abs(r["threshold"] - threshold) < 1e-9)


def _image_rles(anns: Sequence[dict[str, Any]], height: int, width: int) -> list[dict[str, Any]]:
    return [to_rle(a["segmentation"], height, width) for a in anns]


def matching_report(
    gt: str | Path | dict[str, Any] | Any,
    results: Sequence[dict[str, Any]],
    score_threshold: float = 0.5,
    thresholds: Sequence[float] = IOU_THRESHOLDS,
    class_aware: bool = False,
) -> MatchingReport:
    """Precision, recall, F1, accuracy, mean matched IoU and PQ at each IoU threshold.

    ``class_aware`` pairs only predictions and ground truth of the same
    category; the default ignores classes, as single-class cell data does.
    """
    coco_gt = load_ground_truth(gt)
    cat_ids = sorted(coco_gt.getCatIds())
    cat_index = {c: i for i, c in enumerate(cat_ids)}
    background = len(cat_ids)
    confusion = np.zeros((background + 1, background + 1), dtype=np.int64)
    counts = [ThresholdCounts(float(t)) for t in thresholds]
    by_image: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        if r["score"] >= score_threshold:
            by_image.setdefault(r["image_id"], []).append(r)
    n_true = n_pred = 0
    for image_id in sorted(coco_gt.getImgIds()):
        info = coco_gt.imgs[image_id]
        h, w = info["height"], info["width"]
        anns = coco_gt.imgToAnns.get(image_id, [])
        truth = [a for a in anns if not a.get("iscrowd", 0)]
        crowd = [a for a in anns if a.get("iscrowd", 0)]
        preds = by_image.get(image_id, [])
        pred_rles = [to_rle(p["segmentation"], h, w) for p in preds]
        if crowd and preds:
            inside = np.asarray(mask_utils.iou(pred_rles, _image_rles(crowd, h, w), [1] * len(crowd)))
            keep = [i for i in range(len(preds)) if inside[i].max() < 0.5]
            preds, pred_rles = [preds[i] for i in keep], [pred_rles[i] for i in keep]
        true_rles = _image_rles(truth, h, w)
        n_true += len(truth)
        n_pred += len(preds)
        if truth and preds:
            iou = np.asarray(mask_utils.iou(true_rles, pred_rles, [0] * len(pred_rles)), dtype=np.float64)
        else:
            iou = np.zeros((len(truth), len(preds)))
        true_cls = np.array([cat_index[a["category_id"]] for a in truth], dtype=np.int64)
        pred_cls = np.array([cat_index.get(p["category_id"], background) for p in preds], dtype=np.int64)
        scored = iou * (true_cls[:, None] == pred_cls[None, :]) if class_aware else iou
        for c in counts:
            rows, cols = match_pairs(scored, c.threshold)
            c.tp += len(rows)
            c.fp += len(preds) - len(rows)
            c.fn += len(truth) - len(rows)
            c.matched_iou += float(iou[rows, cols].sum())
        rows, cols = match_pairs(iou, 0.5)
        np.add.at(confusion, (true_cls[rows], pred_cls[cols]), 1)
        np.add.at(confusion, (np.delete(true_cls, rows), background), 1)
        np.add.at(confusion, (background, np.delete(pred_cls, cols)), 1)
    names = [coco_gt.cats[c].get("name", str(c)) for c in cat_ids] + ["background"]
    return MatchingReport(
        score_threshold=score_threshold,
        class_aware=class_aware,
        images=len(coco_gt.getImgIds()),
        n_true=n_true,
        n_pred=n_pred,
        rows=[c.metrics() for c in counts],
        confusion_labels=names,
        confusion=confusion.tolist(),
    )


def format_matching(report: MatchingReport) -> str:
    cols = ["precision", "recall", "f1", "accuracy", "mean_matched_iou", "panoptic_quality"]
    short = ["prec", "recall", "F1", "acc", "mIoU", "PQ"]
    lines = [
        f"matching at score >= {report.score_threshold:g} ({report.n_true} true, {report.n_pred} predicted"
        f"{', class-aware' if report.class_aware else ''})",
        "IoU     TP     FP     FN " + " ".join(f"{s:>6}" for s in short),
    ]
    for r in report.rows:
        lines.append(
            f"{r['threshold']:.2f} {r['tp']:>6} {r['fp']:>6} {r['fn']:>6} "
            + " ".join(f"{r[c]:6.3f}" for c in cols)
        )
    return "\n".join(lines)
