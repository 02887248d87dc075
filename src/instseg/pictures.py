"""Pictures people look at instead of reading numbers: mask overlays, loss curves, and the figure saver
every plot uses. Below both data and evaluation, so either can draw.
"""

from __future__ import annotations

import colorsys
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes

from instseg.measurements import label_image
from instseg.structures import Instances

MIN_SIDE = 512  # overlays of smaller images are enlarged by a whole factor
TITLE_HEIGHT = 28


def distinct_colors(n: int) -> list[tuple[int, int, int]]:
    """Well-separated hues (golden-ratio steps), so neighbouring instances differ."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 1.0)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def overlay(
    image: torch.Tensor,
    instances: Instances,
    boxes: bool = False,
    alpha: float = 0.4,
    min_side: int = MIN_SIDE,
    labelled: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """uint8 ``[3, H', W']`` picture: each instance filled, semi-transparent, in its own colour and
    outlined by a one-pixel contour of that colour, so touching objects stay apart.

    Where masks overlap the better-scored one is drawn (``measurements.label_image``).
    Images whose longer side is under ``min_side`` are enlarged by a whole
    factor (pixels stay square and contours thin). ``boxes``: also draw the
    boxes, with class and score when there are at most 30 objects. ``labelled``: the instances'
    ``label_image``, when the caller has it already.
    """
    canvas = (image.clamp(0, 1) * 255).to(torch.uint8) if image.is_floating_point() else image.clone()
    labels, kept = labelled if labelled is not None else label_image(instances)
    k = max(1, math.ceil(min_side / max(canvas.shape[-2:])))
    if k > 1:
        canvas = canvas.repeat_interleave(k, 1).repeat_interleave(k, 2)
        labels = labels.repeat_interleave(k, 0).repeat_interleave(k, 1)
    if len(instances) == 0:
        return canvas
    colors = torch.tensor(distinct_colors(len(instances)), dtype=torch.float32)
    palette = torch.cat([torch.zeros(1, 3), colors[kept]]).T.contiguous()  # [3, M + 1]: colour of each id
    inside = labels > 0
    # a contour pixel has a 4-neighbour of another id (the image's border counts as the same id)
    edge = torch.zeros_like(inside)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge &= inside
    out = torch.empty_like(canvas)
    for c in range(3):  # a channel at a time: a few full-size temporaries, not a dozen
        colour = palette[c][labels]
        blended = canvas[c].float().mul_(1 - alpha).add_(colour * alpha)
        channel = torch.where(inside, blended, canvas[c].float())
        out[c] = torch.where(edge, colour, channel).round_().to(torch.uint8)
    if boxes:
        names = instances.category_names
        text = [f"{n} {s:.2f}" for n, s in zip(names, instances.scores.tolist(), strict=True)]
        box_colors = [tuple(int(v) for v in c) for c in colors.tolist()]
        shown = text if len(instances) <= 30 else None
        out = draw_bounding_boxes(out, instances.boxes * k, labels=shown, colors=box_colors, width=1)
    return out


def side_by_side(pictures: Sequence[torch.Tensor], titles: Sequence[str] = ()) -> torch.Tensor:
    """uint8 pictures ``[3, h, w]`` next to each other on white, each under its title (if given)."""
    height = max(p.shape[1] for p in pictures)
    header = TITLE_HEIGHT if titles else 0
    gap = 8
    width = sum(p.shape[2] for p in pictures) + gap * (len(pictures) - 1)
    sheet = np.full((height + header, width, 3), 255, dtype=np.uint8)
    x = 0
    for i, picture in enumerate(pictures):
        sheet[header : header + picture.shape[1], x : x + picture.shape[2]] = picture.permute(1, 2, 0).numpy()
        if i < len(titles):
            cv2.putText(sheet, titles[i], (x + 4, header - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
        x += picture.shape[2] + gap
    return torch.from_numpy(sheet).permute(2, 0, 1)


def contact_sheet(pictures: Sequence[torch.Tensor], columns: int = 4, width: int = 384) -> torch.Tensor:
    """uint8 pictures scaled to ``width`` pixels wide, ``columns`` to a row, each row as tall as its
    tallest picture, on white."""
    scaled = []
    for picture in pictures:
        h, w = picture.shape[1:]
        size = (width, max(1, round(h * width / w)))
        scaled.append(cv2.resize(picture.permute(1, 2, 0).numpy(), size, interpolation=cv2.INTER_AREA))
    rows = [scaled[i : i + columns] for i in range(0, len(scaled), columns)]
    heights = [max(p.shape[0] for p in row) for row in rows]
    sheet = np.full((sum(heights), min(columns, len(scaled)) * width, 3), 255, dtype=np.uint8)
    top = 0
    for row, height in zip(rows, heights, strict=True):
        for k, picture in enumerate(row):
            sheet[top : top + picture.shape[0], k * width : (k + 1) * width] = picture
        top += height
    return torch.from_numpy(sheet).permute(2, 0, 1)


def save_picture(picture: torch.Tensor, path: str | Path) -> Path:
    """A uint8 ``[3, H, W]`` picture as PNG (folders made as needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture.permute(1, 2, 0).contiguous().numpy()).save(path)
    return path


def save_overlay(image: torch.Tensor, instances: Instances, path: str | Path, **kwargs: Any) -> Path:
    return save_picture(overlay(image, instances, **kwargs), path)


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


def draw_prompts(
    picture: torch.Tensor,
    image_size: tuple[int, int],
    points: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The prompts on an overlay of an ``image_size`` image: positive clicks green, negative red (white
    rims, so they show on any mask), boxes yellow; coordinates in the image's pixels."""
    k = picture.shape[-1] / image_size[1]
    canvas = np.ascontiguousarray(picture.permute(1, 2, 0).numpy())
    radius = max(4, round(3 * k))
    for box in [] if boxes is None else boxes.reshape(-1, 4).tolist():
        x0, y0, x1, y1 = (round(v * k) for v in box)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (255, 220, 0), 2)
    if points is not None:
        signs = torch.ones(len(points)) if labels is None else labels.reshape(-1)
        for (x, y), positive in zip(points.reshape(-1, 2).tolist(), signs.tolist(), strict=True):
            centre = (round(x * k), round(y * k))
            cv2.circle(canvas, centre, radius + 2, (255, 255, 255), -1)
            cv2.circle(canvas, centre, radius, (0, 200, 0) if positive else (220, 0, 0), -1)
    return torch.from_numpy(canvas).permute(2, 0, 1)
