"""Pictures of results: mask overlays, loss curves, PR curves, matching metrics and confusion matrices."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from instseg.structures import Instances

if TYPE_CHECKING:
    from instseg.eval.coco import CocoResult
    from instseg.eval.matching_metrics import MatchingReport


def distinct_colors(n: int) -> list[tuple[int, int, int]]:
    """Well-separated hues (golden-ratio steps), so neighbouring instances differ."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 1.0)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def overlay(
    image: torch.Tensor, instances: Instances, show_labels: bool | None = None, alpha: float = 0.45
) -> torch.Tensor:
    """uint8 ``[3, H, W]`` picture: each instance filled in its own colour, outlined by its box.

    Labels and scores are written when there are few objects (<= 30) unless told.
    """
    canvas = (image.clamp(0, 1) * 255).to(torch.uint8) if image.is_floating_point() else image
    if len(instances) == 0:
        return canvas
    colors = distinct_colors(len(instances))
    canvas = draw_segmentation_masks(canvas, instances.masks, alpha=alpha, colors=colors)
    if show_labels is None:
        show_labels = len(instances) <= 30
    labels = (
        [f"{n} {s:.2f}" for n, s in zip(instances.category_names, instances.scores.tolist(), strict=True)]
        if show_labels
        else None
    )
    return draw_bounding_boxes(canvas, instances.boxes, labels=labels, colors=colors, width=1)


def save_overlay(image: torch.Tensor, instances: Instances, path: str | Path, **kwargs: object) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, instances, **kwargs).permute(1, 2, 0).numpy()).save(path)
    return path


def plot_loss_curve(metrics_jsonl: str | Path, path: str | Path) -> Path:
    """Training losses against step (and the learning rate), from the trainer's metrics.jsonl."""
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if rows:
        steps = [r["step"] for r in rows]
        for key in [k for k in rows[0] if k.startswith("loss")]:
            ax.plot(steps, [r[key] for r in rows], label=key, linewidth=2 if key == "loss" else 1)
        ax_lr.plot(steps, [r["lr"] for r in rows], color="grey")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no loss logged yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    return save_figure(fig, path)


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
