"""Panoptic quality (PQ, SQ, RQ) and semantic mIoU, accumulated image by image.

PQ follows COCO's reference ``panopticapi`` (``pq_compute``), which is not on
PyPI, so its rule is written here and checked against hand-computed cases:

- a ground-truth and a predicted segment of the same class match when their
  IoU is above 0.5, where the union leaves out the predicted pixels on void;
- crowd segments are never matched, and an unmatched prediction is not a
  false positive when more than half of it lies on void or on a crowd
  region of its class;
- per class PQ = sum(IoU of matches) / (TP + FP/2 + FN/2), SQ = that sum / TP,
  RQ = TP / (TP + FP/2 + FN/2), averaged over the classes with any TP, FP or
  FN, for all classes, things and stuff.

Maps are integer arrays; segment id 0 (panoptic) and label 0 (semantic) are void.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VOID = 0


@dataclass(frozen=True)
class Segment:
    id: int
    category_id: int
    iscrowd: bool = False


@dataclass
class ClassCounts:
    iou: float = 0.0  # summed over the matches
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def quality(self) -> dict[str, float]:
        weighed = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return {
            "pq": self.iou / weighed,
            "sq": self.iou / self.tp if self.tp else 0.0,
            "rq": self.tp / weighed,
        }


def _areas(segment_map: np.ndarray) -> dict[int, int]:
    ids, counts = np.unique(segment_map, return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist(), strict=True))


class PanopticQuality:
    """``categories``: category id -> whether it is a thing (COCO panoptic's ``isthing``)."""

    def __init__(self, categories: dict[int, bool]) -> None:
        self.categories = categories
        self.counts = {c: ClassCounts() for c in categories}

    def update(
        self,
        gt_map: np.ndarray,
        gt_segments: list[Segment],
        pred_map: np.ndarray,
        pred_segments: list[Segment],
    ) -> None:
        """One image: its ground-truth and predicted segment-id maps and their segments."""
        if gt_map.shape != pred_map.shape:
            raise ValueError(f"ground truth {gt_map.shape} and prediction {pred_map.shape} differ in size")
        gt = {s.id: s for s in gt_segments}
        pred = {s.id: s for s in pred_segments}
        for s in pred_segments:
            if s.category_id not in self.categories:
                raise ValueError(f"predicted segment {s.id} has unknown category {s.category_id}")
        gt_area, pred_area = _areas(gt_map), _areas(pred_map)
        unknown = set(pred_area) - set(pred) - {VOID}
        if unknown:
            raise ValueError(f"segment ids {sorted(unknown)[:5]} are in the predicted map but not listed")
        offset = int(max(pred_map.max(initial=0), max(pred, default=0))) + 1
        pairs = _areas(gt_map.astype(np.int64) * offset + pred_map.astype(np.int64))
        overlap = {(k // offset, k % offset): v for k, v in pairs.items()}
        matched_gt, matched_pred = set(), set()
        for (g, p), inter in overlap.items():
            if g not in gt or p not in pred or gt[g].iscrowd:
                continue
            if gt[g].category_id != pred[p].category_id:
                continue
            union = pred_area[p] + gt_area.get(g, 0) - inter - overlap.get((VOID, p), 0)
            iou = inter / union
            if iou > 0.5:
                counts = self.counts[gt[g].category_id]
                counts.tp += 1
                counts.iou += iou
                matched_gt.add(g)
                matched_pred.add(p)
        crowd_of: dict[int, int] = {}
        for g, s in gt.items():
            if g in matched_gt:
                continue
            if s.iscrowd:
                crowd_of[s.category_id] = g
            elif gt_area.get(g, 0) > 0:  # a segment with no pixel is not in the ground truth
                self.counts[s.category_id].fn += 1
        for p, s in pred.items():
            if p in matched_pred or pred_area.get(p, 0) == 0:
                continue
            ignored = overlap.get((VOID, p), 0)
            if s.category_id in crowd_of:
                ignored += overlap.get((crowd_of[s.category_id], p), 0)
            if ignored / pred_area[p] > 0.5:
                continue
            self.counts[s.category_id].fp += 1

    def summary(self) -> dict[str, dict]:
        """``{"all" | "things" | "stuff": {pq, sq, rq, n}, "per_class": {id: {pq, sq, rq, tp, fp, fn}}}``."""
        out: dict[str, dict] = {"per_class": {}}
        for group, which in (("all", None), ("things", True), ("stuff", False)):
            rows = [
                counts.quality()
                for c, counts in self.counts.items()
                if (which is None or self.categories[c] == which) and counts.tp + counts.fp + counts.fn
            ]
            n = len(rows)
            out[group] = {k: sum(r[k] for r in rows) / n if n else 0.0 for k in ("pq", "sq", "rq")}
            out[group]["n"] = n
        for c, counts in self.counts.items():
            if counts.tp + counts.fp + counts.fn:
                tallies = {"tp": counts.tp, "fp": counts.fp, "fn": counts.fn}
                out["per_class"][c] = counts.quality() | tallies
        return out


class SemanticIoU:
    """Per-class IoU from a confusion matrix over all pixels of all images; labels 1..K, 0 is void."""

    def __init__(self, num_classes: int) -> None:
        self.k = num_classes
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)  # [truth, prediction]

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in size")
        keep = gt != VOID
        truth, guess = gt[keep].astype(np.int64) - 1, pred[keep].astype(np.int64) - 1
        if truth.size and (truth.max() >= self.k or guess.min() < 0 or guess.max() >= self.k):
            raise ValueError(f"labels outside 1..{self.k} (0 is void in the ground truth only)")
        self.confusion += np.bincount(truth * self.k + guess, minlength=self.k * self.k).reshape(self.k, -1)

    def summary(self) -> dict:
        """``miou`` over the classes that occur in the ground truth or the prediction, per-class IoU,
        and pixel accuracy."""
        tp = np.diag(self.confusion)
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp
        present = union > 0
        iou = np.where(present, tp / np.maximum(union, 1), np.nan)
        total = self.confusion.sum()
        return {
            "miou": float(np.nanmean(iou)) if present.any() else 0.0,
            "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
            "per_class": {k + 1: float(iou[k]) for k in range(self.k) if present[k]},
        }
