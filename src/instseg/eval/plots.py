"""Pictures of evaluation results: PR curves, matching metrics and confusion matrices."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from instseg.pictures import save_figure

if TYPE_CHECKING:
    from instseg.eval.coco import CocoResult
    from instseg.eval.matching_metrics import MatchingReport


def plot_pr_curves(result: CocoResult, path: str | Path) -> Path:
    """Precision against recall at each IoU threshold (mean over classes), AP in the legend."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    if result.precision is not None:
        recall = np.asarray(result.recall_thresholds)
        cmap = plt.get_cmap("viridis")
        n = len(result.iou_thresholds)
        for t, (thr, prec) in enumerate(zip(result.iou_thresholds, result.precision, strict=True)):
            if (prec < 0).all():
                continue
            ax.plot(recall, prec, color=cmap(t / max(n - 1, 1)), label=f"IoU {thr:.2f}: AP {prec.mean():.3f}")
        ax.legend(fontsize=7, loc="lower left")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(f"{result.iou_type}: AP {result.stats.get('AP', 0):.3f}")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_matching(report: MatchingReport, path: str | Path) -> Path:
    """Matching metrics against the IoU threshold, as cell-segmentation papers show them."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    thresholds = [r["threshold"] for r in report.rows]
    for key in ("precision", "recall", "f1", "accuracy", "panoptic_quality"):
        ax.plot(thresholds, [r[key] for r in report.rows], marker="o", markersize=3, label=key)
    ax.set(xlabel="IoU threshold", ylabel="value", ylim=(0, 1.02))
    ax.set_title(f"matching at score >= {report.score_threshold:g}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_confusion(report: MatchingReport, path: str | Path, max_classes: int = 40) -> Path:
    """Rows: true class, columns: predicted class, at IoU 0.5; the last row/column is background.

    With more than ``max_classes`` classes only the most confused ones are drawn.
    """
    m = np.asarray(report.confusion, dtype=np.int64)
    labels = list(report.confusion_labels)
    if len(labels) - 1 > max_classes:
        off = m[:-1, :-1].sum(axis=1) + m[:-1, :-1].sum(axis=0) - 2 * np.diag(m[:-1, :-1])
        keep = [*sorted(np.argsort(-off, kind="stable")[:max_classes].tolist()), len(labels) - 1]
        m, labels = m[np.ix_(keep, keep)], [labels[i] for i in keep]
    side = min(4 + 0.35 * len(labels), 16)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    rows = m.sum(axis=1, keepdims=True)
    shown = np.divide(m, rows, out=np.zeros(m.shape, dtype=float), where=rows > 0)
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    if len(labels) <= 15:
        for i, j in np.ndindex(m.shape):
            color = "white" if shown[i, j] > 0.5 else "black"
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title("confusion at IoU 0.5 (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def plot_breakdown(attribute: str, rows: list[dict], path: str | Path) -> Path:
    """Mask and Boundary AP per bin as grouped bars, each bin labelled with its ground-truth count."""
    types = [k for k in (rows[0] if rows else {}) if k not in ("bin", "gt") and not k.endswith("_AP50")]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 2), 4))
    x = np.arange(len(rows))
    width = 0.8 / max(len(types), 1)
    for i, t in enumerate(types):
        values = [max(r[t], 0.0) for r in rows]  # -1 (no ground truth) drawn as nothing
        ax.bar(x + (i - (len(types) - 1) / 2) * width, values, width, label=f"{t} AP")
    ax.set_xticks(
        x, [f"{r['bin']}\n({r['gt']} gt)" for r in rows], fontsize=7, rotation=30 if len(rows) > 8 else 0
    )
    ax.set(ylabel="AP", ylim=(0, 1.02))
    ax.set_title(f"AP by {attribute}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)
