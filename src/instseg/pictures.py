"""Pictures people look at instead of reading numbers: mask overlays, loss curves, and the figure saver
every plot uses. Below both data and evaluation, so either can draw.
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from instseg.structures import Instances


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
