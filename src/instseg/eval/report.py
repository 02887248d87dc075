"""One evaluation of COCO results against ground truth: every metric, as text, JSON and pictures.

Both ``instseg eval --checkpoint`` and ``instseg eval --results`` end here, so
a model of ours and a results file from any other toolkit are scored alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faster_coco_eval import COCO

from instseg.data.coco import read_json
from instseg.errors import DataError
from instseg.eval.breakdown import BREAKDOWNS, attribute_breakdown, class_breakdown, format_breakdown
from instseg.eval.coco import (
    CocoResult,
    coco_report,
    evaluated_results,
    format_per_class,
    format_table,
    load_ground_truth,
)
from instseg.eval.matching_metrics import IOU_THRESHOLDS, MatchingReport, format_matching, matching_report
from instseg.eval.results import checked_results


@dataclass
class EvalOptions:
    """What to compute. ``lvis=None`` detects LVIS ground truth by its federated fields."""

    iou_types: tuple[str, ...] = ("segm", "bbox", "boundary")
    max_dets: tuple[int, ...] = (1, 10, 100)
    boundary_dilation_ratio: float = 0.02
    class_agnostic: bool = False
    lvis: bool | None = None
    matching: bool = True  # precision/recall/F1/accuracy/PQ at IoU 0.5..0.9
    matching_score_threshold: float = 0.5
    matching_thresholds: tuple[float, ...] = IOU_THRESHOLDS
    matching_class_aware: bool = False
    breakdowns: tuple[str, ...] = ()  # mask and Boundary AP per bin of: occlusion, thinness, size, class


@dataclass
class EvalReport:
    coco: dict[str, CocoResult]
    matching: MatchingReport | None = None
    breakdowns: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # attribute -> rows
    options: EvalOptions = field(default_factory=EvalOptions)
    images: int = 0
    seconds_per_image: float | None = None  # model time, when a model made the results

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        return {k: v.stats for k, v in self.coco.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "counts": {k: v.counts for k, v in self.coco.items()},
            "per_class": {k: v.per_class for k, v in self.coco.items()},
            "matching": self.matching.to_dict() if self.matching else None,
            "breakdowns": self.breakdowns,
            "images": self.images,
            "seconds_per_image": self.seconds_per_image,
            "max_dets": list(self.options.max_dets),
            "class_agnostic": self.options.class_agnostic,
        }

    def format(self, per_class_rows: int = 10) -> str:
        parts = [format_table(self.metrics)]
        counts = [
            f"{t}: TP/FP/FN @0.5 {c['0.5']['tp']}/{c['0.5']['fp']}/{c['0.5']['fn']}, "
            f"@0.75 {c['0.75']['tp']}/{c['0.75']['fp']}/{c['0.75']['fn']}"
            for t, v in self.coco.items()
            if (c := v.counts)
        ]
        parts += ["\n".join(counts)] if counts else []
        first = next(iter(self.coco.values()), None)
        if first is not None and len(first.per_class) > 1:
            table = format_per_class(first.per_class, per_class_rows)
            parts.append(f"per class ({first.iou_type}, worst first):\n{table}")
        if self.matching is not None:
            parts.append(format_matching(self.matching))
        parts += [f"by {k}:\n{format_breakdown(k, rows)}" for k, rows in self.breakdowns.items()]
        return "\n\n".join(p for p in parts if p)

    def write(self, out: str | Path, results: Sequence[dict[str, Any]] | None = None) -> list[Path]:
        """``metrics.json`` (+ ``results.json``) and the plots; returns the files written."""
        from instseg.eval.plots import plot_breakdown, plot_confusion, plot_matching, plot_pr_curves

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = [out / "metrics.json"]
        written[0].write_text(json.dumps(self.to_dict(), indent=2))
        if results is not None:
            written.append(out / "results.json")
            written[-1].write_text(json.dumps(list(results)))
        for iou_type, result in self.coco.items():
            if result.precision is not None:
                written.append(plot_pr_curves(result, out / f"pr_{iou_type}.png"))
        for attribute, rows in self.breakdowns.items():
            if rows:
                written.append(plot_breakdown(attribute, rows, out / f"breakdown_{attribute}.png"))
        if self.matching is not None:
            written.append(plot_matching(self.matching, out / "matching.png"))
            if len(self.matching.confusion_labels) > 2:
                written.append(plot_confusion(self.matching, out / "confusion.png"))
        return written


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """A COCO results JSON (a list of detections) with a clear error when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: results file not found")
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of COCO results, got a {type(data).__name__}")
    return data  # checked record by record against the ground truth: eval/results.py


def evaluate_results(
    gt: str | Path | dict[str, Any] | COCO,
    results: str | Path | Sequence[dict[str, Any]],
    options: EvalOptions | None = None,
    details: bool = True,
) -> EvalReport:
    """Score COCO results against COCO (or LVIS) ground truth.

    ``details=False`` gives summary stats only (what evaluation during training needs).
    """
    options = options or EvalOptions()
    coco_gt = load_ground_truth(gt)
    source = "results"
    if not isinstance(results, Sequence) or isinstance(results, str):
        source = str(results)
        results = load_results(results)
    results = checked_results(coco_gt, results, options.class_agnostic, source)
    has_masks = any("segmentation" in r for r in results) or not results
    iou_types = tuple(t for t in options.iou_types if has_masks or t == "bbox")
    coco = coco_report(
        coco_gt,
        results,
        iou_types,
        options.max_dets,
        options.boundary_dilation_ratio,
        options.class_agnostic,
        options.lvis,
        details,
    )
    breakdowns = _breakdowns(coco_gt, results, coco, options) if details and has_masks else {}
    matching = None
    if details and options.matching and has_masks:
        matching = matching_report(
            coco_gt,
            results,
            options.matching_score_threshold,
            options.matching_thresholds,
            options.matching_class_aware,
        )
    return EvalReport(coco, matching, breakdowns, options, images=len(coco_gt.getImgIds()))


def _breakdowns(
    coco_gt: COCO, results: Sequence[dict[str, Any]], coco: dict[str, CocoResult], options: EvalOptions
) -> dict[str, list[dict[str, Any]]]:
    unknown = set(options.breakdowns) - set(BREAKDOWNS)
    if unknown:
        raise ValueError(f"unknown breakdown {sorted(unknown)}; choose from {BREAKDOWNS}")
    mask_types = [t for t in ("segm", "boundary") if t in coco]
    kept, max_dets, lvis = evaluated_results(coco_gt, results, options.max_dets, options.lvis)
    out = {}
    for attribute in options.breakdowns:
        if attribute == "class":
            out[attribute] = class_breakdown({t: coco[t] for t in mask_types})
        else:
            out[attribute] = attribute_breakdown(
                coco_gt,
                kept,
                attribute,
                mask_types,
                max_dets,
                lvis,
                options.boundary_dilation_ratio,
                options.class_agnostic,
            )
    return out
